"""MMLU: the hendrycks CSV data, a fast few-shot scorer, and the results file the gate reads.

- :mod:`.evaluate_mmlu`: evaluate one model (:func:`~.evaluate_mmlu.evaluate`) and its command line;
- :mod:`.data`: the data, prompts, data hash and model identity;
- :mod:`.scoring`: the transformers scorers (prefix-cached and straightforward);
- :mod:`.openai_backend`: scoring through an OpenAI-compatible completions server;
- :mod:`.results`: ``results.json`` (:class:`~.results.MmluResults`).
"""

__all__ = [
    "data",
    "evaluate_mmlu",
    "openai_backend",
    "results",
    "scoring",
]
