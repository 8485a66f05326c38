"""The tracking server goes down in the middle of training and comes back: no metric point is lost.

``test_no_metric_point_is_lost_when_the_tracking_server_restarts`` runs the real train step (LLaMA-Factory
LoRA on the tiny model, CPU) against a real ``mlflow server`` on loopback (tests/conftest.py's
``MlflowServer``: the same port and SQLite file after a restart). Once the trainer has written some steps
to ``trainer_log.jsonl`` on the volume, the server is stopped, kept down for ``OUTAGE_S`` or until the
trainer reaches a given step (so that training goes on after the restart), and started again. The step
must succeed; every loss and learning-rate point of ``trainer_log.jsonl`` (the trainer's own record on
the volume) must be in the train run's metric history at the same step with the same value; and once
the exit handler's logic has run, no run is left RUNNING. Two variants:

- ``trainer-retries`` (~60 s on 2 cores): the shipped settings; the trainer's MLflow client waits the outage out.
- ``no-trainer-retries`` (~40 s, ``make reliability``): the trainer's retry budget set to zero
  (``TRAINER_MLFLOW_HTTP``), so its points logged during the outage are dropped; training must go on
  regardless, and the step must re-log them from the volume (``backfill_metrics``).

The numbers (outage length, points written before, during and after it, points backfilled) are printed;
run with ``-s`` to see them. ``test_backfill_relogs_only_the_missing_points`` drives ``backfill_metrics``
on literal log rows against a real SQLite MLflow store.

A server unreachable at the start, and a killed trainer, are covered in tests/common/test_tracking.py and
tests/train/test_train.py.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from conftest import MlflowServer

from components.common.pipeline_runs import finalize_pipeline_runs
from components.common.storage import run_dir
from components.common.tags import BACKFILL_TAG
from components.train import train as train_module
from components.train.metrics import backfill_metrics, step_points
from components.train.train import train_model
from configs.loading import load_config

OUTAGE_S = 10.0  # the longest the server stays down: the fault injected, not a synchronisation
POINTS_BEFORE = 10  # trainer log points written before the server is stopped
DEADLINE_S = 240


def _loss_points(root: Path) -> list[dict]:
    """The trainer's per-step log lines so far (checkpoints/ while training, adapter/ once published)."""
    for path in (root / "checkpoints" / "trainer_log.jsonl", root / "adapter" / "trainer_log.jsonl"):
        if path.is_file():  # the text after the last newline may be a line still being written
            lines = path.read_text(encoding="utf-8").split("\n")[:-1]
            return [entry for entry in map(json.loads, lines) if "loss" in entry]
    return []


