"""Kill the training step where it hurts, retry it as KFP does, and get the run that was never killed.

Real LLaMA-Factory training of the tiny random Llama on the CPU and a real MLflow server on loopback. Each
test trains 24 steps with a checkpoint every 2 and ``save_total_limit: 2`` (twelve checkpoints, six times
the limit, so the rotation deletes the checkpoint a retry resumed from), kills it, retries with the same
run id, and compares with one run of the same training that was never killed (:func:`reference`): the
same steps, tokens, losses and adapter weights. The kills are real SIGKILLs: from outside when a checkpoint
is complete, or from inside the process in the middle of writing a file (``kill_while_writing/``, a
``sitecustomize`` put on the trainer's ``PYTHONPATH``).

Each test trains two or three times (about a minute on two cores): ``make reliability``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
from builders import REPO_ROOT

from components.common.storage import run_dir
from components.demo.samples import SAMPLES
from components.train.checkpoints import checkpoint_problem, checkpoint_step, list_checkpoints, safetensors_problem
from components.train.launch import TrainerFailed
from components.train.multinode.torchrun import WORKER_MODULE
from components.train.train import TrainResult, train_model
from configs.loading import load_config

pytestmark = pytest.mark.reliability_long

HOOK_DIR = Path(__file__).resolve().parent / "kill_while_writing"
SCHEDULE = ("training.max_steps=24", "training.save_steps=2", "training.save_total_limit=2",
            "training.logging_steps=1")


@pytest.fixture(scope="module")
def storage(tmp_path_factory, tiny_model_dir) -> Path:
    """One storage root for the module (each test has its own run id): the tiny base model, the sample data."""
    root = tmp_path_factory.mktemp("train-kills") / "storage"
    shutil.copytree(tiny_model_dir, root / "models" / "base-model")
    shutil.copytree(SAMPLES / "sample_data", root / "data")
    return root


def _config(storage: Path, tracking_uri: str, *overrides: str):
    return load_config("local", overrides=[f"storage.mount_path={storage}", f"mlflow.tracking_uri={tracking_uri}",
                                           *SCHEDULE, *overrides])


def _adapter(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(model_dir / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def reference(storage, mlflow_server) -> tuple[TrainResult, dict]:
    """The same training, never killed: its result and its adapter weights."""
    result = train_model(_config(storage, mlflow_server.uri), f"reference-{uuid.uuid4().hex[:6]}")
    assert result.metrics["resumed_from_step"] == 0
    return result, _adapter(result.model_dir)


def assert_same_training(result: TrainResult, reference: tuple[TrainResult, dict]) -> None:
    """The retried run reports what the run that was never killed reports, and trained the same weights."""
    expected, weights = reference
    for key in ("global_step", "num_input_tokens_seen"):
        assert result.metrics[key] == expected.metrics[key], key
    assert result.metrics["train_loss"] == pytest.approx(expected.metrics["train_loss"], rel=1e-5, abs=1e-6)
    trained = _adapter(result.model_dir)
    assert trained.keys() == weights.keys()
    for name, tensor in weights.items():
        assert (trained[name] - tensor).abs().max().item() < 1e-5, name
    log, expected_log = _losses(result.model_dir), _losses(expected.model_dir)
    assert [entry["current_steps"] for entry in log] == list(range(1, 25))  # none repeated
    assert log[-1]["loss"] == pytest.approx(expected_log[-1]["loss"], rel=1e-5, abs=1e-6)  # the final loss


def _losses(model_dir: Path) -> list[dict]:
    """The per-step entries of the trainer's log published with the adapter (``trainer_log.jsonl``)."""
    log = [json.loads(line) for line in (model_dir / "trainer_log.jsonl").read_text().splitlines()]
    return [entry for entry in log if "loss" in entry]


def _attempt_killed_while_writing(cfg, kfp_run_id: str, pattern: str, monkeypatch) -> None:
    """One attempt whose trainer SIGKILLs itself in the middle of writing the first file matching ``pattern``."""
    with monkeypatch.context() as patched:
        patched.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HOOK_DIR), os.environ.get("PYTHONPATH")])))
        patched.setenv("LLMFT_KILL_WHILE_WRITING", pattern)
        with pytest.raises(TrainerFailed, match="killed by SIGKILL"):
            train_model(cfg, kfp_run_id)


