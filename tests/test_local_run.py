"""The main job end to end: ``python -m pipelines.run_local`` twice on a fresh storage root.

Real kfp.local (SubprocessRunner), real LLaMA-Factory training on the tiny model, our MMLU evaluator,
the shard-streaming merge, the comparison and the MLflow registry on SQLite. The first run has no
champion and compares with the base model; the second compares with the first run's champion.
A recognisable secret is planted in the environment, and every file and log line is scanned for it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import run_local

SECRET = "planted-secret-7Q2xk9-must-not-leak"
SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "KFP_TOKEN", "HF_TOKEN", "AWS_SECRET_ACCESS_KEY")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model_dir):
    """``python -m pipelines.run_local`` twice on one storage root, with secrets planted in the environment.

    Returns (storage root, the two run summaries, the config, everything the two runs printed).
    """
    storage = tmp_path_factory.mktemp("e2e") / "storage"
    # Reuse the session's tiny model instead of building another (run_local builds it when absent).
    shutil.copytree(tiny_model_dir, storage / "models" / "base-model")
    env = dict(os.environ, **dict.fromkeys(SECRET_ENV, SECRET), PYTHONUNBUFFERED="1")
    cfg = run_local.localise(run_local.load_config("local"), storage)
    summaries, output = [], ""
    for _ in range(2):
        started_ms = int(time.time() * 1000)
        proc = subprocess.run([sys.executable, "-m", "pipelines.run_local", "--storage", str(storage)], env=env,
                              cwd=storage.parent, capture_output=True, text=True, timeout=900)
        output += proc.stdout + proc.stderr
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "== Pipeline run" in proc.stdout and "decision" in proc.stdout
        summaries.append(run_local.summarise(cfg, started_ms))
    return storage, summaries, cfg, output


def test_both_runs_complete_with_every_step_tracked(two_runs):
    from mlflow.tracking import MlflowClient

    _, summaries, cfg, _ = two_runs
    first, second = summaries
    assert first["kfp_run_id"] != second["kfp_run_id"]
    for summary in summaries:
        assert summary["parent_status"] == "FINISHED"
        assert {"validate-dataset", "train", "evaluate-candidate", "resolve-baseline", "merge-lora",
                "compare-baseline", "register-model"} <= set(summary["steps"])
        assert len(summary["dataset_hash"]) == 64
        assert summary["train_loss"] > 0
    client = MlflowClient(cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert runs and all(run.info.status == "FINISHED" for run in runs), [
        (run.info.run_name, run.info.status) for run in runs if run.info.status != "FINISHED"]
    train = next(run for run in runs if run.info.run_name == "train")
    assert train.data.params["llmft.training.method"] == "lora"
    assert len(client.get_metric_history(train.info.run_id, "loss")) >= 2
    assert train.data.tags["mlflow.parentRunId"] in {run.info.run_id for run in runs}


def test_first_run_is_compared_with_the_base_model_second_with_the_champion(two_runs):
    _, (first, second), _, _ = two_runs
    assert first["baseline"] == "base model"
    assert first["mmlu_baseline"] is not None and first["mmlu_candidate"] is not None
    assert second["baseline"].startswith("champion v")
    assert "evaluate-baseline" in first["steps"]  # the base model had no stored score yet
    for summary in (first, second):
        if summary["decision"] == "promote":
            assert summary["aliases"] == ["champion"] and summary["champion"] == summary["registered"]
        else:
            assert summary["aliases"] == ["challenger"] and summary["champion"] != summary["registered"]


def test_the_served_model_is_complete_and_loads(two_runs):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    storage, summaries, cfg, _ = two_runs
    current = storage / "models" / cfg.mlflow.registered_model_name / "current"
    assert current.is_symlink() and current.resolve().is_dir()
    assert Path(summaries[-1]["served_model"]) == current.resolve()
    model = AutoModelForCausalLM.from_pretrained(current)
    tokenizer = AutoTokenizer.from_pretrained(current)
    with torch.no_grad():
        logits = model(**tokenizer("Answer:", return_tensors="pt")).logits
    assert torch.isfinite(logits).all()
    assert (current / "checksums.sha256").exists()


def test_outputs_are_run_scoped(two_runs):
    storage, summaries, _, _ = two_runs
    outputs = sorted(path.name for path in (storage / "output").iterdir())
    assert outputs == sorted(summary["kfp_run_id"] for summary in summaries)
    for summary in summaries:
        results = json.loads((storage / "output" / summary["kfp_run_id"] / "eval" / "candidate" /
                              "results.json").read_text())
        assert results["micro"] == pytest.approx(summary["mmlu_candidate"])


def test_no_planted_secret_anywhere(two_runs):
    """Task logs, MLflow database and artifacts, reports, models, KFP outputs: the secret appears nowhere."""
    storage, _, _, output = two_runs
    scanned = 0
    for path in storage.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert SECRET.encode() not in path.read_bytes(), path
            scanned += 1
    assert scanned > 50
    assert "train" in output and "finished with status" in output  # the task logs were captured
    assert SECRET not in output
