"""components.train.multinode: the pytorchjob engine (with training_job, engine and pods) and the node launcher,
multi-node training on the Training Operator v1 (``cluster.training_engine: pytorchjob``).

No Kubernetes cluster can run here, so two stand-ins are used, and only these:
- the PyTorchJob manifest is checked against the Training Operator's own SDK models
  (kubeflow-training) and its pod templates against the Kubernetes OpenAPI schema
  (kubernetes-validate, strict);
- submit/follow/delete talk through the real ``kubernetes`` client to ``FakeKubernetes``
  (tests/fake_kubernetes.py), a loopback HTTP server that implements the few API endpoints used
  (create/get/list/watch/delete pytorchjobs, list pods, pod log) and plays the operator's part.
The replica entry point really execs; its interpreter path points at a stub that records what it got
(a real torchrun would wait for the job's other nodes), and torchrun's own parser reads the arguments.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
from builders import REPO_ROOT
from fake_kubernetes import NAMESPACE, PYTORCHJOB, FakeKubernetes, expected_lines, lead_lines, serve
from hypothesis import given, settings
from hypothesis import strategies as st

from components.train import multinode
from components.train.multinode import engine, job_spec, training_job
from components.train.multinode.engine import TrainingJobError, TrainingJobFailed
from components.train.multinode.job_spec import job_name, run_label
from components.train.multinode.launch import LaunchEnvError, map_operator_env
from components.train.multinode.launch import main as launch_main
from components.train.multinode.pytorchjob import build_pytorchjob_manifest
from components.train.multinode.training_job import delete_training_job, run_training_job
from configs.loading import load_config

RUN_ID = "0f3c2a9e-1b2c-4d5e-8f90-123456789abc"
TRAIN_YAML = Path(f"/storage/output/{RUN_ID}/train.yaml")
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def cluster_config(**cluster):
    overrides = [f"cluster.{key}={json.dumps(value)}" for key, value in {"training_engine": "pytorchjob",
                                                                          **cluster}.items()]
    return load_config("lora", overrides=overrides)


# --------------------------------------------------------------------------- the manifest


def test_manifest_round_trips_through_the_training_operator_sdk_models():
    """Every field is one the operator's API knows: the SDK models drop unknown keys, so a round trip
    through them returns the manifest unchanged only when each key is right (and required ones are set)."""
    from kubeflow.training.api_client import ApiClient

    cfg = cluster_config(nodes=3, accelerator_count=8, image_pull_secrets=["regcred"])
    manifest = json.loads(json.dumps(build_pytorchjob_manifest(cfg, RUN_ID, TRAIN_YAML, {"MLFLOW_RUN_ID": "r1"})))
    api = ApiClient()
    model = api.deserialize(types.SimpleNamespace(data=json.dumps(manifest)), "KubeflowOrgV1PyTorchJob")
    assert api.sanitize_for_serialization(model) == manifest
    # The check has teeth: one misspelt key and the round trip differs.
    broken = json.loads(json.dumps(manifest))
    broken["spec"]["runPolicy"]["cleanPodPolicies"] = broken["spec"]["runPolicy"].pop("cleanPodPolicy")
    model = api.deserialize(types.SimpleNamespace(data=json.dumps(broken)), "KubeflowOrgV1PyTorchJob")
    assert api.sanitize_for_serialization(model) != broken


@pytest.mark.parametrize("version", ["1.29", "latest"])
def test_pod_templates_validate_against_the_kubernetes_schema(version):
    import kubernetes_validate

    version = kubernetes_validate.utils.latest_version() if version == "latest" else version
    cfg = cluster_config(nodes=2, image_pull_secrets=["regcred"])
    manifest = build_pytorchjob_manifest(cfg, RUN_ID, TRAIN_YAML, {"MLFLOW_RUN_ID": "r1"})
    for role, replica in manifest["spec"]["pytorchReplicaSpecs"].items():
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role.lower()},
                   "template": replica["template"]}
        kubernetes_validate.validate(wrapped, version, strict=True)
    assert manifest["spec"]["runPolicy"]["cleanPodPolicy"] in ("None", "Running", "All")
    assert {replica["restartPolicy"] for replica in manifest["spec"]["pytorchReplicaSpecs"].values()} <= {
        "Always", "OnFailure", "Never", "ExitCode"}


def test_manifest_carries_every_scheduling_setting():
    cfg = cluster_config(
        nodes=4, accelerator_count=8, accelerator_type="nvidia.com/gpu", cpu_request="16", memory_request="200Gi",
        memory_limit="400Gi", shm_size="64Gi", image="registry.example/llm:1.2", image_pull_secrets=["regcred"],
        gpu_node_selector={"gpu.type": "h100"}, train_timeout_s=7200,
        gpu_tolerations=[{"key": "dedicated", "operator": "Equal", "value": "train", "effect": "NoSchedule"}],
    )
    manifest = build_pytorchjob_manifest(cfg, RUN_ID, TRAIN_YAML, {"MLFLOW_RUN_ID": "r1", "NCCL_DEBUG": "INFO"})
    assert manifest["apiVersion"] == "kubeflow.org/v1" and manifest["kind"] == "PyTorchJob"
    assert manifest["metadata"]["name"] == f"train-{RUN_ID}"
    assert manifest["metadata"]["labels"]["kfp.run_id"] == RUN_ID
    spec = manifest["spec"]
    assert spec["nprocPerNode"] == "8"
    assert spec["runPolicy"]["activeDeadlineSeconds"] == 7200
    replicas = spec["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 3
    for replica in replicas.values():
        pod = replica["template"]["spec"]
        assert replica["template"]["metadata"]["labels"]["kfp.run_id"] == RUN_ID
        assert pod["nodeSelector"] == {"gpu.type": "h100"}
        assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "train",
                                       "effect": "NoSchedule"}]
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert pod["automountServiceAccountToken"] is False
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        assert volumes["storage"]["persistentVolumeClaim"] == {"claimName": "llama-storage"}
        assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
        (container,) = pod["containers"]
        assert container["name"] == "pytorch" and container["image"] == "registry.example/llm:1.2"
        assert container["command"] == ["python", "-m", "components.train.multinode.launch", "--gpus-per-node", "8",
                                        str(TRAIN_YAML)]
        assert container["ports"] == [{"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"}]
        assert container["resources"] == {
            "requests": {"cpu": "16", "memory": "200Gi", "nvidia.com/gpu": "8"},
            "limits": {"memory": "400Gi", "nvidia.com/gpu": "8"},
        }
        mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
        assert mounts == {"storage": "/storage", "dshm": "/dev/shm"}
        env = {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}
        assert env["MLFLOW_TRACKING_URI"] == cfg.mlflow.tracking_uri
        assert env["MLFLOW_RUN_ID"] == "r1" and env["NCCL_DEBUG"] == "INFO"
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
            assert env[key] == {"secretKeyRef": {"name": "mlflow-config", "key": key, "optional": True}}


def test_single_node_job_has_no_workers_and_no_secret_when_none_is_configured():
    cfg = load_config("lora", overrides=["cluster.nodes=1", "mlflow.credentials_secret="])
    manifest = build_pytorchjob_manifest(cfg, RUN_ID, TRAIN_YAML, {})
    assert list(manifest["spec"]["pytorchReplicaSpecs"]) == ["Master"]
    (container,) = manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    assert all("valueFrom" not in item for item in container["env"])


@pytest.mark.parametrize(("train_yaml", "env", "overrides", "message"), [
    ("/tmp/train.yaml", {}, [], "not on the storage volume"),
    ("/storage/../etc/train.yaml", {}, [], "not on the storage volume"),
    ("output/train.yaml", {}, [], "not on the storage volume"),
    (str(TRAIN_YAML), {"RANK": "0"}, [], "env: RANK is set by the training engine"),
    (str(TRAIN_YAML), {"PET_NNODES": "2"}, [], "env: PET_NNODES"),
    (str(TRAIN_YAML), {"BAD-NAME": "x"}, [], "env: 'BAD-NAME' is not a valid"),
    ("storage/train.yaml", {}, ["storage.mount_path=./storage"], "storage.mount_path must be an absolute path"),
])
def test_manifest_refuses_bad_inputs_naming_the_field(train_yaml, env, overrides, message):
    cfg = load_config("lora", overrides=["cluster.nodes=2", *overrides])
    with pytest.raises(ValueError, match=re.escape(message)):
        build_pytorchjob_manifest(cfg, RUN_ID, Path(train_yaml), env)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=120), st.text(min_size=1, max_size=120))
def test_job_names_and_labels_are_valid_and_distinct(first, second):
    for run_id in (first, second):
        name = job_name(run_id)
        assert DNS_1123_LABEL.match(name) and len(name) <= job_spec.JOB_NAME_MAX, name
        assert name[0].isalpha()  # operator Service names are DNS-1035 labels
        assert re.fullmatch(r"([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)", run_label(run_id)), run_label(run_id)
    if first != second:
        assert job_name(first) != job_name(second)
        assert run_label(first) != run_label(second)


# --------------------------------------------------------------------------- the replica's environment


OPERATOR_1_7_WORKER = {  # what the operator (>= 1.7) sets in worker 1 of a 3-node job with nprocPerNode 8
    "MASTER_ADDR": "train-x-master-0", "MASTER_PORT": "23456", "WORLD_SIZE": "24", "RANK": "2",
    "PET_MASTER_ADDR": "train-x-master-0", "PET_MASTER_PORT": "23456", "PET_NNODES": "3", "PET_NODE_RANK": "2",
    "PET_NPROC_PER_NODE": "8", "PYTHONUNBUFFERED": "1",
}


def test_map_operator_env_from_operator_1_7():
    assert map_operator_env(OPERATOR_1_7_WORKER, gpus_per_node=8) == {
        "NNODES": "3", "NODE_RANK": "2", "MASTER_ADDR": "train-x-master-0", "MASTER_PORT": "23456",
        "NPROC_PER_NODE": "8",
    }


def test_map_operator_env_prefers_pet_variables_and_handles_older_operators():
    # Before 1.7: WORLD_SIZE counts replicas (nodes) and RANK is the node index.
    old = {"MASTER_ADDR": "m", "MASTER_PORT": "23456", "WORLD_SIZE": "4", "RANK": "0"}
    assert map_operator_env(old, gpus_per_node=2) | {} == {
        "NNODES": "4", "NODE_RANK": "0", "MASTER_ADDR": "m", "MASTER_PORT": "23456", "NPROC_PER_NODE": "2"}
    # 1.7 without PET_NNODES: WORLD_SIZE is nodes x nprocPerNode.
    assert map_operator_env({**old, "WORLD_SIZE": "8", "PET_NPROC_PER_NODE": "2"}, 2)["NNODES"] == "4"
    # PET_* wins over the plain names.
    mixed = {**old, "PET_MASTER_ADDR": "pet-master", "PET_MASTER_PORT": "29500", "PET_NODE_RANK": "3"}
    mapped = map_operator_env(mixed, gpus_per_node=0)
    assert (mapped["MASTER_ADDR"], mapped["MASTER_PORT"], mapped["NODE_RANK"]) == ("pet-master", "29500", "3")
    assert mapped["NPROC_PER_NODE"] == "1"  # a CPU node still runs one process


@pytest.mark.parametrize(("change", "message"), [
    ({"PET_NODE_RANK": "", "RANK": ""}, "neither PET_NODE_RANK nor RANK"),
    ({"PET_NNODES": "", "WORLD_SIZE": ""}, "neither PET_NNODES nor WORLD_SIZE"),
    ({"PET_MASTER_ADDR": "", "MASTER_ADDR": ""}, "neither PET_MASTER_ADDR nor MASTER_ADDR"),
    ({"PET_MASTER_PORT": "", "MASTER_PORT": ""}, "neither PET_MASTER_PORT nor MASTER_PORT"),
    ({"PET_NODE_RANK": "3"}, "PET_NODE_RANK=3 is not below the node count 3"),
    ({"PET_NNODES": "1:4"}, "PET_NNODES='1:4' is an elastic range"),
    ({"PET_MASTER_PORT": "70000"}, "PET_MASTER_PORT=70000 is not a TCP port"),
    ({"PET_NNODES": "three"}, "PET_NNODES='three' is not an integer"),
    ({"PET_NNODES": "", "WORLD_SIZE": "25"}, "WORLD_SIZE=25 is not a multiple of PET_NPROC_PER_NODE=8"),
])
def test_map_operator_env_names_the_bad_variable(change, message):
    with pytest.raises(LaunchEnvError, match=re.escape(message)):
        map_operator_env({**OPERATOR_1_7_WORKER, **change}, gpus_per_node=8)


def test_launcher_execs_torchrun_with_the_trainer_worker(tmp_path):
    """Runs the entry point as the pod does, except that the interpreter it execs (its ``sys.executable``) is a
    stub that records its argv and environment: a real torchrun would wait for the job's other nodes. The
    recorded arguments then go through torchrun's own parser."""
    from torch.distributed.run import get_args_parser

    from components.train.launch import trainer_command

    record = tmp_path / "record.json"
    stub = tmp_path / "bin" / "python"
    stub.parent.mkdir()
    stub.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"json.dump({{'argv': sys.argv[1:], 'env': dict(os.environ)}}, open({str(record)!r}, 'w'))\n")
    stub.chmod(0o755)
    train_yaml = tmp_path / "train.yaml"
    train_yaml.write_text("stage: sft\n")
    env = {**os.environ, **OPERATOR_1_7_WORKER, "MLFLOW_RUN_ID": "abc123"}
    env.pop("PYTHONPATH", None)
    entry = (f"import sys; sys.executable = {str(stub)!r}; from components.train.multinode.launch import main; "
             "raise SystemExit(main())")
    command = [sys.executable, "-c", entry, "--gpus-per-node", "8", str(train_yaml)]
    done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "node 2 of 3, 8 process(es), master train-x-master-0:23456" in done.stdout
    seen = json.loads(record.read_text())

    assert seen["argv"][:2] == ["-m", "torch.distributed.run"]
    torchrun = get_args_parser().parse_args(seen["argv"][2:])
    assert (torchrun.nnodes, torchrun.node_rank, torchrun.nproc_per_node) == ("3", 2, "8")
    assert (torchrun.master_addr, torchrun.master_port) == ("train-x-master-0", 23456)
    assert torchrun.rdzv_backend == "static" and torchrun.max_restarts == 0  # the KFP retry is the retry layer
    # Each process runs the single-node step's own worker (rank 0 attaches to the step's MLflow run).
    assert torchrun.module and torchrun.training_script == "components.train.worker"
    assert torchrun.training_script_args == [str(train_yaml)]
    assert seen["argv"][-3:] == trainer_command(load_config("lora"), True, train_yaml)[1:]
    assert seen["env"]["MLFLOW_RUN_ID"] == "abc123" and seen["env"]["PET_NODE_RANK"] == "2"
    assert seen["env"]["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert seen["env"]["TORCH_NCCL_AVOID_RECORD_STREAMS"] == "1"
    # The worker module resolves to this checkout from any working directory.
    found = subprocess.run([sys.executable, "-c", "import importlib.util; print(importlib.util.find_spec("
                            "'components.train.worker').origin)"], env={**env, "PYTHONPATH": seen["env"]["PYTHONPATH"]},
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert found.stdout.strip() == str(REPO_ROOT / "components" / "train" / "worker.py"), found.stderr

    record.unlink()
    missing = subprocess.run([*command[:-1], str(tmp_path / "absent.yaml")], env=env, cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "absent.yaml does not exist" in missing.stderr
    assert not record.exists()


def test_launcher_cli_exit_codes(tmp_path, monkeypatch, capsys):
    for key, value in OPERATOR_1_7_WORKER.items():
        monkeypatch.setenv(key, value)
    assert launch_main(["--gpus-per-node", "8", str(tmp_path / "t.yaml"), "--dry-run"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["node"]["NODE_RANK"] == "2" and shown["command"][1:3] == ["-m", "torch.distributed.run"]
    assert shown["command"][-3:] == ["-m", "components.train.worker", str(tmp_path / "t.yaml")]
    assert shown["env"]["TORCH_NCCL_AVOID_RECORD_STREAMS"] == "1"
    monkeypatch.setenv("PET_NODE_RANK", "9")
    assert launch_main(["--gpus-per-node", "8", str(tmp_path / "t.yaml")]) == 1
    assert "PET_NODE_RANK=9 is not below the node count 3" in capsys.readouterr().err
    assert launch_main(["--gpus-per-node"]) == 2


# --------------------------------------------------------------------------- against the loopback Kubernetes API


@pytest.fixture
def fake_k8s(tmp_path, monkeypatch):
    """A FakeKubernetes playing the Training Operator, and a kubeconfig pointing the real client at it."""
    yield from serve(FakeKubernetes(PYTORCHJOB), tmp_path, monkeypatch)


def master_lines(output: str) -> list[str]:
    return lead_lines(output, "master")


def test_successful_job_streams_the_master_log_once(fake_k8s, capsys):
    cfg = cluster_config(nodes=2, accelerator_count=4)
    run_training_job(cfg, RUN_ID, TRAIN_YAML, {"MLFLOW_RUN_ID": "r1"})
    output = capsys.readouterr().out
    assert master_lines(output) == expected_lines(fake_k8s)
    assert "not scheduled: Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu." in output
    assert f"{NAMESPACE}/train-{RUN_ID} succeeded" in output
    assert fake_k8s.created == [json.loads(json.dumps(build_pytorchjob_manifest(cfg, RUN_ID, TRAIN_YAML,
                                                                                {"MLFLOW_RUN_ID": "r1"})))]
    assert fake_k8s.deleted == []  # a finished job stays for inspection (ttlSecondsAfterFinished cleans up)
    assert fake_k8s.auth == {"Bearer test-token"}
    assert fake_k8s.log_requests[0]["container"] == "pytorch"


def test_failed_job_fails_the_step_with_the_reason_and_is_deleted(fake_k8s, capsys):
    fake_k8s.outcome = "Failed"
    with pytest.raises(TrainingJobFailed) as failure:
        run_training_job(cluster_config(nodes=2), RUN_ID, TRAIN_YAML, {})
    message = str(failure.value)
    assert f"PyTorchJob {NAMESPACE}/train-{RUN_ID} failed: PyTorchJobFailed" in message
    assert "1 Master replica(s) failed" in message
    assert f"pod train-{RUN_ID}-master-0: container OOMKilled with exit code 137" in message
    assert fake_k8s.deleted == [f"train-{RUN_ID}"]
    assert master_lines(capsys.readouterr().out) == expected_lines(fake_k8s)  # the log made it before the error


def test_dropped_log_stream_resumes_without_repeating_lines(fake_k8s, capsys):
    fake_k8s.drop_log_after = 1
    run_training_job(cluster_config(nodes=2), RUN_ID, TRAIN_YAML, {})
    assert master_lines(capsys.readouterr().out) == expected_lines(fake_k8s)
    assert len(fake_k8s.log_requests) >= 2
    assert "sinceSeconds" not in fake_k8s.log_requests[0] and int(fake_k8s.log_requests[1]["sinceSeconds"]) > 0


def test_sigterm_deletes_the_job_and_restores_the_handler(fake_k8s):
    fake_k8s.interrupt = True
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        run_training_job(cluster_config(nodes=2), RUN_ID, TRAIN_YAML, {})
    assert fake_k8s.deleted == [f"train-{RUN_ID}"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_retry_replaces_a_failed_job_of_an_earlier_attempt(fake_k8s, capsys):
    cfg = cluster_config(nodes=2)
    with fake_k8s.lock:
        fake_k8s.add_job(build_pytorchjob_manifest(cfg, RUN_ID, TRAIN_YAML, {}),
                         [{"type": "Failed", "status": "True", "reason": "PyTorchJobFailed"}])
    run_training_job(cfg, RUN_ID, TRAIN_YAML, {})
    assert fake_k8s.deleted == [f"train-{RUN_ID}"] and len(fake_k8s.created) == 1
    output = capsys.readouterr().out
    assert "replacing the failed" in output and f"train-{RUN_ID} succeeded" in output


def test_retry_follows_a_job_still_running_from_an_earlier_attempt(fake_k8s, capsys):
    cfg = cluster_config(nodes=2)
    with fake_k8s.lock:
        fake_k8s.add_job(build_pytorchjob_manifest(cfg, RUN_ID, TRAIN_YAML, {}),
                         [{"type": "Created", "status": "True", "reason": "PyTorchJobCreated"}])
    run_training_job(cfg, RUN_ID, TRAIN_YAML, {})
    assert fake_k8s.created == [] and fake_k8s.deleted == []
    output = capsys.readouterr().out
    assert "exists from an earlier attempt (Created); following it" in output
    assert master_lines(output) == expected_lines(fake_k8s)


def test_transient_api_errors_are_retried(fake_k8s, monkeypatch):
    monkeypatch.setattr(training_job, "API_RETRY_BACKOFF_S", 0.0)
    fake_k8s.fail["GET job"] = 503
    run_training_job(cluster_config(nodes=2), RUN_ID, TRAIN_YAML, {})
    assert fake_k8s.deleted == []


def test_refused_request_names_the_rbac_fix(fake_k8s):
    fake_k8s.fail["POST job"] = 403
    with pytest.raises(TrainingJobError, match=r"refused \(HTTP 403\).*pods/log get \(deploy/rbac.yaml\)"):
        run_training_job(cluster_config(nodes=2), RUN_ID, TRAIN_YAML, {})
    assert fake_k8s.created == []


def test_delete_pytorchjob_finds_the_run_by_label(fake_k8s, capsys):
    cfg = cluster_config(nodes=2)
    with fake_k8s.lock:
        fake_k8s.add_job(build_pytorchjob_manifest(cfg, RUN_ID, TRAIN_YAML, {}),
                         [{"type": "Running", "status": "True"}])
        fake_k8s.add_job(build_pytorchjob_manifest(cfg, "other-run", Path("/storage/output/o/t.yaml"), {}),
                         [{"type": "Running", "status": "True"}])
    assert delete_training_job(cfg, RUN_ID) is True
    assert fake_k8s.deleted == [f"train-{RUN_ID}"] and "train-other-run" in fake_k8s.jobs
    assert delete_training_job(cfg, RUN_ID) is False
    assert f"deleted {NAMESPACE}/train-{RUN_ID}" in capsys.readouterr().out


def test_no_namespace_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.setattr(engine, "SA_NAMESPACE_FILE", "/nonexistent/namespace")
    with pytest.raises(TrainingJobError, match="set POD_NAMESPACE"):
        delete_training_job(cluster_config(nodes=2), RUN_ID)


def test_importing_the_modules_stays_light():
    modules = ", ".join(f"components.train.multinode.{name}" for name in multinode.__all__)
    code = (f"import sys, {modules}; "
            "print(sorted(m for m in ('kubernetes', 'torch', 'mlflow', 'llamafactory') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
