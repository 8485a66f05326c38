"""A multi-node training job on Kubernetes: submit it, follow it, fail with its reason, delete it.

When ``cluster.nodes > 1`` the train step calls :func:`run_training_job` instead of training in its own
pod. ``cluster.training_engine`` picks what runs the nodes; each engine is a thin module that builds its
manifest (from the shared pieces in :mod:`components.train.multinode.job_spec`) and says where its pods are:

- ``trainjob`` (:mod:`components.train.multinode.trainjob`): a Kubeflow Trainer v2 TrainJob on a ClusterTrainingRuntime;
- ``pytorchjob`` (:mod:`components.train.multinode.pytorchjob`): a Training Operator v1 PyTorchJob, for older clusters.

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
import importlib
import json
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from components.train.multinode.job_spec import QUEUE_LABEL, RUN_LABEL, run_label
from configs.schema import PipelineConfig

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi, V1Pod

SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
REQUEST_TIMEOUT = (10, 60)  # (connect, read) seconds for plain API calls
WATCH_S = 30  # longest wait for a job change before the pods are looked at again
LOG_IDLE_S = 300  # a log stream silent this long is reopened (guards against a silently dropped connection)
API_ERROR_LIMIT = 5
API_RETRY_BACKOFF_S = 2.0
_LOG_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z ?(.*)$", re.DOTALL)

__all__ = [
    "JobEngine",
    "TrainingJobError",
    "TrainingJobFailed",
    "delete_training_job",
    "engine_for",
    "run_training_job",
]


class TrainingJobError(RuntimeError):
    """The Kubernetes API refused a request or cannot be reached; the message names the fix."""


class TrainingJobFailed(TrainingJobError):
    """The training job failed or vanished; the message carries the controller's reason and the exit code."""


@dataclass(frozen=True)
class JobEngine:
    """What differs between the engines; everything else in this module is shared.

    ``pods`` and ``lead`` are label selectors (``{name}`` stands for the job's name): all the job's
    training pods, and the labels that single out node 0 among them.
    """

    kind: str
    group: str
    version: str
    plural: str
    lead_name: str  # node 0 as messages call it; its log lines are prefixed [<lead_name>]
    container: str  # the training container of every pod
    succeeded: str  # the condition type that means success
    suspend_path: tuple[str, ...]  # where the manifest holds its suspend flag (set by Kueue until admission)
    pods: str
    lead: str
    missing_api: str  # what to do when the cluster does not serve the API
    release: str  # the oldest controller release whose API has every field the manifest sets
    build: Callable[[PipelineConfig, str, Path, dict[str, str]], dict]
    # Checks before the job is created (e.g. the runtime exists); raises TrainingJobError naming the fix.
    preflight: Callable[[ApiClient, str, PipelineConfig, TextIO], None] | None = None

    @property
    def tag(self) -> str:
        """The prefix of this module's own log lines, e.g. ``[trainjob]``."""
        return self.kind.lower()


def engine_for(cfg: PipelineConfig) -> JobEngine:
    """The engine ``cluster.training_engine`` names (its module: ``components.<engine>``)."""
    return importlib.import_module(f"components.train.multinode.{cfg.cluster.training_engine}").ENGINE


def current_namespace() -> str:
    """This pod's namespace: ``POD_NAMESPACE``, else the service account's namespace file.

    Raises:
        TrainingJobError: neither is available (not in a pod and no ``POD_NAMESPACE``).
    """
    namespace = os.environ.get("POD_NAMESPACE", "").strip()
    if not namespace:
        with contextlib.suppress(OSError):
            namespace = Path(SA_NAMESPACE_FILE).read_text(encoding="utf-8").strip()
    if not namespace:
        raise TrainingJobError(f"cannot tell the namespace: set POD_NAMESPACE or run in a pod ({SA_NAMESPACE_FILE})")
    return namespace


def api_client() -> ApiClient:
    """An API client from the pod's service account, else from the kubeconfig (``KUBECONFIG``).

    Raises:
        TrainingJobError: neither gives usable credentials.
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            # KUBECONFIG is read here, not when kubernetes was imported (its default is fixed at import).
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None,
                                    client_configuration=configuration)
    except config.ConfigException as exc:
        raise TrainingJobError(f"no Kubernetes credentials: not in a pod and no usable kubeconfig ({exc})") from None
    return client.ApiClient(configuration)


def server_message(exc: Exception) -> str:
    """The API server's own message in a refused request (its Status body), else the error text."""
    body = getattr(exc, "body", None)
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        return str(json.loads(body)["message"])[:500]
    return str(body or exc)[:500]


