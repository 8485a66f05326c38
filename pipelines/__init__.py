"""Kubeflow pipeline definitions (see pipelines.finetune)."""

from pipelines.finetune import build_pipeline

__all__ = ["build_pipeline"]
