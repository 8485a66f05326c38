"""Ctrl-C during ``python -m pipelines.run_local``: one line, the MLflow runs ended KILLED, nothing half-written.

The local pipeline runs on a fresh storage root in its own process group, and the whole group gets SIGINT (what a
terminal's Ctrl-C sends) as soon as the console reports validate-dataset done: the parent run is open and the
train task is starting. Before the fix a 68-line KeyboardInterrupt traceback ended it and the parent run stayed
RUNNING. Real kfp.local and the SQLite MLflow store; the train step is interrupted early (about 40 s here).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

from builders import REPO_ROOT

from components.common.tags import PARENT_ROLE, ROLE_TAG
from pipelines import run_local

from .processes import processes_of


def test_ctrl_c_ends_run_local_with_one_line_and_every_run_killed(tmp_path, tiny_model_dir):
    from mlflow.tracking import MlflowClient

    storage = tmp_path / "storage"
    shutil.copytree(tiny_model_dir, storage / "models" / "base-model")  # instead of building it again
    cfg = run_local.localise(run_local.load_config("local"), storage)
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.run_local", "--storage", str(storage)], env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    before = []
    for line in proc.stdout:  # the console's own report is the event: no polling
        before.append(line)
        if line.startswith("✓ validate-dataset"):
            break
    assert proc.poll() is None, "".join(before) + proc.stderr.read()
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
    out, err = proc.communicate(timeout=120)
    seconds = time.monotonic() - started

    assert proc.returncode == 130, out + err
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err, out + err
    assert len(err.strip().splitlines()) == 1, err
    assert re.match(r"interrupted \(Ctrl-C\): ended [1-9]\d* MLflow run\(s\) KILLED; task logs in ", err.strip()), err
    assert not [process.info["cmdline"] for process in processes_of(storage)]

    client = MlflowClient(cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert not [run.info.run_name for run in runs if run.info.status == "RUNNING"]
    (parent,) = [run for run in runs if run.data.tags.get(ROLE_TAG) == PARENT_ROLE]
    assert parent.info.status == "KILLED" and "interrupted" in parent.data.tags["llmft.error"]
    assert {run.info.status for run in runs if run.data.tags.get(ROLE_TAG) == "train"} <= {"KILLED"}

    # Nothing half-written: no temporary file or staging directory of an atomic write is left, and no model.
    leftovers = [path for path in storage.rglob("*") if ".tmp-" in path.name or path.name.startswith(".incoming-")]
    assert leftovers == []
    assert not (storage / "models" / cfg.mlflow.registered_model_name).exists()
    print(f"interrupted run_local ended in {seconds:.0f} s")
