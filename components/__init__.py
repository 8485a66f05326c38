"""The pipeline's run-time code, one package per step; no KFP import anywhere under it.

A running KFP task imports one step's entry module from here (the wrappers in :mod:`pipelines.steps` import its
``run_step`` inside their body), so every module keeps its top-level imports light: torch, transformers,
LLaMA-Factory and mlflow are imported inside the functions that need them. Each step's entry module is named
after the step and holds its ``run_step`` and, where it has one, its command line.

- :mod:`components.common`: storage paths and atomic writes, MLflow tracking (client, runs, tag names), typed
  files, the command-line conventions;
- :mod:`components.run`: resolve-config and finalize-runs (the exit handler);
- :mod:`components.data`: validate-dataset and the held-out split;
- :mod:`components.train`: train, on one node or many;
- :mod:`components.merge`: merge-lora and publishing for vLLM;
- :mod:`components.evaluate`: evaluate (MMLU and the held-out task);
- :mod:`components.gate`: find-baseline, reuse-baseline-scores, compare, register-model, promote-model,
  mark-challenger, and the registry they share;
- :mod:`components.demo`: the tiny model and the sample data of the demo and the tests.

Package ``__init__`` files import nothing: import from the modules (``from components.train.train import
run_step``). That keeps every import cheap. Packages import only downward, never in a loop: :mod:`configs` (the
schema, the safe JSON/YAML reader :mod:`configs.safe_json`, redaction) at the bottom, then
:mod:`components.common`, then the steps (data, merge and demo; evaluation; train; the gate; run), and
:mod:`pipelines` on top; ``tests/test_layout.py`` declares the order once and checks it. Each package's
``__all__`` lists its modules.
"""

__all__ = [
    "common",
    "data",
    "demo",
    "evaluate",
    "gate",
    "merge",
    "run",
    "train",
]
