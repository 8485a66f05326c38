"""Typed, validated pipeline configuration and its YAML presets.

Import from the modules (``from configs.loading import load_config``, ``from configs.schema import ConfigError``):
this ``__init__`` imports nothing, so that importing :mod:`configs.errors` (which every layer does) never loads the
schema and its readers.
"""

__all__ = ["errors", "form", "loading", "redaction", "schema", "templates"]
