"""The training step: real LLaMA-Factory on the tiny random Llama (CPU), a real MLflow server on loopback.

The slow tests train for 12-20 steps (a few seconds each after LLaMA-Factory's ~10 s start); the rest
exercise rendering, checkpoint selection and error reporting on real files without training.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from importlib import metadata
from pathlib import Path

import psutil
import pytest
import yaml
from builders import REPO_ROOT
from kfp.dsl import HTML, Metrics, Model

from components.common.storage import run_dir
from components.common.typed_files import read_model
from components.data.split import read_manifest
from components.train.checkpoints import (
    FINGERPRINT_FILE,
    ResumePoint,
    checkpoint_problem,
    checkpoint_step,
    fingerprint_digest,
    finish_from_checkpoint,
    keep_only_same_training,
    list_checkpoints,
    prepare_resume,
    read_fingerprint,
    safetensors_problem,
    trim_trainer_log,
)
from components.train.fingerprint import SCHEDULE_FIELDS, model_digest, training_fingerprint
from components.train.inputs import TrainError
from components.train.launch import TrainerFailed, trainer_command, trainer_env, trainer_error
from components.train.metrics import collect_metrics
from components.train.multinode.torchrun import WORKER_MODULE
from components.train.outputs import ModelPointer, read_summary
from components.train.render import DEEPSPEED_CONFIGS, flatten_sections, render_sections, render_yaml
from components.train.train import main, train_model
from configs.loading import load_config
from pipelines.steps import train


def _config(storage_root: Path, tracking_uri: str, *overrides: str):
    return load_config("local", overrides=[f"storage.mount_path={storage_root}", f"mlflow.tracking_uri={tracking_uri}",
                                           *overrides])


def _kfp_outputs(root: Path) -> tuple[Model, Metrics, HTML]:
    return (Model(name="weights", uri=str(root / "weights"), metadata={}),
            Metrics(name="metrics", uri=str(root / "metrics"), metadata={}),
            HTML(name="loss_plot", uri=str(root / "loss_plot.html"), metadata={}))


def _train_runs(client, cfg, kfp_run_id: str) -> list:
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"],
                              filter_string=f"tags.`kfp.run_id` = '{kfp_run_id}' and tags.`llmft.step` = 'train'")


def _render(cfg, tmp_path: Path, gpu: bool) -> dict:
    sections = render_sections(cfg, model_dir=tmp_path / "base", dataset_dir=tmp_path / "data",
                               output_dir=tmp_path / "out", run_name="train", gpu=gpu)
    return yaml.safe_load(render_yaml(sections, "header"))  # what LLaMA-Factory reads back


# -- a real LoRA run ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_lora_run_publishes_the_adapter_and_records_everything_in_the_train_child_run(
        storage_root, mlflow_server, tmp_path, monkeypatch):
    """The KFP wrapper itself (python_func) with real KFP artifact objects; then a retry reuses the result."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("GIT_COMMIT", "0123abc")
    cfg = _config(storage_root, mlflow_server.uri, "training.max_steps=20", "training.save_steps=10")
    kfp_run_id, data_hash = f"run-{uuid.uuid4().hex[:8]}", "f" * 64
    started_ms = int(time.time() * 1000)
    adapter, metrics, loss_plot = _kfp_outputs(tmp_path / "kfp")

    model_dir, train_loss, mlflow_run_id = train.python_func(
        config=cfg.model_dump_json(), kfp_run_id=kfp_run_id, dataset_hash=data_hash, trial=0, weights=adapter,
        metrics=metrics, loss_plot=loss_plot)

    # The adapter, published atomically in the run-scoped directory.
    expected_dir = run_dir(cfg, kfp_run_id) / "adapter"
    assert model_dir == str(expected_dir)
    assert json.loads((expected_dir / "adapter_config.json").read_text())["r"] == 8
    from safetensors import safe_open

    with safe_open(expected_dir / "adapter_model.safetensors", "pt") as weights:
        assert any("lora_A" in key for key in weights.keys())  # noqa: SIM118 - safe_open is not a dict
    log_lines = (expected_dir / "trainer_log.jsonl").read_text().splitlines()
    steps = [json.loads(line)["current_steps"] for line in log_lines]
    assert max(steps) == 20
    png = (expected_dir / "training_loss.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert not [p for p in expected_dir.parent.iterdir() if p.name.startswith(".adapter.tmp")]

    # KFP outputs.
    assert metrics.metadata["train_loss"] == pytest.approx(train_loss, abs=1e-6)
    assert metrics.metadata["global_step"] == 20
    assert metrics.metadata["best_val_loss"] > 0 and metrics.metadata["tokens_per_second"] > 0
    assert metrics.metadata["best_step"] in (10, 20)  # a checkpoint chosen on the validation rows
    assert metrics.metadata["train_runtime_s"] > 0
    assert adapter.metadata["model_dir"] == model_dir and adapter.metadata["method"] == "lora"
    pointer = read_model(Path(adapter.path) / "model.json", ModelPointer, "the adapter pointer")
    assert pointer.mlflow_run_id == mlflow_run_id and pointer.model_dir == model_dir
    html = Path(loss_plot.path).read_text()
    embedded = html.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(embedded) == png

    # MLflow: the "train" child of the pipeline's parent run, with the trainer's metrics and our params.
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(mlflow_run_id)
    assert run.info.run_name == f"train · {cfg.name}-{kfp_run_id}" and run.info.status == "FINISHED"
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["kfp.run_id"] == kfp_run_id and parent.data.tags["llmft.role"] == "pipeline"
    # What a fine-tuning user reads: the LLaMA-Factory settings we rendered, under their names, and the lineage;
    # not Hugging Face's ~270 internals; one name per metric; system metrics.
    params = run.data.params
    assert len(params) < 80, sorted(params)
    assert not [key for key in params if key.startswith(("id2label", "label2id", "trackio", "profiler"))]
    assert params["llmft.dataset_hash"] == data_hash
    manifest = read_manifest(run_dir(cfg, kfp_run_id) / "data")
    assert params["llmft.train_sha256.alpaca_sample"] == manifest.datasets[0].train_sha256
    assert params["finetuning_type"] == "lora" and params["lora_rank"] == "8"
    assert params["lora_target"] == cfg.training.lora_target  # the local preset adapts lm_head too
    assert params["template"] == "default" and params["seed"] == "42" and params["cutoff_len"] == "256"
    assert params["dataset"] == "alpaca_sample" and params["learning_rate"] == "0.005"
    assert params["llmft.image"] == cfg.cluster.image and params["llmft.git_commit"] == "0123abc"
    assert params["llmft.version.llamafactory"] == metadata.version("llamafactory")
    loss_steps = [m.step for m in client.get_metric_history(mlflow_run_id, "loss")]
    assert len(loss_steps) == 10 and max(loss_steps) == 20  # logged by the trainer's own callback, live
    metrics_logged = run.data.metrics
    assert metrics_logged["train_loss"] == pytest.approx(train_loss)
    assert "best_val_loss" in metrics_logged and "tokens_per_second" in metrics_logged
    val_curve = {m.step: m.value for m in client.get_metric_history(mlflow_run_id, "val_loss")}
    assert sorted(val_curve) == [10, 20]  # one point per checkpoint, none for the evaluation after training
    assert metrics_logged["best_val_loss"] == pytest.approx(min(val_curve.values()), abs=1e-4)
    for duplicate in ("final_loss", "train_runtime", "train_tokens_per_second", "total_flos"):
        assert duplicate not in metrics_logged, duplicate
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics_logged)
    rendered = yaml.safe_load(Path(client.download_artifacts(mlflow_run_id, "config/train.yaml", str(tmp_path))
                                   ).read_text())
    assert rendered["report_to"] == "none" and rendered["lora_rank"] == 8 and rendered["max_steps"] == 20
    assert rendered["output_dir"] == str(run_dir(cfg, kfp_run_id) / "checkpoints")
    assert "bf16" not in rendered and "fp16" not in rendered
    assert {a.path for a in client.list_artifacts(mlflow_run_id, "train")} >= {
        "train/training_loss.png", "train/trainer_log.jsonl", "train/train_summary.json"}
    # No stray run: everything created during the step belongs to this pipeline run.
    experiments = [e.experiment_id for e in client.search_experiments()]
    recent = client.search_runs(experiments, filter_string=f"attributes.start_time >= {started_ms}")
    assert {r.data.tags.get("kfp.run_id") for r in recent} == {kfp_run_id} and len(recent) == 2

    # A retry after the model was published reuses it instead of training again.
    again = train.python_func(config=cfg.model_dump_json(), kfp_run_id=kfp_run_id, dataset_hash=data_hash, trial=0,
                              weights=adapter, metrics=metrics, loss_plot=loss_plot)
    assert again[:2] == (model_dir, train_loss)
    retry = client.get_run(again[2])
    assert retry.info.status == "FINISHED" and retry.data.tags["llmft.reused_from_run"] == mlflow_run_id
    assert len(list((run_dir(cfg, kfp_run_id) / "logs").iterdir())) == 1  # the trainer ran once

    # Rerun by hand with more steps: a different config is not reused; it resumes from the last checkpoint
    # (the final weights were moved out of checkpoints/ when published) and replaces the published model.
    longer = cfg.model_copy(update={"training": cfg.training.model_copy(update={"max_steps": 22})})
    adapter, metrics, loss_plot = _kfp_outputs(tmp_path / "longer")
    model_dir_again, _, _ = train.python_func(config=longer.model_dump_json(), kfp_run_id=kfp_run_id,
                                              dataset_hash=data_hash, trial=0, weights=adapter, metrics=metrics,
                                              loss_plot=loss_plot)
    assert model_dir_again == model_dir
    assert metrics.metadata["resumed_from_step"] == 20 and metrics.metadata["global_step"] == 22
    assert read_summary(expected_dir).metrics["global_step"] == 22


