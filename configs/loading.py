"""Loading a :class:`~configs.schema.PipelineConfig`: from a preset or a YAML file, from the JSON a task
receives, or from a dict, with ``--set section.field=value`` overrides applied first.

Every document is read through the one safe reader (:mod:`configs.safe_json`) and checked for
depth and size before pydantic sees it; every error is a :class:`~configs.schema.ConfigError` naming the
source and each offending field path.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from configs.safe_json import DocumentError, parse_yaml, read_yaml
from configs.schema import ConfigError, PipelineConfig

CONFIG_DIR = Path(__file__).resolve().parent  # the presets: configs/<name>.yaml
# Limits on a config document: no real config comes near them, and a hostile one (deep nesting, YAML aliases
# that expand a billion-fold) would otherwise exhaust the stack or memory before validation says anything.
MAX_CONFIG_DEPTH = 32
MAX_CONFIG_NODES = 100_000
METHOD = "training.method"
# Fields whose valid values depend on training.method: a change of the method that does not set them as well resets
# them, so that the schema's value for the new method applies (quantization_bit: 4 with qlora, none otherwise).
METHOD_FOLLOWERS = ("training.quantization_bit",)


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {path}: {message}")
    return "\n".join(lines)


def check_shape(data: Any, what: str) -> None:
    """Refuse a document nested deeper than :data:`MAX_CONFIG_DEPTH` or with more than :data:`MAX_CONFIG_NODES`
    values, counting a YAML alias each time it is used (as everything after the parser expands it).

    Raises:
        ConfigError: the document is too deep or too large; the message names ``what``.
    """
    stack, count = [(data, 1)], 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_CONFIG_NODES:
            raise ConfigError(f"{what} holds more than {MAX_CONFIG_NODES:,} values (YAML aliases count each time "
                              "they are used); a config is far smaller")
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"{what} is nested more than {MAX_CONFIG_DEPTH} levels deep; a config is at most a few")
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for pair in node.items() for child in pair)
        elif isinstance(node, list | tuple | set):
            stack.extend((child, depth + 1) for child in node)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one ``section.field=value`` override; the value is read as YAML (numbers, lists, bools).

    Raises:
        ConfigError: the override has no ``=`` or an empty path part, or its value is not readable YAML.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.field=value")
    path = [part.strip() for part in key.split(".")]
    if not all(path):
        raise ConfigError(f"override {text!r} has an empty path component")
    try:
        value = parse_yaml(raw, "value") if raw.strip() else ""
    except DocumentError as exc:
        shown = text if len(text) <= 200 else f"{text[:120]}... ({len(text)} characters)"
        raise ConfigError(f"override {shown!r}: value is {exc.reason}") from None
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b=value`` override applied (unknown keys fail later), and the fields
    that follow the method reset when the overrides change it without setting them (:func:`follow_method`).

    Raises:
        ConfigError: an override is malformed, or its path runs through a value that is not a section.
    """
    check_shape(data, "the configuration")
    merged = copy.deepcopy(data)  # keeps dates and sets as they are, for the schema to name the field
    paths = []
    for text in overrides:
        path, value = parse_override(text)
        set_path(merged, path, value, f"override {text!r}")
        paths.append(".".join(path))
    return follow_method(data, merged, paths)


def set_path(data: dict[str, Any], path: list[str], value: Any, what: str) -> None:
    """Set ``data[path[0]][path[1]]... = value``, creating missing sections.

    Raises:
        ConfigError: the path runs through a value that is not a section (``what`` names the change).
    """
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{what}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def get_path(data: Any, path: str) -> Any:
    """The value at the dotted ``path`` of a nested dict, or None when a part is missing."""
    for part in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def follow_method(before: dict[str, Any], after: dict[str, Any], changed: list[str]) -> dict[str, Any]:
    """``after`` (``before`` with the ``changed`` field paths set) with each field of :data:`METHOD_FOLLOWERS` removed
    when the changes moved ``training.method`` without setting that field too: it then takes the new method's
    value (``--set training.method=lora`` on the qlora preset drops its 4 bits; ``b_method=qlora`` on the lora
    pipeline gets 4). Every entry point (compile, submit, run_local, the run form) goes through here.
    """
    default = PipelineConfig.model_fields["training"].annotation.model_fields["method"].default
    if (get_path(before, METHOD) or default) == (get_path(after, METHOD) or default):
        return after
    for path in METHOD_FOLLOWERS:
        section, _, leaf = path.rpartition(".")
        node = get_path(after, section)
        if path not in changed and isinstance(node, dict):
            node.pop(leaf, None)
    return after


def config_from_dict(data: Any, source: str = "<dict>", overrides: list[str] | None = None) -> PipelineConfig:
    """Validate a plain dict (from YAML or JSON) into a :class:`PipelineConfig`.

    Raises:
        ConfigError: the data is not a mapping or a field is unknown or invalid; the message names the
            source and every offending field path.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration in {source}: the top level must be a mapping, "
                          f"got {type(data).__name__}")
    check_shape(data, f"the configuration in {source}")
    data = apply_overrides(data, overrides or [])
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Load and validate a YAML config file, then apply ``--set``-style overrides.

    ``path`` may also be a preset name such as ``lora`` (read from ``configs/lora.yaml``).

    Raises:
        ConfigError: the file is missing, not UTF-8, not YAML, or fails validation.
    """
    file = Path(path)
    if not file.suffix and not os.path.exists(file):  # os.path: a name too long for the filesystem is no error
        file = CONFIG_DIR / f"{path}.yaml"
    try:
        data = read_yaml(file, f"config file {file}")
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist") from None
    except DocumentError as exc:  # unreadable, too large, not UTF-8, not YAML, too deep, an alias bomb
        raise ConfigError(str(exc)) from None
    return config_from_dict(data, source=str(file), overrides=overrides)


def config_from_json(text: str, overrides: list[str] | None = None, source: str = "the config parameter",
                     ) -> PipelineConfig:
    """Validate the JSON (or YAML) config a pipeline task receives as its ``config`` parameter, or a file of it
    (``source`` names it in errors, e.g. the run's ``resolved_config.json``).

    Raises:
        ConfigError: the text is not JSON/YAML, is too deep or too large, or fails validation.
    """
    try:
        data = parse_yaml(text, source)
    except DocumentError as exc:
        raise ConfigError(str(exc)) from None
    return config_from_dict(data, source=source, overrides=overrides)


__all__ = [
    "CONFIG_DIR",
    "METHOD",
    "METHOD_FOLLOWERS",
    "apply_overrides",
    "check_shape",
    "config_from_dict",
    "config_from_json",
    "follow_method",
    "get_path",
    "load_config",
    "set_path",
]