def api_error(engine: JobEngine, exc: Exception, action: str, namespace: str) -> TrainingJobError:
    """A TrainingJobError for a refused request that says what to fix."""
    status, message = getattr(exc, "status", None), server_message(exc)
    if status in (401, 403) and "admission webhook" in message:
        return TrainingJobError(f"{action} in namespace {namespace} was rejected: {message}")
    if status in (401, 403):
        return TrainingJobError(
            f"{action} in namespace {namespace} was refused (HTTP {status}): the pipeline's service account needs "
            f"{engine.plural} create/get/list/watch/delete, pods get/list/watch and pods/log get (deploy/rbac.yaml)")
    if status == 404 and action.startswith("creating"):
        return TrainingJobError(f"{action}: the API {engine.group}/{engine.version} {engine.plural} is not served in "
                                f"this cluster; {engine.missing_api}")
    return TrainingJobError(f"{action} in namespace {namespace} failed (HTTP {status}): {message}")


def is_transient(exc: Exception) -> bool:
    """Errors worth retrying: a dropped connection, an API server restarting or throttling."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        return exc.status in (0, 429, 500, 502, 503, 504)
    return isinstance(exc, (urllib3.exceptions.HTTPError, OSError))


def job_phase(engine: JobEngine, job: Mapping[str, Any]) -> tuple[str, str, str]:
    """``(phase, reason, message)`` from the job's conditions: Succeeded (the engine's success condition) or
    Failed win, else the last true condition's type, else Pending."""
    conditions = (job.get("status") or {}).get("conditions") or []
    true = [condition for condition in conditions if condition.get("status") == "True"]
    for condition in reversed(true):
        if condition.get("type") in (engine.succeeded, "Failed"):
            phase = "Succeeded" if condition["type"] == engine.succeeded else "Failed"
            return phase, condition.get("reason", ""), condition.get("message", "")
    return (true[-1].get("type", "Pending") if true else "Pending"), "", ""


def _suspended(engine: JobEngine, job: Mapping[str, Any]) -> bool:
    """Whether the job is held back: its suspend flag (Kueue sets it until admission) or a Suspended condition."""
    flag: Any = job
    for key in engine.suspend_path:
        flag = flag.get(key) if isinstance(flag, Mapping) else None
    conditions = (job.get("status") or {}).get("conditions") or []
    return flag is True or any(c.get("type") == "Suspended" and c.get("status") == "True" for c in conditions)


def _get_job(engine: JobEngine, custom: CustomObjectsApi, namespace: str, name: str) -> dict | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return custom.get_namespaced_custom_object(engine.group, engine.version, namespace, engine.plural, name,
                                                   _request_timeout=REQUEST_TIMEOUT)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _wait_for_change(engine: JobEngine, custom: CustomObjectsApi, namespace: str, name: str,
                     resource_version: str | None, timeout_s: int = WATCH_S) -> None:
    """Block until the job changes (one watch event) or ``timeout_s`` passes; errors just end the wait."""
    from kubernetes import watch

    events = watch.Watch().stream(
        custom.list_namespaced_custom_object, engine.group, engine.version, namespace, engine.plural,
        field_selector=f"metadata.name={name}", resource_version=resource_version,
        timeout_seconds=timeout_s, _request_timeout=(REQUEST_TIMEOUT[0], timeout_s + 30),
    )
    try:
        next(events, None)
    except Exception as exc:
        # 410 Gone (a stale resourceVersion) and dropped connections: the caller re-reads the job anyway.
        if not is_transient(exc) and getattr(exc, "status", None) != 410:
            raise
    finally:
        events.close()


def _delete(engine: JobEngine, custom: CustomObjectsApi, namespace: str, name: str) -> bool:
    """Delete one job (its pods go with it); False when it was already gone."""
    from kubernetes.client.exceptions import ApiException

    try:
        custom.delete_namespaced_custom_object(engine.group, engine.version, namespace, engine.plural, name,
                                               propagation_policy="Background", _request_timeout=REQUEST_TIMEOUT)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise api_error(engine, exc, f"deleting {engine.kind} {name}", namespace) from None
    return True


