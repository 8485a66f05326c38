"""Generation prompts of held-out rows, encoded as training encodes the prompt side of a row.

Each row goes through the same pieces as the task loss (:func:`components.evaluate.task.data.llamafactory_encoding`:
the entry's LLaMA-Factory converter, the template with the tokenizer fixed as training fixes it), then
``Template.encode_oneturn`` with an empty assistant turn, as LLaMA-Factory's own chat engine builds a prompt.
A multi-turn conversation is answered at its last assistant turn: the earlier turns are the history, the last
assistant message is the reference answer.

Which rows: the first ``generate_rows`` distinct rows by row key (a content hash, so a fixed pseudo-random sample
that is the same for every model scored on the same split). Rows that cannot be judged are skipped with a
reason, never guessed at: an empty reference answer, or one that holds only special tokens. A prompt longer
than the context left after ``max_new_tokens`` is cut from the left (the question stays, the oldest context
goes) and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components.evaluate.task.data import LlamaFactoryEncoding, LlamaFactoryRow, TestRow, raise_if_errors


@dataclass(frozen=True)
class GenerationPrompt:
    """One row to answer: its identity, the prompt token ids (after truncation), the texts the report shows."""

    dataset: str
    key: str
    prompt_ids: list[int]
    prompt: str  # the last user turn
    history_turns: int
    reference: str
    truncated_tokens: int


@dataclass(frozen=True)
class Skipped:
    """A selected row that is not answered, and why."""

    dataset: str
    key: str
    reason: str


def select_rows(rows: list[TestRow], limit: int) -> list[TestRow]:
    """The first ``limit`` distinct (dataset, key) rows in row-key order (the first copy of a duplicate)."""
    first: dict[tuple[str, str], TestRow] = {}
    for row in rows:
        first.setdefault((row.dataset, row.key), row)
    return sorted(first.values(), key=lambda row: (row.key, row.dataset))[:limit]


def stop_token_ids(encoding: LlamaFactoryEncoding) -> list[int]:
    """The template's stop tokens (the fixed tokenizer's eos and the template's stop words), sorted."""
    stops = encoding.template.get_stop_token_ids(encoding.tokenizer)
    return sorted({int(token) for token in stops if token is not None})


def _only_special_tokens(tokenizer: Any, text: str) -> bool:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return not tokenizer.decode(ids, skip_special_tokens=True).strip()


def build_prompts(encoding: LlamaFactoryEncoding, rows: list[TestRow], *,
                  max_prompt_tokens: int) -> tuple[list[GenerationPrompt], list[Skipped]]:
    """Encode the prompt side of each row; rows without a usable reference are skipped with the reason.

    Raises:
        TaskDataError: rows that training would not accept either (named by file and line), e.g. a
            conversation that does not alternate user/assistant.
        ValueError: ``max_prompt_tokens`` is below 1.
    """
    if max_prompt_tokens < 1:
        raise ValueError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
    prompts, skipped, errors = [], [], []
    for row in rows:
        try:
            aligned = encoding.converters[row.dataset](LlamaFactoryRow(row.row))
        except (KeyError, TypeError, AttributeError, ValueError, RuntimeError) as exc:  # what LF raises on bad rows
            errors.append(f"{row.file}:{row.line}: LLaMA-Factory cannot read this row ({type(exc).__name__}: {exc})")
            continue
        messages, response = aligned["_prompt"], aligned["_response"]
        if len(messages) % 2 != 1 or len(response) != 1:
            errors.append(f"{row.file}:{row.line}: LLaMA-Factory drops this row as invalid (it needs user/assistant "
                          "turns in order ending with an answer); fix it or remove it")
            continue
        reference = str(response[0]["content"] or "")
        if not reference.strip():
            skipped.append(Skipped(row.dataset, row.key, "the reference answer is empty"))
            continue
        if _only_special_tokens(encoding.tokenizer, reference):
            skipped.append(Skipped(row.dataset, row.key, "the reference answer holds only special tokens"))
            continue
        ids, _ = encoding.template.encode_oneturn(encoding.tokenizer,
                                                  [*messages, {"role": "assistant", "content": ""}],
                                                  aligned["_system"], aligned["_tools"])
        cut = max(0, len(ids) - max_prompt_tokens)
        prompts.append(GenerationPrompt(row.dataset, row.key, list(ids[cut:]), str(messages[-1]["content"]),
                                        (len(messages) - 1) // 2, reference, cut))
    raise_if_errors(errors, "held-out rows that training would not accept")
    return prompts, skipped

