"""The whole local pipeline SIGKILLed mid-run, then run again (issues 18 and 19).

``python -m pipelines.run_local`` is started on a fresh storage root, in its own process group, and the
group is SIGKILLed once the train step's trainer has written its first checkpoint: run_local, the
kfp.local task process and (through the parent-death signal, since it runs in its own session) the
trainer all die, and no exit handler runs. Then the same command runs again. Afterwards nothing is
RUNNING in MLflow (the killed run's parent and train step are KILLED, with the dead launcher named), no
process of the killed run is left, every published model version is complete, and the rerun succeeds.

Real kfp.local, real LLaMA-Factory training, the SQLite MLflow store: a few minutes (``make reliability``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from builders import REPO_ROOT

from components.common.tags import LAUNCHER_PID_TAG, PARENT_ROLE, ROLE_TAG, STEP_TAG
from components.merge.publish import current_version, published_versions
from components.merge.verify import verify_model_dir
from components.train.checkpoints import checkpoint_problem
from components.train.multinode.torchrun import WORKER_MODULE
from pipelines import run_local

from .processes import processes_of

pytestmark = pytest.mark.reliability_long



def _first_checkpoint(storage: Path) -> Path | None:
    for checkpoint in (storage / "output").glob("*/checkpoints/checkpoint-*"):
        if checkpoint_problem(checkpoint) is None:
            return checkpoint
    return None


def _wait_until_gone(storage: Path, timeout_s: float) -> list[psutil.Process]:
    """Poll until no process of this storage root is left (a zombie counts as gone); return what is left."""
    deadline = time.monotonic() + timeout_s
    while (left := processes_of(storage)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_a_sigkilled_local_pipeline_leaves_nothing_running_and_the_rerun_succeeds(tmp_path, tiny_model_dir):
    from mlflow.tracking import MlflowClient

    storage = tmp_path / "storage"
    shutil.copytree(tiny_model_dir, storage / "models" / "base-model")  # instead of building it again
    cfg = run_local.localise(run_local.load_config("local"), storage)
    command = [sys.executable, "-m", "pipelines.run_local", "--storage", str(storage)]
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))

    with open(tmp_path / "killed.log", "wb") as log:
        killed = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        deadline = time.monotonic() + 600
        while _first_checkpoint(storage) is None:
            assert killed.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the train step wrote no checkpoint in 10 minutes"
            time.sleep(0.2)  # polling the volume: the checkpoint is the event, and there is no notification
        trainers = [process for process in processes_of(storage) if WORKER_MODULE in process.cmdline()]
        assert trainers, "the trainer was not found"
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
    alive = _wait_until_gone(storage, timeout_s=60)
    assert not alive, [process.info["cmdline"] for process in alive]  # the trainer died with its step

    client = MlflowClient(cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    left = {run.data.tags.get(STEP_TAG) or run.data.tags.get(ROLE_TAG): run
            for run in client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")}
    assert {PARENT_ROLE, "train"} <= set(left)  # what the issue saw: runs RUNNING after the kill
    assert left[PARENT_ROLE].data.tags[LAUNCHER_PID_TAG] == str(killed.pid)

    rerun = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "left RUNNING by a killed local run" in rerun.stdout and "== Pipeline run" in rerun.stdout

    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert not [run.info.run_name for run in runs if run.info.status == "RUNNING"]
    for run in left.values():
        closed = client.get_run(run.info.run_id)
        assert closed.info.status == "KILLED" and closed.data.tags["llmft.closed_by"] == "stale-run-cleanup"
    assert f"process {killed.pid} on" in client.get_run(left[PARENT_ROLE].info.run_id).data.tags["llmft.error"]
    parents = [run for run in runs if run.data.tags.get(ROLE_TAG) == PARENT_ROLE]
    assert sorted(run.info.status for run in parents) == ["FINISHED", "KILLED"]

    # No half-published model: every version directory verifies, and `current`, if set, is one of them.
    models_dir = storage / "models" / cfg.mlflow.registered_model_name
    versions = published_versions(models_dir)
    assert len(versions) == 1  # the rerun's; the killed run never reached the merge
    for version in versions:
        verify_model_dir(models_dir / version)
    assert current_version(models_dir) in (None, *versions)