# -- kill, resume, corrupt checkpoint ------------------------------------------------------------------------


def _complete_on_disk(output: Path) -> list[int]:
    """Steps whose trainer_state.json (written last by the Trainer) is whole JSON."""
    steps = []
    for path in list_checkpoints(output):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        steps.append(checkpoint_step(path))
    return steps


@pytest.mark.slow
def test_a_killed_trainer_resumes_from_its_last_complete_checkpoint(storage_root, mlflow_server, tmp_path):
    """SIGKILL the trainer after its first checkpoint, break the next one, rerun: it resumes and finishes,
    though the rotation (one checkpoint kept) deletes the checkpoint it resumed from while it trains."""
    from mlflow.tracking import MlflowClient

    cfg = _config(storage_root, mlflow_server.uri, "training.max_steps=12", "training.save_steps=4",
                  "training.logging_steps=1", "training.save_total_limit=1")
    kfp_run_id = f"run-{uuid.uuid4().hex[:8]}"
    output = run_dir(cfg, kfp_run_id) / "checkpoints"
    killed: list[int] = []

    def kill_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            if _complete_on_disk(output):
                for child in psutil.Process().children(recursive=True):
                    try:
                        if WORKER_MODULE in child.cmdline():
                            child.send_signal(signal.SIGKILL)
                            killed.append(child.pid)
                    except psutil.Error:  # a short-lived process that is gone already
                        continue
            time.sleep(0.05)  # polling the checkpoint directory, not waiting for an event

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    adapter, metrics, loss_plot = _kfp_outputs(tmp_path / "first")
    with pytest.raises(TrainerFailed, match="killed by SIGKILL"):
        train.python_func(config=cfg.model_dump_json(), kfp_run_id=kfp_run_id, dataset_hash="h", trial=0,
                          weights=adapter, metrics=metrics, loss_plot=loss_plot)
    killer.join()
    assert killed, "the trainer was not found to kill"
    newest = max(_complete_on_disk(output))
    assert newest < 12

    # What a pod killed while saving leaves: a checkpoint directory with half the weights and no trainer state.
    broken = output / f"checkpoint-{newest + 4}"
    if not broken.exists():
        shutil.copytree(output / f"checkpoint-{newest}", broken)
        (broken / "trainer_state.json").unlink()
        weights = broken / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    adapter, metrics, loss_plot = _kfp_outputs(tmp_path / "second")
    model_dir, _, second_run = train.python_func(config=cfg.model_dump_json(), kfp_run_id=kfp_run_id,
                                                 dataset_hash="h", trial=0, weights=adapter, metrics=metrics,
                                                 loss_plot=loss_plot)
    assert metrics.metadata["resumed_from_step"] == newest and metrics.metadata["global_step"] == 12
    assert [checkpoint_step(path) for path in list_checkpoints(output)] == [12]  # checkpoint-<newest> rotated away
    assert [p.name.rsplit("-", 1)[0] for p in (run_dir(cfg, kfp_run_id) / "checkpoints-discarded").iterdir()] == [
        broken.name]
    steps = [json.loads(line)["current_steps"] for line in (Path(model_dir) / "trainer_log.jsonl").read_text()
             .splitlines() if "loss" in json.loads(line)]
    assert steps == list(range(1, 13))  # the killed attempt's steps after the checkpoint are not repeated

    client = MlflowClient(mlflow_server.uri)
    first, second = _train_runs(client, cfg, kfp_run_id)
    assert first.info.status == "FAILED" and "SIGKILL" in first.data.tags["llmft.error"]
    assert second.info.run_id == second_run and second.info.status == "FINISHED"
    assert second.data.tags["llmft.resumed_from"] == f"checkpoint-{newest}"
    resumed_steps = [m.step for m in client.get_metric_history(second_run, "loss")]
    assert min(resumed_steps) == newest + 1 and max(resumed_steps) == 12  # resumed, not started over


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


