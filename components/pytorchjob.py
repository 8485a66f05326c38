"""Multi-node training on the Kubeflow Training Operator: build, submit, follow and delete a PyTorchJob.

When ``cluster.nodes > 1`` the train step calls :func:`run_pytorchjob` instead of training in its
own pod. The job has one Master and ``nodes - 1`` Workers; each replica runs
``python -m components.multinode_launch`` (which maps the operator's variables and execs torchrun
with the train step's own trainer worker) in our image, with the same PVC, node selector, tolerations, GPU
limits and in-memory ``/dev/shm`` as a single-node train task. The step stays in charge:

- it streams the master's log into its own log (``[master] ...``) and says why a pod is pending;
- it fails with :class:`PyTorchJobFailed` (the operator's reason and the master's exit) when the
  job fails, and deletes the failed job (its pods' GPUs go back; the log is already in the step);
- on SIGTERM or Ctrl-C (a cancelled run, a task timeout) it deletes the job before it stops;
- a retried task adopts a job of the same run that is still running, and replaces a failed one;
- API errors name the fix (RBAC, a missing operator). The exit handler calls
  :func:`delete_pytorchjob` when the pipeline fails or is cancelled.

Jobs go to the namespace of the pod (``POD_NAMESPACE``, else the service account's namespace file)
and carry the label ``kfp.run_id``. The pipeline's service account needs: pytorchjobs
create/get/list/watch/delete, pods get/list/watch, pods/log get (``deploy/rbac.yaml``).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from components.multinode_launch import map_operator_env
from configs.schema import PipelineConfig

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi, V1Pod

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"
RUN_LABEL = "kfp.run_id"
# The operator reads the rendezvous port from the container named "pytorch", port "pytorchjob-port".
CONTAINER, PORT_NAME, PORT = "pytorch", "pytorchjob-port", 23456
# The operator names services <job>-worker-<i>, and Service names are DNS-1035 labels of at most 63 chars.
JOB_NAME_MAX = 48
JOB_LABEL, REPLICA_LABEL = "training.kubeflow.org/job-name", "training.kubeflow.org/replica-type"
SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
TERMINAL = ("Succeeded", "Failed")
REQUEST_TIMEOUT = (10, 60)  # (connect, read) seconds for plain API calls
WATCH_S = 30  # longest wait for a job change before the pods are looked at again
LOG_IDLE_S = 300  # a log stream silent this long is reopened (guards against a silently dropped connection)
TTL_AFTER_FINISHED_S = 86400
API_ERROR_LIMIT = 5
API_RETRY_BACKOFF_S = 2.0
# Set by the operator or by multinode_launch; the caller's env must not shadow them.
_RESERVED_ENV = {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK", "NPROC_PER_NODE",
                 "FORCE_TORCHRUN", "LOCAL_RANK"}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LOG_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z ?(.*)$", re.DOTALL)

__all__ = [
    "PyTorchJobError",
    "PyTorchJobFailed",
    "build_pytorchjob_manifest",
    "delete_pytorchjob",
    "job_name",
    "map_operator_env",
    "run_pytorchjob",
]


class PyTorchJobError(RuntimeError):
    """The Kubernetes API refused a request or cannot be reached; the message names the fix."""


class PyTorchJobFailed(PyTorchJobError):
    """The PyTorchJob failed or vanished; the message carries the operator's reason and the master's exit."""


def job_name(kfp_run_id: str) -> str:
    """The PyTorchJob name of a pipeline run: ``train-<run id>``, a DNS-1123 label of at most 48 chars.

    Run ids that are not already lowercase DNS labels, or are too long, get a hash suffix so that two
    runs never share a name.
    """
    slug = re.sub(r"[^a-z0-9-]+", "-", kfp_run_id.lower()).strip("-")
    name = f"train-{slug}"
    if slug == kfp_run_id and len(name) <= JOB_NAME_MAX:
        return name
    digest = hashlib.sha256(kfp_run_id.encode()).hexdigest()[:8]
    head = slug[:JOB_NAME_MAX - len("train--") - len(digest)].rstrip("-")
    return "-".join(part for part in ("train", head, digest) if part)


def run_label(kfp_run_id: str) -> str:
    """The value of the ``kfp.run_id`` label (a valid label value; hashed when the id is not one)."""
    if re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?", kfp_run_id):
        return kfp_run_id
    digest = hashlib.sha256(kfp_run_id.encode()).hexdigest()[:8]
    head = re.sub(r"[^A-Za-z0-9._-]+", "-", kfp_run_id).strip("-._")[:54]
    return f"{head}-{digest}" if head else digest


def _check_env(env: Mapping[str, str]) -> dict[str, str]:
    for key, value in env.items():
        if not _ENV_NAME.match(key):
            raise ValueError(f"env: {key!r} is not a valid environment variable name")
        if key in _RESERVED_ENV or key.startswith("PET_"):
            raise ValueError(f"env: {key} is set by the Training Operator or multinode_launch; do not pass it")
        if not isinstance(value, str):
            raise ValueError(f"env: the value of {key} must be a string, got {type(value).__name__}")
    return dict(env)


def _yaml_on_storage(cfg: PipelineConfig, train_yaml: Path) -> Path:
    """The training YAML's absolute path, which every replica sees at the same place on the PVC."""
    mount = Path(cfg.storage.mount_path)
    if not mount.is_absolute():
        raise ValueError(f"storage.mount_path must be an absolute path for a PyTorchJob, got {str(mount)!r}")
    path = Path(os.path.normpath(train_yaml))
    if not path.is_absolute() or Path(os.path.normpath(mount)) not in path.parents:
        raise ValueError(f"train_yaml {train_yaml} is not on the storage volume ({mount}); "
                         "the replicas read it from the PVC")
    return path


