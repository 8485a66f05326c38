"""The resolve-config step: the one place a run's configuration is decided.

Every run starts here. :func:`resolve` turns what the run was started with into the validated
configuration every later task reads:

1. ``z_config``: the whole configuration as JSON (the preset the pipeline was compiled from, by default);
2. ``z_overrides``: ``section.field=value`` strings applied on top of it;
3. the typed form parameters (:mod:`configs.form`): each one that differs from the value the pipeline was
   compiled with is applied last, so **typed parameter > overrides > config**. A typed parameter left at
   its default leaves the field to the overrides and the config.

Cluster parameters (``h_*``: PVC, GPU node selector, tolerations, accelerator type and counts) are also
set on the pods by the pipeline, so the config must agree with them: their value always wins, and an
override that sets one of those fields to something else is refused (it would reserve one number of GPUs
and train on another).

Settings fixed when the pipeline was compiled (the fields the schema marks with
:func:`configs.schema.compile_time`: image, DeepSpeed, timeouts, retries, resource requests, node count, the
storage mount, Secrets, the trials' parallelism; and GPUs or not) cannot take effect at run time: a run that
changes one is refused with the field named and the advice to compile another config.

The resolved config is also written to ``<output_root>/<run id>/resolved_config.json`` on the volume, where
the exit handler (which KFP does not let depend on a task) reads it.
"""

from __future__ import annotations

import json
from typing import Any

from components.common.logs import configure_step_logging
from components.common.run_name import write_run_name
from components.common.storage import run_dir
from components.common.typed_files import write_model
from configs.form import by_path, canonical, compile_time_paths, field_values, form_fields, form_values
from configs.loading import (
    apply_overrides,
    config_from_dict,
    config_from_json,
    follow_method,
    get_path,
    parse_override,
    set_path,
)
from configs.schema import ConfigError, PipelineConfig

STEP = "resolve-config"
RESOLVED_FILE = "resolved_config.json"
CLUSTER_PREFIX = "h_"


