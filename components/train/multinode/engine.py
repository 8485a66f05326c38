"""What the engines of a multi-node training job share: the Kubernetes API, and the job object itself.

Each engine (:mod:`.trainjob`, :mod:`.pytorchjob`) is a
:class:`JobEngine`: the job's API group and kind, where its pods are, what success looks like and how to build
its manifest. Everything here works on any engine's job: reading, watching and deleting it, its phase from the
controller's conditions, and API errors turned into messages that name the fix (RBAC, a missing controller, an
admission webhook's verdict).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.common.logs import step_logger
from configs.errors import StepError
from configs.schema import PipelineConfig

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, CustomObjectsApi

SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


REQUEST_TIMEOUT = (10, 60)  # (connect, read) seconds for plain API calls
WATCH_S = 30  # longest wait for a job change before the pods are looked at again


class TrainingJobError(StepError, RuntimeError):
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
    preflight: Callable[[ApiClient, str, PipelineConfig], None] | None = None

    @property
    def tag(self) -> str:
        """The prefix of this module's own log lines, e.g. ``[trainjob]``."""
        return self.kind.lower()

    @property
    def log(self) -> logging.Logger:
        """The logger of this module's own lines (``[<tag>] ...``)."""
        return step_logger(self.tag)


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


def suspended(engine: JobEngine, job: Mapping[str, Any]) -> bool:
    """Whether the job is held back: its suspend flag (Kueue sets it until admission) or a Suspended condition."""
    flag: Any = job
    for key in engine.suspend_path:
        flag = flag.get(key) if isinstance(flag, Mapping) else None
    conditions = (job.get("status") or {}).get("conditions") or []
    return flag is True or any(c.get("type") == "Suspended" and c.get("status") == "True" for c in conditions)


def get_job(engine: JobEngine, custom: CustomObjectsApi, namespace: str, name: str) -> dict | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return custom.get_namespaced_custom_object(engine.group, engine.version, namespace, engine.plural, name,
                                                   _request_timeout=REQUEST_TIMEOUT)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def wait_for_change(engine: JobEngine, custom: CustomObjectsApi, namespace: str, name: str,
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
    except Exception as exc:  # the watch's errors: anything but the two below is raised again
        # 410 Gone (a stale resourceVersion) and dropped connections: the caller re-reads the job anyway.
        if not is_transient(exc) and getattr(exc, "status", None) != 410:
            raise
    finally:
        events.close()


def delete_job(engine: JobEngine, custom: CustomObjectsApi, namespace: str, name: str) -> bool:
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


def wait_gone(engine: JobEngine, custom: CustomObjectsApi, namespace: str, name: str,
               timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while (job := get_job(engine, custom, namespace, name)) is not None:
        if time.monotonic() > deadline:
            raise TrainingJobError(f"{engine.kind} {namespace}/{name} is still there {timeout_s:.0f} s after "
                                   "deletion (a finalizer?); delete it by hand and retry")
        wait_for_change(engine, custom, namespace, name, job["metadata"].get("resourceVersion"), timeout_s=10)
