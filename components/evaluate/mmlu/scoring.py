"""Scoring MMLU prompts with a transformers model: next-token log-probabilities of the four answer letters.

Two scorers give the same predictions:

* :func:`score_prefix_cached` (the fast one): the few-shot prefix every question of a subject shares
  is run once; its KV cache is broadcast over each batch of question suffixes, which are sorted by
  length and right-padded (causal attention never lets a real token see the padding after it, so no
  mask and no position shift is needed). The vocabulary projection runs only at each row's last token.
* :func:`score_straightforward` (the reference): the whole prompt per question, full logits.

Both take token ids, so the benchmarks can feed synthetic prompts. Tokenisation is segment-wise:
``ids(prefix, with BOS) + ids(suffix)``; :func:`tokenize_subject` builds these and drops shots from the
front for questions whose prompt would not fit the model's context.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.evaluate.mmlu.data import LETTERS, ModelLoadError, SubjectData, log, prompt_prefix, prompt_suffix
from configs.errors import StepError

if TYPE_CHECKING:
    import torch

# A prompt group: one shared prefix and the (question position, suffix ids) scored after it.
PromptGroup = tuple[list[int], list[tuple[int, list[int]]]]


class DeviceError(StepError, ValueError):
    """A torch device that is not a device string, or that this machine does not have; names the remedy."""


class ScoringError(StepError, ValueError):
    """The model cannot be scored as asked: non-finite scores, a tokenizer without single-token answer letters,
    a token id past the model's vocabulary. The message names the row or the token."""


def pick_device(device: str | None = None) -> str:
    """``device`` if given and usable here, else ``cuda`` when a GPU is visible, else ``cpu``.

    Raises:
        DeviceError: ``device`` is not a torch device string, or names a device this machine does not have (a
            CUDA device without a visible GPU, an index past the last GPU); the message names the device and the
            remedy, where torch would fail later with an assertion deep inside the model's ``.to()``.
    """
    import torch

    if not device:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError as exc:  # torch's word for a string that is not a device
        raise DeviceError(f"device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1): {exc}") from None
    remedy = "use cpu, or leave the device unset (cuda when a GPU is visible, else cpu)"
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"device {device!r} is not available: torch sees no CUDA GPU here (built with CUDA "
                             f"{torch.version.cuda or 'none'}, CUDA_VISIBLE_DEVICES="
                             f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r}); {remedy}")
        if parsed.index is not None and parsed.index >= count:
            raise DeviceError(f"device {device!r} is not available: torch sees {count} CUDA GPU(s), cuda:0 to "
                             f"cuda:{count - 1}; {remedy}")
    elif parsed.type != "cpu":
        try:  # mps, xpu...: only an allocation says whether the backend works here
            torch.empty(0, device=parsed)
        except (RuntimeError, AssertionError) as exc:  # what torch raises for a backend it cannot use here
            raise DeviceError(f"device {device!r} is not available here ({exc}); {remedy}") from None
    return device


def load_model(model_dir: str | Path, adapter_dir: str | Path | None = None, *, device: str | None = None,
               dtype: str = "auto", device_map: dict[str, int] | None = None) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer for scoring; an adapter is applied with peft, unmerged.

    ``dtype`` "auto" means bfloat16 on a GPU and float32 on the CPU. The tokenizer comes from the adapter
    directory when it holds one (LLaMA-Factory saves it there), else from the model directory. A
    ``device_map`` (module name -> GPU, :mod:`components.evaluate.placement`) splits the model across GPUs.

    Raises:
        ModelLoadError: the model, tokenizer or adapter cannot be loaded (the message names the directory).
        DeviceError: ``device`` is not a torch device string or not available here (:func:`pick_device`).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device(device)
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    tokenizer_dir = adapter_dir if adapter_dir and (Path(adapter_dir) / "tokenizer_config.json").is_file() \
        else model_dir
    from safetensors import SafetensorError

    # What transformers and peft raise for a directory they cannot load: OSError (files missing or unreadable),
    # ValueError (an unknown architecture, an adapter with r=0); their messages name the directory.
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch_dtype,
                                                     **({"device_map": device_map} if device_map else {}))
    except SafetensorError as exc:  # a truncated or corrupt shard: name the directory, not a Rust frame
        raise ModelLoadError(f"the weights in {model_dir} cannot be read: {exc}") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(str(exc)) from exc
    if adapter_dir:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
        except SafetensorError as exc:
            raise ModelLoadError(f"the adapter weights in {adapter_dir} cannot be read: {exc}") from None
        except (OSError, ValueError) as exc:
            raise ModelLoadError(str(exc)) from exc
    return (model if device_map else model.to(device)).eval(), tokenizer


