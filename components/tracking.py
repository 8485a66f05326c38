"""MLflow lineage shared by every step: one parent run per pipeline run, one child run per step.

The parent run is found or created by the tag ``kfp.run_id`` (so retries and later steps attach to
the same one); each step opens a child run through :func:`step_run`, which ends it FAILED when the
step raises and closes RUNNING leftovers of an earlier, killed attempt of the same step.
Credentials come only from the environment (``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` or
``MLFLOW_TRACKING_TOKEN`` from a Kubernetes Secret); nothing here logs them.

A pipeline run on the cluster is closed by its exit handler (:func:`finalize_pipeline_runs`). A local run
(``pipelines.run_local``) that is SIGKILLed runs no exit handler, so its launcher puts its identity in the
tasks' environment (:func:`local_launcher_env`); the parent run records it as tags (host, pid, process start),
and the next local run closes the runs of launchers that are gone (:func:`close_orphaned_local_runs`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from configs.schema import PipelineConfig

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

KFP_RUN_TAG = "kfp.run_id"
ROLE_TAG = "llmft.role"
STEP_TAG = "llmft.step"
PARENT_ROLE = "pipeline"
# Environment variables the tasks read from the MLflow credentials Secret (all optional: an open server needs none).
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
PREFLIGHT_TIMEOUT_S = 20
RUN_NAME_FILE = "run_name.json"
# How kfp.local names a run: "<pipeline>-YYYY-MM-DD-HH-MM-SS-ffffff" (not a name anybody chose).
_KFP_LOCAL_NAME = re.compile(r".+-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-\d{6}")
LAUNCHER_ENV = "LLMFT_LOCAL_LAUNCHER"  # set by run_local for its tasks: {"host", "pid", "start"}
LAUNCHER_HOST_TAG = "llmft.launcher.host"
LAUNCHER_PID_TAG = "llmft.launcher.pid"
LAUNCHER_START_TAG = "llmft.launcher.process_start"


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server cannot be reached; the message names the URI."""


def configure_environment(cfg: PipelineConfig) -> None:
    """Point MLflow at the configured server with short HTTP timeouts (the defaults retry for minutes)."""
    os.environ["MLFLOW_TRACKING_URI"] = cfg.mlflow.tracking_uri
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(cfg.mlflow.request_timeout_s)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(cfg.mlflow.request_max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = "0.5"
    # A step sets its run explicitly; an experiment name in the environment would start a second run.
    os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)


def preflight(tracking_uri: str, timeout_s: float = PREFLIGHT_TIMEOUT_S) -> None:
    """Fail fast with a clear message when the tracking server does not answer.

    Raises:
        TrackingUnavailable: no answer from ``<uri>/health`` within ``timeout_s`` seconds.
    """
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return
    if not tracking_uri.startswith(("http://", "https://")):
        return
    deadline = time.monotonic() + timeout_s
    last_error = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=min(5.0, timeout_s)) as reply:
                if reply.status == 200:
                    return
                last_error = f"HTTP {reply.status}"
        except urllib.error.HTTPError as exc:
            # A server that answers (even 401/403 behind an auth proxy) is reachable.
            if exc.code in (401, 403):
                return
            last_error = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last_error = str(getattr(exc, "reason", exc))
        time.sleep(1.0)
    raise TrackingUnavailable(
        f"MLflow tracking server {tracking_uri} is unreachable after {timeout_s:.0f} s ({last_error}); "
        "check mlflow.tracking_uri and that the server is running"
    )


def make_client(cfg: PipelineConfig) -> MlflowClient:
    """An MlflowClient for the configured server, after the preflight check."""
    from mlflow.tracking import MlflowClient

    configure_environment(cfg)
    preflight(cfg.mlflow.tracking_uri)
    return MlflowClient(tracking_uri=cfg.mlflow.tracking_uri, registry_uri=cfg.mlflow.tracking_uri)


def experiment_id(client: MlflowClient, name: str) -> str:
    """Id of the named experiment, created when missing (race-safe)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # created concurrently by another step
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _runs_with_tags(client: MlflowClient, exp_id: str, tags: dict[str, str]) -> list:
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    return client.search_runs([exp_id], filter_string=query, max_results=1000, order_by=["attributes.start_time ASC"])


def process_start(pid: int) -> str | None:
    """An identity of the live process ``pid`` that a reused pid does not share, or None when it is gone.

    On Linux: the boot id and the process's start time in clock ticks (``/proc``). Elsewhere only whether the
    pid exists ("" when it does).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None  # Linux, and no such process
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # it exists, as another user's process
        return ""
    except OSError:
        return None
    return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"  # field 22, starttime (the name may hold spaces)