def _wait_for(condition, what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def module_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-outage"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def restartable_server(module_server):
    """The module's server, running (a test that failed during its outage may have left it stopped)."""
    if module_server.process is None:
        module_server.start()
    return module_server


@pytest.mark.parametrize(("trainer_retries", "max_steps", "restart_by_step"), [
    # 20-50 steps/s here: down for a few hundred steps, and back for the rest.
    pytest.param(None, 600, 300, id="trainer-retries", marks=pytest.mark.slow),
    pytest.param("0", 500, 100, id="no-trainer-retries", marks=pytest.mark.reliability_long),
])
def test_no_metric_point_is_lost_when_the_tracking_server_restarts(
        trainer_retries, max_steps, restart_by_step, restartable_server, storage_root, monkeypatch):
    from mlflow.tracking import MlflowClient

    if trainer_retries is not None:
        monkeypatch.setitem(train_module.TRAINER_MLFLOW_HTTP, "MLFLOW_HTTP_REQUEST_MAX_RETRIES", trainer_retries)
    server = restartable_server
    kfp_run_id = f"outage-retries-{trainer_retries}"
    cfg = load_config("local", overrides=[
        f"storage.mount_path={storage_root}", f"mlflow.tracking_uri={server.uri}", f"mlflow.experiment={kfp_run_id}",
        f"training.max_steps={max_steps}", "training.logging_steps=1", f"training.save_steps={max_steps}",
    ])
    out = run_dir(cfg, kfp_run_id)
    outcome: dict = {}

    def train() -> None:
        try:
            outcome["result"] = train_model(cfg, kfp_run_id, "hash")
        except BaseException as exc:  # reported by the assertion below
            outcome["error"] = exc

    started = time.monotonic()
    worker = threading.Thread(target=train, daemon=True)
    worker.start()
    _wait_for(lambda: len(_loss_points(out)) >= POINTS_BEFORE or not worker.is_alive(), "the first logged steps")
    assert worker.is_alive(), f"training ended before the outage: {outcome}"

    server.stop()
    down_at, before = time.monotonic(), len(_loss_points(out))
    _wait_for(lambda: time.monotonic() - down_at >= OUTAGE_S or len(_loss_points(out)) >= restart_by_step,
              "the outage to last")
    restart_at = time.monotonic()
    server.start()  # returns once /health answers on the same port
    outage_s, during = time.monotonic() - down_at, len(_loss_points(out)) - before
    worker.join(timeout=DEADLINE_S)
    assert not worker.is_alive(), "the train step did not return after the server came back"
    assert "error" not in outcome, f"the train step failed: {outcome.get('error')!r}"
    wall_s = time.monotonic() - started

    result = outcome["result"]
    client = MlflowClient(server.uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    log = _loss_points(out)
    after = len(log) - before - during
    assert len(log) == max_steps
    assert during >= 5, f"the outage covered only {during} logging steps; it must overlap training"
    assert after > 0, "training ended before the server was back; the trainer's logging after it is untested"

    # Every loss and learning-rate point on the volume is in the run: same steps, same values.
    for log_key, metric_key in (("loss", "loss"), ("lr", "learning_rate")):
        expected = {entry["current_steps"]: entry[log_key] for entry in log}
        logged: dict[int, list[float]] = {}
        for metric in client.get_metric_history(result.mlflow_run_id, metric_key):
            logged.setdefault(metric.step, []).append(metric.value)
        missing = sorted(set(expected) - set(logged))
        assert not missing, f"{len(missing)} {metric_key} points lost, steps {missing[:10]}..."
        assert set(logged) == set(expected), f"{metric_key} at steps the trainer never logged"
        for step, values in logged.items():  # a retried request may have landed twice: same value
            assert values == pytest.approx([expected[step]] * len(values), rel=1e-6), f"{metric_key} step {step}"
    backfilled = int(run.data.tags[BACKFILL_TAG])
    if trainer_retries == "0":  # the trainer dropped what it logged during the outage; the step re-logged it
        assert backfilled >= during, f"only {backfilled} points backfilled for {during} steps logged while down"

    # The exit handler (finalize_pipeline_runs) closes the parent; then nothing is left RUNNING.
    finalize_pipeline_runs(cfg, kfp_run_id, "SUCCEEDED")
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    statuses = {r.info.run_name: r.info.status for r in client.search_runs([experiment.experiment_id])}
    assert "RUNNING" not in statuses.values(), statuses
    print(f"\n[outage] server unreachable {outage_s:.1f} s (down {restart_at - down_at:.1f} s, restart "
          f"{outage_s - restart_at + down_at:.1f} s); trainer log points {before} before, {during} during, "
          f"{after} after; {backfilled} metric points backfilled by the step; train step {wall_s:.1f} s")


def test_backfill_relogs_only_the_missing_points(tmp_path):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    # trainer_state.json's log_history as the Trainer writes it: one entry per logging step, then eval and
    # the end-of-training summary (both at the last step), with a name MLflow needs sanitised.
    history = [{"step": step, "loss": 7.0 - step / 10, "grad_norm": step / 3, "learning_rate": 5e-3, "epoch": step / 8}
               for step in range(1, 7)]
    history += [{"step": 6, "eval_loss": 6.5, "eval_acc(top1)": 0.25, "epoch": 0.75},
                {"step": 6, "train_loss": 6.7, "train_runtime": 1.5, "epoch": 0.75, "note": "not a number"}]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("backfill", artifact_location=str(tmp_path / "artifacts"))

    # What reached the server before and after an outage: the per-step batches of steps 1, 2, 5 and 6, as the
    # trainer's callback logs them (its names: the validation loss as val_loss).
    run_id = client.create_run(experiment).info.run_id
    delivered = [entry for entry in history if entry["step"] in (1, 2, 5, 6)]
    client.log_batch(run_id, metrics=[Metric(key, value, 0, entry["step"])
                                      for entry in delivered for key, value in step_points(entry).items()])
    assert backfill_metrics(client, run_id, history) == 8  # steps 3 and 4: loss, grad_norm, learning_rate, epoch
    for key in ("loss", "grad_norm", "learning_rate", "epoch"):
        points = {m.step: m.value for m in client.get_metric_history(run_id, key)}
        assert points == pytest.approx({e["step"]: e[key] for e in history if key in e})
    assert backfill_metrics(client, run_id, history) == 0  # idempotent
    assert len(client.get_metric_history(run_id, "loss")) == 6

    # An attempt resumed from checkpoint-4 owns steps 5 and 6 only; the sanitised name is the callback's.
    resumed = client.create_run(experiment).info.run_id
    # Steps 5 and 6, and the eval; the end-of-training summary is not the trainer's to log (the step logs
    # train_loss and train_runtime_s once, under one name each).
    assert backfill_metrics(client, resumed, history, after_step=4) == 2 * 4 + 2
    assert "train_runtime" not in client.get_run(resumed).data.metrics
    assert {"val_loss", "val_acc_top1_"} <= set(client.get_run(resumed).data.metrics)
    assert {m.step for m in client.get_metric_history(resumed, "loss")} == {5, 6}
    assert client.get_metric_history(resumed, "val_acc_top1_")[0].value == 0.25
    assert "train_loss" not in client.get_run(resumed).data.metrics
