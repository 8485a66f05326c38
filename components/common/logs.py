"""Progress and results through :mod:`logging`: one logger per step, one line format, one reader of it.

A step, or a tool with a command line of its own, logs through ``step_logger(STEP)``: the logger
``llmft.<step>`` (``llmft.train``, ``llmft.evaluate``, ``llmft.mmlu``...). Its records go to one handler on the
``llmft`` logger, set up once per process by :func:`configure_step_logging`, which every entry point (a CLI's
``main``, a step's ``run_step``) calls first; :func:`step_logger` sets it up as well, so that a function called from
Python (a notebook, a test) prints its lines as before. The handler writes to the process's stdout at the moment
of the record (a test's capture, a redirect), where the steps' lines have always gone: their order against the
trainer's output, which the train step copies to stdout, stays as it was. Each record is one line per line of its
message, written by :class:`StepFormatter` and by nothing else:

    [<step>] <message>              INFO: progress and results ("[train] resuming from checkpoint-16")
    [<step>] warning: <message>     WARNING, and likewise "error: ", "critical: ", "debug: "

The records do not propagate to the root logger: in a KFP task the executor has configured it with a handler of
its own, which would print each of them a second time in its format. :func:`parse_line` reads such a line back
(the local console, :mod:`pipelines.console`, reads the tasks' output with it), so the format written and the
format read cannot drift apart.

What stays ``print``: a command line's result for a program to read (one JSON document, a table, ``--help``) and
the JSON result record a step prints for the task log; the relayed output of another process (the trainer, a
training job's pod) is copied as it comes.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import NamedTuple, TextIO

NAMESPACE = "llmft"
_HANDLER_NAME = "llmft-steps"
# "[<step>] " then, for any level but INFO, "<level>: "; a step name is lowercase words joined by '-'.
_LINE = re.compile(r"\[(?P<step>[a-z][a-z0-9]*(?:-[a-z0-9]+)*)\] (?:(?P<level>debug|warning|error|critical): )?"
                   r"(?P<message>.*)")


class StepLine(NamedTuple):
    """One line a step logged, read back: its step, level (``info``, ``warning``...) and message."""

    step: str
    level: str
    message: str


class StepFormatter(logging.Formatter):
    """``[<step>] <message>`` (INFO) or ``[<step>] <level>: <message>``, once per line of the message; a traceback
    (``log.exception``) follows as it is."""

    def format(self, record: logging.LogRecord) -> str:
        step = record.name.removeprefix(f"{NAMESPACE}.")
        level = record.levelname.lower()
        prefix = f"[{step}] " if level == "info" else f"[{step}] {level}: "
        text = "\n".join(prefix + line for line in record.getMessage().splitlines() or [""])
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _StdoutHandler(logging.StreamHandler):
    """A stream handler bound to ``sys.stdout`` as it is when a record comes, not as it was at set-up."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        """Ignored: the handler always writes to the current ``sys.stdout``."""


def configure_step_logging(step: str) -> logging.Logger:
    """Set up the steps' logging in this process (once: a second call changes nothing) and return ``step``'s logger.

    Every entry point calls it first: a CLI's ``main`` and a pipeline step's ``run_step``.
    """
    namespace = logging.getLogger(NAMESPACE)
    if not any(handler.get_name() == _HANDLER_NAME for handler in namespace.handlers):
        handler = _StdoutHandler()
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(StepFormatter())
        namespace.addHandler(handler)
        namespace.setLevel(logging.INFO)
        namespace.propagate = False  # the root logger's handlers (KFP's executor) would print every record again
    return logging.getLogger(f"{NAMESPACE}.{step}")


def step_logger(step: str) -> logging.Logger:
    """The logger of ``step`` (``llmft.<step>``), its lines ``[<step>] ...``; sets the steps' logging up if no entry
    point has yet."""
    return configure_step_logging(step)


def parse_line(line: str) -> StepLine | None:
    """The step line ``line`` is (surrounding whitespace ignored), or None when it is not one."""
    match = _LINE.fullmatch(line.strip())
    if match is None:
        return None
    return StepLine(match["step"], match["level"] or "info", match["message"])


__all__ = ["NAMESPACE", "StepFormatter", "StepLine", "configure_step_logging", "parse_line", "step_logger"]