@pytest.mark.slow
def test_the_best_checkpoint_is_published_kept_by_the_rotation_and_tracked_across_a_kill(storage_root, mlflow_server,
                                                                                          tmp_path, capsys):
    """A learning rate far too high for the tiny model: the validation loss drops at step 2, then rises and stays
    above it. One checkpoint kept (the rotation must spare the best), the trainer SIGKILLed after checkpoint-4 and
    retried: the published weights are step 2's, the run has the validation curve and best_step 2."""
    import torch
    from mlflow.tracking import MlflowClient

    cfg = _config(storage_root, mlflow_server.uri, "training.learning_rate=0.15", "training.max_steps=8",
                  "training.save_steps=2", "training.save_total_limit=1")
    kfp_run_id = f"run-{uuid.uuid4().hex[:8]}"
    output = run_dir(cfg, kfp_run_id) / "checkpoints"
    killed: list[int] = []

    def kill_after_checkpoint_4() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            if any(step >= 4 for step in _complete_on_disk(output)):
                for child in psutil.Process().children(recursive=True):
                    try:
                        if WORKER_MODULE in child.cmdline():
                            child.send_signal(signal.SIGKILL)
                            killed.append(child.pid)
                    except psutil.Error:
                        continue
            time.sleep(0.05)  # polling the checkpoint directory, not waiting for an event

    killer = threading.Thread(target=kill_after_checkpoint_4, daemon=True)
    killer.start()
    with pytest.raises(TrainerFailed, match="killed by SIGKILL"):
        adapter, metrics, loss_plot = _kfp_outputs(tmp_path / "first")
        train.python_func(config=cfg.model_dump_json(), kfp_run_id=kfp_run_id, dataset_hash="h", trial=0,
                          weights=adapter, metrics=metrics, loss_plot=loss_plot)
    killer.join()
    assert killed and 2 in _complete_on_disk(output)  # the rotation kept the best beside the newest
    best_weights = _tensors(output / "checkpoint-2" / "adapter_model.safetensors")

    adapter, metrics, loss_plot = _kfp_outputs(tmp_path / "second")
    model_dir, _, run_id = train.python_func(config=cfg.model_dump_json(), kfp_run_id=kfp_run_id, dataset_hash="h",
                                             trial=0, weights=adapter, metrics=metrics, loss_plot=loss_plot)
    assert metrics.metadata["resumed_from_step"] >= 4 and metrics.metadata["global_step"] == 8
    curve = {m.step: m.value for m in MlflowClient(mlflow_server.uri).get_metric_history(run_id, "val_loss")}
    assert set(curve) >= {step for step in (6, 8) if step > metrics.metadata["resumed_from_step"]}
    assert read_summary(Path(model_dir)).metrics["best_step"] == 2 == metrics.metadata["best_step"]
    history = json.loads((Path(model_dir) / "trainer_state.json").read_text())["log_history"]
    later = [entry["eval_loss"] for entry in history if "eval_loss" in entry and entry["step"] > 2]
    assert later and min(later) > metrics.metadata["best_val_loss"]  # the loss rose after step 2 and stayed up
    published = _tensors(Path(model_dir) / "adapter_model.safetensors")
    assert published.keys() == best_weights.keys()
    assert all(torch.equal(published[key], best_weights[key]) for key in published)  # step 2's weights
    assert [checkpoint_step(path) for path in list_checkpoints(output)] == [2]  # the best outlived the rotation
    assert "[train] best checkpoint: step 2 of 8, validation loss" in capsys.readouterr().out


