"""The run form, compiled: the pipeline's typed parameters and their descriptions.

Both are generated from the fields marked in :mod:`configs.schema` (:mod:`configs.form`), so the form in
the Kubeflow UI and the parameter descriptions cannot drift apart:

- :func:`pipeline_parameters` gives the pipeline function its parameters (``name - type`` in the UI), each
  defaulting to the compiled config's value, plus ``z_config`` and ``z_overrides``;
- :func:`parameter_docs` gives their descriptions (``google_args`` writes them as the pipeline's ``Args:``).

The resolve-config task that reads the values is an ordinary wrapper, :func:`pipelines.steps.resolve_config`,
with one typed parameter per form field (a test holds them to the schema's marks).
"""

from __future__ import annotations

import inspect

from configs.form import CONFIG_PARAM, OVERRIDES_PARAM, form_fields, form_values
from configs.schema import PipelineConfig


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


def google_args(docs: dict[str, str]) -> str:
    """An ``Args:`` section in Google style (KFP copies it into the IR's parameter descriptions)."""
    # One line per parameter: KFP keeps a description's line breaks.
    return "\n".join(["Args:", *(f"    {name}: {text}" for name, text in docs.items())])


__all__ = ["google_args", "parameter_docs", "pipeline_parameters"]