def resolve(config: str, overrides: list[str], form: dict[str, Any], compiled: PipelineConfig) -> PipelineConfig:
    """The run's configuration: ``config`` + ``overrides`` + the typed ``form`` values, checked against what the
    pipeline was ``compiled`` with.

    Raises:
        ConfigError: a value is invalid (the field is named), an unknown form parameter was given, an override
            disagrees with a cluster parameter, or a compile-time field was changed.
    """
    from configs.safe_json import DocumentError, parse_json

    try:
        data = parse_json(config, "z_config") if config.strip() else compiled.model_dump(mode="json")
    except DocumentError as exc:  # not JSON, too deep, an over-long number, NaN, a duplicate key
        raise ConfigError(f"z_config is not valid JSON: {exc.reason}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"z_config must be a JSON object, got {type(data).__name__}")
    base, data = data, apply_overrides(data, list(overrides or []))
    changed = [parse_override(text)[0] for text in overrides or []]
    fields = {field.name: field for field in form_fields()}
    unknown = sorted(set(form) - set(fields))
    if unknown:
        raise ConfigError(f"unknown run parameters {unknown}; the form has {sorted(fields)}")
    defaults = form_values(compiled)
    for name, value in sorted(form.items()):
        field = fields[name]
        if name.startswith(CLUSTER_PREFIX):
            already = get_path(data, field.path)
            if already is not None and canonical(already) != canonical(value) \
                    and canonical(already) != canonical(defaults[name]):
                raise ConfigError(
                    f"{field.path}: z_overrides or z_config set it to {canonical(already)}, but the {name} parameter "
                    f"({canonical(value)}) is what the pods get; set {name} instead")
            set_path(data, field.path.split("."), value, name)
        elif canonical(value) != canonical(defaults[name]):
            set_path(data, field.path.split("."), value, name)
            changed.append(field.path.split("."))
    # The same rule as every --set: a method changed by the overrides or the form takes its followers along.
    data = follow_method(base, data, [".".join(path) for path in changed])
    cfg = config_from_dict(data, source="the run's parameters")
    refuse_compile_time_changes(cfg, compiled)
    return cfg


def refuse_compile_time_changes(cfg: PipelineConfig, compiled: PipelineConfig) -> None:
    """Refuse run-time values of fields the pipeline fixed when it was compiled
    (:func:`configs.form.compile_time_paths`; and GPUs or not).

    Raises:
        ConfigError: one message naming every such field, its compiled and requested values.
    """
    paths = compile_time_paths()
    fixed, requested = field_values(compiled, paths), field_values(cfg, paths)
    changed = [f"{path}: compiled as {canonical(fixed[path])}, requested {canonical(requested[path])}"
               for path in paths if canonical(requested[path]) != canonical(fixed[path])]
    if (cfg.cluster.accelerator_count > 0) != (compiled.cluster.accelerator_count > 0):
        changed.append(f"cluster.accelerator_count: the pipeline was compiled "
                       f"{'with' if compiled.cluster.accelerator_count else 'without'} GPUs, requested "
                       f"{cfg.cluster.accelerator_count}")
    if changed:
        raise ConfigError("these settings are fixed when the pipeline is compiled and cannot change at run time; "
                          "compile another config (python -m pipelines.compile --config ... --set ...) instead:\n  "
                          + "\n  ".join(changed))


def form_from_overrides(overrides: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Split ``section.field=value`` overrides into typed form values and the rest (for submit).

    Typed values get their field's type (YAML reads ``5e-5`` as text, also inside a list; the KFP API wants a
    number).

    Raises:
        ConfigError: an override is malformed, or its value does not fit its parameter's type.
    """
    from pydantic import TypeAdapter, ValidationError

    from configs.loading import parse_override

    typed, rest = {}, []
    paths = by_path()
    for text in overrides:
        path, value = parse_override(text)
        field = paths.get(".".join(path))
        if field is None:
            rest.append(text)
            continue
        if isinstance(value, bool) and field.kind is not bool:  # pydantic would read true as 1 or 1.0
            raise ConfigError(f"{field.path}: must not be a boolean, got {str(value).lower()} (from --set {text!r})")
        try:
            adapter = TypeAdapter(field.annotation or field.kind)
            typed[field.name] = adapter.dump_python(adapter.validate_python(value), mode="json", exclude_none=True)
        except ValidationError as exc:
            raise ConfigError(f"{field.path}: {exc.errors()[0]['msg']} (from --set {text!r})") from None
    return typed, rest


def run_step(kfp_run_id: str, kfp_run_name: str, compiled_config: str, config: str, overrides: list,
             form: dict[str, Any]) -> tuple:
    """The resolve-config pipeline step: resolve, write ``resolved_config.json`` (a :class:`PipelineConfig`) and
    the run's name (:func:`components.common.run_name.write_run_name`) to the run directory, return the config.

    Returns:
        ``(resolved config JSON, training method, the sweep's trial indices)``: ``[0]`` without a sweep; the
        pipeline's trials loop runs one train task per index.

    Raises:
        ConfigError: as :func:`resolve`.
        StorageError: the volume refused the write.
    """
    configure_step_logging(STEP)
    compiled = config_from_json(compiled_config)
    cfg = resolve(config, overrides, form, compiled)
    write_run_name(cfg, kfp_run_id, kfp_run_name)
    text = cfg.model_dump_json()
    path = write_model(run_dir(cfg, kfp_run_id) / RESOLVED_FILE, cfg)
    before, after = form_values(compiled), form_values(cfg)
    changed = {field.path: after[field.name] for field in form_fields()
               if canonical(after[field.name]) != canonical(before[field.name])}
    trials = list(range(len(cfg.sweep.trials())))
    print(json.dumps({"resolved_config": str(path), "method": cfg.training.method, "config_hash": cfg.config_hash(),
                      "changed_from_compiled": changed, "trials": len(trials)}))
    return text, cfg.training.method, trials


def read_resolved(compiled: PipelineConfig, kfp_run_id: str) -> PipelineConfig | None:
    """The config resolve-config wrote for this run, or None when it never got that far.

    Raises:
        ConfigError: the file exists but does not validate (the file and each field are named).
    """
    path = run_dir(compiled, kfp_run_id) / RESOLVED_FILE
    if not path.is_file():
        return None
    return config_from_json(path.read_text(encoding="utf-8"), source=str(path))
