"""The held-out task: each held-out row's answer loss, encoded as the trainer sees it.

- :mod:`.evaluate_task`: score one model on the held-out rows, and its command line;
- :mod:`.data`: read the held-out rows and encode them with LLaMA-Factory's template;
- :mod:`.scoring`: batched forward passes, per-row loss on the answer tokens;
- :mod:`.results`: ``task.json`` (:class:`~.results.TaskResults`).
"""

__all__ = [
    "data",
    "evaluate_task",
    "results",
    "scoring",
]
