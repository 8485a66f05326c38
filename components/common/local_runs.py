"""Local pipeline runs that were killed: closing the MLflow runs they left RUNNING.

A pipeline run on the cluster is closed by its exit handler
(:func:`components.common.pipeline_runs.finalize_pipeline_runs`). A local run (``pipelines.run_local``) that is
SIGKILLed runs no exit handler, so its launcher puts its identity in the tasks' environment
(:func:`components.common.local_launcher.local_launcher_env`); the parent run records it as tags (host, pid,
process start: :func:`components.common.local_launcher.launcher_tags`), and the next local run closes the runs of
launchers that are gone (:func:`close_orphaned_local_runs`). A local run stopped by Ctrl-C closes its own
(:func:`close_interrupted_local_runs`).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from components.common.local_launcher import launcher_filter, process_start, this_launcher_tags
from components.common.pipeline_runs import close_stale_runs, experiment_id
from components.common.tags import (
    ERROR_TAG,
    KFP_RUN_TAG,
    LAUNCHER_HOST_TAG,
    LAUNCHER_PID_TAG,
    LAUNCHER_START_TAG,
    PARENT_ROLE,
    ROLE_TAG,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from configs.schema import PipelineConfig


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
    parents = client.search_runs([exp_id], filter_string=f"tags.`{ROLE_TAG}` = '{PARENT_ROLE}' and "
                                 f"attributes.status = 'RUNNING'{launcher_filter(ours)}", max_results=1000)
    closed: list[str] = []
    for parent in parents:
        if parent.data.tags.get(LAUNCHER_START_TAG, "") == ours[LAUNCHER_START_TAG]:  # not an earlier same-pid run
            closed += _kill_pipeline_run(client, cfg, parent, f"the local pipeline was interrupted (Ctrl-C) on "
                                                               f"{ours[LAUNCHER_HOST_TAG]}")
    return closed


def _kill_pipeline_run(client: MlflowClient, cfg: PipelineConfig, parent: Any, reason: str) -> list[str]:
    """End KILLED every RUNNING run of the pipeline run whose parent run is ``parent``, the reason on the parent."""
    client.set_tag(parent.info.run_id, ERROR_TAG, reason)
    return close_stale_runs(client, cfg, parent.data.tags[KFP_RUN_TAG], status="KILLED")
