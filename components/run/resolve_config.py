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

Settings fixed when the pipeline was compiled (image, GPUs or not, DeepSpeed, timeouts, retries, resource
requests, node count, the storage mount) cannot take effect at run time: a run that changes one is refused
with the field named and the advice to compile another config.

The resolved config is also written to ``<output_root>/<run id>/resolved_config.json`` on the volume, where
the exit handler (which KFP does not let depend on a task) reads it.
"""

from __future__ import annotations

import json
from typing import Any

from components.common.logs import configure_step_logging
from components.common.storage import run_dir
from components.common.tracking import write_run_name
from components.common.typed_files import write_model
from configs.form import by_path, canonical, field_value, form_fields, form_values
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
# Fields decided when compiling (they shape the compiled IR: images, pod resources, timeouts, the mount).
COMPILE_TIME = (
    "cluster.image", "cluster.image_pull_secrets", "cluster.nodes", "cluster.cpu_request", "cluster.memory_request",
    "cluster.memory_limit", "cluster.light_cpu_request", "cluster.light_memory_request", "cluster.shm_size",
    "cluster.train_timeout_s", "cluster.eval_timeout_s", "cluster.merge_timeout_s", "cluster.light_timeout_s",
    "cluster.train_retries", "training.deepspeed_stage", "storage.mount_path", "storage.output_root",
    "mlflow.credentials_secret", "evaluation.judge_secret", "sweep.parallelism",
)
CLUSTER_PREFIX = "h_"


def resolve(config: str, overrides: list[str], form: dict[str, Any], compiled: PipelineConfig) -> PipelineConfig:
    """The run's configuration: ``config`` + ``overrides`` + the typed ``form`` values, checked against what the
    pipeline was ``compiled`` with.

    Raises:
        ConfigError: a value is invalid (the field is named), an unknown form parameter was given, an override
            disagrees with a cluster parameter, or a compile-time field was changed.
    """
    from components.common.safe_json import DocumentError, parse_json

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
    """Refuse run-time values of fields the pipeline fixed when it was compiled.

    Raises:
        ConfigError: one message naming every such field, its compiled and requested values.
    """
    changed = [f"{path}: compiled as {canonical(field_value(compiled, path))}, requested "
               f"{canonical(field_value(cfg, path))}" for path in COMPILE_TIME
               if canonical(field_value(cfg, path)) != canonical(field_value(compiled, path))]
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
    the run's name (:func:`components.common.tracking.write_run_name`) to the run directory, return the config.

    Returns:
        ``(resolved config JSON, training method, the sweep's trial indices)``: ``[0]`` without a sweep; the
        pipeline's trials loop runs one train task per index.

    Raises:
        ConfigError: as :func:`resolve`.
        StorageError: the volume refused the write.
    """
    configure_step_logging(STEP)
    cfg = resolve(config, overrides, form, config_from_json(compiled_config))
    write_run_name(cfg, kfp_run_id, kfp_run_name)
    text = cfg.model_dump_json()
    path = write_model(run_dir(cfg, kfp_run_id) / RESOLVED_FILE, cfg)
    changed = {field.path: field_value(cfg, field.path) for field in form_fields()
               if canonical(field_value(cfg, field.path)) != canonical(form_values(config_from_json(compiled_config))
                                                                       [field.name])}
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