def _wait_gone(engine: JobEngine, custom: CustomObjectsApi, namespace: str, name: str,
               timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while (job := _get_job(engine, custom, namespace, name)) is not None:
        if time.monotonic() > deadline:
            raise TrainingJobError(f"{engine.kind} {namespace}/{name} is still there {timeout_s:.0f} s after "
                                   "deletion (a finalizer?); delete it by hand and retry")
        _wait_for_change(engine, custom, namespace, name, job["metadata"].get("resourceVersion"), timeout_s=10)


def _submit(engine: JobEngine, custom: CustomObjectsApi, namespace: str, manifest: dict, nodes: int,
            out: TextIO) -> None:
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
            print(f"[{engine.tag}] created {namespace}/{name}: {nodes} nodes", file=out, flush=True)
            return
        existing = _get_job(engine, custom, namespace, name)
        if existing is None:
            continue
        phase = job_phase(engine, existing)[0]
        if phase != "Failed":
            print(f"[{engine.tag}] {namespace}/{name} exists from an earlier attempt ({phase}); following it",
                  file=out, flush=True)
            return
        print(f"[{engine.tag}] replacing the failed {namespace}/{name} of an earlier attempt", file=out, flush=True)
        _delete(engine, custom, namespace, name)
        _wait_gone(engine, custom, namespace, name)
    raise TrainingJobError(f"{engine.kind} {namespace}/{name} could not be created: it keeps reappearing")


def _check_kept(engine: JobEngine, custom: CustomObjectsApi, namespace: str, manifest: dict, created: Any) -> None:
    """An older CRD prunes the fields it does not know (the job would run without its volumes or settings):
    delete such a job and say which release is needed."""
    kept = (created.get("spec") or {}) if isinstance(created, Mapping) else {}
    dropped = sorted(set(manifest["spec"]) - set(kept))
    if dropped:
        name = manifest["metadata"]["name"]
        with contextlib.suppress(Exception):
            _delete(engine, custom, namespace, name)
        raise TrainingJobError(
            f"{engine.kind} {namespace}/{name}: the cluster's {engine.group}/{engine.version} API dropped "
            f"{', '.join('spec.' + key for key in dropped)}, so its CRD is older than {engine.release}, which this "
            "pipeline needs; the job was deleted: upgrade the controller")


def _list_pods(core: CoreV1Api, namespace: str, selector: str) -> list[V1Pod]:
    pods = core.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT).items
    return sorted(pods, key=lambda pod: str(pod.metadata.creation_timestamp or ""))


def _lead_pod(engine: JobEngine, core: CoreV1Api, namespace: str, name: str) -> V1Pod | None:
    """Node 0's newest pod (a restarted node gets a new pod)."""
    pods = _list_pods(core, namespace, f"{engine.pods},{engine.lead}".format(name=name))
    return pods[-1] if pods else None


def _container_status(engine: JobEngine, pod: V1Pod | None) -> Any:
    for status in (pod.status.container_statuses or []) if pod and pod.status else []:
        if status.name == engine.container:
            return status
    return None


def _container_state(engine: JobEngine, pod: V1Pod | None) -> Any:
    status = _container_status(engine, pod)
    return status.state if status is not None else None


def _pending_note(engine: JobEngine, job: Mapping[str, Any], pod: V1Pod | None) -> str:
    """Why node 0 is not running yet, in one line ('' once it runs)."""
    if _suspended(engine, job):
        queue = ((job.get("metadata") or {}).get("labels") or {}).get(QUEUE_LABEL)
        if queue:
            return f"suspended: waiting for quota in queue {queue} (Kueue admits it when the queue has room)"
        return "suspended: it starts when someone resumes it (spec suspend is true)"
    if pod is None:
        return f"waiting for the {engine.kind} controller to create the {engine.lead_name} pod"
    if pod.status is None or pod.status.phase != "Pending":
        return ""
    for condition in pod.status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            return f"{engine.lead_name} pod {pod.metadata.name} not scheduled: {condition.reason}: {condition.message}"
    state = _container_state(engine, pod)
    if state is not None and state.waiting is not None and state.waiting.reason:
        return (f"{engine.lead_name} pod {pod.metadata.name} waiting: {state.waiting.reason}: "
                f"{state.waiting.message or ''}")
    return f"{engine.lead_name} pod {pod.metadata.name} pending"


