"""The main job end to end: ``python -m pipelines.run_local`` twice on a fresh storage root, as ``make demo`` runs it.

Real kfp.local (SubprocessRunner), real LLaMA-Factory training on the tiny model, the held-out split, our MMLU
and task evaluators on the merged model, the gate, and the MLflow registry on SQLite. The first run trains the
tiny model on the sample data and beats the base model on the held-out rows: it is promoted. The second run,
with the same settings, trains the same model: it ties the champion, reuses the champion's stored scores
(no baseline evaluation), and is kept as challenger. A recognisable secret is planted in the environment, and
every file and line printed is scanned for it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import local_summary, run_local

pytestmark = pytest.mark.slow  # two whole pipeline runs (the module fixture), and more runs below

SECRET = "planted-secret-7Q2xk9-must-not-leak"
SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "KFP_TOKEN", "HF_TOKEN", "AWS_SECRET_ACCESS_KEY")
MAX_CONSOLE_LINES = 80


def _run_local(storage: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.run_local", "--storage", str(storage), *extra],
                          env=env or dict(os.environ, PYTHONUNBUFFERED="1"), cwd=storage.parent,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model_dir):
    """``python -m pipelines.run_local`` twice on one storage root, with secrets planted in the environment.

    Returns (storage root, the two run summaries, the config, what each run printed).
    """
    storage = tmp_path_factory.mktemp("e2e") / "storage"
    # Reuse the session's tiny model instead of building another (run_local builds it when absent).
    shutil.copytree(tiny_model_dir, storage / "models" / "base-model")
    env = dict(os.environ, **dict.fromkeys(SECRET_ENV, SECRET), PYTHONUNBUFFERED="1")
    cfg = run_local.localise(run_local.load_config("local"), storage)
    summaries, outputs = [], []
    for _ in range(2):
        started_ms = int(time.time() * 1000)
        proc = _run_local(storage, env=env)
        outputs.append(proc.stdout + proc.stderr)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        summaries.append(local_summary.summarise(cfg, started_ms))
    return storage, summaries, cfg, outputs


def test_make_demo_twice_promotes_then_keeps_the_champion(two_runs):
    _, (first, second), _, outputs = two_runs
    assert first["baseline"] == "base model" and first["decision"] == "promote"
    assert first["task_candidate"] < first["task_baseline"] * 0.9  # clearly better on its own task
    assert "decision          : promote: held-out loss -" in outputs[0]
    assert second["baseline"] == first["registered"].replace("tiny-llama-demo ", "champion ")
    assert second["decision"] == "keep-champion"
    assert second["task_candidate"] == second["task_baseline"]  # the same settings train the same model: a tie
    assert "decision          : keep-champion: held-out loss +0.0% vs champion v1" in outputs[1]
    assert first["aliases"] == ["champion"] and first["champion"] == first["registered"]
    assert second["aliases"] == ["challenger"] and second["champion"] == first["registered"]


def test_both_models_answer_the_held_out_rows_and_the_decision_names_the_generation_rule(two_runs):
    from components.common.storage import run_dir
    from components.common.typed_files import read_model
    from components.data.split import read_manifest, snapshot_dir
    from components.gate.rules import Comparison

    _, (first, second), cfg, outputs = two_runs
    rows = sum(split.scored_rows for split in read_manifest(snapshot_dir(cfg, first["kfp_run_id"])).datasets)
    assert 10 <= rows <= cfg.evaluation.generate_rows
    for role in ("baseline", "candidate"):  # one console line of answer scores per model
        assert re.search(rf"  evaluate-{role} +{role} answers on {rows} held-out rows: chrF \d+\.\d, ROUGE-L "
                         rf"\d+\.\d, token F1 \d+\.\d, exact \d+\.\d, stopped \d+/{rows}", outputs[0]), role
    assert re.search(r"promote: held-out loss -\d+\.\d% vs base model .*, chrF [+-]\d+\.\d \(may drop <= 15\)",
                     first["headline"])
    assert "generated answers : chrF " in outputs[0] and "generated answers : chrF " in outputs[1]
    assert f"candidate answers on {rows} held-out rows" in outputs[1] and "tokens (stored, reused)" in outputs[1]
    # The report's side-by-side rows come from comparison.json (the rows where the two differ most).
    comparison = read_model(run_dir(cfg, first["kfp_run_id"]) / "compare" / "comparison.json", Comparison, "c")
    assert comparison.generation.rows == rows
    assert comparison.generation.regressions or comparison.generation.improvements
    tie = read_model(run_dir(cfg, second["kfp_run_id"]) / "compare" / "comparison.json", Comparison, "c")
    assert tie.generation.gated().mean_difference == 0 and not tie.generation.regressions


def test_the_champion_is_not_evaluated_again_after_its_promotion(two_runs):
    _, (first, second), _, outputs = two_runs
    assert "evaluate-baseline" in first["steps"]  # the base model had no stored score
    assert outputs[1].count("✓ evaluate-") == 1 and "✓ reuse-baseline-scores" in outputs[1]
    assert "evaluate-baseline" not in second["steps"]
    assert "stored scores reused" in outputs[1]


def test_the_console_shows_one_line_per_task_and_the_loss(two_runs):
    storage, _, _, outputs = two_runs
    for output in outputs:
        lines = output.splitlines()
        assert len(lines) < MAX_CONSOLE_LINES, output
        assert max(map(len, lines)) < 250
        assert "Got executor_input" not in output and "UserWarning" not in output
        for task in ("resolve-config", "validate-dataset", "train", "merge-lora", "evaluate-candidate", "compare",
                     "register-model", "finalize-runs"):
            assert any(line.startswith(f"✓ {task} ") for line in lines), task
        assert sum(" loss " in line and "step" in line for line in lines) >= 3
    logs = sorted((storage / "logs").iterdir())
    assert len(logs) == 2
    train_log = next(logs[0].glob("*-train.log")).read_text()
    assert "Got executor_input" in train_log and "'loss'" in train_log  # the whole output is kept, per task


def test_mlflow_compares_pipeline_runs_from_their_parent_runs(two_runs):
    """What a person sees in MLflow's run table and chart view, read through the search API."""
    from mlflow.tracking import MlflowClient

    _, summaries, cfg, _ = two_runs
    client = MlflowClient(cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow opens model training
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.`llmft.role` = 'pipeline'",
                                 order_by=["attributes.start_time ASC"])
    assert len(parents) == 2 and all(run.info.status == "FINISHED" for run in parents)
    for parent, summary in zip(parents, summaries, strict=True):
        name = parent.info.run_name
        assert name.startswith("llm-finetune-local-lora-20") and len(name) == len("llm-finetune-local-lora-") + 15
        assert parent.data.params["training.learning_rate"] == "0.005"
        assert parent.data.params["training.lora_rank"] == "8"
        assert parent.data.params["dataset.names"] == '["alpaca_sample"]'
        assert 20 <= len(parent.data.params) < 80
        metrics = parent.data.metrics
        assert metrics["task_row_nll_candidate"] == pytest.approx(summary["task_candidate"], abs=1e-6)
        assert metrics["task_row_nll_baseline"] == pytest.approx(summary["task_baseline"], abs=1e-6)
        assert {"task_row_nll_change", "mmlu_candidate", "mmlu_baseline", "mmlu_delta"} <= set(metrics)
        assert parent.data.tags["llmft.decision"] == summary["decision"]
        children = client.search_runs([experiment.experiment_id],
                                      filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        assert {child.info.run_name for child in children} >= {f"train · {name}", f"compare · {name}"}
        assert all(child.info.status == "FINISHED" for child in children)


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


def test_outputs_are_run_scoped_and_the_trainer_saw_no_held_out_row(two_runs):
    from components.data.split import read_manifest

    storage, summaries, _, _ = two_runs
    outputs = sorted(path.name for path in (storage / "output").iterdir())
    assert outputs == sorted(summary["kfp_run_id"] for summary in summaries)
    for summary in summaries:
        run = storage / "output" / summary["kfp_run_id"]
        assert {"results.json", "task.json", "generations.jsonl"} <= {
            path.name for path in (run / "eval" / "candidate").iterdir()}
        manifest = read_manifest(run / "data")
        train_yaml = (run / "train.yaml").read_text()
        assert f"dataset_dir: {run / 'data'}" in train_yaml and "alpaca_sample@test" not in train_yaml
        assert manifest.datasets[0].scored_rows == 29


def test_no_planted_secret_anywhere(two_runs):
    """Task logs, MLflow database and artifacts, reports, models, KFP outputs: the secret appears nowhere."""
    storage, _, _, outputs = two_runs
    scanned = 0
    for path in storage.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert SECRET.encode() not in path.read_bytes(), path
            scanned += 1
    assert scanned > 50
    assert all(SECRET not in output for output in outputs)


def test_a_failing_task_shows_its_error_and_where_its_log_is(tmp_path, tiny_model_dir):
    storage = tmp_path / "storage"
    shutil.copytree(tiny_model_dir, storage / "models" / "base-model")
    proc = _run_local(storage, "--set", "dataset.names=[no_such_dataset]")
    assert proc.returncode == 1
    lines = (proc.stdout + proc.stderr).splitlines()
    assert len(lines) < 60
    assert any(line.startswith("✗ validate-dataset") and "FAILURE" in line for line in lines)
    assert any("no_such_dataset" in line and line.startswith("  | ") for line in lines)  # the tail of its log
    whole = next(line for line in lines if line.startswith("  whole log: "))
    assert Path(whole.removeprefix("  whole log: ")).is_file()
    assert "pipeline failed" in proc.stderr and "Traceback" not in proc.stdout.split("last lines")[0]


def test_two_runs_started_in_the_same_second_get_their_own_log_directories(tmp_path):
    """run_local names a run's log directory after the pipeline, the method and the second it started: two runs
    in the same second must not write (and overwrite) each other's task logs."""
    name = "tiny-local-lora-20260101-000000"
    first, second = run_local.new_log_dir(tmp_path, name), run_local.new_log_dir(tmp_path, name)
    assert first != second and first.is_dir() and second.is_dir()
    assert first.name == name and second.name.startswith(f"{name}-")