def local_launcher_env() -> dict[str, str]:
    """The environment a local launcher (``pipelines.run_local``) gives its tasks: who to check for liveness."""
    identity = {"host": socket.gethostname(), "pid": os.getpid(), "start": process_start(os.getpid()) or ""}
    return {LAUNCHER_ENV: json.dumps(identity)}


def _launcher_tags() -> dict[str, str]:
    """Tags naming the local launcher of this pipeline run (none on the cluster, or when the variable is bad)."""
    try:
        identity = json.loads(os.environ.get(LAUNCHER_ENV, ""))
        return {LAUNCHER_HOST_TAG: str(identity["host"]), LAUNCHER_PID_TAG: str(int(identity["pid"])),
                LAUNCHER_START_TAG: str(identity["start"])}
    except (ValueError, TypeError, KeyError):
        return {}


def close_orphaned_local_runs(client: MlflowClient, cfg: PipelineConfig) -> list[str]:
    """End the runs that local pipeline runs on this host left RUNNING when their launcher died (SIGKILL).

    A RUNNING parent run whose launcher tags name this host and a process that no longer exists (or whose pid
    now belongs to another process) is ended KILLED with the reason as ``llmft.error``, and so is every
    RUNNING run of its pipeline run (the step that was running). Runs of live launchers, of other hosts and of
    cluster runs (no launcher tags) are left alone.

    Returns:
        The ids of the runs ended, parents included.

    Raises:
        MlflowException: the tracking server refused the search or an update.
    """
    exp_id = experiment_id(client, cfg.mlflow.experiment)
    host = socket.gethostname()
    parents = client.search_runs([exp_id], filter_string=f"tags.`{ROLE_TAG}` = '{PARENT_ROLE}' and "
                                 "attributes.status = 'RUNNING'", max_results=1000)
    closed: list[str] = []
    for parent in parents:
        tags = parent.data.tags
        if tags.get(LAUNCHER_HOST_TAG) != host or not tags.get(LAUNCHER_PID_TAG, "").isdigit():
            continue
        pid = int(tags[LAUNCHER_PID_TAG])
        if process_start(pid) == tags.get(LAUNCHER_START_TAG, ""):
            continue  # still running
        client.set_tag(parent.info.run_id, "llmft.error",
                       f"the local pipeline process {pid} on {host} died without closing its runs")
        closed += close_stale_runs(client, cfg, tags[KFP_RUN_TAG], status="KILLED")
    return closed


def write_run_name(cfg: PipelineConfig, kfp_run_id: str, kfp_run_name: str) -> str:
    """Decide the name of this pipeline run's MLflow runs and keep it in the run directory; return it.

    The KFP run's own name when it has one; otherwise (kfp.local names a run after the pipeline and the time)
    ``<pipeline>-<method>-<UTC time>``.
    """
    from components.storage import atomic_write_text, run_dir

    name = kfp_run_name.strip()
    if not name or _KFP_LOCAL_NAME.fullmatch(name):
        name = f"{cfg.name}-{cfg.training.method}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    atomic_write_text(run_dir(cfg, kfp_run_id) / RUN_NAME_FILE, json.dumps({"name": name[:250]}) + "\n")
    return name


def run_name(cfg: PipelineConfig, kfp_run_id: str) -> str:
    """The name :func:`write_run_name` chose for this pipeline run (``<pipeline>-<run id>`` when there is none)."""
    from components.storage import run_dir

    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return str(json.loads((run_dir(cfg, kfp_run_id) / RUN_NAME_FILE).read_text(encoding="utf-8"))["name"])
    return f"{cfg.name}-{kfp_run_id}"


def public_params(cfg: PipelineConfig) -> dict[str, str]:
    """The parent run's params: every run-form field and every other field that differs from its default,
    flattened (``training.learning_rate``): what a person compares between pipeline runs."""
    from configs.form import by_path, canonical

    form = by_path()
    defaults = _flatten(PipelineConfig().model_dump(mode="json", exclude_none=True))
    params = {}
    for path, value in _flatten(cfg.model_dump(mode="json", exclude_none=True)).items():
        if value != "" and (path in form or canonical(value) != canonical(defaults.get(path))):
            params[path] = value if isinstance(value, str) else json.dumps(value)
    return {key: value[:6000] for key, value in params.items()}  # MLflow's limit on a param value


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and key != "gpu_node_selector":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def parent_run_id(client: MlflowClient, cfg: PipelineConfig, kfp_run_id: str) -> str:
    """The parent run of this pipeline run: found by ``kfp.run_id``, else created with the run's params (and
    launcher tags when local)."""
    from mlflow.entities import Param

    exp_id = experiment_id(client, cfg.mlflow.experiment)
    found = _runs_with_tags(client, exp_id, {KFP_RUN_TAG: kfp_run_id, ROLE_TAG: PARENT_ROLE})
    if found:
        return found[0].info.run_id
    run = client.create_run(
        exp_id,
        run_name=run_name(cfg, kfp_run_id),
        tags={KFP_RUN_TAG: kfp_run_id, ROLE_TAG: PARENT_ROLE, "llmft.config_hash": cfg.config_hash(),
              "llmft.method": cfg.training.method, **_launcher_tags()},
    )
    params = [Param(key, value) for key, value in public_params(cfg).items()]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run.info.run_id, params=params[start:start + 100])
    return run.info.run_id


