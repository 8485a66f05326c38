"""The tracking server restarts in the middle of training (~40 s).

A real ``mlflow server`` on loopback is stopped after the trainer has logged some steps and started
again on the same port and store. The training step still succeeds, every loss point the trainer
wrote to its log on the volume is in the run's metric history, and no step run is left RUNNING (the
pipeline's parent run stays open until its exit handler, which is not part of this test).
"""

from __future__ import annotations

import json
import threading
import time

from conftest import MlflowServer

from components.storage import run_dir
from components.train import train_model
from configs.schema import load_config

OUTAGE_S = 8.0  # how long the server stays down: the fault injected, not a synchronisation


def _log_lines(root) -> int:
    logs = list(root.rglob("trainer_log.jsonl"))
    return sum(1 for _ in logs[0].open()) if logs else 0


def test_training_survives_a_tracking_server_restart(tmp_path, storage_root):
    server = MlflowServer(tmp_path / "mlflow")
    (tmp_path / "mlflow").mkdir()
    server.start()
    cfg = load_config("local", overrides=[
        f"storage.mount_path={storage_root}", f"mlflow.tracking_uri={server.uri}",
        "training.max_steps=300", "training.logging_steps=1", "training.save_steps=1000",
    ])
    outcome: dict = {}

    def train() -> None:
        try:
            outcome["result"] = train_model(cfg, "restart-1", "hash")
        except BaseException as exc:  # reported by the assertion below
            outcome["error"] = exc

    worker = threading.Thread(target=train)
    worker.start()
    out = run_dir(cfg, "restart-1")
    deadline = time.monotonic() + 180
    while _log_lines(out) < 20 and worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    before = _log_lines(out)
    assert worker.is_alive() and before >= 20, "training ended before the outage could be injected"
    server.stop()
    down_at = time.monotonic()
    while time.monotonic() - down_at < OUTAGE_S:
        time.sleep(0.2)
    server.start()
    worker.join(timeout=600)
    assert "error" not in outcome, repr(outcome.get("error"))

    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.uri)
    result = outcome["result"]
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    log = [json.loads(line) for line in next(out.rglob("trainer_log.jsonl")).open()]
    steps_with_loss = {entry["current_steps"] for entry in log if "loss" in entry}
    logged = {metric.step for metric in client.get_metric_history(result.mlflow_run_id, "loss")}
    assert len(steps_with_loss) == 300
    assert steps_with_loss <= logged, f"lost {len(steps_with_loss - logged)} loss points"
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    steps = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("llmft.role") != "pipeline"]
    assert {r.info.status for r in steps} == {"FINISHED"}  # the parent stays open until the exit handler
    server.stop()
