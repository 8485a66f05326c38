"""The ``pytorchjob`` training engine: a Kubeflow Training Operator v1 PyTorchJob (``kubeflow.org/v1``).

For clusters that still run the Training Operator v1.7 or later (``cluster.training_engine: pytorchjob``);
current clusters run Kubeflow Trainer v2 (:mod:`.trainjob`). The job has one Master and
``nodes - 1`` Workers built from :mod:`.job_spec`; :mod:`.training_job` submits,
follows and deletes it, streaming the master's log (``[master] ...``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.train.multinode.engine import JobEngine
from components.train.multinode.job_spec import job_metadata, node_pod
from configs.schema import PipelineConfig

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"
# The operator reads the rendezvous port from the container named "pytorch", port "pytorchjob-port".
CONTAINER, PORT_NAME, PORT = "pytorch", "pytorchjob-port", 23456
TTL_AFTER_FINISHED_S = 86400

def build_pytorchjob_manifest(cfg: PipelineConfig, kfp_run_id: str, train_yaml: Path,
                              env: dict[str, str]) -> dict:
    """The ``kubeflow.org/v1`` PyTorchJob that trains this run: 1 Master and ``cluster.nodes - 1`` Workers.

    Each replica is the pod of :func:`.job_spec.node_pod` (whose arguments and errors these are)
    with the API token unmounted; the job also reads cluster.nodes, train_timeout_s, kueue_queue_name and
    kueue_priority_class.

    Returns:
        The manifest as a plain dict (JSON-ready).

    Raises:
        ValueError: a ``train_yaml`` off the storage volume or a bad ``env`` (see node_pod).
    """
    cluster, node = cfg.cluster, node_pod(cfg, kfp_run_id, train_yaml, env)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": node.image,
        "imagePullPolicy": "IfNotPresent",
        "command": node.command,
        "env": node.env,
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "resources": node.resources,
        "volumeMounts": node.mounts,
    }
    template = {
        "metadata": node.metadata,
        "spec": {"automountServiceAccountToken": False,  # training never calls the Kubernetes API
                 "containers": [container], **node.scheduling, "volumes": node.volumes},
    }
    # restartPolicy Never and backoffLimit 0: the KFP task retry is the one retry layer; it resumes from checkpoints.
    replicas = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": template}}
    if cluster.nodes > 1:
        replicas["Worker"] = {"replicas": cluster.nodes - 1, "restartPolicy": "Never", "template": template}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": job_metadata(cfg, kfp_run_id),
        "spec": {
            "nprocPerNode": str(max(1, cluster.accelerator_count)),
            "pytorchReplicaSpecs": replicas,
            "runPolicy": {
                "cleanPodPolicy": "Running",  # stop workers left behind by a failed master; keep logs of the rest
                "backoffLimit": 0,
                "activeDeadlineSeconds": cluster.train_timeout_s,
                "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_S,
            },
        },
    }


ENGINE = JobEngine(
    kind=KIND, group=GROUP, version=VERSION, plural=PLURAL, lead_name="master", container=CONTAINER,
    succeeded="Succeeded", suspend_path=("spec", "runPolicy", "suspend"),
    pods="training.kubeflow.org/job-name={name}", lead="training.kubeflow.org/replica-type=master",
    missing_api="install the Kubeflow Training Operator (v1), or on a cluster with Kubeflow Trainer v2 set "
                "cluster.training_engine=trainjob (or cluster.nodes=1)",
    release="Training Operator v1.7",
    build=build_pytorchjob_manifest,
)
