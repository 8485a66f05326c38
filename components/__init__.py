"""The pipeline's steps as lightweight KFP components; each module also holds the plain-Python logic.

The wrappers live in their modules and are deliberately not re-exported here: ``train``,
``merge_lora``, ``evaluate_mmlu`` and ``validate_dataset`` share their module's name, and a
re-export would shadow the submodule (``import components.train as m`` would give the component).
A running KFP task imports a module from here for every step, so keep this package light.

Steps (module: wrappers): validate_dataset: validate_dataset; train: train; evaluate_mmlu:
evaluate_mmlu; compare_baseline: resolve_baseline, fetch_baseline_results, compare_with_baseline;
merge_lora: merge_lora; register_model: register_model, promote_model, mark_challenger;
finalize: finalize_runs.
"""

STEP_MODULES = (
    "validate_dataset",
    "train",
    "evaluate_mmlu",
    "compare_baseline",
    "merge_lora",
    "register_model",
    "finalize",
)
