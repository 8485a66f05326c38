"""components.train.multinode: the trainjob engine (with training_job, engine and pods) and the node launcher:
multi-node training on
Kubeflow Trainer v2 (``cluster.training_engine: trainjob``, the default), queued by Kueue.

No Kubernetes cluster can run here, so two stand-ins are used, and only these:
- the TrainJob manifest is checked against the Trainer v2.2 API models (kubeflow-trainer-api 2.2.1,
  generated from the Trainer's OpenAPI spec), against the CRD rules those models do not carry, and its pod
  pieces against the Kubernetes OpenAPI schema (kubernetes-validate, strict);
- submit/follow/delete talk through the real ``kubernetes`` client to ``FakeKubernetes``
  (tests/fake_kubernetes.py), a loopback HTTP server that implements the API endpoints used (trainjobs,
  pods, pod log, clustertrainingruntimes, serviceaccounts) and plays the Trainer's and Kueue's part.
The exit handler runs for real, with a SQLite MLflow store.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from pathlib import Path

import pytest
from fake_kubernetes import NAMESPACE, TRAINJOB, FakeKubernetes, expected_lines, lead_lines, serve

from components.train.multinode.engine import TrainingJobError, TrainingJobFailed
from components.train.multinode.job_spec import job_name
from components.train.multinode.launch import LaunchEnvError, launch_command, map_operator_env
from components.train.multinode.launch import main as launch_main
from components.train.multinode.training_job import delete_training_job, run_training_job
from components.train.multinode.trainjob import PATCH_MANAGER, build_trainjob_manifest
from configs.loading import load_config

RUN_ID = "0f3c2a9e-1b2c-4d5e-8f90-123456789abc"
NAME = f"train-{RUN_ID}"
TRAIN_YAML = Path(f"/storage/output/{RUN_ID}/train.yaml")


def cluster_config(*overrides: str, **cluster):
    """The lora preset with ``cluster.<key>=<value>`` set (the engine is the default: trainjob)."""
    return load_config("lora", overrides=[*[f"cluster.{key}={json.dumps(value)}" for key, value in cluster.items()],
                                          *overrides])


def manifest_for(cfg, env=None) -> dict:
    return json.loads(json.dumps(build_trainjob_manifest(cfg, RUN_ID, TRAIN_YAML, env or {"MLFLOW_RUN_ID": "r1"})))


def node_patch(manifest: dict) -> dict:
    """The runtime patch's pod template of the ``node`` job."""
    (patch,) = manifest["spec"]["runtimePatches"]
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == "node"
    return job["template"]["spec"]["template"]


# --------------------------------------------------------------------------- the manifest


def test_manifest_round_trips_through_the_trainer_api_models():
    """Every field is one the Trainer v2.2 API knows, with the right type: the generated models drop unknown
    keys and reject wrong types, so a round trip returns the manifest unchanged only when each key is right."""
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob
    from pydantic import ValidationError

    cfg = cluster_config(nodes=3, accelerator_count=8, image_pull_secrets=["regcred"], kueue_queue_name="team-a",
                         kueue_priority_class="high")
    manifest = manifest_for(cfg)
    assert TrainerV1alpha1TrainJob.from_dict(manifest).to_dict() == manifest
    # The check has teeth: the field v2.2 replaced (podTemplateOverrides) is dropped, and a wrong type fails.
    broken = json.loads(json.dumps(manifest))
    broken["spec"]["podTemplateOverrides"] = broken["spec"].pop("runtimePatches")
    assert TrainerV1alpha1TrainJob.from_dict(broken).to_dict() != broken
    broken = json.loads(json.dumps(manifest))
    broken["spec"]["trainer"]["numNodes"] = "3"
    with pytest.raises(ValidationError):
        TrainerV1alpha1TrainJob.from_dict(broken)


