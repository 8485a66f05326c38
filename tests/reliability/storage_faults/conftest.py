"""Fixtures for storage faults: real small and read-only filesystems (tmpfs mounts; CI runs as root), and results
files for the comparison to write reports about."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"these fault-injection tests mount a tmpfs and need root (CAP_SYS_ADMIN): {proc.stderr}")


@pytest.fixture
def small_volume(tmp_path):
    """A real 256 KiB filesystem: writes beyond it fail with ENOSPC."""
    path = tmp_path / "small"
    _mount_tmpfs(path, "256k")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def readonly_volume(tmp_path):
    """A real filesystem remounted read-only, with one existing file in it."""
    path = tmp_path / "ro"
    _mount_tmpfs(path, "1m")
    (path / "existing.txt").write_text("kept")
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="session")
def results_files(tmp_path_factory) -> list[str]:
    """A model's results.json and task.json (tests/builders.py), as the four arguments of the comparison CLI
    comparing the model with itself."""
    from builders import base_losses, flags_first_right, mmlu_results, task_results, write_results

    mmlu, task = write_results(tmp_path_factory.mktemp("results"), mmlu_results(flags_first_right(
        {}, per_subject=10, default=4)), task_results(base_losses()))
    return ["--candidate-mmlu", str(mmlu), "--candidate-task", str(task), "--baseline-mmlu", str(mmlu),
            "--baseline-task", str(task)]
