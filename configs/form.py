"""The run form: the config fields marked in :mod:`configs.schema` as typed pipeline parameters, and the fields
marked as fixed when compiling.

Fields are marked once, with :func:`configs.schema.form_field`; everything else derives from the marks:
the pipeline's signature and parameter descriptions (:mod:`pipelines.finetune`), submit's mapping of ``--set``
values to parameters, and the README's table; a test holds the resolve-config wrapper's parameters
(:func:`pipelines.steps.resolve_config`) to them. :func:`compile_time_paths` lists the fields marked with
:func:`configs.schema.compile_time`, which a run cannot change.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel

from configs.schema import COMPILE_TIME_KEY, FORM_KEY, PipelineConfig

# The advanced path, after every typed field in the alphabetical form.
CONFIG_PARAM = "z_config"
OVERRIDES_PARAM = "z_overrides"


class FormField(NamedTuple):
    """One typed run parameter: its name in the form, the config field it sets, its KFP type, its description."""

    name: str
    path: str
    kind: type  # str, int, float, bool, list or dict: what KFP shows as the parameter's type
    description: str
    annotation: Any = None  # the field's own type (list[float]...): what a value is converted to


def _kind(annotation: Any) -> type:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return type(typing.get_args(annotation)[0])
    if origin in (list, dict):
        return origin
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"a run-form field cannot be optional, got {annotation}")
    if annotation in (str, int, float, bool):
        return annotation
    raise TypeError(f"no KFP parameter type for {annotation}")


def _marked(key: str, model: type[BaseModel] = PipelineConfig, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(path, field info, mark)`` of every field of ``model`` and its sections marked with ``key``, in
    declaration order."""
    found = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += _marked(key, annotation, f"{prefix}{name}.")
            continue
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if key in extra:
            found.append((prefix + name, info, extra[key]))
    return found


def form_fields() -> list[FormField]:
    """Every field marked with :func:`configs.schema.form_field`, sorted by form name (the order the UI shows)."""
    return sorted(FormField(str(mark), path, _kind(info.annotation), info.description or "", info.annotation)
                  for path, info, mark in _marked(FORM_KEY))


def compile_time_paths() -> tuple[str, ...]:
    """The paths of the fields marked with :func:`configs.schema.compile_time`, in declaration order."""
    return tuple(path for path, _, _ in _marked(COMPILE_TIME_KEY))


def field_values(cfg: PipelineConfig, paths: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``{path: JSON value}`` of the config fields at ``paths`` (e.g. ``training.learning_rate``), from one dump
    of ``cfg``."""
    dumped = cfg.model_dump(mode="json", exclude_none=True)  # KFP parameters cannot hold null
    values = {}
    for path in paths:
        node: Any = dumped
        for part in path.split("."):
            node = node[part]
        values[path] = node
    return values


def field_value(cfg: PipelineConfig, path: str) -> Any:
    """The JSON value of the config field at ``path`` (e.g. ``training.learning_rate``)."""
    return field_values(cfg, [path])[path]


def form_values(cfg: PipelineConfig) -> dict[str, Any]:
    """``{form name: value}`` of every typed parameter for ``cfg`` (the compiled defaults of a pipeline)."""
    fields = form_fields()
    values = field_values(cfg, [field.path for field in fields])
    return {field.name: values[field.path] for field in fields}


def by_path() -> dict[str, FormField]:
    """The typed parameters keyed by the config path they set."""
    return {field.path: field for field in form_fields()}


def canonical(value: Any) -> str:
    """A value's canonical JSON, so that a form value and a config value compare equal when they mean the same
    (KFP hands integers of a local run back as floats: ``16.0`` means ``16``)."""
    def normalise(item: Any) -> Any:
        if isinstance(item, float) and item.is_integer():
            return int(item)
        if isinstance(item, dict):
            return {key: normalise(inner) for key, inner in item.items() if inner is not None}
        if isinstance(item, list):
            return [normalise(inner) for inner in item]
        return item

    return json.dumps(normalise(value), sort_keys=True)


KFP_TYPE_NAMES = {str: "string", int: "integer", float: "double", bool: "boolean", list: "list", dict: "dict"}
README_BEGIN, README_END = "<!-- run-form:begin -->", "<!-- run-form:end -->"


def markdown_table(cfg: PipelineConfig) -> str:
    """The run form as the README shows it: each parameter as the Kubeflow UI lists it (``name - type``, in
    alphabetical order), what to put there, its default in ``cfg`` and the config field it sets."""
    def shown(value: Any) -> str:
        text = value if isinstance(value, str) else canonical(value)
        return f"`{text}`" if text != "" else '`""`'

    rows = ["| Parameter | What to put there | Default (`lora`) | Sets |", "|---|---|---|---|"]
    for field in form_fields():
        rows.append(f"| `{field.name} - {KFP_TYPE_NAMES[field.kind]}` | {field.description} | "
                    f"{shown(field_value(cfg, field.path))} | `{field.path}` |")
    rows.append(f"| `{CONFIG_PARAM} - string` | The whole configuration as JSON: the preset compiled into this "
                "pipeline. Change fields through the typed parameters or `z_overrides` instead. | the preset | all |")
    rows.append(f"| `{OVERRIDES_PARAM} - list` | `\"section.field=value\"` strings for fields without a typed "
                'parameter, e.g. `["training.warmup_ratio=0.1"]`. | `[]` | any |')
    return "\n".join(rows)


def main() -> int:
    """Print the run form's Markdown table for the ``lora`` preset (the README embeds it)."""
    from configs.loading import load_config

    print(markdown_table(load_config("lora")))
    return 0


__all__ = ["CONFIG_PARAM", "OVERRIDES_PARAM", "README_BEGIN", "README_END", "FormField", "by_path", "canonical",
           "compile_time_paths", "field_value", "field_values", "form_fields", "form_values", "markdown_table"]


if __name__ == "__main__":
    raise SystemExit(main())