@pytest.mark.slow
def test_a_longer_rerun_of_a_run_id_resumes_past_the_rotation_of_its_checkpoint(storage_root, mlflow_server,
                                                                                 capsys):
    """Issue 18's reproduction, scaled down: one checkpoint kept, so the longer rerun (a schedule change of
    the same training, which may resume) rotates away the checkpoint it resumed from. Issue 19's other
    direction, a rerun with another learning rate, trains a third time: tests/reliability/kills/test_train_kills.py."""
    kfp_run_id = f"run-{uuid.uuid4().hex[:8]}"
    common = ["--config", "local", "--run-id", kfp_run_id, "--set", f"storage.mount_path={storage_root}",
              "--set", f"mlflow.tracking_uri={mlflow_server.uri}", "--set", "training.save_steps=1",
              "--set", "training.save_total_limit=1", "--set", "training.logging_steps=1"]
    for steps in (4, 8):
        assert main([*common, "--set", f"training.max_steps={steps}"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.rindex("\n{\n") + 1:])
    assert report["metrics"]["resumed_from_step"] == 4 and report["metrics"]["global_step"] == 8
    run = run_dir(_config(storage_root, mlflow_server.uri), kfp_run_id)
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["checkpoint-8"]
    assert not (run / "checkpoints-discarded").exists()
    recorded = read_fingerprint(run / FINGERPRINT_FILE)
    assert recorded["training.learning_rate"] == "0.005" and "training.max_steps" not in recorded
    assert read_summary(run / "adapter").training_fingerprint == fingerprint_digest(recorded)


