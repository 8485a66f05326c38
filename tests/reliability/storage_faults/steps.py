"""Running a step's command line against a faulty volume, and judging its failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m <argv>`` in a fresh interpreter, offline, one thread."""
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))


def assert_clear_failure(proc: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 1 or 2, no traceback, and each of ``words`` (case-insensitive) in the output."""
    message = proc.stdout + proc.stderr
    assert proc.returncode in (1, 2), message[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in: {message[-1500:]}"
