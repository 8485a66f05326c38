"""Typed, validated pipeline configuration and its YAML presets: the lowest layer, importing nothing from
``components`` or ``pipelines``.

Beside the schema (:mod:`configs.schema`) and its loader (:mod:`configs.loading`) it holds what every layer above
reads its input with: the one reader for untrusted JSON and YAML (:mod:`configs.safe_json`) and the masking of
secrets (:mod:`configs.redaction`).
"""

from configs.loading import config_from_dict, config_from_json, load_config
from configs.schema import ConfigError, PipelineConfig

__all__ = ["ConfigError", "PipelineConfig", "config_from_dict", "config_from_json", "load_config"]
