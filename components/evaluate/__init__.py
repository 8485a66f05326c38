"""The evaluate step: one model scored on MMLU and on the held-out task, loaded once.

- :mod:`.evaluate`: the step (``run_step``) and the eval keys under which scores are reused;
- :mod:`.mmlu`: MMLU (data, scoring, results file, OpenAI-compatible backend, command line);
- :mod:`.task`: the held-out loss (data, scoring, results file, command line);
- :mod:`.generate`: greedy answers on held-out rows, scored against the references (``generations.jsonl``);
- :mod:`.placement`: where the model's weights go (one GPU, split across GPUs, or a clear error);
- :mod:`.store`: scores stored in MLflow, found again by eval key (the evaluate step and the gate's baseline).
"""

__all__ = [
    "evaluate",
    "generate",
    "mmlu",
    "placement",
    "store",
    "task",
]