def test_a_failing_trainer_fails_the_run_and_the_cli_exits_non_zero(storage_root, mlflow_server):
    """A target module the model lacks passes our schema; LLaMA-Factory (peft) refuses it."""
    from mlflow.tracking import MlflowClient

    kfp_run_id = f"run-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(
        [sys.executable, "-m", "components.train.train", "--config", "local", "--run-id", kfp_run_id,
         "--set", f"storage.mount_path={storage_root}", "--set", f"mlflow.tracking_uri={mlflow_server.uri}",
         "--set", "training.lora_target=q_projx", "--set", "training.max_steps=4"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 1
    assert "LLaMA-Factory training failed (exit code 1)" in proc.stderr
    assert "ValueError: Target modules {'q_projx'} not found in the base model" in proc.stderr
    cfg = _config(storage_root, mlflow_server.uri)
    (run,) = _train_runs(MlflowClient(mlflow_server.uri), cfg, kfp_run_id)
    assert run.info.status == "FAILED" and "q_projx" in run.data.tags["llmft.error"]
    assert not (run_dir(cfg, kfp_run_id) / "adapter").exists()


# -- rendering -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["lora", "qlora", "full"])
def test_each_preset_renders_the_keys_llamafactory_expects(preset, tmp_path):
    cfg = load_config(preset)
    args = _render(cfg, tmp_path, gpu=True)
    assert args["stage"] == "sft" and args["do_train"] is True and args["report_to"] == "none"  # our own callback
    assert args["bf16"] is True and "fp16" not in args  # precision auto on a GPU
    assert args["dataset"] == "alpaca_sample" and args["template"] == "llama3" and args["seed"] == 42
    assert args["save_steps"] == 500 and args["save_only_model"] is False
    if preset == "full":
        assert args["finetuning_type"] == "full" and "lora_rank" not in args and "quantization_bit" not in args
        deepspeed = json.loads(Path(args["deepspeed"]).read_text())
        assert Path(args["deepspeed"]) == DEEPSPEED_CONFIGS[3] and deepspeed["zero_optimization"]["stage"] == 3
        assert deepspeed["train_micro_batch_size_per_gpu"] == "auto"  # filled from the YAML by transformers
    else:
        assert args["finetuning_type"] == "lora" and args["lora_rank"] == 16 and args["lora_alpha"] == 32
        assert args["lora_target"] == "all" and "deepspeed" not in args
    if preset == "qlora":
        assert args["quantization_bit"] == 4 and args["quantization_method"] == "bnb"
    else:
        assert "quantization_bit" not in args


def test_precision_follows_the_device(tmp_path):
    cpu = load_config("local", overrides=["training.precision=auto"])
    assert not {"bf16", "fp16"} & set(_render(cpu, tmp_path, gpu=False))
    asked_fp16 = load_config("local", overrides=["training.precision=fp16"])
    assert not {"bf16", "fp16"} & set(_render(asked_fp16, tmp_path, gpu=False))  # no half precision on a CPU
    assert _render(asked_fp16, tmp_path, gpu=True)["fp16"] is True
    full_on_cpu = load_config("local", overrides=["training.method=full"])
    assert "deepspeed" not in _render(full_on_cpu, tmp_path, gpu=False)
    validated = _render(load_config("local"), tmp_path, gpu=False)
    assert (validated["eval_dataset"], validated["eval_strategy"], validated["eval_steps"]) == (
        "alpaca_sample@val", "steps", validated["save_steps"])
    assert validated["load_best_model_at_end"] is True and validated["metric_for_best_model"] == "eval_loss"
    assert "val_size" not in validated  # LLaMA-Factory's random split of the train rows is never used
    unvalidated = _render(load_config("local", overrides=["dataset.val_fraction=0"]), tmp_path, gpu=False)
    assert not {"eval_dataset", "eval_strategy", "load_best_model_at_end"} & set(unvalidated)
    trusted = load_config("local", overrides=["training.trust_remote_code=true"])
    assert _render(trusted, tmp_path, gpu=False)["trust_remote_code"] is True


def test_llamafactory_argument_parser_accepts_the_rendered_yaml(tmp_path, tiny_model_dir):
    """Parsed by LLaMA-Factory's own dataclasses (unknown keys fail). Two adjustments only for GPU presets on this
    CPU machine: ``use_cpu`` (transformers refuses bf16 without a GPU otherwise) and no ``deepspeed`` key (its
    parsing imports the deepspeed package, which only the CUDA image has)."""
    from llamafactory.hparams import (
        DataArguments,
        FinetuningArguments,
        GeneratingArguments,
        ModelArguments,
        TrainingArguments,
        get_train_args,
    )
    from transformers import HfArgumentParser

    parser = HfArgumentParser([ModelArguments, DataArguments, TrainingArguments, FinetuningArguments,
                               GeneratingArguments])
    for preset in ("lora", "qlora", "full"):
        args = _render(load_config(preset), tmp_path, gpu=True)
        args.pop("deepspeed", None)
        model, _, training, finetuning, _ = parser.parse_dict({**args, "use_cpu": True}, allow_extra_keys=False)
        assert finetuning.finetuning_type == ("full" if preset == "full" else "lora")
        assert model.quantization_bit == (4 if preset == "qlora" else None)
        assert training.bf16 is True and training.report_to == []

    # The CPU demo config goes through LLaMA-Factory's full validation untouched.
    cfg = load_config("local")
    sections = render_sections(cfg, model_dir=tiny_model_dir, dataset_dir=REPO_ROOT / "components/demo/sample_data",
                               output_dir=tmp_path / "out", run_name="train", gpu=False,
                               resume_from=tmp_path / "out" / "checkpoint-8")
    model, data, training, finetuning, _ = get_train_args(yaml.safe_load(render_yaml(sections)))
    assert training.max_steps == 24 and training.save_steps == 8 and training.do_eval is True
    assert training.load_best_model_at_end and training.metric_for_best_model == "eval_loss"
    assert data.eval_dataset == ["alpaca_sample@val"] and data.val_size == 0
    assert training.resume_from_checkpoint == str(tmp_path / "out" / "checkpoint-8")
    assert finetuning.lora_rank == 8 and data.template == "default" and not training.bf16


def test_multi_gpu_runs_under_torchrun_with_one_process_per_gpu(tmp_path):
    four = load_config("lora", overrides=["cluster.accelerator_count=4"])
    command = trainer_command(four, True, tmp_path / "train.yaml")
    assert command[1:3] == ["-m", "torch.distributed.run"]
    assert command[command.index("--nproc-per-node") + 1] == "4"
    assert command[-3:] == ["-m", WORKER_MODULE, str(tmp_path / "train.yaml")]
    env = trainer_env(four, "abc", True)
    assert env["NPROC_PER_NODE"] == "4" and env["MLFLOW_RUN_ID"] == "abc" and "MLFLOW_EXPERIMENT_NAME" not in env
    single = load_config("lora")
    assert trainer_command(single, True, tmp_path / "t.yaml")[1:] == ["-m", WORKER_MODULE, str(tmp_path / "t.yaml")]
    assert "NPROC_PER_NODE" not in trainer_env(single, "abc", True)
    # Full fine-tuning uses DeepSpeed, which LLaMA-Factory only runs distributed: torchrun even on one GPU.
    full_one_gpu = load_config("full", overrides=["cluster.accelerator_count=1"])
    assert "torch.distributed.run" in trainer_command(full_one_gpu, True, tmp_path / "t.yaml")


# -- checkpoints ---------------------------------------------------------------------------------------------


def _checkpoint(root: Path, step: int, *, weights: bool = True, optimizer: bool = True, state: bool = True) -> Path:
    """A checkpoint directory in the Trainer's layout, with real safetensors and torch files."""
    import torch
    from safetensors.torch import save_file

    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if weights:
        save_file({"lora_A": torch.ones(8, 64), "lora_B": torch.zeros(64, 8)}, path / "adapter_model.safetensors")
    if optimizer:
        torch.save({"state": {0: torch.ones(100)}}, path / "optimizer.pt")
    if state:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "num_input_tokens_seen": step * 10}))
    return path