def _timestamp_key(raw: str) -> tuple[tuple[float, int] | None, str]:
    """Split a ``timestamps=true`` log line into ((epoch seconds, nanoseconds), text)."""
    match = _LOG_TIMESTAMP.match(raw)
    if not match:
        return None, raw
    seconds = datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return (seconds, int((match[2] or "0").ljust(9, "0"))), match[3]


def _stream_lead_log(engine: JobEngine, core: CoreV1Api, namespace: str, pod_name: str, cursor: dict,
                     out: TextIO) -> int:
    """Print node 0's log lines after ``cursor['last']``; return how many were printed.

    A reopened stream asks for a little more than the missing time and drops lines it already printed.
    """
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    options: dict[str, Any] = {"container": engine.container, "timestamps": True,
                               "_request_timeout": (REQUEST_TIMEOUT[0], LOG_IDLE_S)}
    if cursor.get("last"):
        options["since_seconds"] = max(1, math.ceil(time.time() - cursor["last"][0]) + 30)
    printed = 0
    lines = watch.Watch().stream(core.read_namespaced_pod_log, pod_name, namespace, **options)
    try:
        for raw in lines:
            key, text = _timestamp_key(raw)
            if key is not None and cursor.get("last") and key <= cursor["last"]:
                continue
            print(f"[{engine.lead_name}] {text}", file=out, flush=True)
            cursor["last"] = key or cursor.get("last")
            printed += 1
    except ApiException as exc:
        if exc.status not in (400, 404) and not is_transient(exc):  # 400: not started yet; 404: pod gone
            raise api_error(engine, exc, f"reading the log of {pod_name}", namespace) from None
    except Exception as exc:
        if not is_transient(exc):  # an idle timeout or a dropped connection: the caller resumes
            raise
    finally:
        lines.close()
    return printed


def _follow(engine: JobEngine, api: ApiClient, namespace: str, name: str, out: TextIO) -> tuple[dict, V1Pod | None]:
    """Stream node 0's log and wait until the job succeeds or fails; return the final job and node 0's pod."""
    from kubernetes import client

    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    cursors: dict[str, dict] = {}
    last_note, errors = "", 0
    while True:
        try:
            job = _get_job(engine, custom, namespace, name)
            pod = _lead_pod(engine, core, namespace, name) if job is not None else None
        except Exception as exc:
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
        state = _container_state(engine, pod)
        if state is not None and (state.running or state.terminated):
            cursor = cursors.setdefault(pod.metadata.uid or pod.metadata.name, {"last": None, "done": False})
            if not cursor["done"]:
                finished = state.terminated is not None
                printed = _stream_lead_log(engine, core, namespace, pod.metadata.name, cursor, out)
                cursor["done"] = finished
                if finished or printed:
                    continue  # re-read: the stream ended because the container stopped, or to resume it
        if job_phase(engine, job)[0] in ("Succeeded", "Failed"):
            return job, pod
        note = _pending_note(engine, job, pod)
        if note and note != last_note:
            print(f"[{engine.tag}] {note}", file=out, flush=True)
        last_note = note
        _wait_for_change(engine, custom, namespace, name, job["metadata"].get("resourceVersion"))


def _failed_container(engine: JobEngine, pods: list[V1Pod]) -> tuple[str, Any] | None:
    """``(pod name, terminated state)`` of the training container that ended first with a non-zero exit
    (a container's current run, else its run before a restart); the earlier pod wins a tie."""
    failed = []
    for pod in pods:
        status = _container_status(engine, pod)
        for state in (status.state, status.last_state) if status is not None else ():
            if state is not None and state.terminated is not None and state.terminated.exit_code:
                failed.append((pod.metadata.name, state.terminated))
                break
    # A node that dies takes the others down with it a little later: the first exit is usually the cause.
    finished = [item for item in failed if item[1].finished_at is not None]
    return min(finished, key=lambda item: item[1].finished_at) if finished else (failed[0] if failed else None)