def test_manifest_keeps_the_crd_rules_the_models_do_not_carry():
    """The CRD's validation rules and the Trainer's webhook checks (trainjob_types.go, torch plugin, v2.2)."""
    cfg = cluster_config(nodes=2)
    manifest = manifest_for(cfg, {"MLFLOW_RUN_ID": "r1", "NCCL_DEBUG": "INFO"})
    name = manifest["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63  # RFC 1035 label
    spec = manifest["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                  "name": "torch-distributed"}
    assert spec["activeDeadlineSeconds"] >= 1 and "managedBy" not in spec
    (patch,) = spec["runtimePatches"]
    assert 1 <= len(patch["manager"]) <= 253 and patch["manager"] == PATCH_MANAGER
    env_names = [item["name"] for item in spec["trainer"]["env"]]
    assert len(env_names) == len(set(env_names)) <= 128  # listType=map keyed by name
    assert not [item for item in env_names if item.startswith("PET_")]  # torch plugin: reserved for torchrun
    (container,) = node_patch(manifest)["spec"]["containers"]
    assert set(container) == {"name", "volumeMounts"}  # env cannot be patched on the "node" container
    assert spec["trainer"]["numNodes"] >= 1 and spec["trainer"]["numProcPerNode"] >= 1


@pytest.mark.parametrize("version", ["1.29", "latest"])
def test_pod_pieces_validate_against_the_kubernetes_schema(version):
    """The pod the runtime's ``node`` job gets once the trainer settings and the patch are applied."""
    import kubernetes_validate

    version = kubernetes_validate.utils.latest_version() if version == "latest" else version
    manifest = manifest_for(cluster_config(nodes=2, image_pull_secrets=["regcred"]))
    trainer, template = manifest["spec"]["trainer"], node_patch(manifest)
    (mounts,) = template["spec"]["containers"]
    pod_spec = {**template["spec"], "containers": [{
        "name": mounts["name"], "image": trainer["image"], "command": trainer["command"], "env": trainer["env"],
        "resources": trainer["resourcesPerNode"], "volumeMounts": mounts["volumeMounts"]}]}
    document = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "node"},
                "template": {"metadata": template["metadata"], "spec": pod_spec}}
    kubernetes_validate.validate(document, version, strict=True)
    metadata = manifest["metadata"]
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}, version,
                                 strict=True)  # the job's name, labels and annotations


