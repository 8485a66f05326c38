"""The evaluate step: one model scored on MMLU and on the held-out task, loaded once.

- :mod:`.evaluate`: the step (``run_step``) and the eval keys under which scores are reused;
- :mod:`.mmlu`: MMLU (data, scoring, results file, OpenAI-compatible backend, command line);
- :mod:`.task`: the held-out loss (data, scoring, results file, command line).
"""

__all__ = [
    "evaluate",
    "mmlu",
    "task",
]