def test_checkpoint_problems_are_named(tmp_path):
    assert checkpoint_problem(_checkpoint(tmp_path, 4)) is None
    assert "trainer_state.json" in checkpoint_problem(_checkpoint(tmp_path, 8, state=False))
    assert "weights" in checkpoint_problem(_checkpoint(tmp_path, 12, weights=False))
    assert "optimizer" in checkpoint_problem(_checkpoint(tmp_path, 16, optimizer=False))

    truncated = _checkpoint(tmp_path, 20)
    weights = truncated / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert "truncated" in checkpoint_problem(truncated) and "truncated" in safetensors_problem(weights)

    cut_optimizer = _checkpoint(tmp_path, 24)
    optimizer = cut_optimizer / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:200])
    assert "optimizer.pt" in checkpoint_problem(cut_optimizer)
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(optimizer)

    mismatch = _checkpoint(tmp_path, 28)
    (mismatch / "trainer_state.json").write_text(json.dumps({"global_step": 27}))
    assert "global_step 27" in checkpoint_problem(mismatch)

    deepspeed = _checkpoint(tmp_path, 32, optimizer=False)
    (deepspeed / "latest").write_text("global_step32")
    assert "global_step32" in checkpoint_problem(deepspeed)
    (deepspeed / "global_step32").mkdir()
    (deepspeed / "global_step32" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x")
    assert checkpoint_problem(deepspeed) is None


def test_prepare_resume_takes_the_newest_complete_checkpoint_and_moves_broken_ones_aside(tmp_path):
    output, discard = tmp_path / "checkpoints", tmp_path / "discarded"
    _checkpoint(output, 4)
    _checkpoint(output, 8)
    _checkpoint(output, 12, state=False)  # killed while saving
    chosen, discarded = prepare_resume(output, discard)
    assert chosen == ResumePoint(output / "checkpoint-8", 8, 80)  # read now: rotation may delete it later
    assert [name for name, _ in discarded] == ["checkpoint-12"]
    assert [checkpoint_step(p) for p in list_checkpoints(output)] == [4, 8]
    assert [p.name.rsplit("-", 1)[0] for p in discard.iterdir()] == ["checkpoint-12"]

    # A rerun with fewer max_steps cannot resume past its last step: those checkpoints go aside too.
    chosen, discarded = prepare_resume(output, discard, last_step=6)
    assert chosen.step == 4 and discarded == [("checkpoint-8", "step 8 is past the last step, 6")]

    # Nothing complete: the whole output directory goes aside and training starts over in a clean one.
    fresh = tmp_path / "fresh"
    _checkpoint(fresh, 4, optimizer=False)
    (fresh / "trainer_log.jsonl").write_text('{"current_steps": 2}\n')
    chosen, discarded = prepare_resume(fresh, discard)
    assert chosen is None and not fresh.exists()
    assert [name for name, _ in discarded] == ["checkpoint-4", "fresh"]
    assert prepare_resume(tmp_path / "missing", discard) == (None, [])


def test_the_trainer_log_is_cut_back_to_the_resumed_checkpoint(tmp_path):
    log = tmp_path / "trainer_log.jsonl"
    log.write_text("".join(json.dumps({"current_steps": step, "loss": 1.0}) + "\n" for step in (2, 4, 6, 8, 10))
                   + "not json\n")
    trim_trainer_log(log, 6)
    assert [json.loads(line)["current_steps"] for line in log.read_text().splitlines()] == [2, 4, 6]


def test_metrics_cover_the_whole_run_after_a_resume_whose_checkpoint_was_rotated_away(tmp_path):
    """Issue 18: the step read the resumed-from checkpoint after training, when rotation had deleted it."""
    output = tmp_path / "checkpoints"
    _checkpoint(output, 4)
    resumed_from, _ = prepare_resume(output, tmp_path / "discarded")
    shutil.rmtree(resumed_from.path)  # what save_total_limit does once newer checkpoints exist
    history = [{"step": 2, "loss": 4.0}, {"step": 4, "loss": 2.0}, {"step": 4, "eval_loss": 1.25},
               {"step": 6, "loss": 1.0}, {"step": 8, "loss": 1.0}, {"step": 8, "eval_loss": 1.5}]
    (output / "trainer_state.json").write_text(json.dumps({"global_step": 8, "num_input_tokens_seen": 120,
                                                           "best_global_step": 4, "best_metric": 1.25,
                                                           "log_history": history}))
    (output / "all_results.json").write_text(json.dumps({"train_runtime": 2.0, "train_loss": 0.5}))
    metrics, _ = collect_metrics(output, resumed_from)
    assert metrics["train_loss"] == pytest.approx((4 + 2 + 1 + 1) * 2 / 8)  # not the last attempt's 0.5
    assert "final_loss" not in metrics  # the last point of the per-step "loss": one name per metric
    assert (metrics["best_step"], metrics["best_val_loss"], metrics["global_step"]) == (4, 1.25, 8)  # not the last
    assert metrics["tokens_per_second"] == pytest.approx((120 - 40) / 2.0)  # this attempt's tokens only
    assert metrics["resumed_from_step"] == 4

    # Resumed at the last step: nothing trained in this attempt, so no throughput to report.
    metrics, _ = collect_metrics(output, ResumePoint(output / "checkpoint-8", 8, 120))
    assert "tokens_per_second" not in metrics and metrics["global_step"] == 8


def test_a_retry_at_the_last_step_publishes_the_checkpoint_without_the_resume_state(tmp_path):
    output = tmp_path / "checkpoints"
    last = _checkpoint(output, 8)
    for name in ("scheduler.pt", "rng_state.pth", "adapter_config.json", "tokenizer.json"):
        (last / name).write_text("{}")
    (output / "adapter_model.safetensors").write_bytes(b"half")  # the killed final save
    copied = finish_from_checkpoint(last, output)
    assert copied == ["checkpoint-8/adapter_config.json", "checkpoint-8/adapter_model.safetensors",
                      "checkpoint-8/tokenizer.json", "checkpoint-8/trainer_state.json"]
    assert safetensors_problem(output / "adapter_model.safetensors") is None
    assert not (output / "optimizer.pt").exists() and not (output / "rng_state.pth").exists()
    assert (last / "optimizer.pt").exists()  # the checkpoint itself is untouched


def test_a_retry_at_the_last_step_publishes_the_best_checkpoints_weights(tmp_path):
    """With a validation side the trainer state names the best checkpoint: its weights are the result, the last
    one's trainer state (the whole history) stays; a best checkpoint that is gone fails instead of publishing the
    last one's weights."""
    from safetensors.torch import load_file, save_file

    output = tmp_path / "checkpoints"
    best = _checkpoint(output, 4)
    import torch

    save_file({"lora_A": torch.full((8, 64), 4.0), "lora_B": torch.zeros(64, 8)}, best / "adapter_model.safetensors")
    last = _checkpoint(output, 8)
    state = {"global_step": 8, "best_global_step": 4, "best_metric": 1.5, "log_history": [{"step": 8}]}
    (last / "trainer_state.json").write_text(json.dumps(state))
    copied = finish_from_checkpoint(last, output)
    assert copied[-1] == "checkpoint-4/adapter_model.safetensors" and "checkpoint-4/trainer_state.json" not in copied
    assert torch.equal(load_file(output / "adapter_model.safetensors")["lora_A"], torch.full((8, 64), 4.0))
    assert json.loads((output / "trainer_state.json").read_text()) == state
    shutil.rmtree(best)
    with pytest.raises(TrainError, match=r"the best checkpoint .*checkpoint-4, but it is gone"):
        finish_from_checkpoint(last, output)


# -- which training made the checkpoints (issue 19) ----------------------------------------------------------


def test_only_the_same_training_resumes_the_checkpoints(storage_root, tmp_path):
    """The fingerprint leaves out exactly the schedule; any other change, or no record, sets them aside."""
    cfg = load_config("local", overrides=[f"storage.mount_path={storage_root}"])
    base, data = storage_root / "models" / "base-model", {"alpaca_sample": "a" * 64}

    def fingerprint(*overrides: str, hashes: dict | None = None) -> dict:
        changed = load_config("local", overrides=[f"storage.mount_path={storage_root}", *overrides])
        return training_fingerprint(changed, base_model=base, dataset_hashes=hashes or data, gpu=False)

    original = fingerprint()
    assert {"max_steps", "num_train_epochs", "save_steps", "save_total_limit", "logging_steps"} == SCHEDULE_FIELDS
    assert {key.removeprefix("training.") for key in original if key.startswith("training.")} == \
        set(type(cfg.training).model_fields) - SCHEDULE_FIELDS  # every other training field counts
    for schedule in ("training.max_steps=48", "training.num_train_epochs=3", "training.save_steps=2",
                     "training.save_total_limit=5", "training.logging_steps=1"):
        assert fingerprint(schedule) == original, schedule
    for other in ("training.learning_rate=0.001", "training.lora_rank=4", "training.seed=1",
                  "training.method=full", "training.cutoff_len=128", "dataset.names=[alpaca_sample,sharegpt_sample]",
                  "cluster.accelerator_count=2"):
        assert fingerprint(other) != original, other
    assert fingerprint(hashes={"alpaca_sample": "b" * 64}) != original  # the same name, other content

    run = tmp_path / "run"
    output, discard, record = run / "checkpoints", run / "checkpoints-discarded", run / FINGERPRINT_FILE
    assert keep_only_same_training(output, discard, record, original) is None  # nothing there yet
    assert read_fingerprint(record) == original
    _checkpoint(output, 4)
    assert keep_only_same_training(output, discard, record, fingerprint("training.max_steps=99")) is None
    assert list_checkpoints(output) == [output / "checkpoint-4"]

    changed = fingerprint("training.learning_rate=0.001")
    reason = keep_only_same_training(output, discard, record, changed)
    assert reason == "another training wrote them (training.learning_rate: 0.005 -> 0.001)"
    assert not output.exists() and read_fingerprint(record) == changed
    (moved,) = discard.iterdir()
    assert (moved / "checkpoint-4").is_dir()
    note = json.loads((moved / "discarded.json").read_text())
    assert note["reason"] == reason and note["fingerprint"] == original

    # Checkpoints with no record (written before fingerprints, or the record lost) are not trusted either.
    _checkpoint(output, 4)
    record.unlink()
    assert "no readable training_fingerprint.json" in keep_only_same_training(output, discard, record, changed)
    assert len(list(discard.iterdir())) == 2 and not output.exists()


def test_the_base_model_is_fingerprinted_by_content(tmp_path, tiny_model_dir, monkeypatch):
    from components.train import fingerprint as train_fingerprint

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert model_digest(copy) == model_digest(tiny_model_dir)  # the same model elsewhere
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "rope_theta": 500000.0}))
    assert model_digest(copy) != model_digest(tiny_model_dir)
    # Large files are sampled at both ends: a change at the end of a weight file still counts.
    monkeypatch.setattr(train_fingerprint, "FULL_HASH_LIMIT", 1024)
    monkeypatch.setattr(train_fingerprint, "SAMPLE_BYTES", 256)
    before = model_digest(tiny_model_dir)
    weights = copy / "model.safetensors"
    shutil.copy2(tiny_model_dir / "model.safetensors", weights)
    (copy / "config.json").write_bytes((tiny_model_dir / "config.json").read_bytes())
    assert model_digest(copy) == before
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert model_digest(copy) != before


