"""A read-only volume under a step that writes: a clear error naming the path, and nothing written (a real
read-only remount of a tmpfs, no simulation).

The storage helpers first; then the real command lines: the evaluators (MMLU and held-out task), the validation
report, the comparison, the compiler and the local runner (which must not fall back to the working directory
either). Each: exit 1 or 2, a message that names the path and says the volume is read-only, no traceback, and the
volume as it was.
"""

from __future__ import annotations

import os

import pytest

from components.common.storage import StorageError, atomic_directory, atomic_write_text
from components.demo.samples import SAMPLES

from .steps import assert_clear_failure, run_cli


def test_read_only_volume_is_named_in_the_error(readonly_volume):
    with pytest.raises(StorageError, match="read-only") as info, atomic_directory(readonly_volume / "out"):
        pass
    assert "out" in str(info.value)
    with pytest.raises(StorageError, match="read-only"):
        atomic_write_text(readonly_volume / "results.json", "{}")
    assert sorted(os.listdir(readonly_volume)) == ["existing.txt"]


def test_comparison_onto_a_read_only_volume(readonly_volume, results_files):
    proc = run_cli("components.gate.compare", *results_files, "--report", str(readonly_volume / "report.md"),
                   "--json", str(readonly_volume / "comparison.json"))
    assert_clear_failure(proc, "read-only", str(readonly_volume / "report.md"))
    assert os.listdir(readonly_volume) == ["existing.txt"]


def test_evaluate_onto_a_read_only_volume_writes_nothing(readonly_volume, tiny_model_dir):
    proc = run_cli("components.evaluate.mmlu.evaluate_mmlu", "--model", str(tiny_model_dir), "--data-dir",
                   str(SAMPLES / "sample_mmlu"), "--limit", "1", "--output", str(readonly_volume / "eval"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert_clear_failure(proc, "read-only", str(readonly_volume / "eval"))
    assert os.listdir(readonly_volume) == ["existing.txt"]


def test_task_evaluation_onto_a_read_only_volume_writes_nothing(readonly_volume, tiny_model_dir):
    proc = run_cli("components.evaluate.task.evaluate_task", "--model", str(tiny_model_dir), "--data-dir",
                   str(SAMPLES / "sample_data"), "--dataset", "alpaca_sample", "--template", "default",
                   "--cutoff-len", "64", "--output", str(readonly_volume / "task"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert_clear_failure(proc, "read-only", str(readonly_volume / "task"))
    assert os.listdir(readonly_volume) == ["existing.txt"]


def test_validation_report_onto_a_read_only_volume(readonly_volume):
    proc = run_cli("components.data.validate_dataset", "--dataset-dir", str(SAMPLES / "sample_data"), "--dataset",
                   "alpaca_sample", "--report", str(readonly_volume / "report.md"))
    assert_clear_failure(proc, "read-only", str(readonly_volume / "report.md"))
    assert os.listdir(readonly_volume) == ["existing.txt"]


def test_compile_onto_a_read_only_volume(readonly_volume):
    proc = run_cli("pipelines.compile", "--config", "lora", "--output", str(readonly_volume / "lora.yaml"))
    assert_clear_failure(proc, "read-only", str(readonly_volume / "lora.yaml"))
    assert os.listdir(readonly_volume) == ["existing.txt"]


def test_local_run_on_a_read_only_storage_root(readonly_volume, tmp_path):
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    proc = run_cli("pipelines.run_local", "--storage", str(readonly_volume), cwd=workdir)
    assert_clear_failure(proc, "read-only", str(readonly_volume))
    assert os.listdir(readonly_volume) == ["existing.txt"]
    assert os.listdir(workdir) == []  # nor anything in the working directory (./storage, ./mlruns)
