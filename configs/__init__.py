"""Typed, validated pipeline configuration and its YAML presets: the lowest layer, importing nothing from
``components`` or ``pipelines``.

Beside the schema (:mod:`configs.schema`) and its loader (:mod:`configs.loading`) it holds what every layer above
reads its input with: the error contract (:mod:`configs.errors`), the one reader for untrusted JSON and YAML
(:mod:`configs.safe_json`) and the masking of secrets (:mod:`configs.redaction`).

Import from the modules (``from configs.loading import load_config``, ``from configs.schema import ConfigError``):
this ``__init__`` imports nothing, so that importing :mod:`configs.errors` (which every layer does) never loads the
schema and its readers.
"""

__all__ = ["errors", "form", "loading", "redaction", "safe_json", "schema", "templates"]
