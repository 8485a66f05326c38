"""Greedy answers for many prompts at once: batched ``model.generate`` with left padding and the KV cache.

Prompts are sorted longest first (an out-of-memory error shows in the first batch, and rows of similar length
share a batch, so little padding), left-padded with an attention mask (transformers derives the position ids
from it, so a padded row sees what it would see alone) and decoded greedily (``do_sample=False``, one beam)
with the KV cache, ``max_new_tokens`` at most. Generation stops at the template's stop tokens: a row that
emitted one is done (transformers pads it while the others go on), and the batch ends when every row is.

Per prompt: the answer's token ids before the first stop token, and whether a stop token came at all (an
answer cut by ``max_new_tokens`` did not stop).

On the CPU, decoding runs with one intra-op thread: each step is a small matrix product, and OpenMP threads
spinning between thousands of such steps made the demo's decoding 8x slower on a busy 2-core machine (18 rows of
96 tokens: 27 s with two threads, 3.2 s with one). GPUs are unaffected.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Generated:
    """One prompt's answer: its token ids (the stop token left out) and whether it stopped by itself."""

    token_ids: list[int]
    stopped: bool


def generation_config(*, max_new_tokens: int, stop_ids: Sequence[int], pad_id: int) -> Any:
    """A greedy, cached GenerationConfig (built afresh: sampling settings a model ships with do not apply)."""
    from transformers import GenerationConfig

    return GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, min_new_tokens=0,
                            eos_token_id=list(stop_ids), pad_token_id=pad_id, use_cache=True)


def split_answer(new_tokens: Sequence[int], stop_ids: Sequence[int]) -> Generated:
    """The tokens before the first stop token, and whether there was one."""
    stops = set(stop_ids)
    for position, token in enumerate(new_tokens):
        if token in stops:
            return Generated(list(new_tokens[:position]), True)
    return Generated(list(new_tokens), False)


@contextmanager
def _decoding_threads(device: Any) -> Iterator[None]:
    """One intra-op torch thread while decoding on the CPU (see the module docstring), restored afterwards."""
    import torch

    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def generate_greedy(model: Any, prompts: Sequence[Sequence[int]], *, stop_ids: Sequence[int], pad_id: int,
                    max_new_tokens: int, batch_size: int = 16) -> list[Generated]:
    """Answer every prompt greedily; return one :class:`Generated` per prompt, in input order.

    Raises:
        ValueError: ``batch_size`` or ``max_new_tokens`` is below 1, no stop token is given, or a prompt is empty.
    """
    import torch

    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size} and {max_new_tokens}")
    if not stop_ids:
        raise ValueError("at least one stop token is needed")
    if any(not prompt for prompt in prompts):
        raise ValueError("every prompt needs at least one token")
    device = next(model.parameters()).device
    config = generation_config(max_new_tokens=max_new_tokens, stop_ids=stop_ids, pad_id=pad_id)
    results: list[Generated | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    with torch.inference_mode(), _decoding_threads(device):
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = len(prompts[batch[0]])
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                prompt = prompts[index]
                ids[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
                mask[row, width - len(prompt):] = 1
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
            for row, index in enumerate(batch):
                results[index] = split_answer(out[row, width:].tolist(), stop_ids)
    return [result for result in results if result is not None]
