"""What ``python -m pipelines.run_local`` shows while kfp.local runs the pipeline: one line per task, progress.

kfp.local prints everything on stdout: its own log records, every task's full output (executor input
dumps, framework INFO lines, warnings). :class:`TaskConsole` stands in for stdout and stderr while the
pipeline runs and sorts that stream:

- each task's full output goes to its own file, ``<log dir>/<NN>-<task>.log``; what kfp.local says outside a
  task goes to ``<log dir>/pipeline.log``;
- the console gets one line when a task ends (name, status, duration), the training loss every few steps,
  and the results the task's own step logs: its INFO records, read back with
  :func:`components.common.logs.parse_line` (``[validate-dataset] ...`` in validate-dataset, ``[evaluate] ...`` in
  evaluate-candidate and evaluate-baseline); the records of the tools a step calls (``[mmlu] ...``,
  ``[generate] ...``) and warnings stay in the task's log;
- when a task fails, the console gets the tail of its log and the path of the whole log.

kfp.local runs one task at a time, so "the task running now" is always well defined. ``--verbose`` in
run_local bypasses all of this and streams everything, as kfp.local does.
"""

from __future__ import annotations

import ast
import io
import re
import time
from collections import deque
from pathlib import Path
from typing import TextIO

from components.common.logs import parse_line

ANSI = re.compile(r"\x1b\[[0-9;]*m")
STARTED = re.compile(r"Executing task '([^']+)'")
FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
# A Hugging Face Trainer log record, as the trainer prints it: {'loss': '6.921', ..., 'epoch': '0.07692', ...}
TRAINER_RECORD = re.compile(r"^\s*(\{'loss': .*\})\s*$")
TAIL_LINES = 30
WIDTH = 24  # the longest task name, so that the status columns line up


class TaskConsole(io.TextIOBase):
    """A text stream that sorts kfp.local's output into per-task log files and a short console (see module)."""

    def __init__(self, console: TextIO, log_dir: Path, *, logging_steps: int = 1, loss_every: int = 2):
        self.console, self.log_dir = console, log_dir
        self.logging_steps, self.loss_every = max(1, logging_steps), max(1, loss_every)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.pipeline_log = open(log_dir / "pipeline.log", "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.task: str | None = None
        self.task_log: TextIO | None = None
        self.task_path: Path | None = None
        self.started = 0.0
        self.count = 0
        self.losses = 0
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.failed: list[str] = []
        self._pending = ""

    # -- the stream interface ---------------------------------------------------------------------------------

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def flush(self) -> None:
        for handle in (self.task_log, self.pipeline_log, self.console):
            if handle is not None and not handle.closed:
                handle.flush()

    def close(self) -> None:
        if self._pending:
            self._line(self._pending)
            self._pending = ""
        self._end_task(None)
        self.pipeline_log.close()
        super().close()

    # -- sorting ------------------------------------------------------------------------------------------------

    def _line(self, line: str) -> None:
        plain = ANSI.sub("", line)
        started, finished = STARTED.search(plain), FINISHED.search(plain)
        if started:
            self._start_task(started.group(1))
        (self.task_log or self.pipeline_log).write(plain + "\n")
        if self.task is not None:
            self.tail.append(plain)
        if finished and finished.group(1) == self.task:
            self._end_task(finished.group(2))
        elif not started:
            self._progress(plain)

    def _start_task(self, name: str) -> None:
        self._end_task(None)
        self.count += 1
        self.task, self.started = name, time.monotonic()
        self.task_path = self.log_dir / f"{self.count:02d}-{name}.log"
        self.task_log = open(self.task_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in _end_task()
        self.tail.clear()
        self.losses = 0

    def _end_task(self, status: str | None) -> None:
        if self.task is None:
            return
        name, path, seconds = self.task, self.task_path, time.monotonic() - self.started
        self.task_log.close()
        self.task, self.task_log = None, None
        if status is None:
            return
        ok = status == "SUCCESS"
        self.say(f"{'✓' if ok else '✗'} {name:<{WIDTH}} {seconds:6.1f} s" + ("" if ok else f"  {status}"))
        if not ok:
            self.failed.append(name)
            self.say(f"  last lines of {name}'s log:")
            for line in self.tail:
                self.say(f"  | {line.strip()[:200]}")
            self.say(f"  whole log: {path}")

    def _progress(self, line: str) -> None:
        if self.task is None:
            return
        record = TRAINER_RECORD.match(line)
        if record:
            self.losses += 1
            if self.losses % self.loss_every == 0:
                values = _record(record.group(1))
                step = self.losses * self.logging_steps
                self.say(f"  {self.task:<{WIDTH}} step {step:>5}  loss {values.get('loss', '?')}")
            return
        logged = parse_line(line)
        if logged and logged.level == "info" and _runs_step(self.task, logged.step):
            self.say(f"  {self.task:<{WIDTH}} {_shortened(logged.message, 140)}")

    def say(self, text: str) -> None:
        """Show ``text`` on the console (and nowhere else)."""
        self.console.write(text + "\n")
        self.console.flush()


def _record(text: str) -> dict[str, str]:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {}
    return {str(key): str(item) for key, item in value.items()} if isinstance(value, dict) else {}


__all__ = ["TaskConsole"]


def _runs_step(task: str, step: str) -> bool:
    """Whether the task named ``task`` runs ``step``: its name is the step's, or the step's and a role
    (evaluate-candidate and evaluate-baseline run the evaluate step)."""
    return task == step or task.startswith(f"{step}-")


def _shortened(text: str, limit: int) -> str:
    """``text`` cut at the last word that fits in ``limit`` characters, marked with an ellipsis."""
    return text if len(text) <= limit else text[:limit - 1].rsplit(" ", 1)[0] + " …"
