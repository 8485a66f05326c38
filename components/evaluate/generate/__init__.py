"""Generated answers on the held-out rows: what each model *says*, scored against the reference answers.

- :mod:`.generate`: answer and score the held-out rows with a loaded model (``generate_loaded``);
- :mod:`.prompts`: which rows, and their prompts as training encodes them (multi-turn: the last assistant turn);
- :mod:`.decoding`: batched greedy decoding with left padding and the KV cache, stopping at the stop tokens;
- :mod:`.metrics`: exact match, token F1, ROUGE-L (rouge-score), chrF (sacrebleu), each 0-100 per row;
- :mod:`.results`: ``generations.jsonl`` (:class:`~.results.Generations`) and its eval key.

Greedy decoding is deterministic: the same model and settings give the same answers, byte for byte, on the same
hardware and dtype. Batch composition (``evaluation.batch_size``) only changes the padding, which the attention
mask hides; it is not part of the eval key.
"""

__all__ = [
    "decoding",
    "generate",
    "metrics",
    "prompts",
    "results",
]