def build_pytorchjob_manifest(cfg: PipelineConfig, kfp_run_id: str, train_yaml: Path,
                              env: dict[str, str]) -> dict:
    """The ``kubeflow.org/v1`` PyTorchJob that trains this run on ``cluster.nodes`` nodes.

    Reads cluster (image, nodes, gpu_node_selector, gpu_tolerations, accelerator_type/count,
    cpu_request, memory_request/limit, shm_size, image_pull_secrets, train_timeout_s), storage
    (pvc_name, mount_path), mlflow (tracking_uri, credentials_secret) and name.

    Args:
        cfg: The resolved pipeline configuration.
        kfp_run_id: The KFP run id; names the job and labels it ``kfp.run_id``.
        train_yaml: The LLaMA-Factory YAML, an absolute path under ``storage.mount_path``.
        env: Extra variables for every replica (e.g. ``MLFLOW_RUN_ID``).

    Returns:
        The manifest as a plain dict (JSON-ready).

    Raises:
        ValueError: ``train_yaml`` is not on the storage volume, ``storage.mount_path`` is relative,
            or ``env`` holds an invalid name, a non-string value or a variable the operator sets.
    """
    cluster = cfg.cluster
    yaml_path = _yaml_on_storage(cfg, train_yaml)
    variables = {"MLFLOW_TRACKING_URI": cfg.mlflow.tracking_uri, "HF_HUB_OFFLINE": "1", "LLMFT_KFP_RUN_ID": kfp_run_id,
                 **_check_env(env)}
    labels = {
        RUN_LABEL: run_label(kfp_run_id),
        "app.kubernetes.io/name": "llm-finetune",
        "app.kubernetes.io/component": "train",
        "app.kubernetes.io/part-of": cfg.name,
    }
    requests = {"cpu": cluster.cpu_request, "memory": cluster.memory_request}
    limits = {"memory": cluster.memory_limit}
    if cluster.accelerator_count:
        requests[cluster.accelerator_type] = limits[cluster.accelerator_type] = str(cluster.accelerator_count)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": cluster.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "components.multinode_launch",
                    "--gpus-per-node", str(cluster.accelerator_count), str(yaml_path)],
        "env": [{"name": key, "value": value} for key, value in variables.items()],
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": [
            {"name": "storage", "mountPath": cfg.storage.mount_path},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    if cfg.mlflow.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": cfg.mlflow.credentials_secret, "optional": True}}]
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # training never calls the Kubernetes API
        "containers": [container],
        "nodeSelector": dict(cluster.gpu_node_selector),
        "tolerations": [toleration.model_dump(exclude_none=True) for toleration in cluster.gpu_tolerations],
        "volumes": [
            {"name": "storage", "persistentVolumeClaim": {"claimName": cfg.storage.pvc_name}},
            # NCCL moves data between local ranks through /dev/shm; the container default is 64 MiB.
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": cluster.shm_size}},
        ],
    }
    if cluster.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": secret} for secret in cluster.image_pull_secrets]
    template = {
        # An Istio sidecar (Kubeflow profile namespaces inject one) keeps a finished pod running forever.
        "metadata": {"labels": dict(labels), "annotations": {"sidecar.istio.io/inject": "false"}},
        "spec": pod_spec,
    }
    # restartPolicy Never and backoffLimit 0: the KFP task retry is the one retry layer; it resumes from checkpoints.
    replicas = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": template}}
    if cluster.nodes > 1:
        replicas["Worker"] = {"replicas": cluster.nodes - 1, "restartPolicy": "Never", "template": template}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": job_name(kfp_run_id), "labels": labels,
                     "annotations": {"llmft.config_hash": cfg.config_hash(), RUN_LABEL: kfp_run_id}},
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