# -- errors --------------------------------------------------------------------------------------------------


# A stand-in for the step: it launches a "trainer" the way launch_trainer does (its own session, the step's pid in
# its environment); the trainer arms die_with_parent, then works until it is killed.
_STEP = """
import os, subprocess, sys
trainer = subprocess.Popen(
    [sys.executable, "-c", "import time; from components.train.worker import die_with_parent; die_with_parent(); "
     "print('armed', flush=True); time.sleep(300)"],
    env=dict(os.environ, LLMFT_TRAINER_PARENT=str(os.getpid())), start_new_session=True, stdout=subprocess.PIPE,
    text=True)
assert trainer.stdout.readline().strip() == "armed"
print(trainer.pid, flush=True)
trainer.wait()
"""


def test_the_trainer_dies_with_the_step_that_launched_it():
    """The trainer runs in its own session, out of reach of a kill aimed at the step's process group; a
    SIGKILLed step must not leave it training (and ending the step's MLflow run when it exits)."""
    step = subprocess.Popen([sys.executable, "-c", _STEP], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    trainer = psutil.Process(int(step.stdout.readline()))
    assert trainer.is_running() and trainer.ppid() == step.pid
    step.kill()
    step.wait()

    def alive() -> bool:
        try:
            return trainer.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 30
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)  # polling: the trainer is not our child, so there is nothing to wait on
    assert not alive(), "the trainer outlived its step"


