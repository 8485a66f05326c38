"""The pods of a multi-node training job: node 0's log in the step's log, why it waits, which node failed.

The step follows node 0 (the lead pod: a TrainJob's ``node-0``, a PyTorchJob's ``master``): it streams its log
(``[node-0] ...``), resuming a dropped stream without repeating lines, says why the pod is pending or that Kueue
holds the job, and when the job fails, finds the node whose container failed first and its exit code.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from components.common.logs import step_logger
from components.train.multinode.engine import REQUEST_TIMEOUT, JobEngine, api_error, is_transient, job_phase, suspended
from components.train.multinode.job_spec import QUEUE_LABEL

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, CoreV1Api, V1Pod

LOG_IDLE_S = 300  # a log stream silent this long is reopened (guards against a silently dropped connection)


_LOG_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z ?(.*)$", re.DOTALL)


def list_pods(core: CoreV1Api, namespace: str, selector: str) -> list[V1Pod]:
    pods = core.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT).items
    return sorted(pods, key=lambda pod: str(pod.metadata.creation_timestamp or ""))


def lead_pod(engine: JobEngine, core: CoreV1Api, namespace: str, name: str) -> V1Pod | None:
    """Node 0's newest pod (a restarted node gets a new pod)."""
    pods = list_pods(core, namespace, f"{engine.pods},{engine.lead}".format(name=name))
    return pods[-1] if pods else None


def _container_status(engine: JobEngine, pod: V1Pod | None) -> Any:
    for status in (pod.status.container_statuses or []) if pod and pod.status else []:
        if status.name == engine.container:
            return status
    return None


def container_state(engine: JobEngine, pod: V1Pod | None) -> Any:
    status = _container_status(engine, pod)
    return status.state if status is not None else None


def pending_note(engine: JobEngine, job: Mapping[str, Any], pod: V1Pod | None) -> str:
    """Why node 0 is not running yet, in one line ('' once it runs)."""
    if suspended(engine, job):
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
    state = container_state(engine, pod)
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


def stream_lead_log(engine: JobEngine, core: CoreV1Api, namespace: str, pod_name: str, cursor: dict) -> int:
    """Print node 0's log lines after ``cursor['last']`` (``[<lead name>] <line>``); return how many were printed.

    A reopened stream asks for a little more than the missing time and drops lines it already printed.
    """
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    options: dict[str, Any] = {"container": engine.container, "timestamps": True,
                               "_request_timeout": (REQUEST_TIMEOUT[0], LOG_IDLE_S)}
    if cursor.get("last"):
        options["since_seconds"] = max(1, math.ceil(time.time() - cursor["last"][0]) + 30)
    printed, lead = 0, step_logger(engine.lead_name)
    lines = watch.Watch().stream(core.read_namespaced_pod_log, pod_name, namespace, **options)
    try:
        for raw in lines:
            key, text = _timestamp_key(raw)
            if key is not None and cursor.get("last") and key <= cursor["last"]:
                continue
            lead.info(text)
            cursor["last"] = key or cursor.get("last")
            printed += 1
    except ApiException as exc:
        if exc.status not in (400, 404) and not is_transient(exc):  # 400: not started yet; 404: pod gone
            raise api_error(engine, exc, f"reading the log of {pod_name}", namespace) from None
    except Exception as exc:  # the log stream's errors: anything but a transient one is raised again
        if not is_transient(exc):  # an idle timeout or a dropped connection: the caller resumes
            raise
    finally:
        lines.close()
    return printed


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


def failure_message(engine: JobEngine, api: ApiClient, namespace: str, name: str, job: dict,
                     lead: V1Pod | None) -> str:
    """The controller's reason and message, and the exit of the node whose container failed first (else of
    node 0's container)."""
    from kubernetes import client

    _, reason, message = job_phase(engine, job)
    text = (f"{engine.kind} {namespace}/{name} failed: {reason or 'Failed'}: "
            f"{message or 'no message from the controller'}")
    pods = [lead] if lead is not None else []
    with contextlib.suppress(Exception):  # the message is still useful without the other nodes
        pods += [pod for pod in list_pods(client.CoreV1Api(api), namespace, engine.pods.format(name=name))
                 if lead is None or pod.metadata.name != lead.metadata.name]
    failed = _failed_container(engine, pods)
    state = container_state(engine, lead)
    if failed is None and state is not None and state.terminated is not None:
        failed = (lead.metadata.name, state.terminated)
    if failed is not None:
        where, ended = failed
        text += f"; pod {where}: container {ended.reason or 'terminated'} with exit code {ended.exit_code}"
        if ended.message:
            text += f": {ended.message.strip()[:500]}"
    return text
