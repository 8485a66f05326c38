"""Local pipeline runs that were killed: who ran them, and closing the MLflow runs they left RUNNING.

A pipeline run on the cluster is closed by its exit handler (:func:`components.common.tracking.finalize_pipeline_runs`).
A local run (``pipelines.run_local``) that is SIGKILLed runs no exit handler, so its launcher puts its identity
in the tasks' environment (:func:`local_launcher_env`); the parent run records it as tags (host, pid, process
start: :func:`launcher_tags`), and the next local run closes the runs of launchers that are gone
(:func:`close_orphaned_local_runs`). A local run stopped by Ctrl-C closes its own
(:func:`close_interrupted_local_runs`).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.common.tracking import KFP_RUN_TAG, PARENT_ROLE, ROLE_TAG, close_stale_runs, experiment_id

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from configs.schema import PipelineConfig

LAUNCHER_ENV = "LLMFT_LOCAL_LAUNCHER"  # set by run_local for its tasks: {"host", "pid", "start"}
LAUNCHER_HOST_TAG = "llmft.launcher.host"
LAUNCHER_PID_TAG = "llmft.launcher.pid"
LAUNCHER_START_TAG = "llmft.launcher.process_start"


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


def _this_launcher() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": process_start(os.getpid()) or ""}


def _as_tags(identity: dict[str, Any]) -> dict[str, str]:
    return {LAUNCHER_HOST_TAG: str(identity["host"]), LAUNCHER_PID_TAG: str(int(identity["pid"])),
            LAUNCHER_START_TAG: str(identity["start"])}


def local_launcher_env() -> dict[str, str]:
    """The environment a local launcher (``pipelines.run_local``) gives its tasks: who to check for liveness."""
    return {LAUNCHER_ENV: json.dumps(_this_launcher())}


def this_launcher_tags() -> dict[str, str]:
    """The launcher tags on the parent run of a pipeline run that this process launched locally."""
    return _as_tags(_this_launcher())


def launcher_tags() -> dict[str, str]:
    """Tags naming the local launcher of this pipeline run (none on the cluster, or when the variable is bad)."""
    try:
        return _as_tags(json.loads(os.environ.get(LAUNCHER_ENV, "")))
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
        closed += _kill_pipeline_run(client, cfg, parent,
                                     f"the local pipeline process {pid} on {host} died without closing its runs")
    return closed


def close_interrupted_local_runs(client: MlflowClient, cfg: PipelineConfig) -> list[str]:
    """End KILLED the runs of the local pipeline runs this process launched that are still RUNNING: what is left
    when Ctrl-C stopped it (the step that was running ends its own run KILLED; the parent is left to us).

    Returns:
        The ids of the runs ended, parents included.

    Raises:
        MlflowException: the tracking server refused the search or an update.
    """
    exp_id = experiment_id(client, cfg.mlflow.experiment)
    ours = this_launcher_tags()
    mine = "".join(f" and tags.`{key}` = '{value}'" for key, value in ours.items() if key != LAUNCHER_START_TAG)
    parents = client.search_runs([exp_id], filter_string=f"tags.`{ROLE_TAG}` = '{PARENT_ROLE}' and "
                                 f"attributes.status = 'RUNNING'{mine}", max_results=1000)
    closed: list[str] = []
    for parent in parents:
        if parent.data.tags.get(LAUNCHER_START_TAG, "") == ours[LAUNCHER_START_TAG]:  # not an earlier same-pid run
            closed += _kill_pipeline_run(client, cfg, parent, f"the local pipeline was interrupted (Ctrl-C) on "
                                                               f"{ours[LAUNCHER_HOST_TAG]}")
    return closed


def _kill_pipeline_run(client: MlflowClient, cfg: PipelineConfig, parent: Any, reason: str) -> list[str]:
    """End KILLED every RUNNING run of the pipeline run whose parent run is ``parent``, the reason on the parent."""
    client.set_tag(parent.info.run_id, "llmft.error", reason)
    return close_stale_runs(client, cfg, parent.data.tags[KFP_RUN_TAG], status="KILLED")
