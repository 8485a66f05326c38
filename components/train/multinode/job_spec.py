"""What every node of a multi-node training job gets, whichever engine runs it.

The two manifests (:mod:`.trainjob`, :mod:`.pytorchjob`) are assembled from these
pieces, so that a node of either runs the same command in the same image with the same environment,
resources, volumes and scheduling as a single-node train task:

- the name ``train-<run id>`` and the label ``kfp.run_id`` that tie the job to its pipeline run, plus the
  Kueue queue and priority-class labels when ``cluster.kueue_queue_name`` / ``kueue_priority_class`` are set;
- ``python -m components.train.multinode.launch --gpus-per-node N <train.yaml>`` (the YAML lies on the PVC, where
  every node reads it);
- the step's variables, the MLflow credentials from ``mlflow.credentials_secret`` (each key optional);
- ``cluster.accelerator_count`` GPUs, the CPU and memory requests of a GPU task;
- the PVC at ``storage.mount_path`` and an in-memory ``/dev/shm`` of ``cluster.shm_size``;
- the GPU node selector, tolerations and image pull secrets.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.common.mlflow_client import MLFLOW_SECRET_KEYS
from components.common.storage import hashed_name, run_slug
from components.common.tags import CONFIG_HASH_TAG, KFP_RUN_TAG
from configs.schema import PipelineConfig

RUN_LABEL = KFP_RUN_TAG  # the pipeline run's id as the job's label, named like the MLflow tag
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
# The Training Operator names Services <job>-worker-<i>, and Service names are DNS-1035 labels of at most 63 chars.
JOB_NAME_MAX = 48
# An Istio sidecar (Kubeflow profile namespaces inject one) keeps a finished pod running forever.
POD_ANNOTATIONS = {"sidecar.istio.io/inject": "false"}
# Set by the engine's controller or by multinode_launch; the caller's env must not shadow them.
_RESERVED_ENV = {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK", "NPROC_PER_NODE",
                 "FORCE_TORCHRUN", "LOCAL_RANK"}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def job_name(kfp_run_id: str, trial: str = "") -> str:
    """The job name of a pipeline run: ``train-<run slug>`` (:func:`components.common.storage.run_slug`), a
    DNS-1035 label of at most :data:`JOB_NAME_MAX` characters that no other run shares; a trial of a sweep
    (``trial-N``) adds its label, so the trials' jobs run side by side."""
    suffix = f"-{trial}" if trial else ""
    return f"train-{run_slug(kfp_run_id, JOB_NAME_MAX - len('train-') - len(suffix))}{suffix}"


def run_label(kfp_run_id: str) -> str:
    """The value of the ``kfp.run_id`` label (a valid label value; hashed when the id is not one, or looks hashed:
    :func:`components.common.storage.hashed_name`)."""
    valid = re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?", kfp_run_id)
    cleaned = kfp_run_id if valid else re.sub(r"[^A-Za-z0-9._-]+", "-", kfp_run_id).strip("-._")
    return hashed_name(kfp_run_id, cleaned, 63, strip="-._")


def _pod_labels(cfg: PipelineConfig, kfp_run_id: str) -> dict[str, str]:
    """Labels of the job's pods: the run and the app (never Kueue's, which would queue each pod on its own)."""
    return {
        RUN_LABEL: run_label(kfp_run_id),
        "app.kubernetes.io/name": "llm-finetune",
        "app.kubernetes.io/component": "train",
        "app.kubernetes.io/part-of": cfg.name,
    }


def job_metadata(cfg: PipelineConfig, kfp_run_id: str) -> dict[str, Any]:
    """The job's name, labels (run, app, Kueue queue and priority class when set) and annotations."""
    labels = _pod_labels(cfg, kfp_run_id)
    if cfg.cluster.kueue_queue_name:
        labels[QUEUE_LABEL] = cfg.cluster.kueue_queue_name
    if cfg.cluster.kueue_priority_class:
        labels[PRIORITY_LABEL] = cfg.cluster.kueue_priority_class
    return {"name": job_name(kfp_run_id), "labels": labels,
            "annotations": {CONFIG_HASH_TAG: cfg.config_hash(), RUN_LABEL: kfp_run_id}}


def _yaml_on_storage(cfg: PipelineConfig, train_yaml: Path) -> Path:
    """The training YAML's absolute path, which every node sees at the same place on the PVC."""
    mount = Path(cfg.storage.mount_path)
    if not mount.is_absolute():
        raise ValueError(f"storage.mount_path must be an absolute path for a multi-node job, got {str(mount)!r}")
    path = Path(os.path.normpath(train_yaml))
    if not path.is_absolute() or Path(os.path.normpath(mount)) not in path.parents:
        raise ValueError(f"train_yaml {train_yaml} is not on the storage volume ({mount}); "
                         "the nodes read it from the PVC")
    return path