def _failure_message(engine: JobEngine, api: ApiClient, namespace: str, name: str, job: dict,
                     lead: V1Pod | None) -> str:
    """The controller's reason and message, and the exit of the node whose container failed first (else of
    node 0's container)."""
    from kubernetes import client

    _, reason, message = job_phase(engine, job)
    text = (f"{engine.kind} {namespace}/{name} failed: {reason or 'Failed'}: "
            f"{message or 'no message from the controller'}")
    pods = [lead] if lead is not None else []
    with contextlib.suppress(Exception):  # the message is still useful without the other nodes
        pods += [pod for pod in _list_pods(client.CoreV1Api(api), namespace, engine.pods.format(name=name))
                 if lead is None or pod.metadata.name != lead.metadata.name]
    failed = _failed_container(engine, pods)
    state = _container_state(engine, lead)
    if failed is None and state is not None and state.terminated is not None:
        failed = (lead.metadata.name, state.terminated)
    if failed is not None:
        where, ended = failed
        text += f"; pod {where}: container {ended.reason or 'terminated'} with exit code {ended.exit_code}"
        if ended.message:
            text += f": {ended.message.strip()[:500]}"
    return text


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM (pod deletion, task timeout) into KeyboardInterrupt so the job gets deleted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_training_job(cfg: PipelineConfig, kfp_run_id: str, train_yaml: Path, env: dict[str, str]) -> None:
    """Train on ``cluster.nodes`` nodes through the ``cluster.training_engine`` job; return when it succeeded.

    Builds the job (the engine's ``build``; see :func:`components.train.multinode.trainjob.build_trainjob_manifest` and
    :func:`components.train.multinode.pytorchjob.build_pytorchjob_manifest` for the fields read), runs the engine's
    checks, submits it in this pod's namespace (adopting a job of an earlier attempt of the same run),
    streams node 0's log to stdout and waits. A failed job is deleted before the error is raised; so is
    the job when this process gets SIGTERM or Ctrl-C (the KeyboardInterrupt is re-raised).

    Args:
        cfg: The resolved pipeline configuration.
        kfp_run_id: The KFP run id (job name and ``kfp.run_id`` label).
        train_yaml: The LLaMA-Factory YAML, an absolute path under ``storage.mount_path``.
        env: Extra variables for every node (e.g. ``MLFLOW_RUN_ID``).

    Raises:
        ValueError: an invalid ``train_yaml`` or ``env`` (see :func:`components.train.multinode.job_spec.node_env`).
        TrainingJobFailed: the job failed (message: the controller's reason and the exit code) or was
            deleted while it ran.
        TrainingJobError: no namespace or credentials, RBAC or an admission webhook refused a request,
            the engine is not installed, an engine check failed (e.g. a missing runtime), or the API
            kept failing.
    """
    engine = engine_for(cfg)
    manifest = engine.build(cfg, kfp_run_id, train_yaml, env)
    namespace, name = current_namespace(), manifest["metadata"]["name"]
    out = sys.stdout
    with api_client() as api, _sigterm_as_interrupt():
        from kubernetes import client

        custom = client.CustomObjectsApi(api)
        if engine.preflight is not None:
            engine.preflight(api, namespace, cfg, out)
        try:
            _submit(engine, custom, namespace, manifest, cfg.cluster.nodes, out)
            job, pod = _follow(engine, api, namespace, name, out)
        except KeyboardInterrupt:
            print(f"[{engine.tag}] interrupted; deleting {namespace}/{name}", file=out, flush=True)
            with contextlib.suppress(Exception):
                _delete(engine, custom, namespace, name)
            raise
        if job_phase(engine, job)[0] == "Failed":
            message = _failure_message(engine, api, namespace, name, job, pod)
            print(f"[{engine.tag}] {message}; deleting the job", file=out, flush=True)
            with contextlib.suppress(Exception):
                _delete(engine, custom, namespace, name)
            raise TrainingJobFailed(message)
        print(f"[{engine.tag}] {namespace}/{name} succeeded", file=out, flush=True)


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
                   if _delete(engine, custom, namespace, job["metadata"]["name"])]
    for name in deleted:
        print(f"[{engine.tag}] deleted {namespace}/{name} of {cfg.name} run {kfp_run_id}", flush=True)
    return bool(deleted)
