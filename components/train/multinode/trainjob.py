"""The ``trainjob`` training engine: a Kubeflow Trainer v2 TrainJob (``trainer.kubeflow.org/v1alpha1``).

The default engine (``cluster.training_engine: trainjob``). The TrainJob runs on the ClusterTrainingRuntime
``cluster.training_runtime`` (``torch-distributed`` ships with Trainer v2): the runtime supplies the JobSet
of ``cluster.nodes`` pods and the torch variables (``PET_NNODES``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``,
``PET_MASTER_PORT``, ``PET_NPROC_PER_NODE``) that :mod:`.launch` maps to torchrun.

What goes where (Trainer v2.2 API):

- ``spec.trainer``: image, command, environment, node count, processes and resources per node;
- ``spec.runtimePatches`` (v2.2 replaced ``podTemplateOverrides``; one patch owned by the manager
  :data:`PATCH_MANAGER`) on the runtime's ``node`` job: pod labels, the PVC and ``/dev/shm`` volumes and
  their mounts, node selector, tolerations, pull secrets and the service account. A patch cannot set
  ``automountServiceAccountToken``, so the pods run as ``cluster.trainer_service_account``, an account
  that mounts no token (``deploy/rbac.yaml``);
- ``metadata.labels``: the run (``kfp.run_id``) and, when set, Kueue's queue and priority class (Kueue
  keeps the job suspended until the queue admits it).

Before creating the job, :func:`check_cluster` makes sure the runtime and the service account exist.
:mod:`.training_job` submits, follows and deletes it, streaming node 0's log (``[node-0] ...``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.common.logs import step_logger
from components.train.multinode.engine import (
    REQUEST_TIMEOUT,
    JobEngine,
    TrainingJobError,
    is_transient,
    server_message,
)
from components.train.multinode.job_spec import job_metadata, node_pod
from configs.schema import PipelineConfig

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
RUNTIME_KIND, RUNTIME_PLURAL = "ClusterTrainingRuntime", "clustertrainingruntimes"
# The replicated job, and its container, that the torch runtimes run the trainer in.
NODE = "node"
PATCH_MANAGER = "llm-finetune-pipelines/train"
log = step_logger(KIND.lower())  # [trainjob] ...: the engine's tag

def build_trainjob_manifest(cfg: PipelineConfig, kfp_run_id: str, train_yaml: Path, env: dict[str, str]) -> dict:
    """The ``trainer.kubeflow.org/v1alpha1`` TrainJob that trains this run on ``cluster.nodes`` nodes.

    The trainer settings and one runtime patch make each node the pod of :func:`.job_spec.node_pod`
    (whose arguments and errors these are); the job also reads cluster.nodes, training_runtime,
    trainer_service_account, train_timeout_s, kueue_queue_name and kueue_priority_class.

    Returns:
        The manifest as a plain dict (JSON-ready).

    Raises:
        ValueError: a ``train_yaml`` off the storage volume, or an ``env`` variable that is invalid or
            that the runtime sets (``PET_*``).
    """
    cluster, node = cfg.cluster, node_pod(cfg, kfp_run_id, train_yaml, env)
    # Env cannot be patched on the trainer container: it comes from spec.trainer.env.
    pod_spec: dict[str, Any] = {**node.scheduling, "volumes": node.volumes,
                                "containers": [{"name": NODE, "volumeMounts": node.mounts}]}
    if cluster.trainer_service_account:
        pod_spec["serviceAccountName"] = cluster.trainer_service_account
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": job_metadata(cfg, kfp_run_id),
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": RUNTIME_KIND, "name": cluster.training_runtime},
            "activeDeadlineSeconds": cluster.train_timeout_s,
            "trainer": {
                "image": node.image,
                "command": node.command,
                "env": node.env,
                "numNodes": cluster.nodes,
                "numProcPerNode": max(1, cluster.accelerator_count),
                "resourcesPerNode": node.resources,
            },
            "runtimePatches": [{
                "manager": PATCH_MANAGER,
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
                    {"name": NODE, "template": {"spec": {"template": {"metadata": node.metadata, "spec": pod_spec}}}},
                ]}}},
            }],
        },
    }


def _read(what: str, read: Any) -> dict | None:
    """One preflight read: the object, or None when it does not exist (404); a refused or failed read is
    said in the log and skips the check (the job itself may still work)."""
    from kubernetes.client.exceptions import ApiException

    try:
        found = read()
    except ApiException as exc:
        if exc.status == 404:
            return None
        log.info(f"not checking {what}: HTTP {exc.status}: {server_message(exc)}")
        return {}
    except Exception as exc:  # the Kubernetes client's errors: anything but a transient one is raised again
        if not is_transient(exc):
            raise
        log.info(f"not checking {what}: {exc}")
        return {}
    return found if isinstance(found, dict) else found.to_dict()


def check_cluster(api: ApiClient, namespace: str, cfg: PipelineConfig) -> None:
    """Before creating the TrainJob: its ClusterTrainingRuntime exists and is a torch runtime with a ``node``
    job, and its service account exists (a note when that account mounts an API token).

    A read that RBAC refuses skips that check with a note (reading ClusterTrainingRuntimes needs the
    ClusterRole in ``deploy/rbac.yaml``, which a namespace admin may not be able to bind).

    Raises:
        TrainingJobError: the runtime or the service account is missing, or the runtime cannot run the
            launcher; the message names the config field to change.
    """
    from kubernetes import client

    runtime_name, account = cfg.cluster.training_runtime, cfg.cluster.trainer_service_account
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    runtime = _read(f"{RUNTIME_KIND} {runtime_name}", lambda: custom.get_cluster_custom_object(
        GROUP, VERSION, RUNTIME_PLURAL, runtime_name, _request_timeout=REQUEST_TIMEOUT))
    if runtime is None:
        raise TrainingJobError(
            f"{RUNTIME_KIND} {runtime_name} does not exist (or Kubeflow Trainer v2 is not installed): "
            f"`kubectl get {RUNTIME_PLURAL}` lists the runtimes there; set cluster.training_runtime to a torch "
            "runtime (Trainer v2 ships torch-distributed), or cluster.training_engine=pytorchjob on a cluster "
            "with the Training Operator v1")
    if runtime:
        spec = runtime.get("spec") or {}
        template = (spec.get("template") or {}).get("spec") or {}
        jobs = [job.get("name") for job in template.get("replicatedJobs") or []]
        if "torch" not in (spec.get("mlPolicy") or {}) or NODE not in jobs:
            raise TrainingJobError(
                f"{RUNTIME_KIND} {runtime_name} is not a torch runtime with a '{NODE}' job (mlPolicy: "
                f"{sorted(spec.get('mlPolicy') or {})}, jobs: {jobs}); the launcher needs the PET_* variables a "
                "torch runtime sets: set cluster.training_runtime to one (e.g. torch-distributed)")
    if not account:
        return
    found = _read(f"ServiceAccount {account}", lambda: core.read_namespaced_service_account(
        account, namespace, _request_timeout=REQUEST_TIMEOUT))
    if found is None:
        raise TrainingJobError(
            f"ServiceAccount {account} does not exist in namespace {namespace}: apply deploy/rbac.yaml "
            "(kubectl apply -k deploy/), or set cluster.trainer_service_account to an account there")
    if found and found.get("automount_service_account_token") is not False:
        log.info(f"note: ServiceAccount {account} mounts an API token in the training pods (set "
                 "automountServiceAccountToken: false on it, as deploy/rbac.yaml does)")


ENGINE = JobEngine(
    kind=KIND, group=GROUP, version=VERSION, plural=PLURAL, lead_name="node-0", container=NODE,
    succeeded="Complete", suspend_path=("spec", "suspend"),
    pods=f"jobset.sigs.k8s.io/jobset-name={{name}},jobset.sigs.k8s.io/replicatedjob-name={NODE}",
    lead="batch.kubernetes.io/job-completion-index=0",
    missing_api="install Kubeflow Trainer v2 (kubectl get crd trainjobs.trainer.kubeflow.org), or set "
                "cluster.training_engine=pytorchjob on a cluster with the Training Operator v1",
    release="Kubeflow Trainer v2.2",
    build=build_trainjob_manifest,
    preflight=check_cluster,
)
