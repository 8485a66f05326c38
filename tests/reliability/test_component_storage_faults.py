"""Disk full and read-only storage while the real step CLIs write their outputs (real tmpfs mounts).

The merge of a real peft LoRA adapter publishes into a volume that fills up: a clear error naming the
path, the previously published version and its ``current`` pointer intact, no half-written version.
The tiny-model builder and the validation report hit a full volume; the evaluators (MMLU and held-out task), the
comparison, the compiler and the local runner are pointed at a read-only one. Each: exit 1 or 2, a message that names
the path and says what the volume refused, no traceback, and nothing left behind (no hidden temporary
either). The comparison writes two files: when the second does not fit, the first is not left alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.demo.samples import SAMPLES

ASSETS = SAMPLES
PAGE = 4096


def _run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))


def _refused(proc: subprocess.CompletedProcess, *words: str) -> None:
    message = proc.stdout + proc.stderr
    assert proc.returncode in (1, 2), message[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in: {message[-1500:]}"


def _fill(volume: Path, leave_pages: int) -> None:
    """Fill a tmpfs until exactly ``leave_pages`` pages are free (tmpfs accounts space in pages)."""
    stats = os.statvfs(volume)
    free = stats.f_bavail * stats.f_frsize
    (volume / "filler").write_bytes(b"\0" * (free - leave_pages * PAGE))
    stats = os.statvfs(volume)
    assert stats.f_bavail * stats.f_frsize == leave_pages * PAGE


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model_dir) -> Path:
    """A real peft LoRA adapter for the tiny model, with a non-zero update (peft starts lora_B at zero)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def results_files(tmp_path_factory) -> list[str]:
    """A model's results.json and task.json (tests/builders.py), as the four arguments of the comparison CLI
    comparing the model with itself."""
    from builders import base_losses, flags_first_right, mmlu_results, task_results, write_results

    mmlu, task = write_results(tmp_path_factory.mktemp("results"), mmlu_results(flags_first_right(
        {}, per_subject=10, default=4)), task_results(base_losses()))
    return ["--candidate-mmlu", str(mmlu), "--candidate-task", str(task), "--baseline-mmlu", str(mmlu),
            "--baseline-task", str(task)]


def test_merge_onto_a_full_volume_keeps_the_published_model(small_volume, tiny_model_dir, adapter):
    from components.demo.tiny_model import build_tiny_llama
    from components.merge.publish import current_version
    from components.merge.verify import verify_model_dir

    models = small_volume / "models"
    # v1: a model small enough for the volume, published for real (checksums, `current`).
    small = build_tiny_llama(small_volume.parent / "smaller", hidden_size=16, intermediate_size=32, vocab_size=300)
    first = _run("components.merge.merge_lora", "--base", str(small), "--publish-to", str(models), "--version", "v1")
    assert first.returncode == 0, first.stderr
    # v2: the tiny model merged with a real adapter; its 800 KiB of weights do not fit in what is left.
    proc = _run("components.merge.merge_lora", "--base", str(tiny_model_dir), "--adapter", str(adapter),
                "--publish-to", str(models), "--version", "v2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    _refused(proc, "no space left", str(models))
    assert current_version(models) == "v1"
    verify_model_dir(models / "v1")
    assert sorted(p.name for p in models.iterdir()) == ["CURRENT", "current", "v1"]  # no hidden staging left


def test_tiny_model_onto_a_full_volume_leaves_no_temporary(small_volume):
    proc = _run("components.demo.tiny_model", "--output", str(small_volume / "base-model"))
    _refused(proc, "no space left", str(small_volume / "base-model"))
    assert os.listdir(small_volume) == []


def test_validation_report_onto_a_full_volume(small_volume):
    _fill(small_volume, leave_pages=0)
    proc = _run("components.data.validate_dataset", "--dataset-dir", str(ASSETS / "sample_data"), "--dataset",
                "alpaca_sample", "--report", str(small_volume / "report.md"))
    _refused(proc, "no space left", str(small_volume / "report.md"))
    assert os.listdir(small_volume) == ["filler"]


def test_comparison_that_half_fits_leaves_neither_file(small_volume, results_files):
    # One free page: the report (under a page) fits, the comparison JSON written after it does not.
    _fill(small_volume, leave_pages=1)
    proc = _run("components.gate.compare", *results_files, "--report", str(small_volume / "report.md"),
                "--json", str(small_volume / "comparison.json"))
    _refused(proc, "no space left", str(small_volume / "comparison.json"))
    assert os.listdir(small_volume) == ["filler"]


def test_comparison_onto_a_read_only_volume(readonly_volume, results_files):
    proc = _run("components.gate.compare", *results_files, "--report", str(readonly_volume / "report.md"),
                "--json", str(readonly_volume / "comparison.json"))
    _refused(proc, "read-only", str(readonly_volume / "report.md"))
    assert os.listdir(readonly_volume) == ["existing.txt"]


def test_evaluate_onto_a_read_only_volume_writes_nothing(readonly_volume, tiny_model_dir):
    proc = _run("components.evaluate.mmlu.evaluate_mmlu", "--model", str(tiny_model_dir), "--data-dir", str(ASSETS / "sample_mmlu"),
                "--limit", "1", "--output", str(readonly_volume / "eval"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    _refused(proc, "read-only", str(readonly_volume / "eval"))
    assert os.listdir(readonly_volume) == ["existing.txt"]


def test_task_evaluation_onto_a_read_only_volume_writes_nothing(readonly_volume, tiny_model_dir):
    proc = _run("components.evaluate.task.evaluate_task", "--model", str(tiny_model_dir), "--data-dir", str(ASSETS / "sample_data"),
                "--dataset", "alpaca_sample", "--template", "default", "--cutoff-len", "64", "--output",
                str(readonly_volume / "task"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    _refused(proc, "read-only", str(readonly_volume / "task"))
    assert os.listdir(readonly_volume) == ["existing.txt"]


def test_validation_report_onto_a_read_only_volume(readonly_volume):
    proc = _run("components.data.validate_dataset", "--dataset-dir", str(ASSETS / "sample_data"), "--dataset",
                "alpaca_sample", "--report", str(readonly_volume / "report.md"))
    _refused(proc, "read-only", str(readonly_volume / "report.md"))
    assert os.listdir(readonly_volume) == ["existing.txt"]


def test_compile_onto_a_read_only_volume(readonly_volume):
    proc = _run("pipelines.compile", "--config", "lora", "--output", str(readonly_volume / "lora.yaml"))
    _refused(proc, "read-only", str(readonly_volume / "lora.yaml"))
    assert os.listdir(readonly_volume) == ["existing.txt"]


def test_local_run_on_a_read_only_storage_root(readonly_volume, tmp_path):
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    proc = _run("pipelines.run_local", "--storage", str(readonly_volume), cwd=workdir)
    _refused(proc, "read-only", str(readonly_volume))
    assert os.listdir(readonly_volume) == ["existing.txt"]
    assert os.listdir(workdir) == []  # nor anything in the working directory (./storage, ./mlruns)
