"""The run form, compiled: the pipeline's typed parameters and the resolve-config task that reads them.

Both are generated from the fields marked in :mod:`configs.schema` (:mod:`configs.form`), so the form in
the Kubeflow UI, the parameter descriptions and the task that applies the values cannot drift apart.

- :func:`pipeline_parameters` gives the pipeline function its parameters (``name - type`` in the UI), each
  defaulting to the compiled config's value, plus ``z_config`` and ``z_overrides``;
- :func:`resolve_config_component` builds the resolve-config component: a lightweight KFP component whose
  function takes one input per form field and hands them to :func:`components.run.resolve_config.run_step`.
  KFP ships a lightweight component's *source* in the IR, so the function is written out as Python text and
  registered with :mod:`linecache` (as :mod:`dataclasses` does for the methods it generates), where KFP's
  ``inspect.getsource`` finds it.
"""

from __future__ import annotations

import inspect
import linecache
import textwrap
from typing import Any

from configs.form import CONFIG_PARAM, OVERRIDES_PARAM, form_fields, form_values
from configs.schema import PipelineConfig

RESOLVER_NAME = "resolve_config"
_SOURCE_FILE = "<generated pipelines.run_form.resolve_config>"


def pipeline_parameters(cfg: PipelineConfig) -> list[inspect.Parameter]:
    """The pipeline's parameters: every form field (default: its value in ``cfg``), then the advanced path."""
    defaults = form_values(cfg)
    params = [inspect.Parameter(field.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=defaults[field.name],
                                annotation=field.kind) for field in form_fields()]
    params.append(inspect.Parameter(CONFIG_PARAM, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                    default=cfg.model_dump_json(), annotation=str))
    params.append(inspect.Parameter(OVERRIDES_PARAM, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=[],
                                    annotation=list))
    return params


def parameter_docs() -> dict[str, str]:
    """The description of every pipeline parameter (shown by ``kfp`` clients; the UI shows only name and type)."""
    docs = {field.name: f"{field.description} Sets {field.path}." for field in form_fields()}
    docs[CONFIG_PARAM] = ("The whole configuration as JSON (the preset compiled into this pipeline). Typed "
                          "parameters and z_overrides are applied on top: typed parameter > z_overrides > z_config.")
    docs[OVERRIDES_PARAM] = ('Changes to z_config as "section.field=value" strings, e.g. '
                             '["training.warmup_ratio=0.1"], for fields without a typed parameter.')
    return docs


def google_args(docs: dict[str, str], indent: str = "    ") -> str:
    """An ``Args:`` section in Google style (KFP copies it into the IR's parameter descriptions)."""
    # One line per parameter: KFP keeps a description's line breaks.
    return "\n".join(["Args:", *(f"{indent}{name}: {text}" for name, text in docs.items())])


def _resolver_source() -> str:
    names = [field.name for field in form_fields()]
    types = {field.name: field.kind.__name__ for field in form_fields()}
    signature = ", ".join(["kfp_run_id: str", "kfp_run_name: str", "compiled_config: str", f"{CONFIG_PARAM}: str",
                           f"{OVERRIDES_PARAM}: list", *(f"{name}: {types[name]}" for name in names)])
    form = ", ".join(f'"{name}": {name}' for name in names)
    docs = {"kfp_run_id": "The KFP run id (the run directory on the volume).",
            "kfp_run_name": "The KFP run's name (the MLflow runs are named after it).",
            "compiled_config": "The config this pipeline was compiled from (compile-time settings are checked "
                               "against it).", **parameter_docs()}
    return (
        f"def {RESOLVER_NAME}({signature}) -> NamedTuple(\"Outputs\", [(\"config\", str), (\"method\", str), "
        f"(\"trials\", list)]):\n"
        f'    """Resolve the run\'s configuration: z_config, then z_overrides, then the typed parameters.\n\n'
        f"{textwrap.indent(google_args(docs), '    ')}\n\n"
        "    Returns:\n"
        "        config: The resolved, validated configuration (JSON) every later task reads.\n"
        "        method: The fine-tuning method of the resolved configuration.\n"
        "        trials: The sweep's trial indices ([0] without a sweep), one train task each.\n"
        '    """\n'
        "    from components.run.resolve_config import run_step\n\n"
        f"    return run_step(kfp_run_id=kfp_run_id, kfp_run_name=kfp_run_name, compiled_config=compiled_config,\n"
        f"                    config={CONFIG_PARAM},\n"
        f"                    overrides={OVERRIDES_PARAM}, form={{{form}}})\n"
    )


def resolve_config_component(image: str) -> Any:
    """The resolve-config component, running in ``image``."""
    from typing import NamedTuple

    from kfp import dsl

    source = _resolver_source()
    linecache.cache[_SOURCE_FILE] = (len(source), None, source.splitlines(keepends=True), _SOURCE_FILE)
    namespace: dict[str, Any] = {"NamedTuple": NamedTuple}
    # dont_inherit: this module's `from __future__ import annotations` would turn the annotations into strings.
    exec(compile(source, _SOURCE_FILE, "exec", dont_inherit=True), namespace)  # our generated source (see above)
    return dsl.component(namespace[RESOLVER_NAME], base_image=image, install_kfp_package=False)


__all__ = ["google_args", "parameter_docs", "pipeline_parameters", "resolve_config_component"]
