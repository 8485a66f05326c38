"""A multi-node training job on Kubernetes: submit it, follow it, fail with its reason, delete it.

When ``cluster.nodes > 1`` the train step calls :func:`run_training_job` instead of training in its own
pod. ``cluster.training_engine`` picks what runs the nodes; each engine is a thin module that builds its
manifest (from the shared pieces in :mod:`.job_spec`) and says where its pods are:

- ``trainjob`` (:mod:`.trainjob`): a Kubeflow Trainer v2 TrainJob on a ClusterTrainingRuntime;
- ``pytorchjob`` (:mod:`.pytorchjob`): a Training Operator v1 PyTorchJob, for older clusters.

What the engines share is in :mod:`.engine` (the API, the job object) and :mod:`.pods` (node 0's log, why a
node failed).

Whatever the engine, the step stays in charge:

- it creates the job in this pod's namespace (``POD_NAMESPACE``, else the service account's namespace
  file); a retried task adopts a job of the same run that is still there, and replaces a failed one;
- it streams the log of node 0 (the lead pod: TrainJob ``node-0``, PyTorchJob ``master``) into its own log
  and says why that pod is pending, or that Kueue holds the job ("waiting for quota in queue X");
- it fails with :class:`TrainingJobFailed` (the controller's reason and the exit code of the failed
  container) when the job fails, and deletes the failed job (its pods' GPUs go back; the log is already in
  the step);
- on SIGTERM or Ctrl-C (a cancelled run, a task timeout) it deletes the job before it stops; the exit
  handler calls :func:`delete_training_job` when the pipeline fails or is cancelled;
- API errors name the fix (RBAC, a missing controller, an admission webhook's verdict).

The pipeline's service account needs create/get/list/watch/delete on the engine's jobs, pods
get/list/watch and pods/log get (``deploy/rbac.yaml``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.common.signals import sigterm_raises
from components.train.multinode.engine import (
    REQUEST_TIMEOUT,
    JobEngine,
    TrainingJobError,
    TrainingJobFailed,
    api_client,
    api_error,
    current_namespace,
    delete_job,
    engine_for,
    get_job,
    is_transient,
    job_phase,
    wait_for_change,
    wait_gone,
)
from components.train.multinode.job_spec import RUN_LABEL, job_name, run_label
from components.train.multinode.pods import container_state, failure_message, lead_pod, pending_note, stream_lead_log
from configs.schema import PipelineConfig

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, CustomObjectsApi, V1Pod

API_ERROR_LIMIT = 5
API_RETRY_BACKOFF_S = 2.0


def _submit(engine: JobEngine, custom: CustomObjectsApi, namespace: str, manifest: dict, nodes: int) -> None:
    """Create the job; adopt a live or finished job of the same run (a retried task), replace a failed one."""
    from kubernetes.client.exceptions import ApiException

    name = manifest["metadata"]["name"]
    for _attempt in range(3):
        try:
            created = custom.create_namespaced_custom_object(engine.group, engine.version, namespace, engine.plural,
                                                             manifest, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status != 409:
                raise api_error(engine, exc, f"creating {engine.kind} {name}", namespace) from None
        else:
            _check_kept(engine, custom, namespace, manifest, created)
            engine.log.info(f"created {namespace}/{name}: {nodes} nodes")
            return
        existing = get_job(engine, custom, namespace, name)
        if existing is None:
            continue
        phase = job_phase(engine, existing)[0]
        if phase != "Failed":
            engine.log.info(f"{namespace}/{name} exists from an earlier attempt ({phase}); following it")
            return
        engine.log.info(f"replacing the failed {namespace}/{name} of an earlier attempt")
        delete_job(engine, custom, namespace, name)
        wait_gone(engine, custom, namespace, name)
    raise TrainingJobError(f"{engine.kind} {namespace}/{name} could not be created: it keeps reappearing")


def _check_kept(engine: JobEngine, custom: CustomObjectsApi, namespace: str, manifest: dict, created: Any) -> None:
    """An older CRD prunes the fields it does not know (the job would run without its volumes or settings):
    delete such a job and say which release is needed."""
    kept = (created.get("spec") or {}) if isinstance(created, Mapping) else {}
    dropped = sorted(set(manifest["spec"]) - set(kept))
    if dropped:
        name = manifest["metadata"]["name"]
        with contextlib.suppress(Exception):
            delete_job(engine, custom, namespace, name)
        raise TrainingJobError(
            f"{engine.kind} {namespace}/{name}: the cluster's {engine.group}/{engine.version} API dropped "
            f"{', '.join('spec.' + key for key in dropped)}, so its CRD is older than {engine.release}, which this "
            "pipeline needs; the job was deleted: upgrade the controller")


def _follow(engine: JobEngine, api: ApiClient, namespace: str, name: str) -> tuple[dict, V1Pod | None]:
    """Stream node 0's log and wait until the job succeeds or fails; return the final job and node 0's pod."""
    from kubernetes import client

    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    cursors: dict[str, dict] = {}
    last_note, errors = "", 0
    while True:
        try:
            job = get_job(engine, custom, namespace, name)
            pod = lead_pod(engine, core, namespace, name) if job is not None else None
        except Exception as exc:  # the Kubernetes client's errors: retried when transient, else named
            if not is_transient(exc):
                raise api_error(engine, exc, f"reading {engine.kind} {name}", namespace) from None
            errors += 1
            if errors > API_ERROR_LIMIT:
                raise TrainingJobError(f"the Kubernetes API kept failing while following {namespace}/{name}: {exc}"
                                       ) from None
            time.sleep(API_RETRY_BACKOFF_S * errors)
            continue
        errors = 0
        if job is None:
            raise TrainingJobFailed(f"{engine.kind} {namespace}/{name} was deleted while it ran")
        state = container_state(engine, pod)
        if state is not None and (state.running or state.terminated):
            cursor = cursors.setdefault(pod.metadata.uid or pod.metadata.name, {"last": None, "done": False})
            if not cursor["done"]:
                finished = state.terminated is not None
                printed = stream_lead_log(engine, core, namespace, pod.metadata.name, cursor)
                cursor["done"] = finished
                if finished or printed:
                    continue  # re-read: the stream ended because the container stopped, or to resume it
        if job_phase(engine, job)[0] in ("Succeeded", "Failed"):
            return job, pod
        note = pending_note(engine, job, pod)
        if note and note != last_note:
            engine.log.info(note)
        last_note = note
        wait_for_change(engine, custom, namespace, name, job["metadata"].get("resourceVersion"))


def run_training_job(cfg: PipelineConfig, kfp_run_id: str, train_yaml: Path, env: dict[str, str],
                     trial: str = "") -> None:
    """Train on ``cluster.nodes`` nodes through the ``cluster.training_engine`` job; return when it succeeded.

    Builds the job (the engine's ``build``; see :func:`.trainjob.build_trainjob_manifest` and
    :func:`.pytorchjob.build_pytorchjob_manifest` for the fields read), runs the engine's
    checks, submits it in this pod's namespace (adopting a job of an earlier attempt of the same run),
    streams node 0's log to stdout and waits. A failed job is deleted before the error is raised; so is
    the job when this process gets SIGTERM or Ctrl-C (the KeyboardInterrupt is re-raised).

    Args:
        cfg: The resolved pipeline configuration.
        kfp_run_id: The KFP run id (job name and ``kfp.run_id`` label).
        trial: The sweep trial's label (``trial-N``: a job of its own, :func:`.job_spec.job_name`), or "".
        train_yaml: The LLaMA-Factory YAML, an absolute path under ``storage.mount_path``.
        env: Extra variables for every node (e.g. ``MLFLOW_RUN_ID``).

    Raises:
        ValueError: an invalid ``train_yaml`` or ``env`` (see :func:`.job_spec.node_pod`).
        TrainingJobFailed: the job failed (message: the controller's reason and the exit code) or was
            deleted while it ran.
        TrainingJobError: no namespace or credentials, RBAC or an admission webhook refused a request,
            the engine is not installed, an engine check failed (e.g. a missing runtime), or the API
            kept failing.
    """
    engine = engine_for(cfg)
    manifest = engine.build(cfg, kfp_run_id, train_yaml, env)
    if trial:  # each trial is a job of its own; the run label still finds them all (delete_training_job)
        manifest["metadata"]["name"] = job_name(kfp_run_id, trial)
    namespace, name = current_namespace(), manifest["metadata"]["name"]
    with api_client() as api, sigterm_raises(lambda signum: KeyboardInterrupt(f"signal {signum}")):
        from kubernetes import client

        custom = client.CustomObjectsApi(api)
        if engine.preflight is not None:
            engine.preflight(api, namespace, cfg)
        try:
            _submit(engine, custom, namespace, manifest, cfg.cluster.nodes)
            job, pod = _follow(engine, api, namespace, name)
        except KeyboardInterrupt:
            engine.log.info(f"interrupted; deleting {namespace}/{name}")
            with contextlib.suppress(Exception):
                delete_job(engine, custom, namespace, name)
            raise
        if job_phase(engine, job)[0] == "Failed":
            message = failure_message(engine, api, namespace, name, job, pod)
            engine.log.info(f"{message}; deleting the job")
            with contextlib.suppress(Exception):
                delete_job(engine, custom, namespace, name)
            raise TrainingJobFailed(message)
        engine.log.info(f"{namespace}/{name} succeeded")


def delete_training_job(cfg: PipelineConfig, kfp_run_id: str) -> bool:
    """Delete the job(s) of a pipeline run that ``cluster.training_engine`` runs, found by the ``kfp.run_id``
    label (the exit handler).

    Args:
        cfg: The resolved pipeline configuration (``cluster.training_engine``; ``name`` for the log line).
        kfp_run_id: The KFP run id whose jobs to delete.

    Returns:
        True when a job was deleted; False when there was none (or the engine is not installed).

    Raises:
        TrainingJobError: no namespace or credentials, or RBAC refused listing or deleting jobs.
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    engine, namespace = engine_for(cfg), current_namespace()
    with api_client() as api:
        custom = client.CustomObjectsApi(api)
        try:
            jobs = custom.list_namespaced_custom_object(
                engine.group, engine.version, namespace, engine.plural,
                label_selector=f"{RUN_LABEL}={run_label(kfp_run_id)}", _request_timeout=REQUEST_TIMEOUT)["items"]
        except ApiException as exc:
            if exc.status == 404:  # the CRD is not installed, so no job can exist
                return False
            raise api_error(engine, exc, f"listing {engine.kind}s", namespace) from None
        deleted = [job["metadata"]["name"] for job in jobs
                   if delete_job(engine, custom, namespace, job["metadata"]["name"])]
    for name in deleted:
        engine.log.info(f"deleted {namespace}/{name} of {cfg.name} run {kfp_run_id}")
    return bool(deleted)