def close_stale_runs(client: MlflowClient, cfg: PipelineConfig, kfp_run_id: str, step: str | None = None,
                     status: str = "KILLED") -> list[str]:
    """End RUNNING runs of this pipeline run (of one step, or all) with ``status``; return their ids."""
    exp_id = experiment_id(client, cfg.mlflow.experiment)
    tags = {KFP_RUN_TAG: kfp_run_id}
    if step:
        tags[STEP_TAG] = step
    closed = []
    for run in _runs_with_tags(client, exp_id, tags):
        if run.info.status == "RUNNING" and (step is None or run.data.tags.get(ROLE_TAG) != PARENT_ROLE):
            client.set_tag(run.info.run_id, "llmft.closed_by", "stale-run-cleanup")
            client.set_terminated(run.info.run_id, status=status)
            closed.append(run.info.run_id)
    return closed


@contextlib.contextmanager
def step_run(cfg: PipelineConfig, kfp_run_id: str, step: str, *,
             system_metrics: bool = False) -> Iterator[tuple[MlflowClient, str]]:
    """Open this step's child run under the pipeline's parent run; yield ``(client, run_id)``.

    Earlier attempts of the same step left RUNNING (a killed pod) are ended KILLED first. The child
    ends FINISHED when the block completes and FAILED (with the error as a tag) when it raises. With
    ``system_metrics`` (the GPU steps), MLflow's monitor samples CPU, memory and GPU into the run meanwhile.
    """
    client = make_client(cfg)
    parent = parent_run_id(client, cfg, kfp_run_id)
    close_stale_runs(client, cfg, kfp_run_id, step=step)
    exp_id = experiment_id(client, cfg.mlflow.experiment)
    attempt = len(_runs_with_tags(client, exp_id, {KFP_RUN_TAG: kfp_run_id, STEP_TAG: step})) + 1
    run = client.create_run(
        exp_id,
        run_name=f"{step} · {run_name(cfg, kfp_run_id)}" + ("" if attempt == 1 else f" (attempt {attempt})"),
        tags={"mlflow.parentRunId": parent, KFP_RUN_TAG: kfp_run_id, STEP_TAG: step, ROLE_TAG: step,
              "llmft.attempt": str(attempt)},
    )
    run_id = run.info.run_id
    monitor = _system_metrics_monitor(run_id, cfg) if system_metrics else None
    try:
        yield client, run_id
    except BaseException as exc:
        with contextlib.suppress(Exception):
            if monitor:
                monitor.finish()
            client.set_tag(run_id, "llmft.error", f"{type(exc).__name__}: {exc}"[:4000])
            client.set_terminated(run_id, status="FAILED")
        raise
    if monitor:
        monitor.finish()
    client.set_terminated(run_id, status="FINISHED")


def _system_metrics_monitor(run_id: str, cfg: PipelineConfig):
    """MLflow's system metrics monitor, sampling into ``run_id`` (every 5 s by default) until finished."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from components.train_mlflow import system_metrics_env

    settings = system_metrics_env()
    monitor = SystemMetricsMonitor(run_id, sampling_interval=float(settings["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"]),
                                   samples_before_logging=int(settings["MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING"]),
                                   tracking_uri=cfg.mlflow.tracking_uri)
    monitor.start()
    return monitor


def finalize_pipeline_runs(cfg: PipelineConfig, kfp_run_id: str, pipeline_state: str, error: str = "") -> dict:
    """Exit-handler logic: close every run of this pipeline run according to the pipeline's final state.

    A failed or cancelled pipeline leaves no RUNNING run: open children end FAILED and the parent
    ends FAILED with the error as a tag. A successful pipeline ends its parent FINISHED.
    Returns a summary ``{"parent": id, "closed": [...], "status": ...}``.
    """
    client = make_client(cfg)
    parent = parent_run_id(client, cfg, kfp_run_id)
    succeeded = pipeline_state.upper() == "SUCCEEDED"
    status = "FINISHED" if succeeded else "FAILED"
    closed = [] if succeeded else close_stale_runs(client, cfg, kfp_run_id, status="FAILED")
    client.set_tag(parent, "kfp.final_state", pipeline_state)
    if error:
        client.set_tag(parent, "llmft.error", error[:4000])
    client.set_terminated(parent, status=status)
    return {"parent": parent, "closed": [run for run in closed if run != parent], "status": status}
