"""The one error contract: every error the project raises on purpose is a :class:`StepError` with an exit code.

A step, a tool or a command line raises a :class:`StepError` (or a subclass named after what failed) when it
cannot do its job for a reason its message explains: the message names the field, flag, file or server and, where
there is one, the remedy. A command line catches :class:`StepError` and nothing else, and turns it into one line
on stderr and its :attr:`StepError.exit_code` (:func:`components.common.cli.fail`); anything else that escapes is
a bug and keeps its traceback.

- exit 1 (:class:`StepError`): the work failed (bad data, a server that does not answer, a full volume);
- exit 2 (:class:`UsageError`): the command was asked for something it cannot do as asked: flags that do not
  fit together, an invalid configuration (:class:`configs.schema.ConfigError`), a cron expression.

Most subclasses keep the built-in base they had before the contract (``ValueError`` for bad input,
``RuntimeError`` for a failed operation), so code that catches those still works.

Not step errors, on purpose: ``_Refused`` (:mod:`configs.safe_json`) and ``_Invalid``
(:mod:`components.data.split_writer`) are control flow inside one module and never leave it, and the exceptions
:func:`components.common.signals.sigterm_raises` is given (``KeyboardInterrupt``, a step's own error) are
signals, not failures to report.

It lives in ``configs``, the lowest layer, because :class:`configs.schema.ConfigError` derives from it; it imports
nothing.
"""

from __future__ import annotations


class StepError(Exception):
    """A step, tool or command line could not do its job; the message says why. A CLI exits ``exit_code``."""

    exit_code: int = 1  # the work failed


class UsageError(StepError, ValueError):
    """The command was asked for something it cannot do as asked (flags, configuration); a CLI exits 2."""

    exit_code = 2


__all__ = ["StepError", "UsageError"]
