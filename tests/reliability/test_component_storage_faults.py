"""Disk full and read-only storage while real steps write their outputs (real tmpfs mounts).

The merge publishes into a volume that fills up: a clear error naming the path, the previously
published version and its ``current`` pointer intact, no half-written version. The evaluator and the
validator asked to write onto a read-only volume: a clear error and nothing written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "components" / "assets"


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))


def test_merge_onto_a_full_volume_keeps_the_published_model(small_volume, tiny_model_dir):
    from components.publish import current_version, verify_model_dir
    from components.tiny_model import build_tiny_llama

    models = small_volume / "models"
    # v1: a model small enough for the volume, published for real (checksums, `current`).
    small = build_tiny_llama(small_volume.parent / "smaller", hidden_size=16, intermediate_size=32, vocab_size=300)
    first = _run("components.merge_lora", "--base", str(small), "--publish-to", str(models), "--version", "v1")
    assert first.returncode == 0, first.stderr
    # v2: the tiny model's 800 KiB of weights do not fit in what is left of the 256 KiB volume.
    proc = _run("components.merge_lora", "--base", str(tiny_model_dir), "--publish-to", str(models),
                "--version", "v2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "no space left" in proc.stderr and str(models) in proc.stderr, proc.stderr
    assert current_version(models) == "v1"
    verify_model_dir(models / "v1")
    assert sorted(p.name for p in models.iterdir() if not p.name.startswith(".")) == ["CURRENT", "current", "v1"]


def test_evaluate_onto_a_read_only_volume_writes_nothing(readonly_volume, tiny_model_dir):
    proc = _run("components.evaluate_mmlu", "--model", str(tiny_model_dir), "--data-dir", str(ASSETS / "sample_mmlu"),
                "--limit", "1", "--output", str(readonly_volume / "eval"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "read-only" in proc.stderr and "eval" in proc.stderr, proc.stderr
    assert sorted(os.listdir(readonly_volume)) == ["existing.txt"]


def test_validation_report_onto_a_read_only_volume(readonly_volume):
    proc = _run("components.validate_dataset", "--dataset-dir", str(ASSETS / "sample_data"), "--dataset",
                "alpaca_sample", "--report", str(readonly_volume / "report.md"))
    assert proc.returncode in (1, 2), proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "read-only" in proc.stdout + proc.stderr
    assert sorted(os.listdir(readonly_volume)) == ["existing.txt"]
