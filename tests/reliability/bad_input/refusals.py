"""How every bad-input case of a command line is judged, whatever the entry point.

A case runs the real CLI in a fresh interpreter with the workspace as its working directory (so a default
``./storage`` would land in it too) and passes when the command exits 1 or 2, prints no Python traceback,
names the offending field, flag or file (each of ``words``), and leaves the workspace exactly as it was: every
path, size and mtime (hidden temporaries included).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# The Training Operator's variables: a node's environment, which must not leak into the cases from the test's.
OPERATOR_ENV = {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PET_NNODES", "PET_NODE_RANK"}


def tree(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every path under ``root`` (symlinks not followed) with its kind, and a file's size and mtime. A directory's
    own mtime is left out: a temporary created and cleaned up moves it."""
    entries = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            info = path.lstat()
            kind = "link" if path.is_symlink() else "dir" if name in dirs else "file"
            entries[str(path.relative_to(root))] = (kind, info.st_size, info.st_mtime_ns) if kind == "file" \
                else (kind, 0, 0)
    return entries


def assert_refused(ws: Path, argv: list[str], words: list[str], extra_env: dict[str, str] | None = None) -> str:
    """Run ``python -m <argv>`` (``{ws}`` stands for the workspace) and check the refusal; return its output."""
    argv = [arg.replace("{ws}", str(ws)) for arg in argv]
    env = {key: value for key, value in os.environ.items() if key not in OPERATOR_ENV}
    env.update(HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", **(extra_env or {}))
    before = tree(ws)
    proc = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, cwd=ws, env=env, timeout=180)
    after = tree(ws)
    message = proc.stdout + proc.stderr
    assert proc.returncode in (1, 2), f"exit {proc.returncode}: {message[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for word in words:
        word = word.replace("{ws}", str(ws))
        assert word in message, f"{word!r} not named in: {message[-1500:]}"
    written = sorted(set(after) - set(before))
    changed = sorted(path for path in before if after.get(path) != before[path])
    assert not written and not changed, f"written: {written[:10]}, changed or removed: {changed[:10]}"
    return message


def case_ids(cases: list[tuple]) -> list[str]:
    """The case names, checked to be distinct."""
    ids = [case[0] for case in cases]
    assert len(set(ids)) == len(ids), "two cases share a name"
    return ids