def current_namespace() -> str:
    """This pod's namespace: ``POD_NAMESPACE``, else the service account's namespace file.

    Raises:
        PyTorchJobError: neither is available (not in a pod and no ``POD_NAMESPACE``).
    """
    namespace = os.environ.get("POD_NAMESPACE", "").strip()
    if not namespace:
        with contextlib.suppress(OSError):
            namespace = Path(SA_NAMESPACE_FILE).read_text(encoding="utf-8").strip()
    if not namespace:
        raise PyTorchJobError(f"cannot tell the namespace: set POD_NAMESPACE or run in a pod ({SA_NAMESPACE_FILE})")
    return namespace


def _api_client() -> ApiClient:
    """An API client from the pod's service account, else from the kubeconfig (``KUBECONFIG``)."""
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
        raise PyTorchJobError(f"no Kubernetes credentials: not in a pod and no usable kubeconfig ({exc})") from None
    return client.ApiClient(configuration)


def _api_error(exc: Exception, action: str, namespace: str) -> PyTorchJobError:
    """A PyTorchJobError for a refused request that says what to fix."""
    status = getattr(exc, "status", None)
    if status in (401, 403):
        return PyTorchJobError(
            f"{action} in namespace {namespace} was refused (HTTP {status}): the pipeline's service account needs "
            "pytorchjobs create/get/list/watch/delete, pods get/list/watch and pods/log get (deploy/rbac.yaml)")
    if status == 404 and action.startswith("creating"):
        return PyTorchJobError(f"{action}: the API {GROUP}/{VERSION} {PLURAL} is not served in this cluster; "
                               "install the Kubeflow Training Operator (v1) or set cluster.nodes=1")
    body = str(getattr(exc, "body", "") or exc)[:500]
    return PyTorchJobError(f"{action} in namespace {namespace} failed (HTTP {status}): {body}")


def _is_transient(exc: Exception) -> bool:
    """Errors worth retrying: a dropped connection, an API server restarting or throttling."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        return exc.status in (0, 429, 500, 502, 503, 504)
    return isinstance(exc, (urllib3.exceptions.HTTPError, OSError))


def job_phase(job: Mapping[str, Any]) -> tuple[str, str, str]:
    """``(phase, reason, message)`` from the job's conditions: Succeeded/Failed win, else the last true one."""
    conditions = (job.get("status") or {}).get("conditions") or []
    true = [condition for condition in conditions if condition.get("status") == "True"]
    for condition in reversed(true):
        if condition.get("type") in TERMINAL:
            return condition["type"], condition.get("reason", ""), condition.get("message", "")
    return (true[-1].get("type", "Pending") if true else "Pending"), "", ""