def _kill_trainer_when(condition, deadline_s: float = 300) -> tuple[threading.Thread, list[int]]:
    """Start a thread that SIGKILLs this process's trainer workers once ``condition()`` holds."""
    killed: list[int] = []

    def watch() -> None:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline and not killed:
            if condition():
                for child in psutil.Process().children(recursive=True):
                    try:
                        if WORKER_MODULE in child.cmdline():
                            child.send_signal(signal.SIGKILL)
                            killed.append(child.pid)
                    except psutil.Error:  # gone already
                        continue
            time.sleep(0.02)  # polling the checkpoint directory: there is no event to wait on

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, killed


def _complete_steps(output: Path) -> list[int]:
    return [checkpoint_step(path) for path in list_checkpoints(output) if checkpoint_problem(path) is None]


def _cli_report(stdout: str) -> dict:
    """The JSON report ``python -m components.train.train`` prints last (the trainer's output comes before it)."""
    return json.loads(stdout[stdout.rindex("\n{\n") + 1:])


def _train_runs(mlflow_uri: str, cfg, kfp_run_id: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"],
                              filter_string=f"tags.`kfp.run_id` = '{kfp_run_id}' and tags.`llmft.step` = 'train'")


def test_a_retry_after_a_kill_survives_the_rotation_of_the_checkpoint_it_resumed_from(storage, mlflow_server,
                                                                                       reference):
    """The issue's crash: the retry resumed from checkpoint-N, rotation deleted it, and the step then read it."""
    cfg = _config(storage, mlflow_server.uri)
    kfp_run_id = f"rotate-{uuid.uuid4().hex[:6]}"
    output = run_dir(cfg, kfp_run_id) / "checkpoints"
    watcher, killed = _kill_trainer_when(lambda: 8 in _complete_steps(output))
    with pytest.raises(TrainerFailed, match="killed by SIGKILL"):
        train_model(cfg, kfp_run_id)
    watcher.join()
    assert killed
    resumed = max(_complete_steps(output))
    assert 8 <= resumed < 22  # a retry that must outlive two rotations of its resumed checkpoint

    result = train_model(cfg, kfp_run_id)
    assert result.metrics["resumed_from_step"] == resumed
    assert not (output / f"checkpoint-{resumed}").exists()  # rotated away while the retry trained
    assert [checkpoint_step(path) for path in list_checkpoints(output)] == [22, 24]
    assert_same_training(result, reference)
    first, second = _train_runs(mlflow_server.uri, cfg, kfp_run_id)
    assert first.info.status == "FAILED" and second.info.status == "FINISHED"
    assert second.data.tags["llmft.resumed_from"] == f"checkpoint-{resumed}"


def test_a_kill_in_the_middle_of_writing_a_checkpoint(storage, mlflow_server, reference, monkeypatch):
    """Killed while writing checkpoint-10's optimizer state: the half-written checkpoint is set aside."""
    cfg = _config(storage, mlflow_server.uri)
    kfp_run_id = f"midsave-{uuid.uuid4().hex[:6]}"
    output = run_dir(cfg, kfp_run_id) / "checkpoints"
    _attempt_killed_while_writing(cfg, kfp_run_id, r"/checkpoint-10/optimizer\.pt$", monkeypatch)
    half = output / "checkpoint-10"
    assert (half / "adapter_model.safetensors").is_file() and not (half / "trainer_state.json").exists()
    assert "trainer_state.json" in checkpoint_problem(half)

    result = train_model(cfg, kfp_run_id)
    assert result.metrics["resumed_from_step"] == 8
    discarded = run_dir(cfg, kfp_run_id) / "checkpoints-discarded"
    assert [path.name.rsplit("-", 1)[0] for path in discarded.iterdir()] == ["checkpoint-10"]
    assert_same_training(result, reference)


