"""Who launched a local pipeline run: the identity ``pipelines.run_local`` hands its tasks, and the tags it
becomes on the parent run (:mod:`components.common.local_runs` closes the runs of launchers that are gone).

The identity is the host, the pid and the process's start (:func:`process_start`), so that a reused pid is
not mistaken for the launcher that died.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.common.tags import LAUNCHER_HOST_TAG, LAUNCHER_PID_TAG, LAUNCHER_START_TAG

LAUNCHER_ENV = "LLMFT_LOCAL_LAUNCHER"  # set by run_local for its tasks: {"host", "pid", "start"}


def process_start(pid: int) -> str | None:
    """An identity of the live process ``pid`` that a reused pid does not share, or None when it is gone.

    On Linux: the boot id and the process's start time in clock ticks (``/proc``). Elsewhere only whether the
    pid exists ("" when it does).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None  # Linux, and no such process
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # it exists, as another user's process
        return ""
    except OSError:
        return None
    return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"  # field 22, starttime (the name may hold spaces)


def _this_launcher() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": process_start(os.getpid()) or ""}


def _as_tags(identity: dict[str, Any]) -> dict[str, str]:
    return {LAUNCHER_HOST_TAG: str(identity["host"]), LAUNCHER_PID_TAG: str(int(identity["pid"])),
            LAUNCHER_START_TAG: str(identity["start"])}


def local_launcher_env() -> dict[str, str]:
    """The environment a local launcher (``pipelines.run_local``) gives its tasks: who to check for liveness."""
    return {LAUNCHER_ENV: json.dumps(_this_launcher())}


def this_launcher_tags() -> dict[str, str]:
    """The launcher tags on the parent run of a pipeline run that this process launched locally."""
    return _as_tags(_this_launcher())


def launcher_tags(environ: Mapping[str, str]) -> dict[str, str]:
    """Tags naming the local launcher that ``environ`` (a task's environment) names: none on the cluster, or when
    the variable is bad."""
    try:
        return _as_tags(json.loads(environ.get(LAUNCHER_ENV, "")))
    except (ValueError, TypeError, KeyError):
        return {}


def launcher_filter(tags: Mapping[str, str]) -> str:
    """The MLflow filter clause (`` and tags...``) matching parent runs of the launcher ``tags`` name: host and
    pid only, as the process start may be empty (a caller that needs it compares it itself); "" for no tags."""
    return "".join(f" and tags.`{key}` = '{value}'" for key, value in tags.items() if key != LAUNCHER_START_TAG)