def answer_token_ids(tokenizer: Any) -> list[int]:
    """Token ids of the letters A-D as they follow ``Answer:`` (with or without a leading space).

    The letter's token is what encoding ``"Answer: X"`` adds to ``"Answer:"``; when that is not one
    token, the single-token encoding of ``" X"`` or ``"X"`` is used.

    Raises:
        ScoringError: a letter has no single-token encoding in this tokenizer.
    """
    base = tokenizer.encode("Answer:", add_special_tokens=False)
    ids = []
    for letter in LETTERS:
        full = tokenizer.encode(f"Answer: {letter}", add_special_tokens=False)
        if len(full) == len(base) + 1 and full[: len(base)] == base:
            ids.append(full[-1])
            continue
        for text in (f" {letter}", letter):
            single = tokenizer.encode(text, add_special_tokens=False)
            if len(single) == 1:
                ids.append(single[0])
                break
        else:
            raise ScoringError(f"the tokenizer has no single token for the answer letter {letter!r}")
    if len(set(ids)) != len(LETTERS):
        raise ScoringError(f"the answer letters map to overlapping tokens {ids}")
    return ids


def context_length(model: Any, tokenizer: Any) -> int:
    """The longest prompt the model takes: its position limit, capped by the tokenizer's."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    usable = [int(limit) for limit in limits if isinstance(limit, int) and 0 < limit < 10_000_000]
    return min(usable) if usable else 2048


def tokenize_subject(tokenizer: Any, data: SubjectData, max_length: int) -> list[PromptGroup]:
    """Token ids of a subject's prompts, grouped by shared prefix.

    Each question gets as many shots as fit in ``max_length`` (dropping the earliest first); questions
    with the same number of shots share one prefix. A question too long even with no shot keeps the last
    ``max_length`` tokens of its whole prompt (in a group with an empty prefix).
    """
    prefixes: dict[int, list[int]] = {}

    def prefix_ids(shots_kept: int) -> list[int]:
        if shots_kept not in prefixes:
            kept = data.shots[len(data.shots) - shots_kept:]
            ids = tokenizer.encode(prompt_prefix(data.subject, kept), add_special_tokens=True)
            if ids and ids[-1] == tokenizer.eos_token_id != tokenizer.bos_token_id:
                ids = ids[:-1]  # tokenizers that close every text with EOS: the prompt goes on after the prefix
            prefixes[shots_kept] = ids
        return prefixes[shots_kept]

    groups: dict[int, list[tuple[int, list[int]]]] = {}
    overflow: list[tuple[int, list[int]]] = []
    for position, question in enumerate(data.questions):
        suffix = tokenizer.encode(prompt_suffix(question), add_special_tokens=False)
        for shots_kept in range(len(data.shots), -1, -1):
            if len(prefix_ids(shots_kept)) + len(suffix) <= max_length:
                groups.setdefault(shots_kept, []).append((position, suffix))
                break
        else:
            overflow.append((position, (prefix_ids(0) + suffix)[-max_length:]))
            log.warning("MMLU %s_test.csv:%d is %d tokens with no shot, longer than the model's context of %d: "
                        "scored on its last %d tokens", data.subject, question.line,
                        len(prefix_ids(0)) + len(suffix), max_length, max_length)
    ordered: list[PromptGroup] = [(prefix_ids(k), groups[k]) for k in sorted(groups, reverse=True)]
    if overflow:
        ordered.append(([], overflow))
    return ordered


def _unwrap(model: Any) -> Any:
    """The transformers model inside a peft wrapper (its LoRA layers stay injected and active)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _letter_logprobs(model: Any, hidden: torch.Tensor, answer_ids: Sequence[int]) -> list[list[float]]:
    """Log-softmax over the full vocabulary at the given hidden states, read at the answer tokens."""
    import torch

    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.log_softmax(logits, dim=-1)[:, list(answer_ids)].tolist()


