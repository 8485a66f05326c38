"""The summary ``python -m pipelines.run_local`` prints names its own pipeline run, even when another local
run on the same MLflow store started after it (a real SQLite store; the parent runs as the pipeline's
tracking code tags them)."""

from __future__ import annotations

import time

from mlflow.tracking import MlflowClient

from components.common.local_launcher import this_launcher_tags
from components.common.tags import KFP_RUN_TAG, LAUNCHER_PID_TAG, PARENT_ROLE, ROLE_TAG
from pipelines import local_summary


def _parent_run(client: MlflowClient, experiment_id: str, kfp_run_id: str, launcher: dict[str, str],
                start_ms: int) -> str:
    run = client.create_run(experiment_id, start_time=start_ms,
                            tags={ROLE_TAG: PARENT_ROLE, KFP_RUN_TAG: kfp_run_id, **launcher})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_two_local_runs_side_by_side_each_summarise_their_own(local_config):
    client = MlflowClient(tracking_uri=local_config.mlflow.tracking_uri)
    experiment_id = client.create_experiment(local_config.mlflow.experiment)
    since_ms = int(time.time() * 1000) - 1
    ours = this_launcher_tags()
    other = {**ours, LAUNCHER_PID_TAG: str(int(ours[LAUNCHER_PID_TAG]) + 1)}
    _parent_run(client, experiment_id, "ours", ours, since_ms + 1)
    _parent_run(client, experiment_id, "theirs", other, since_ms + 2)  # the newer one, from the other launcher

    assert local_summary.summarise(local_config, since_ms, ours)["kfp_run_id"] == "ours"
    assert local_summary.summarise(local_config, since_ms, other)["kfp_run_id"] == "theirs"
    assert local_summary.summarise(local_config, since_ms)["kfp_run_id"] == "theirs"  # any launcher: the newest
