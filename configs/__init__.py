"""Typed, validated pipeline configuration and its YAML presets."""

from configs.loading import config_from_dict, config_from_json, load_config
from configs.schema import ConfigError, PipelineConfig

__all__ = ["ConfigError", "PipelineConfig", "config_from_dict", "config_from_json", "load_config"]
