"""The pipeline's run-time code, step by step; no KFP import anywhere in this package.

A running KFP task imports one step's module from here (the wrappers in :mod:`pipelines.steps` import
it inside their body), so every module keeps its top-level imports light: torch, transformers, LLaMA-Factory
and mlflow are imported inside the functions that need them.
"""