def test_a_kill_during_the_final_save(storage, mlflow_server, reference, monkeypatch):
    """Killed while the trainer writes the final adapter after its last step: the retry trains no step, saves
    again from checkpoint-24, and publishes whole weights."""
    cfg = _config(storage, mlflow_server.uri)
    kfp_run_id = f"final-{uuid.uuid4().hex[:6]}"
    output = run_dir(cfg, kfp_run_id) / "checkpoints"
    _attempt_killed_while_writing(cfg, kfp_run_id, r"/checkpoints/adapter_model\.safetensors$", monkeypatch)
    assert "truncated" in safetensors_problem(output / "adapter_model.safetensors")
    assert not (output / "trainer_state.json").exists() and not (run_dir(cfg, kfp_run_id) / "adapter").exists()

    result = train_model(cfg, kfp_run_id)
    assert result.metrics["resumed_from_step"] == 24
    assert "tokens_per_second" not in result.metrics  # this attempt trained nothing: the checkpoint is the result
    assert len(list((run_dir(cfg, kfp_run_id) / "logs").iterdir())) == 1  # the retry launched no trainer
    assert safetensors_problem(result.model_dir / "adapter_model.safetensors") is None
    assert_same_training(result, reference)


def test_a_kill_while_the_step_publishes_the_adapter(storage, mlflow_server, reference, tmp_path):
    """The step process itself (the CLI, as the pod runs it) dies half-way through moving the final weights
    into the adapter's staging directory; nothing appears at adapter/, and the retry publishes the weights."""
    cfg = _config(storage, mlflow_server.uri)
    kfp_run_id = f"publish-{uuid.uuid4().hex[:6]}"
    command = [sys.executable, "-m", "components.train.train", "--config", "local", "--run-id", kfp_run_id,
               "--set", f"storage.mount_path={storage}", "--set", f"mlflow.tracking_uri={mlflow_server.uri}",
               *[arg for override in SCHEDULE for arg in ("--set", override)]]
    pythonpath = os.pathsep.join([str(HOOK_DIR), str(REPO_ROOT)])
    env = dict(os.environ, PYTHONPATH=pythonpath,
               LLMFT_KILL_WHILE_WRITING=r"/\.adapter\.tmp-[0-9a-f]+/adapter_model\.safetensors$")
    killed = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (run_dir(cfg, kfp_run_id) / "adapter").exists()
    (stale,) = _train_runs(mlflow_server.uri, cfg, kfp_run_id)
    assert stale.info.status == "RUNNING"  # nobody closed it: the process was killed

    env.pop("LLMFT_KILL_WHILE_WRITING")
    retry = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert retry.returncode == 0, retry.stderr[-2000:]
    result = TrainResult(run_dir(cfg, kfp_run_id) / "adapter", 0.0, "", _cli_report(retry.stdout)["metrics"],
                         Path(), False)
    assert result.metrics["resumed_from_step"] == 24
    assert_same_training(result, reference)
    first, second = _train_runs(mlflow_server.uri, cfg, kfp_run_id)
    assert first.info.status == "FAILED" and second.info.status == "FINISHED"


def test_two_kills_in_a_row(storage, mlflow_server, reference, monkeypatch):
    """Killed while writing checkpoint-6, then the retry killed while writing checkpoint-16: the third
    attempt resumes from checkpoint-14 and reports the run that was never killed."""
    cfg = _config(storage, mlflow_server.uri)
    kfp_run_id = f"twice-{uuid.uuid4().hex[:6]}"
    output = run_dir(cfg, kfp_run_id) / "checkpoints"
    _attempt_killed_while_writing(cfg, kfp_run_id, r"/checkpoint-6/optimizer\.pt$", monkeypatch)
    assert _complete_steps(output) == [2, 4]
    _attempt_killed_while_writing(cfg, kfp_run_id, r"/checkpoint-16/adapter_model\.safetensors$", monkeypatch)
    assert _complete_steps(output) == [12, 14]

    result = train_model(cfg, kfp_run_id)
    assert result.metrics["resumed_from_step"] == 14
    discarded = sorted(path.name.rsplit("-", 1)[0] for path in (run_dir(cfg, kfp_run_id) / "checkpoints-discarded")
                       .iterdir())
    assert discarded == ["checkpoint-16", "checkpoint-6"]
    assert_same_training(result, reference)
    runs = _train_runs(mlflow_server.uri, cfg, kfp_run_id)
    assert [run.info.status for run in runs] == ["FAILED", "FAILED", "FINISHED"]
    assert [run.data.tags["llmft.resumed_from"] for run in runs] == ["", "checkpoint-4", "checkpoint-14"]