def _get_job(custom: CustomObjectsApi, namespace: str, name: str) -> dict | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                   _request_timeout=REQUEST_TIMEOUT)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _wait_for_change(custom: CustomObjectsApi, namespace: str, name: str, resource_version: str | None,
                     timeout_s: int = WATCH_S) -> None:
    """Block until the job changes (one watch event) or ``timeout_s`` passes; errors just end the wait."""
    from kubernetes import watch

    events = watch.Watch().stream(
        custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
        field_selector=f"metadata.name={name}", resource_version=resource_version,
        timeout_seconds=timeout_s, _request_timeout=(REQUEST_TIMEOUT[0], timeout_s + 30),
    )
    try:
        next(events, None)
    except Exception as exc:
        # 410 Gone (a stale resourceVersion) and dropped connections: the caller re-reads the job anyway.
        if not _is_transient(exc) and getattr(exc, "status", None) != 410:
            raise
    finally:
        events.close()


def _delete(custom: CustomObjectsApi, namespace: str, name: str) -> bool:
    """Delete one job (its pods go with it); False when it was already gone."""
    from kubernetes.client.exceptions import ApiException

    try:
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                               propagation_policy="Background", _request_timeout=REQUEST_TIMEOUT)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise _api_error(exc, f"deleting PyTorchJob {name}", namespace) from None
    return True


def _wait_gone(custom: CustomObjectsApi, namespace: str, name: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while (job := _get_job(custom, namespace, name)) is not None:
        if time.monotonic() > deadline:
            raise PyTorchJobError(f"PyTorchJob {namespace}/{name} is still there {timeout_s:.0f} s after deletion "
                                  "(a finalizer?); delete it by hand and retry")
        _wait_for_change(custom, namespace, name, job["metadata"].get("resourceVersion"), timeout_s=10)


def _submit(custom: CustomObjectsApi, namespace: str, manifest: dict, out: TextIO) -> None:
    """Create the job; adopt a live or finished job of the same run (a retried task), replace a failed one."""
    from kubernetes.client.exceptions import ApiException

    name = manifest["metadata"]["name"]
    for _attempt in range(3):
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest,
                                                   _request_timeout=REQUEST_TIMEOUT)
            print(f"[pytorchjob] created {namespace}/{name}: 1 master + {_workers(manifest)} worker(s)",
                  file=out, flush=True)
            return
        except ApiException as exc:
            if exc.status != 409:
                raise _api_error(exc, f"creating PyTorchJob {name}", namespace) from None
        existing = _get_job(custom, namespace, name)
        if existing is None:
            continue
        phase = job_phase(existing)[0]
        if phase != "Failed":
            print(f"[pytorchjob] {namespace}/{name} exists from an earlier attempt ({phase}); following it",
                  file=out, flush=True)
            return
        print(f"[pytorchjob] replacing the failed {namespace}/{name} of an earlier attempt", file=out, flush=True)
        _delete(custom, namespace, name)
        _wait_gone(custom, namespace, name)
    raise PyTorchJobError(f"PyTorchJob {namespace}/{name} could not be created: it keeps reappearing")


def _workers(manifest: dict) -> int:
    return manifest["spec"]["pytorchReplicaSpecs"].get("Worker", {}).get("replicas", 0)


def _master_pod(core: CoreV1Api, namespace: str, name: str) -> V1Pod | None:
    pods = core.list_namespaced_pod(namespace, label_selector=f"{JOB_LABEL}={name},{REPLICA_LABEL}=master",
                                    _request_timeout=REQUEST_TIMEOUT).items
    pods.sort(key=lambda pod: str(pod.metadata.creation_timestamp or ""))
    return pods[-1] if pods else None


