"""Typed, validated pipeline configuration and its YAML presets."""

from configs.schema import ConfigError, PipelineConfig, config_from_dict, config_from_json, load_config

__all__ = ["ConfigError", "PipelineConfig", "config_from_dict", "config_from_json", "load_config"]