def _right_padded(rows: list[list[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.long)
    return ids.to(device), lengths.to(device)


def score_straightforward(model: Any, sequences: list[list[int]], answer_ids: Sequence[int], *,
                          batch_size: int = 16, pad_id: int = 0) -> list[list[float]]:
    """Reference scorer: run each full prompt (in input order, ``batch_size`` at a time), full logits.

    Returns the four answer-letter log-probabilities per sequence, in input order.
    """
    import torch

    model = _unwrap(model)
    device = next(model.parameters()).device
    scores: list[list[float]] = []
    with torch.inference_mode():
        for start in range(0, len(sequences), batch_size):
            ids, lengths = _right_padded(sequences[start:start + batch_size], pad_id, device)
            logits = model(input_ids=ids, use_cache=False).logits
            last = logits[torch.arange(len(lengths), device=device), lengths - 1].float()
            scores += torch.log_softmax(last, dim=-1)[:, list(answer_ids)].tolist()
    return scores


def score_prefix_cached(model: Any, prefix: list[int], suffixes: list[list[int]], answer_ids: Sequence[int], *,
                        batch_size: int = 16, pad_id: int = 0) -> list[list[float]]:
    """Fast scorer: the prefix's KV cache is computed once and shared by every batch of suffixes.

    Suffixes are scored longest first (less padding, and an out-of-memory error shows in the first batch).
    An empty ``prefix`` scores the suffixes as whole prompts. Returns log-probabilities in input order.
    """
    import torch
    from transformers import DynamicCache

    model = _unwrap(model)
    device = next(model.parameters()).device
    decoder = model.get_decoder()
    order = sorted(range(len(suffixes)), key=lambda i: (-len(suffixes[i]), i))
    scores: list[list[float] | None] = [None] * len(suffixes)
    with torch.inference_mode():
        prefix_kv = []
        if prefix:
            cache = decoder(input_ids=torch.tensor([prefix], device=device), use_cache=True).past_key_values
            prefix_kv = [(layer.keys, layer.values) for layer in cache.layers]
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            ids, lengths = _right_padded([suffixes[i] for i in batch], pad_id, device)
            past = None
            if prefix_kv:
                # A fresh cache per batch: forward appends to it in place. expand() broadcasts without copying.
                rows = len(batch)
                past = DynamicCache(
                    ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in prefix_kv],
                    config=model.config,
                )
            hidden = decoder(input_ids=ids, past_key_values=past, use_cache=past is not None).last_hidden_state
            last = hidden[torch.arange(len(batch), device=device), lengths - 1]
            for i, row in zip(batch, _letter_logprobs(model, last, answer_ids), strict=True):
                scores[i] = row
    return scores  # type: ignore[return-value]


def score_groups(model: Any, groups: list[PromptGroup], answer_ids: Sequence[int], count: int, *,
                 batch_size: int = 16, pad_id: int = 0, cached: bool = True) -> list[list[float]]:
    """Score every question of :func:`tokenize_subject`'s groups; return ``count`` rows by question position."""
    scores: list[list[float] | None] = [None] * count
    for prefix, items in groups:
        suffixes = [suffix for _, suffix in items]
        if cached:
            rows = score_prefix_cached(model, prefix, suffixes, answer_ids, batch_size=batch_size, pad_id=pad_id)
        else:
            rows = score_straightforward(model, [prefix + suffix for suffix in suffixes], answer_ids,
                                         batch_size=batch_size, pad_id=pad_id)
        for (position, _), row in zip(items, rows, strict=True):
            scores[position] = row
    return scores  # type: ignore[return-value]


def pad_token_id(tokenizer: Any) -> int:
    """The id right-padding uses (never attended to by real tokens, so any valid id would do)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0
