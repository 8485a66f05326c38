"""Not tests: the processes a local pipeline run started, found by the storage root on their command line."""

from __future__ import annotations

from pathlib import Path

import psutil


def processes_of(storage: Path) -> list[psutil.Process]:
    """Every live process whose command line names this storage root (run_local, tasks, trainer)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.info["status"] != psutil.STATUS_ZOMBIE and any(
                str(storage) in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found