def _node_command(cfg: PipelineConfig, train_yaml: Path) -> list[str]:
    """The command of every node: the launcher, which maps the engine's variables and execs torchrun."""
    return ["python", "-m", "components.train.multinode.launch", "--gpus-per-node", str(cfg.cluster.accelerator_count),
            str(_yaml_on_storage(cfg, train_yaml))]


def _node_env(cfg: PipelineConfig, kfp_run_id: str, env: Mapping[str, str]) -> list[dict[str, Any]]:
    """The nodes' environment: tracking URI, offline hubs, the run id, ``env``, and the MLflow credentials."""
    for key, value in env.items():
        if not _ENV_NAME.match(key):
            raise ValueError(f"env: {key!r} is not a valid environment variable name")
        if key in _RESERVED_ENV or key.startswith("PET_"):
            raise ValueError(f"env: {key} is set by the training engine or multinode_launch; do not pass it")
        if not isinstance(value, str):
            raise ValueError(f"env: the value of {key} must be a string, got {type(value).__name__}")
    variables = {"MLFLOW_TRACKING_URI": cfg.mlflow.tracking_uri, "HF_HUB_OFFLINE": "1", "LLMFT_KFP_RUN_ID": kfp_run_id,
                 **env}
    items: list[dict[str, Any]] = [{"name": key, "value": value} for key, value in variables.items()]
    if cfg.mlflow.credentials_secret:  # as the pipeline's tasks get them: each key optional (an open server has none)
        items += [{"name": key, "valueFrom": {"secretKeyRef": {"name": cfg.mlflow.credentials_secret, "key": key,
                                                               "optional": True}}}
                  for key in MLFLOW_SECRET_KEYS if key not in variables]
    return items


@dataclass(frozen=True)
class NodePod:
    """Everything one node of the job gets; each engine module arranges it into its own manifest."""

    image: str
    command: list[str]
    env: list[dict[str, Any]]
    resources: dict[str, dict[str, str]]  # requests and limits
    volumes: list[dict[str, Any]]
    mounts: list[dict[str, str]]  # the training container's volume mounts
    scheduling: dict[str, Any]  # pod spec fields: nodeSelector, tolerations, imagePullSecrets (when any)
    metadata: dict[str, Any]  # pod template labels and annotations


def node_pod(cfg: PipelineConfig, kfp_run_id: str, train_yaml: Path, env: Mapping[str, str]) -> NodePod:
    """What every node of this run's job gets (see the module docstring).

    Reads cluster (image, accelerator_type/count, cpu_request, memory_request/limit, shm_size,
    gpu_node_selector, gpu_tolerations, image_pull_secrets), storage (pvc_name, mount_path), mlflow
    (tracking_uri, credentials_secret) and name.

    Args:
        cfg: The resolved pipeline configuration.
        kfp_run_id: The KFP run id (the nodes' ``kfp.run_id`` label and ``LLMFT_KFP_RUN_ID``).
        train_yaml: The LLaMA-Factory YAML, an absolute path under ``storage.mount_path``.
        env: Extra variables for every node (e.g. ``MLFLOW_RUN_ID``).

    Raises:
        ValueError: ``train_yaml`` is not on the storage volume, ``storage.mount_path`` is relative, or
            ``env`` holds an invalid name, a non-string value or a variable the engine or the launcher
            sets (``RANK``, ``PET_*``...).
    """
    cluster = cfg.cluster
    requests = {"cpu": cluster.cpu_request, "memory": cluster.memory_request}
    limits = {"memory": cluster.memory_limit}
    if cluster.accelerator_count:
        requests[cluster.accelerator_type] = limits[cluster.accelerator_type] = str(cluster.accelerator_count)
    scheduling: dict[str, Any] = {
        "nodeSelector": dict(cluster.gpu_node_selector),
        "tolerations": [toleration.model_dump(exclude_none=True) for toleration in cluster.gpu_tolerations],
    }
    if cluster.image_pull_secrets:
        scheduling["imagePullSecrets"] = [{"name": secret} for secret in cluster.image_pull_secrets]
    return NodePod(
        image=cluster.image,
        command=_node_command(cfg, train_yaml),
        env=_node_env(cfg, kfp_run_id, env),
        resources={"requests": requests, "limits": limits},
        volumes=[
            {"name": "storage", "persistentVolumeClaim": {"claimName": cfg.storage.pvc_name}},
            # NCCL moves data between local ranks through /dev/shm; the container default is 64 MiB.
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": cluster.shm_size}},
        ],
        mounts=[{"name": "storage", "mountPath": cfg.storage.mount_path}, {"name": "dshm", "mountPath": "/dev/shm"}],
        scheduling=scheduling,
        metadata={"labels": _pod_labels(cfg, kfp_run_id), "annotations": dict(POD_ANNOTATIONS)},
    )
