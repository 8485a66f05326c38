"""The pipeline's steps as lightweight KFP components (each module also holds the plain-Python logic)."""

from components.compare_baseline import compare_with_baseline, fetch_baseline_results, resolve_baseline
from components.evaluate_mmlu import evaluate_mmlu
from components.finalize import finalize_runs
from components.merge_lora import merge_lora
from components.register_model import mark_challenger, promote_model, register_model
from components.train import train
from components.validate_dataset import validate_dataset

__all__ = [
    "compare_with_baseline",
    "evaluate_mmlu",
    "fetch_baseline_results",
    "finalize_runs",
    "mark_challenger",
    "merge_lora",
    "promote_model",
    "register_model",
    "resolve_baseline",
    "train",
    "validate_dataset",
]
