"""A full volume while a step writes its output: a clear error naming the path, and no half-written directory where
a later step would read it (real tmpfs filesystems, no simulation).

The storage helpers first; then the validate step streaming the split snapshot (a storage error that names the
volume, not a validation problem blamed on the source file); the merge of a real peft LoRA adapter publishing into
a volume that fills up (the previously published version and its ``current`` pointer intact); the tiny-model
builder, the validation report, and the comparison, which writes two files: when the second does not fit, the first
is not left alone. Each command line: exit 1 or 2, a message that names the path and says what the volume refused,
no traceback, nothing left behind (no hidden temporary either).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from lora import make_adapter

from components.common.storage import StorageError, atomic_directory
from components.data.split_writer import validate_and_split
from components.demo.samples import SAMPLES

from .steps import assert_clear_failure, run_cli

PAGE = 4096


def _fill(volume: Path, leave_pages: int) -> None:
    """Fill a tmpfs until exactly ``leave_pages`` pages are free (tmpfs accounts space in pages)."""
    stats = os.statvfs(volume)
    free = stats.f_bavail * stats.f_frsize
    (volume / "filler").write_bytes(b"\0" * (free - leave_pages * PAGE))
    stats = os.statvfs(volume)
    assert stats.f_bavail * stats.f_frsize == leave_pages * PAGE


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model_dir) -> Path:
    """A real peft LoRA adapter for the tiny model, with a non-zero update."""
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "adapter", seed=1,
                        target_modules=["q_proj", "v_proj"])


# --- the storage helpers ----------------------------------------------------------------------------------------


def test_disk_full_leaves_nothing_behind(small_volume):
    final = small_volume / "models" / "v1"
    with pytest.raises(StorageError, match="no space left") as info, atomic_directory(final) as tmp:
        (tmp / "config.json").write_text("{}")
        with open(tmp / "model.safetensors", "wb") as handle:
            for _ in range(64):
                handle.write(os.urandom(16 * 1024))
    assert str(final) in str(info.value)
    assert not final.exists()
    assert os.listdir(small_volume / "models") == []


def test_disk_full_keeps_the_previous_version(small_volume):
    final = small_volume / "current-model"
    with atomic_directory(final) as tmp:
        (tmp / "weights").write_bytes(b"old" * 10)
    with pytest.raises(StorageError, match="no space left"), atomic_directory(final, replace=True) as tmp:
        (tmp / "weights").write_bytes(os.urandom(512 * 1024))
    assert (final / "weights").read_bytes() == b"old" * 10
    assert sorted(os.listdir(small_volume)) == ["current-model"]


# --- the steps --------------------------------------------------------------------------------------------------


def test_a_full_volume_while_splitting_leaves_nothing_and_names_the_volume(small_volume, tmp_path):
    source = tmp_path / "data"
    source.mkdir()
    (source / "dataset_info.json").write_text(json.dumps({"ds": {"file_name": "ds.jsonl"}}))
    rows = [{"instruction": f"Row {i}: " + "words " * 40, "input": "", "output": f"Answer {i}."} for i in range(2000)]
    (source / "ds.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))  # ~0.6 MB, the volume 256 KiB
    before = (source / "ds.jsonl").read_bytes()
    with pytest.raises(StorageError, match="no space left on the storage volume") as failure:
        validate_and_split(source, ["ds"], small_volume / "run" / "data", test_fraction=0.1, min_test_rows=1,
                           max_test_rows=100, cutoff_len=1024)
    assert str(small_volume) in str(failure.value)
    assert os.listdir(small_volume / "run") == []  # the temporary snapshot is gone
    assert (source / "ds.jsonl").read_bytes() == before


def test_merge_onto_a_full_volume_keeps_the_published_model(small_volume, tiny_model_dir, adapter):
    from components.demo.tiny_model import build_tiny_llama
    from components.merge.publish import current_version
    from components.merge.verify import verify_model_dir

    models = small_volume / "models"
    # v1: a model small enough for the volume, published for real (checksums, `current`).
    small = build_tiny_llama(small_volume.parent / "smaller", hidden_size=16, intermediate_size=32, vocab_size=300)
    first = run_cli("components.merge.merge_lora", "--base", str(small), "--publish-to", str(models), "--version",
                    "v1")
    assert first.returncode == 0, first.stderr
    # v2: the tiny model merged with a real adapter; its 800 KiB of weights do not fit in what is left.
    proc = run_cli("components.merge.merge_lora", "--base", str(tiny_model_dir), "--adapter", str(adapter),
                   "--publish-to", str(models), "--version", "v2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert_clear_failure(proc, "no space left", str(models))
    assert current_version(models) == "v1"
    verify_model_dir(models / "v1")
    assert sorted(p.name for p in models.iterdir()) == ["CURRENT", "current", "v1"]  # no hidden staging left


def test_tiny_model_onto_a_full_volume_leaves_no_temporary(small_volume):
    proc = run_cli("components.demo.tiny_model", "--output", str(small_volume / "base-model"))
    assert_clear_failure(proc, "no space left", str(small_volume / "base-model"))
    assert os.listdir(small_volume) == []


def test_validation_report_onto_a_full_volume(small_volume):
    _fill(small_volume, leave_pages=0)
    proc = run_cli("components.data.validate_dataset", "--dataset-dir", str(SAMPLES / "sample_data"), "--dataset",
                   "alpaca_sample", "--report", str(small_volume / "report.md"))
    assert_clear_failure(proc, "no space left", str(small_volume / "report.md"))
    assert os.listdir(small_volume) == ["filler"]


def test_comparison_that_half_fits_leaves_neither_file(small_volume, results_files):
    # One free page: the report (under a page) fits, the comparison JSON written after it does not.
    _fill(small_volume, leave_pages=1)
    proc = run_cli("components.gate.compare", *results_files, "--report", str(small_volume / "report.md"),
                   "--json", str(small_volume / "comparison.json"))
    assert_clear_failure(proc, "no space left", str(small_volume / "comparison.json"))
    assert os.listdir(small_volume) == ["filler"]