def test_the_issue_reproduction_16_then_48_steps(storage, mlflow_server, tmp_path):
    """Issue 18's reproduction as written: the local preset, one run id, 16 steps then 48 (checkpoint every 8,
    three kept), through the CLI. The second run used to fail reading the rotated checkpoint-16."""
    kfp_run_id = f"repro-{uuid.uuid4().hex[:6]}"
    base = [sys.executable, "-m", "components.train.train", "--config", "local", "--run-id", kfp_run_id,
            "--set", f"storage.mount_path={storage}", "--set", f"mlflow.tracking_uri={mlflow_server.uri}"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    reports = []
    for steps in (16, 48):
        proc = subprocess.run([*base, "--set", f"training.max_steps={steps}"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        reports.append(_cli_report(proc.stdout))
    assert reports[1]["metrics"]["resumed_from_step"] == 16 and reports[1]["metrics"]["global_step"] == 48
    output = run_dir(load_config("local", overrides=[f"storage.mount_path={storage}"]), kfp_run_id) / "checkpoints"
    assert [checkpoint_step(path) for path in list_checkpoints(output)] == [32, 40, 48]


def test_a_kill_during_the_final_save_of_an_epoch_based_training(storage, mlflow_server, monkeypatch):
    """The presets train by epochs (max_steps -1): the retry resumes at the end of the last epoch, where the
    Trainer trains nothing more, and ends at the same step as the killed attempt's last checkpoint."""
    cfg = _config(storage, mlflow_server.uri, "training.max_steps=-1", "training.num_train_epochs=1",
                  "training.save_steps=4")
    kfp_run_id = f"epochs-{uuid.uuid4().hex[:6]}"
    output = run_dir(cfg, kfp_run_id) / "checkpoints"
    _attempt_killed_while_writing(cfg, kfp_run_id, r"/checkpoints/adapter_model\.safetensors$", monkeypatch)
    last = max(_complete_steps(output))
    history = json.loads((output / f"checkpoint-{last}" / "trainer_state.json").read_text())["log_history"]

    result = train_model(cfg, kfp_run_id)
    assert result.metrics["resumed_from_step"] == last and result.metrics["global_step"] == last
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert result.metrics["train_loss"] == pytest.approx(sum(losses) / len(losses))  # logged every step
    log = _losses(result.model_dir)
    assert [entry["current_steps"] for entry in log] == list(range(1, last + 1))
    assert log[-1]["loss"] == pytest.approx(losses[-1])  # the final loss


def test_a_rerun_with_another_learning_rate_starts_fresh(storage, mlflow_server, reference, caplog):
    """Issue 19: the same run id rerun with a changed hyper-parameter must not resume the old checkpoints;
    they move aside with the reason, logged and tagged, and the run matches a fresh one of its own config."""
    from mlflow.tracking import MlflowClient

    kfp_run_id = f"other-{uuid.uuid4().hex[:6]}"
    first = train_model(_config(storage, mlflow_server.uri, "training.learning_rate=0.001"), kfp_run_id)
    assert first.metrics["global_step"] == 24
    with caplog.at_level(logging.WARNING, logger="llmft.train"):
        result = train_model(_config(storage, mlflow_server.uri), kfp_run_id)
    reason = "another training wrote them (training.learning_rate: 0.001 -> 0.005)"
    assert reason in caplog.text
    assert result.metrics["resumed_from_step"] == 0
    assert_same_training(result, reference)  # trained from scratch with 0.005, as the reference was
    (moved,) = (run_dir(_config(storage, mlflow_server.uri), kfp_run_id) / "checkpoints-discarded").iterdir()
    assert [path.name for path in list_checkpoints(moved)] == ["checkpoint-22", "checkpoint-24"]
    assert json.loads((moved / "discarded.json").read_text())["reason"] == reason
    run = MlflowClient(mlflow_server.uri).get_run(result.mlflow_run_id)
    assert run.data.tags["llmft.discarded_checkpoints"] == reason
