"""Answer-token negative log-likelihood of encoded examples: batched forward passes, no generation.

Examples are scored longest first (less padding, and an out-of-memory error shows in the first batch),
right-padded without an attention mask: causal attention never lets a real token see the padding after
it, and position ids are unchanged, so padding does not change any example's numbers. The model's own
forward computes the logits (``logits_to_keep`` skips the columns before the batch's first answer token),
so logit soft-capping or scaling that a model applies is applied here too, as in training. Cross-entropy
and the argmax run in float32 on chunks of answer tokens, so a large vocabulary does not need one float32
copy of every logit at once.

Per example: answer tokens (labels other than IGNORE_INDEX after the first position), the summed NLL
over them (nats) and how many of them the model predicts as its top token.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from components.evaluate.mmlu.scoring import ScoringError
from components.evaluate.task.data import IGNORE_INDEX, EncodedExample

LOSS_CHUNK_TOKENS = 4096  # answer tokens per float32 cross-entropy chunk (4096 x 128k vocab = 2 GiB)


@dataclass(frozen=True)
class ExampleLoss:
    """One example's score: answer tokens, summed NLL over them (nats), correct top-1 predictions."""

    answer_tokens: int
    nll_sum: float
    correct_tokens: int


def _accepts_logits_to_keep(model: Any) -> bool:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def _check_vocabulary(model: Any, examples: Sequence[EncodedExample]) -> None:
    size = model.get_input_embeddings().weight.shape[0]
    for example in examples:
        if max(example.input_ids) >= size:
            raise ScoringError(f"row {example.key} of {example.dataset!r} encodes to token id "
                               f"{max(example.input_ids)}, beyond the model's {size} embeddings: the tokenizer does "
                               "not belong to this model (or the template added tokens the model was not resized for)")


def score_examples(model: Any, examples: Sequence[EncodedExample], batch_size: int = 16,
                   pad_id: int = 0) -> list[ExampleLoss]:
    """Score every example; return one :class:`ExampleLoss` per example, in input order.

    Examples without answer tokens (truncated away) are not run and get ``ExampleLoss(0, 0.0, 0)``.

    Raises:
        ValueError: ``batch_size`` is below 1.
        ScoringError: a token id is beyond the model's vocabulary, or the model returns a non-finite loss for an
            example (the example is named).
    """
    import torch
    import torch.nn.functional as F

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check_vocabulary(model, examples)
    device = next(model.parameters()).device
    keep_arg = _accepts_logits_to_keep(model)
    results = [ExampleLoss(0, 0.0, 0)] * len(examples)
    order = sorted((i for i, example in enumerate(examples) if example.answer_tokens),
                   key=lambda i: (-len(examples[i].input_ids), i))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = len(examples[batch[0]].input_ids)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            targets = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
            for row, index in enumerate(batch):
                example = examples[index]
                ids[row, :len(example.input_ids)] = torch.tensor(example.input_ids)
                targets[row, :len(example.labels) - 1] = torch.tensor(example.labels[1:])  # position t predicts t+1
            answer = targets != IGNORE_INDEX
            columns = answer.any(dim=0).nonzero().squeeze(1)
            first, last = int(columns[0]), int(columns[-1]) + 1
            ids, targets, answer = ids.to(device), targets[:, first:last].to(device), answer[:, first:last].to(device)
            if keep_arg:  # an int (the last N columns) is what every model's forward understands
                logits = model(input_ids=ids, use_cache=False, logits_to_keep=width - first).logits
                logits = logits[:, :last - first]
            else:
                logits = model(input_ids=ids, use_cache=False).logits[:, first:last]
            picked, wanted = logits[answer], targets[answer]  # (answer tokens, vocab), (answer tokens,)
            del logits  # the batch's logits can be gigabytes with a large vocabulary
            rows = answer.nonzero()[:, 0]
            nll = torch.zeros(len(batch), dtype=torch.float64, device=device)
            hits = torch.zeros(len(batch), dtype=torch.long, device=device)
            for chunk in range(0, len(wanted), LOSS_CHUNK_TOKENS):
                part = slice(chunk, chunk + LOSS_CHUNK_TOKENS)
                scores = picked[part].float()
                nll.index_add_(0, rows[part], F.cross_entropy(scores, wanted[part], reduction="none").double())
                hits.index_add_(0, rows[part], (scores.argmax(dim=-1) == wanted[part]).long())
            counts = answer.sum(dim=1).tolist()
            for index, count, total, correct in zip(batch, counts, nll.tolist(), hits.tolist(), strict=True):
                if not math.isfinite(total):
                    example = examples[index]
                    raise ScoringError(f"the model gave a non-finite loss ({total}) for row {example.key} of "
                                     f"{example.dataset!r}; in half precision try dtype float32")
                results[index] = ExampleLoss(int(count), float(total), int(correct))
    return results
