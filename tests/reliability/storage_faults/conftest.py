"""Fixtures for fault injection: real small and read-only filesystems (tmpfs mounts; CI runs as root)."""

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
