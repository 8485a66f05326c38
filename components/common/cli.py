"""What every command line of the run-time packages shares: one style, every default from the schema.

Each CLI lives in the module whose work it runs (a step's entry module, or a tool such as
:mod:`components.evaluate.mmlu.evaluate_mmlu`) and has the shape of TRL's ``scripts/sft.py``: a usage
docstring, ``build_parser()`` and ``main(argv) -> int``, run by ``raise SystemExit(main())``.

- ``--config`` (a preset name such as ``local``, or a YAML file; default: the schema's defaults) and
  ``--set section.field=value`` (repeatable), applied in that order;
- :func:`field_flag` adds a flag for one config field (``--n-shot`` sets ``evaluation.n_shot``): its help is
  the field's description and its default is the config's value, so a CLI never restates a default, and a
  value the schema refuses is named by its flag and its field (``--n-shot (evaluation.n_shot): ...``);
- exit codes: 0 done, 1 the work failed, 2 a usage or configuration error (argparse itself exits 2 on a bad
  flag); every error is one line on stderr, ``python -m <module>: error: <message>``, never a traceback: a
  ``main`` catches :class:`configs.errors.StepError` (and nothing else) and returns :func:`fail`, which prints
  that line, secrets masked, and returns the error's exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from configs.redaction import redact

if TYPE_CHECKING:
    from configs.errors import StepError
    from configs.schema import PipelineConfig

_FIELD_FLAGS = "field_flags"  # parser attribute: {dest: (flag, field path)}


def new_parser(module: str, description: str) -> argparse.ArgumentParser:
    """A parser for ``python -m <module>`` with ``--config`` and ``--set``."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--config", default=None, metavar="PRESET_OR_YAML",
                        help="A preset name (configs/<name>.yaml) or a config YAML; default: the schema's defaults.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="Override a config value (repeatable), after --config.")
    setattr(parser, _FIELD_FLAGS, {})
    return parser


def comma_list(text: str) -> list[str]:
    """``a,b`` -> ``["a", "b"]`` (empty items dropped): how a list field is given on the command line."""
    return [item.strip() for item in text.split(",") if item.strip()]


def field_flag(parser: argparse.ArgumentParser, flag: str, path: str, *, metavar: str | None = None) -> None:
    """Add ``flag``, which sets the config field ``path`` (``section.field``) after ``--config`` and ``--set``.

    The flag's type follows the schema's default (a list is given comma-separated), its help is the field's
    description, and it defaults to the config's value: the schema's default unless the config says otherwise.
    """
    from configs.schema import PipelineConfig

    section, name = path.split(".")
    info = PipelineConfig.model_fields[section].annotation.model_fields[name]
    default: Any = info.get_default(call_default_factory=True)
    kind = comma_list if isinstance(default, list) else type(default)
    shown = ",".join(default) if isinstance(default, list) else default
    dest = flag.lstrip("-").replace("-", "_")
    parser.add_argument(flag, dest=dest, type=kind, default=None, metavar=metavar,
                        help=f"{info.description} Sets {path} (schema default: {shown!r}).")
    getattr(parser, _FIELD_FLAGS)[dest] = (flag, path)


def cli_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> PipelineConfig:
    """The run's config: ``--config`` (or the schema's defaults), then ``--set``, then the field flags given.

    Raises:
        ConfigError: the result does not validate; the message names each offending field, and its flag when a
            flag set it (``main`` returns 2 with it).
    """
    from configs.loading import config_from_dict, load_config
    from configs.schema import ConfigError

    given = {dest: spec for dest, spec in getattr(parser, _FIELD_FLAGS, {}).items()
             if getattr(args, dest, None) is not None}
    overrides = [*args.overrides, *(f"{path}={json.dumps(getattr(args, dest))}" for dest, (_, path) in given.items())]
    try:
        if args.config:
            return load_config(args.config, overrides=overrides)
        return config_from_dict({}, "the schema's defaults", overrides=overrides)
    except ConfigError as exc:
        message = str(exc)
        for flag, path in given.values():
            message = message.replace(f"{path}:", f"{path} ({flag}):")
        raise ConfigError(message) from None


def fail(parser: argparse.ArgumentParser, error: StepError, *, code: int | None = None,
         secrets: Iterable[str] = ()) -> int:
    """How every command line ends on an error: ``<prog>: error: <message>`` on stderr, and its exit code.

    Args:
        parser: The command's parser (its ``prog`` starts the line).
        error: What went wrong; its message is printed with URI credentials, bearer tokens and ``secrets``
            masked (:func:`configs.redaction.redact`).
        code: The exit code where the command's contract gives every error at that point one code (compare
            exits 1 for "keep the champion", so its errors exit 2); default: ``error.exit_code`` (1, or 2 for a
            :class:`configs.errors.UsageError` such as a :class:`configs.schema.ConfigError`).
        secrets: Secret values the command knows (a token read from the environment).

    Returns:
        The exit code for ``main`` to return.
    """
    print(f"{parser.prog}: error: {redact(str(error), secrets)}", file=sys.stderr)
    return error.exit_code if code is None else code