def test_manifest_carries_every_setting():
    cfg = cluster_config(
        nodes=4, accelerator_count=8, accelerator_type="nvidia.com/gpu", cpu_request="16", memory_request="200Gi",
        memory_limit="400Gi", shm_size="64Gi", image="registry.example/llm:1.2", image_pull_secrets=["regcred"],
        gpu_node_selector={"gpu.type": "h100"}, train_timeout_s=7200, training_runtime="torch-cuda-128",
        trainer_service_account="trainer-no-token", kueue_queue_name="team-a", kueue_priority_class="high",
        gpu_tolerations=[{"key": "dedicated", "operator": "Equal", "value": "train", "effect": "NoSchedule"}],
    )
    manifest = manifest_for(cfg, {"MLFLOW_RUN_ID": "r1", "NCCL_DEBUG": "INFO"})
    assert manifest["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and manifest["kind"] == "TrainJob"
    metadata = manifest["metadata"]
    assert metadata["name"] == NAME
    assert metadata["labels"]["kfp.run_id"] == RUN_ID
    assert metadata["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert metadata["labels"]["kueue.x-k8s.io/priority-class"] == "high"
    assert metadata["annotations"] == {"llmft.config_hash": cfg.config_hash(), "kfp.run_id": RUN_ID}
    spec = manifest["spec"]
    assert spec["runtimeRef"]["name"] == "torch-cuda-128"
    assert spec["activeDeadlineSeconds"] == 7200
    assert "suspend" not in spec  # Kueue's webhook suspends a queued job itself
    trainer = spec["trainer"]
    assert trainer["image"] == "registry.example/llm:1.2"
    assert trainer["command"] == ["python", "-m", "components.train.multinode.launch", "--gpus-per-node", "8",
                                  str(TRAIN_YAML)]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (4, 8)
    assert trainer["resourcesPerNode"] == {"requests": {"cpu": "16", "memory": "200Gi", "nvidia.com/gpu": "8"},
                                           "limits": {"memory": "400Gi", "nvidia.com/gpu": "8"}}
    env = {item["name"]: item.get("value", item.get("valueFrom")) for item in trainer["env"]}
    assert env["MLFLOW_TRACKING_URI"] == cfg.mlflow.tracking_uri and env["LLMFT_KFP_RUN_ID"] == RUN_ID
    assert env["MLFLOW_RUN_ID"] == "r1" and env["NCCL_DEBUG"] == "INFO" and env["HF_HUB_OFFLINE"] == "1"
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        assert env[key] == {"secretKeyRef": {"name": "mlflow-config", "key": key, "optional": True}}
    template = node_patch(manifest)
    labels = template["metadata"]["labels"]
    assert labels["kfp.run_id"] == RUN_ID and not [key for key in labels if key.startswith("kueue.x-k8s.io/")]
    assert template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    pod = template["spec"]
    assert pod["serviceAccountName"] == "trainer-no-token"  # an account that mounts no API token
    assert pod["nodeSelector"] == {"gpu.type": "h100"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "train", "effect": "NoSchedule"}]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["storage"]["persistentVolumeClaim"] == {"claimName": "llama-storage"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
    (container,) = pod["containers"]
    assert container["name"] == "node"
    assert {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]} == {
        "storage": "/storage", "dshm": "/dev/shm"}


def test_optional_settings_stay_out_when_unset():
    cfg = load_config("lora", overrides=["cluster.nodes=2", "mlflow.credentials_secret=",
                                         "cluster.trainer_service_account="])
    manifest = manifest_for(cfg)
    assert not [key for key in manifest["metadata"]["labels"] if key.startswith("kueue.x-k8s.io/")]
    pod = node_patch(manifest)["spec"]
    assert "serviceAccountName" not in pod and "imagePullSecrets" not in pod
    assert all("valueFrom" not in item for item in manifest["spec"]["trainer"]["env"])


@pytest.mark.parametrize(("train_yaml", "env", "overrides", "message"), [
    ("/tmp/train.yaml", {}, [], "not on the storage volume"),
    (str(TRAIN_YAML), {"PET_NODE_RANK": "0"}, [], "env: PET_NODE_RANK is set by the training engine"),
    (str(TRAIN_YAML), {"MLFLOW_RUN_ID": 7}, [], "env: the value of MLFLOW_RUN_ID must be a string"),
    ("storage/train.yaml", {}, ["storage.mount_path=./storage"], "storage.mount_path must be an absolute path"),
])
def test_manifest_refuses_bad_inputs_naming_the_field(train_yaml, env, overrides, message):
    cfg = load_config("lora", overrides=["cluster.nodes=2", *overrides])
    with pytest.raises(ValueError, match=re.escape(message)):
        build_trainjob_manifest(cfg, RUN_ID, Path(train_yaml), env)


@pytest.mark.parametrize(("override", "field"), [
    ("cluster.training_engine=mpijob", "cluster.training_engine"),
    ("cluster.training_runtime=Torch_Distributed", "cluster.training_runtime"),
    ("cluster.training_runtime=", "cluster.training_runtime"),
    ("cluster.kueue_queue_name=team a", "cluster.kueue_queue_name"),
    (f"cluster.kueue_priority_class={'p' * 64}", "cluster.kueue_priority_class"),
    ("cluster.trainer_service_account=-trainer", "cluster.trainer_service_account"),
])
def test_config_refuses_names_kubernetes_would_refuse(override, field):
    from configs.schema import ConfigError

    with pytest.raises(ConfigError, match=re.escape(field)):
        load_config("lora", overrides=[override])


# --------------------------------------------------------------------------- what each node runs

# What the Trainer's torch plugin sets on node <rank> of a 4-node TrainJob with numProcPerNode 8.
def trainer_env(rank: int, nodes: int = 4) -> dict[str, str]:
    return {"PET_NNODES": str(nodes), "PET_NPROC_PER_NODE": "8", "PET_NODE_RANK": str(rank),
            "PET_MASTER_ADDR": f"{NAME}-node-0-0.{NAME}", "PET_MASTER_PORT": "29400", "PYTHONUNBUFFERED": "1"}


@pytest.mark.parametrize("rank", range(4))
def test_every_node_rank_maps_to_torchrun(rank):
    """Ranks 0..N-1 of a TrainJob: the mapped values, then torchrun's own parser on the command they make."""
    from torch.distributed.run import get_args_parser

    mapped = map_operator_env(trainer_env(rank), gpus_per_node=8)
    assert mapped == {"NNODES": "4", "NODE_RANK": str(rank), "MASTER_ADDR": f"{NAME}-node-0-0.{NAME}",
                      "MASTER_PORT": "29400", "NPROC_PER_NODE": "8"}
    torchrun = get_args_parser().parse_args(launch_command(mapped, TRAIN_YAML)[3:])
    assert (torchrun.nnodes, torchrun.node_rank, torchrun.nproc_per_node) == ("4", rank, "8")
    assert (torchrun.master_addr, torchrun.master_port) == (f"{NAME}-node-0-0.{NAME}", 29400)
    assert torchrun.training_script == "components.train.worker" and torchrun.training_script_args == [str(TRAIN_YAML)]


@pytest.mark.parametrize(("variable", "value", "mapped_key", "expected"), [
    ("PET_NNODES", "6", "NNODES", "6"),
    ("PET_NODE_RANK", "2", "NODE_RANK", "2"),
    ("PET_MASTER_ADDR", "train-x-node-0-0.train-x", "MASTER_ADDR", "train-x-node-0-0.train-x"),
    ("PET_MASTER_PORT", "29500", "MASTER_PORT", "29500"),
    ("PET_NPROC_PER_NODE", "auto", "NPROC_PER_NODE", "8"),  # torchrun's "one per GPU"
])
def test_each_trainer_variable_maps(variable, value, mapped_key, expected):
    assert map_operator_env({**trainer_env(0), variable: value}, gpus_per_node=8)[mapped_key] == expected


@pytest.mark.parametrize(("change", "message"), [
    ({"PET_NNODES": ""}, "neither PET_NNODES nor WORLD_SIZE is set"),
    ({"PET_NODE_RANK": ""}, "neither PET_NODE_RANK nor RANK is set"),
    ({"PET_NODE_RANK": "4"}, "PET_NODE_RANK=4 is not below the node count 4"),
    ({"PET_MASTER_ADDR": ""}, "neither PET_MASTER_ADDR nor MASTER_ADDR is set"),
    ({"PET_MASTER_PORT": "0"}, "PET_MASTER_PORT='0' must be >= 1"),
    ({"PET_NPROC_PER_NODE": "4"}, "PET_NPROC_PER_NODE=4 does not match --gpus-per-node 8"),
    ({"PET_NPROC_PER_NODE": "cpu"}, "PET_NPROC_PER_NODE='cpu' is not an integer"),
])
def test_a_bad_trainer_variable_is_named(change, message):
    with pytest.raises(LaunchEnvError, match=re.escape(message)):
        map_operator_env({**trainer_env(0), **change}, gpus_per_node=8)


def test_the_manifests_command_runs_the_launcher_on_a_trainer_node(monkeypatch, capsys):
    """The TrainJob's own command, with the environment the Trainer gives node 2, as the launcher sees it."""
    manifest = manifest_for(cluster_config(nodes=4, accelerator_count=8))
    command = manifest["spec"]["trainer"]["command"]
    assert command[:3] == ["python", "-m", "components.train.multinode.launch"]
    for key, value in trainer_env(2).items():
        monkeypatch.setenv(key, value)
    assert launch_main([*command[3:], "--dry-run"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["node"] == {"NNODES": "4", "NODE_RANK": "2", "MASTER_ADDR": f"{NAME}-node-0-0.{NAME}",
                             "MASTER_PORT": "29400", "NPROC_PER_NODE": "8"}
    assert shown["command"][0] == sys.executable and shown["command"][-1] == str(TRAIN_YAML)


# --------------------------------------------------------------------------- against the loopback Kubernetes API


@pytest.fixture
def fake_k8s(tmp_path, monkeypatch):
    """A FakeKubernetes playing Kubeflow Trainer v2 and Kueue, and a kubeconfig pointing the real client at it."""
    yield from serve(FakeKubernetes(TRAINJOB), tmp_path, monkeypatch)


def test_successful_job_streams_node_0s_log_and_says_why_it_is_pending(fake_k8s, capsys):
    cfg = cluster_config(nodes=3, accelerator_count=4)
    run_training_job(cfg, RUN_ID, TRAIN_YAML, {"MLFLOW_RUN_ID": "r1"})
    output = capsys.readouterr().out
    assert lead_lines(output, "node-0") == expected_lines(fake_k8s)
    assert f"[trainjob] created {NAMESPACE}/{NAME}: 3 nodes" in output
    assert (f"node-0 pod {NAME}-node-0-0-x0k2p not scheduled: Unschedulable: 0/3 nodes are available: "
            "3 Insufficient nvidia.com/gpu.") in output
    assert f"[trainjob] {NAMESPACE}/{NAME} succeeded" in output
    assert "waiting for quota" not in output and "not checking" not in output
    assert fake_k8s.created == [manifest_for(cfg)]
    assert fake_k8s.deleted == []  # a finished job stays for inspection
    assert fake_k8s.auth == {"Bearer test-token"}
    assert fake_k8s.log_requests[0]["container"] == "node"


def test_kueue_suspended_job_waits_for_quota_then_runs(fake_k8s, capsys):
    fake_k8s.kueue_watches = 3  # Kueue admits it on the third look
    cfg = cluster_config(nodes=2, kueue_queue_name="team-a", kueue_priority_class="high")
    run_training_job(cfg, RUN_ID, TRAIN_YAML, {})
    output = capsys.readouterr().out
    waiting = "[trainjob] suspended: waiting for quota in queue team-a"
    assert output.count(waiting) == 1  # said once, not on every look
    assert output.index(waiting) < output.index("not scheduled: Unschedulable") < output.index("succeeded")
    assert lead_lines(output, "node-0") == expected_lines(fake_k8s)
    assert fake_k8s.created[0]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"


def test_failed_job_fails_the_step_with_the_reason_and_exit_code_and_is_deleted(fake_k8s, capsys):
    fake_k8s.outcome = "Failed"
    with pytest.raises(TrainingJobFailed) as failure:
        run_training_job(cluster_config(nodes=2), RUN_ID, TRAIN_YAML, {})
    message = str(failure.value)
    assert message.startswith(f"TrainJob {NAMESPACE}/{NAME} failed: FailedJobs: jobset failed due to one or more "
                              "job failures")
    assert f"pod {NAME}-node-0-0-x0k2p: container OOMKilled with exit code 137" in message
    assert fake_k8s.deleted == [NAME]
    assert lead_lines(capsys.readouterr().out, "node-0") == expected_lines(fake_k8s)  # the log made it before the error


def test_failure_names_the_node_that_failed_first(fake_k8s):
    """Node 2 runs out of memory; node 0 then loses its peer and exits 1: the message names node 2."""
    fake_k8s.outcome, fake_k8s.failed_node = "Failed", 2
    with pytest.raises(TrainingJobFailed, match=re.escape(f"pod {NAME}-node-0-2-x2k2p: container OOMKilled with "
                                                          "exit code 137")):
        run_training_job(cluster_config(nodes=3), RUN_ID, TRAIN_YAML, {})


def test_sigterm_deletes_the_job_and_restores_the_handler(fake_k8s):
    fake_k8s.interrupt = True
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        run_training_job(cluster_config(nodes=2), RUN_ID, TRAIN_YAML, {})
    assert fake_k8s.deleted == [NAME]
    assert signal.getsignal(signal.SIGTERM) is before


def test_exit_handler_deletes_the_trainjob_of_a_failed_run(fake_k8s, tmp_path, capsys):
    """components.run.finalize_runs as the pipeline's exit handler runs it: with the compiled config, reading the config
    resolve-config wrote for the run (MLflow on a SQLite store)."""
    from components.run.finalize_runs import run_step
    from components.run.resolve_config import run_step as resolve_config

    tracking = f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"
    on_cluster = cluster_config(tracking, nodes=2)  # the jobs' volume is mounted at /storage
    other = build_trainjob_manifest(on_cluster, "other-run", Path("/storage/output/other-run/train.yaml"), {})
    with fake_k8s.lock:
        fake_k8s.add_job(manifest_for(on_cluster))
        fake_k8s.add_job(other)
    config = cluster_config(tracking, f"storage.mount_path={tmp_path / 'storage'}", nodes=2).model_dump_json()
    # A run without a resolved config opened no MLflow run; its job is deleted all the same (the compiled config and
    # the run id find it), whatever the volume holds.
    assert "no MLflow run to close" in run_step(config, RUN_ID, "FAILED")["note"] and fake_k8s.deleted == [NAME]
    with fake_k8s.lock:
        fake_k8s.deleted.clear()
        fake_k8s.add_job(manifest_for(on_cluster))
    resolve_config(kfp_run_id=RUN_ID, kfp_run_name="", compiled_config=config, config="", overrides=[], form={})
    assert "training_job_deleted" not in run_step(config, RUN_ID, "SUCCEEDED")
    assert fake_k8s.deleted == []  # a succeeded run keeps its job
    summary = run_step(config, RUN_ID, "FAILED", "train failed")
    assert summary["training_job_deleted"] is True
    assert fake_k8s.deleted == [NAME] and "train-other-run" in fake_k8s.jobs
    assert f"[trainjob] deleted {NAMESPACE}/{NAME}" in capsys.readouterr().out
    assert run_step(config, RUN_ID, "CANCELED")["training_job_deleted"] is False



def test_the_exit_handler_frees_the_gpus_though_mlflow_fails(fake_k8s, tmp_path, capsys):
    """A pod lost without SIGTERM leaves its TrainJob; the exit handler deletes it first, with the compiled config
    and the run id, before and whatever MLflow does (here its store cannot even be opened), then reports the MLflow
    failure: every failure named, none stopping the rest."""
    from components.run.finalize_runs import FinalizeError, run_step
    from components.run.resolve_config import run_step as resolve_config

    (tmp_path / "afile").write_text("not a directory")
    broken = f"mlflow.tracking_uri=sqlite:///{tmp_path / 'afile' / 'mlflow.db'}"
    with fake_k8s.lock:
        fake_k8s.add_job(manifest_for(cluster_config(nodes=2)))
    config = cluster_config(broken, f"storage.mount_path={tmp_path / 'storage'}", nodes=2).model_dump_json()
    resolve_config(kfp_run_id=RUN_ID, kfp_run_name="", compiled_config=config, config="", overrides=[], form={})
    with pytest.raises(FinalizeError) as failed:
        run_step(config, RUN_ID, "FAILED", "train: pod lost")
    assert fake_k8s.deleted == [NAME]
    assert "closing the MLflow runs" in str(failed.value) and "afile" in str(failed.value)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["finalize"]["training_job_deleted"] is True and len(summary["finalize"]["failures"]) == 1


def test_a_damaged_resolved_config_still_ends_the_mlflow_runs_and_deletes_the_job(fake_k8s, tmp_path):
    from mlflow.tracking import MlflowClient

    from components.common.pipeline_runs import step_run
    from components.common.storage import run_dir
    from components.run.finalize_runs import FinalizeError, run_step
    from components.run.resolve_config import RESOLVED_FILE
    from components.run.resolve_config import run_step as resolve_config

    tracking = f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = cluster_config(tracking, f"storage.mount_path={tmp_path / 'storage'}", nodes=2)
    config = cfg.model_dump_json()
    with fake_k8s.lock:
        fake_k8s.add_job(manifest_for(cluster_config(nodes=2)))  # the job's volume is mounted at /storage
    resolve_config(kfp_run_id=RUN_ID, kfp_run_name="", compiled_config=config, config="", overrides=[],
                   form={"g_mlflow_experiment": "chosen-at-run-time"})
    with step_run(load_config("lora", overrides=[tracking, "mlflow.experiment=chosen-at-run-time"]), RUN_ID,
                  "train"):
        pass  # the parent run is open; the train step's run ended
    resolved = run_dir(cfg, RUN_ID) / RESOLVED_FILE
    data = json.loads(resolved.read_text())
    data["training"]["learning_rate"] = "fast"  # damaged, its mlflow section intact
    resolved.write_text(json.dumps(data))

    with pytest.raises(FinalizeError, match=rf"(?s){RESOLVED_FILE}.*training.learning_rate"):
        run_step(config, RUN_ID, "FAILED", "train failed")
    assert fake_k8s.deleted == [NAME]
    client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name("chosen-at-run-time")
    runs = client.search_runs([experiment.experiment_id])
    assert runs and not [run for run in runs if run.info.status == "RUNNING"]


def test_a_missing_runtime_is_named_before_anything_is_created(fake_k8s):
    with pytest.raises(TrainingJobError, match=re.escape(
            "ClusterTrainingRuntime torch-cuda does not exist (or Kubeflow Trainer v2 is not installed): "
            "`kubectl get clustertrainingruntimes` lists the runtimes there; set cluster.training_runtime")):
        run_training_job(cluster_config(nodes=2, training_runtime="torch-cuda"), RUN_ID, TRAIN_YAML, {})
    assert fake_k8s.created == []


def test_a_runtime_that_is_not_torch_is_refused(fake_k8s):
    with fake_k8s.lock:
        fake_k8s.runtimes["mpi-distributed"] = {"metadata": {"name": "mpi-distributed"}, "spec": {
            "mlPolicy": {"mpi": {}},
            "template": {"spec": {"replicatedJobs": [{"name": "launcher"}, {"name": "node"}]}}}}
    with pytest.raises(TrainingJobError, match="mpi-distributed is not a torch runtime"):
        run_training_job(cluster_config(nodes=2, training_runtime="mpi-distributed"), RUN_ID, TRAIN_YAML, {})
    assert fake_k8s.created == []


def test_a_missing_service_account_is_named_and_a_token_mounting_one_noted(fake_k8s, capsys):
    with pytest.raises(TrainingJobError, match=re.escape(
            f"ServiceAccount nobody does not exist in namespace {NAMESPACE}: apply deploy/rbac.yaml")):
        run_training_job(cluster_config(nodes=2, trainer_service_account="nobody"), RUN_ID, TRAIN_YAML, {})
    assert fake_k8s.created == []
    with fake_k8s.lock:
        fake_k8s.service_accounts["default"] = {"metadata": {"name": "default", "namespace": NAMESPACE}}
    run_training_job(cluster_config(nodes=2, trainer_service_account="default"), RUN_ID, TRAIN_YAML, {})
    assert "ServiceAccount default mounts an API token in the training pods" in capsys.readouterr().out


def test_checks_that_rbac_refuses_are_skipped_with_a_note(fake_k8s, capsys):
    fake_k8s.fail["GET runtime"] = 403
    run_training_job(cluster_config(nodes=2), RUN_ID, TRAIN_YAML, {})
    output = capsys.readouterr().out
    assert "[trainjob] not checking ClusterTrainingRuntime torch-distributed: HTTP 403" in output
    assert f"{NAME} succeeded" in output


def test_an_admission_webhooks_verdict_is_shown_not_blamed_on_rbac(fake_k8s):
    verdict = ('admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request: '
               "spec.trainer.numProcPerNode: Invalid value")
    fake_k8s.fail["POST job"] = (403, verdict)
    with pytest.raises(TrainingJobError, match=re.escape(f"was rejected: {verdict}")) as refused:
        run_training_job(cluster_config(nodes=2), RUN_ID, TRAIN_YAML, {})
    assert "deploy/rbac.yaml" not in str(refused.value)


def test_refused_request_names_the_rbac_fix(fake_k8s):
    fake_k8s.fail["POST job"] = 403
    with pytest.raises(TrainingJobError, match=r"refused \(HTTP 403\).*trainjobs create/get/list/watch/delete"):
        run_training_job(cluster_config(nodes=2), RUN_ID, TRAIN_YAML, {})
    assert fake_k8s.created == []


def test_a_cluster_without_trainer_v2_names_both_ways_out(fake_k8s):
    fake_k8s.fail["GET runtime"] = 403  # the runtime check cannot tell; creating the job can
    fake_k8s.fail["POST job"] = (404, "the server could not find the requested resource")
    with pytest.raises(TrainingJobError, match=re.escape(
            "trainer.kubeflow.org/v1alpha1 trainjobs is not served in this cluster; install Kubeflow Trainer v2 "
            "(kubectl get crd trainjobs.trainer.kubeflow.org), or set cluster.training_engine=pytorchjob")):
        run_training_job(cluster_config(nodes=2), RUN_ID, TRAIN_YAML, {})


def test_a_trainer_older_than_v2_2_is_caught_and_its_job_deleted(fake_k8s):
    """Trainer v2.0 and v2.1 have podTemplateOverrides, not runtimePatches: their CRD prunes our patch, and
    the nodes would run without the PVC."""
    fake_k8s.prune = {"runtimePatches"}
    with pytest.raises(TrainingJobError, match=re.escape(
            "API dropped spec.runtimePatches, so its CRD is older than Kubeflow Trainer v2.2")):
        run_training_job(cluster_config(nodes=2), RUN_ID, TRAIN_YAML, {})
    assert fake_k8s.deleted == [NAME]


def test_each_trial_of_a_sweep_is_its_own_job_and_all_are_deleted_with_the_run(fake_k8s, capsys):
    cfg = cluster_config(nodes=2)
    run_training_job(cfg, RUN_ID, TRAIN_YAML, {}, trial="trial-1")
    trial_job = job_name(RUN_ID, "trial-1")
    assert [job["metadata"]["name"] for job in fake_k8s.created] == [trial_job] and trial_job != NAME
    assert fake_k8s.created[0]["metadata"]["labels"]["kfp.run_id"] == RUN_ID  # found by the run's label
    assert f"[trainjob] {NAMESPACE}/{trial_job} succeeded" in capsys.readouterr().out
    with fake_k8s.lock:
        fake_k8s.add_job(manifest_for(cfg))  # another trial's job of the same run
    assert delete_training_job(cfg, RUN_ID) is True
    assert sorted(fake_k8s.deleted) == sorted([NAME, trial_job])


def test_delete_finds_the_run_by_label_and_leaves_other_runs(fake_k8s, capsys):
    cfg = cluster_config(nodes=2)
    with fake_k8s.lock:
        fake_k8s.add_job(manifest_for(cfg))
        fake_k8s.add_job(build_trainjob_manifest(cfg, "other-run", Path("/storage/output/o/t.yaml"), {}))
    assert delete_training_job(cfg, RUN_ID) is True
    assert fake_k8s.deleted == [NAME] and "train-other-run" in fake_k8s.jobs
    assert delete_training_job(cfg, RUN_ID) is False