def _container_state(pod: V1Pod | None) -> Any:
    for status in (pod.status.container_statuses or []) if pod and pod.status else []:
        if status.name == CONTAINER:
            return status.state
    return None


def _pending_note(pod: V1Pod | None) -> str:
    """Why the master is not running yet, in one line ('' once it runs)."""
    if pod is None:
        return "waiting for the operator to create the master pod"
    if pod.status is None or pod.status.phase != "Pending":
        return ""
    for condition in pod.status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            return f"master pod {pod.metadata.name} not scheduled: {condition.reason}: {condition.message}"
    state = _container_state(pod)
    if state is not None and state.waiting is not None and state.waiting.reason:
        return f"master pod {pod.metadata.name} waiting: {state.waiting.reason}: {state.waiting.message or ''}"
    return f"master pod {pod.metadata.name} pending"


def _timestamp_key(raw: str) -> tuple[tuple[float, int] | None, str]:
    """Split a ``timestamps=true`` log line into ((epoch seconds, nanoseconds), text)."""
    match = _LOG_TIMESTAMP.match(raw)
    if not match:
        return None, raw
    seconds = datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return (seconds, int((match[2] or "0").ljust(9, "0"))), match[3]


def _stream_master_log(core: CoreV1Api, namespace: str, pod_name: str, cursor: dict, out: TextIO) -> int:
    """Print the master's log lines after ``cursor['last']``; return how many were printed.

    A reopened stream asks for a little more than the missing time and drops lines it already printed.
    """
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    options: dict[str, Any] = {"container": CONTAINER, "timestamps": True,
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
            print(f"[master] {text}", file=out, flush=True)
            cursor["last"] = key or cursor.get("last")
            printed += 1
    except ApiException as exc:
        if exc.status not in (400, 404) and not _is_transient(exc):  # 400: not started yet; 404: pod gone
            raise _api_error(exc, f"reading the log of {pod_name}", namespace) from None
    except Exception as exc:
        if not _is_transient(exc):  # an idle timeout or a dropped connection: the caller resumes
            raise
    finally:
        lines.close()
    return printed


def _follow(api: ApiClient, namespace: str, name: str, out: TextIO) -> tuple[dict, V1Pod | None]:
    """Stream the master's log and wait until the job succeeds or fails; return the final job and master pod."""
    from kubernetes import client

    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    cursors: dict[str, dict] = {}
    last_note, errors = "", 0
    while True:
        try:
            job = _get_job(custom, namespace, name)
            pod = _master_pod(core, namespace, name) if job is not None else None
        except Exception as exc:
            if not _is_transient(exc):
                raise _api_error(exc, f"reading PyTorchJob {name}", namespace) from None
            errors += 1
            if errors > API_ERROR_LIMIT:
                raise PyTorchJobError(f"the Kubernetes API kept failing while following {namespace}/{name}: {exc}"
                                      ) from None
            time.sleep(API_RETRY_BACKOFF_S * errors)
            continue
        errors = 0
        if job is None:
            raise PyTorchJobFailed(f"PyTorchJob {namespace}/{name} was deleted while it ran")
        state = _container_state(pod)
        if state is not None and (state.running or state.terminated):
            cursor = cursors.setdefault(pod.metadata.uid or pod.metadata.name, {"last": None, "done": False})
            if not cursor["done"]:
                finished = state.terminated is not None
                printed = _stream_master_log(core, namespace, pod.metadata.name, cursor, out)
                cursor["done"] = finished
                if finished or printed:
                    continue  # re-read: the stream ended because the container stopped, or to resume it
        phase = job_phase(job)[0]
        if phase in TERMINAL:
            return job, pod
        note = _pending_note(pod)
        if note and note != last_note:
            print(f"[pytorchjob] {note}", file=out, flush=True)
        last_note = note
        _wait_for_change(custom, namespace, name, job["metadata"].get("resourceVersion"))


def _failure_message(namespace: str, name: str, job: dict, pod: V1Pod | None) -> str:
    _, reason, message = job_phase(job)
    text = f"PyTorchJob {namespace}/{name} failed: {reason or 'Failed'}: {message or 'no message from the operator'}"
    state = _container_state(pod)
    if state is not None and state.terminated is not None:
        ended = state.terminated
        text += f"; master container {ended.reason or 'terminated'} with exit code {ended.exit_code}"
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


def run_pytorchjob(cfg: PipelineConfig, kfp_run_id: str, train_yaml: Path, env: dict[str, str]) -> None:
    """Train on ``cluster.nodes`` nodes through a PyTorchJob and return when it succeeded.

    Builds the job (:func:`build_pytorchjob_manifest`), submits it in this pod's namespace (adopting
    a job of an earlier attempt of the same run), streams the master's log to stdout and waits.
    A failed job is deleted before the error is raised; so is the job when this process gets SIGTERM
    or Ctrl-C (the KeyboardInterrupt is re-raised).

    Args:
        cfg: The resolved pipeline configuration (see build_pytorchjob_manifest for the fields read).
        kfp_run_id: The KFP run id (job name and ``kfp.run_id`` label).
        train_yaml: The LLaMA-Factory YAML, an absolute path under ``storage.mount_path``.
        env: Extra variables for every replica (e.g. ``MLFLOW_RUN_ID``).

    Raises:
        ValueError: an invalid ``train_yaml`` or ``env`` (see build_pytorchjob_manifest).
        PyTorchJobFailed: the job failed (message: the operator's reason and the master's exit code)
            or was deleted while it ran.
        PyTorchJobError: no namespace or credentials, RBAC refused a request, the operator is not
            installed, or the API kept failing.
    """
    manifest = build_pytorchjob_manifest(cfg, kfp_run_id, train_yaml, env)
    namespace, name = current_namespace(), manifest["metadata"]["name"]
    out = sys.stdout
    with _api_client() as api, _sigterm_as_interrupt():
        from kubernetes import client

        custom = client.CustomObjectsApi(api)
        try:
            _submit(custom, namespace, manifest, out)
            job, pod = _follow(api, namespace, name, out)
        except KeyboardInterrupt:
            print(f"[pytorchjob] interrupted; deleting {namespace}/{name}", file=out, flush=True)
            with contextlib.suppress(Exception):
                _delete(custom, namespace, name)
            raise
        if job_phase(job)[0] == "Failed":
            message = _failure_message(namespace, name, job, pod)
            print(f"[pytorchjob] {message}; deleting the job", file=out, flush=True)
            with contextlib.suppress(Exception):
                _delete(custom, namespace, name)
            raise PyTorchJobFailed(message)
        print(f"[pytorchjob] {namespace}/{name} succeeded", file=out, flush=True)


def delete_pytorchjob(cfg: PipelineConfig, kfp_run_id: str) -> bool:
    """Delete the PyTorchJob(s) of a pipeline run, found by the ``kfp.run_id`` label (exit handler).

    Args:
        cfg: The resolved pipeline configuration (only ``name`` is read, for the log line).
        kfp_run_id: The KFP run id whose jobs to delete.

    Returns:
        True when a job was deleted; False when there was none (or the operator is not installed).

    Raises:
        PyTorchJobError: no namespace or credentials, or RBAC refused listing or deleting jobs.
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    namespace = current_namespace()
    with _api_client() as api:
        custom = client.CustomObjectsApi(api)
        try:
            jobs = custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, label_selector=f"{RUN_LABEL}={run_label(kfp_run_id)}",
                _request_timeout=REQUEST_TIMEOUT)["items"]
        except ApiException as exc:
            if exc.status == 404:  # the CRD is not installed, so no job can exist
                return False
            raise _api_error(exc, "listing PyTorchJobs", namespace) from None
        deleted = [job["metadata"]["name"] for job in jobs if _delete(custom, namespace, job["metadata"]["name"])]
    for name in deleted:
        print(f"[pytorchjob] deleted {namespace}/{name} of {cfg.name} run {kfp_run_id}", flush=True)
    return bool(deleted)