def test_the_reported_error_is_the_workers_not_the_launchers():
    tail = [
        "[rank1]: Traceback (most recent call last):\n",
        "[rank1]:   File \"x.py\", line 3, in <module>\n",
        "ValueError: Target modules {'q_projx'} not found in the base model.\n",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n",
        "subprocess.CalledProcessError: Command '['torchrun']' returned non-zero exit status 1.\n",
    ]
    assert trainer_error(tail) == "ValueError: Target modules {'q_projx'} not found in the base model."
    assert trainer_error(["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"]).startswith(
        "torch.OutOfMemoryError: CUDA out of memory")
    assert trainer_error(["all good\n"]) == ""


def test_bad_inputs_are_named_before_anything_runs(storage_root, tmp_path, caplog):
    cfg = _config(storage_root, f"sqlite:///{tmp_path / 'mlflow.db'}", "dataset.names=[missing_set]",
                  "training.trust_remote_code=true")
    with caplog.at_level(logging.WARNING), pytest.raises(TrainError, match="dataset 'missing_set'") as failure:
        train_model(cfg, "r1")
    assert "dataset_info.json" in str(failure.value)
    assert "trust_remote_code is true" in caplog.text
    shutil.rmtree(storage_root / "models" / "base-model")
    with pytest.raises(TrainError, match="base-model has no config.json"):
        train_model(cfg, "r1")
    assert not (storage_root / "output").exists()


def test_cli_render_only_and_usage_errors(capsys):
    assert main(["--config", "qlora", "--render-only"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["quantization_bit"] == 4 and printed["bf16"] is True and printed["run_name"] == "train"
    # The trainer reads the run's split snapshot, not the data directory (none is needed to render).
    assert Path(printed["dataset_dir"]) == Path(printed["output_dir"]).parent / "data"
    assert printed["dataset_dir"].startswith("/storage/output/")
    assert flatten_sections(render_sections(load_config("qlora"), model_dir=Path("/storage/models/base-model"),
                                            dataset_dir=Path(printed["dataset_dir"]),
                                            output_dir=Path(printed["output_dir"]), run_name="train",
                                            gpu=True)) == printed
    assert main(["--config", "lora", "--set", "training.lora_rank=-1", "--render-only"]) == 2
    assert "training.lora_rank" in capsys.readouterr().err
    assert main(["--render-only"]) == 0  # without --config: the schema's defaults
    assert yaml.safe_load(capsys.readouterr().out)["model_name_or_path"] == "/storage/models/base-model"
    with pytest.raises(SystemExit) as shown:
        main(["--help"])
    assert shown.value.code == 0


# -- the data the trainer reads ------------------------------------------------------------------------------


def test_train_refuses_a_snapshot_changed_after_validation_and_ignores_later_source_changes(storage_root, tmp_path):
    """The validate step's snapshot is what trains: a changed snapshot file is refused (named), while data
    replaced in the source directory after validation is not read at all."""
    from components.data.split import snapshot_dir
    from components.data.validate_dataset import validate_config_data
    from components.train.inputs import prepare_data, resolve_paths

    cfg = _config(storage_root, f"sqlite:///{tmp_path / 'mlflow.db'}")
    _, validated = validate_config_data(cfg, "r1")
    snapshot = snapshot_dir(cfg, "r1")
    paths = resolve_paths(cfg, "r1")
    assert paths.dataset_dir == snapshot

    # Issue 19: the source replaced after validation. Training still gets exactly the validated rows.
    source = storage_root / "data" / "alpaca_sample.json"
    source.write_text(json.dumps([{"instruction": "Replaced.", "input": "", "output": "Unvalidated."}] * 500))
    assert prepare_data(cfg, "r1", paths) == validated
    assert "Replaced." not in (snapshot / "train" / "alpaca_sample.jsonl").read_text()

    train_file = snapshot / "train" / "alpaca_sample.jsonl"
    original = train_file.read_bytes()
    train_file.write_bytes(original + b'{"instruction": "Smuggled in.", "input": "", "output": "x"}\n')
    with pytest.raises(TrainError, match=r"train/alpaca_sample\.jsonl changed after validation"):
        train_model(cfg, "r1")
    assert not (run_dir(cfg, "r1") / "checkpoints").exists() and not (tmp_path / "mlflow.db").exists()
    train_file.write_bytes(original)

    manifest = snapshot / "split.json"
    data = json.loads(manifest.read_text())
    data["datasets"][0]["train_sha256"] = "not a hash"
    manifest.write_text(json.dumps(data))
    with pytest.raises(TrainError, match=r"split\.json is not a valid split manifest: "
                                         r"field 'datasets\.0\.train_sha256'"):
        train_model(cfg, "r1")

    other = _config(storage_root, f"sqlite:///{tmp_path / 'mlflow.db'}", "dataset.test_fraction=0.3")
    manifest.write_text(validated.model_dump_json())
    with pytest.raises(TrainError, match=r"split with .* = \(0\.25, 10, 2000, 0\.15, 8, 1000\); this config asks "
                                         r"for \['alpaca_sample'\] with \(0\.3, 10, 2000, 0\.15, 8, 1000\)"):
        train_model(other, "r1")
