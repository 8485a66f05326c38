"""Generate answers on the held-out rows with an already loaded model, and score each against its reference.

Reads the run's held-out rows (:func:`components.evaluate.task.data.read_test_rows`), selects and encodes up to
``generate_rows`` of them (:mod:`.prompts`), answers them greedily in batches (:mod:`.decoding`), scores every
answer (:mod:`.metrics`) and returns the validated :class:`~.results.Generations`; the caller writes it
(atomically, :func:`~.results.dump_generations`). Nothing is written here, so a failure leaves nothing behind.

The prompt budget is the model's context (:func:`components.evaluate.mmlu.scoring.context_length`) less
``max_new_tokens``; longer prompts lose tokens from the left, with a warning.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from components.common.logs import step_logger
from components.data.split import split_hash
from components.evaluate.generate.results import (
    GENERATION_VERSION,
    GeneratedAnswer,
    Generations,
    GenerationsHeader,
    SkippedRow,
    generation_eval_key,
    generation_totals,
)
from components.evaluate.task.data import llamafactory_encoding, read_test_rows
from configs.errors import StepError

log = step_logger("generate")


class GenerationError(StepError, ValueError):
    """Answers cannot be generated or scored (settings that leave no room, no usable row, a bad score)."""


def prompt_budget(context: int, max_new_tokens: int) -> int:
    """Prompt tokens that fit beside ``max_new_tokens`` in a context of ``context`` tokens.

    Raises:
        GenerationError: ``max_new_tokens`` leaves no room for a prompt (both numbers named).
    """
    budget = context - max_new_tokens
    if budget < 1:
        raise GenerationError(f"evaluation.max_new_tokens ({max_new_tokens}) leaves no room for a prompt in the "
                              f"model's context of {context} tokens: lower it below {context}")
    return budget


def generate_loaded(model: Any, tokenizer: Any, data_dir: str | Path, names: list[str], *, template: str,
                    cutoff_len: int, generate_rows: int, max_new_tokens: int, model_dir: str | Path, model_id: str,
                    task_eval_key: str, batch_size: int = 16, progress: bool = True) -> Generations:
    """Answer up to ``generate_rows`` held-out rows of ``names`` greedily and score the answers.

    Raises:
        TaskDataError: the held-out data cannot be read, or rows training would not accept (file and line named).
        GenerationError: ``max_new_tokens`` leaves no room for a prompt, no selected row has a usable reference
            answer, or a score is not finite (the row is named).
        ValueError: ``generate_rows``, ``batch_size`` or ``cutoff_len`` is below 1.
    """
    from components.evaluate.generate.decoding import generate_greedy
    from components.evaluate.generate.metrics import ScoreError, score_answer
    from components.evaluate.generate.prompts import build_prompts, select_rows, stop_token_ids
    from components.evaluate.mmlu.scoring import context_length, pad_token_id

    if generate_rows < 1:
        raise ValueError(f"generate_rows must be >= 1, got {generate_rows}")
    started = time.monotonic()
    entries, rows = read_test_rows(data_dir, names)
    encoding = llamafactory_encoding(tokenizer, entries, template=template, cutoff_len=cutoff_len)
    budget = prompt_budget(context_length(model, encoding.tokenizer), max_new_tokens)
    selected = select_rows(rows, generate_rows)
    prompts, skipped = build_prompts(encoding, selected, max_prompt_tokens=budget)
    for row in skipped:
        log.info(f"skipped row {row.key} of {row.dataset!r}: {row.reason}")
    if not prompts:
        raise GenerationError(f"none of the {len(selected)} selected held-out rows has a usable reference answer "
                              f"({skipped[0].reason if skipped else 'no rows'}); fix the data or set "
                              "evaluation.generate_rows=0")
    truncated = [prompt for prompt in prompts if prompt.truncated_tokens]
    if truncated:
        log.warning(f"{len(truncated)} prompt(s) longer than the {budget} tokens the context leaves beside "
                    f"max_new_tokens={max_new_tokens} were cut from the left (row {truncated[0].key} of "
                    f"{truncated[0].dataset!r} lost {truncated[0].truncated_tokens} tokens)")
    stops = stop_token_ids(encoding)
    generated = generate_greedy(model, [prompt.prompt_ids for prompt in prompts], stop_ids=stops,
                                pad_id=pad_token_id(encoding.tokenizer), max_new_tokens=max_new_tokens,
                                batch_size=batch_size)
    answers = []
    for prompt, result in zip(prompts, generated, strict=True):
        text = encoding.tokenizer.decode(result.token_ids, skip_special_tokens=True).strip()
        try:
            scores = score_answer(text, prompt.reference)
        except ScoreError as exc:
            raise GenerationError(f"row {prompt.key} of {prompt.dataset!r}: {exc}; nothing was written") from None
        answers.append(GeneratedAnswer(
            dataset=prompt.dataset, key=prompt.key, prompt=prompt.prompt, history_turns=prompt.history_turns,
            reference=prompt.reference, answer=text, prompt_tokens=len(prompt.prompt_ids),
            truncated_tokens=prompt.truncated_tokens, answer_tokens=len(result.token_ids), stopped=result.stopped,
            scores=scores))
    answers.sort(key=lambda answer: (answer.dataset, answer.key))
    header = GenerationsHeader(
        eval_key=generation_eval_key(task_eval_key, generate_rows=generate_rows, max_new_tokens=max_new_tokens),
        generation_version=GENERATION_VERSION, task_eval_key=task_eval_key, model=str(model_dir), model_id=model_id,
        template=template, cutoff_len=cutoff_len, test_split_hash=split_hash([row.key for row in rows]),
        generate_rows=generate_rows, max_new_tokens=max_new_tokens, stop_token_ids=stops,
        skipped=[SkippedRow(dataset=row.dataset, key=row.key, reason=row.reason)
                 for row in sorted(skipped, key=lambda row: (row.dataset, row.key))],
        **generation_totals(answers))
    results = Generations(header=header, answers=answers)
    if header.empty_answers:
        log.warning(f"{header.empty_answers} answer(s) held only special tokens or whitespace (scored as empty)")
    if progress:
        log.info(f"{header.rows} answers in {time.monotonic() - started:.2f} s: {summary_line(results)}")
    return results


def summary_line(generations: Generations) -> str:
    """The scores of one model's answers in one line (the console and the logs)."""
    header = generations.header
    means = header.means
    return (f"chrF {means.chrf:.1f}, ROUGE-L {means.rouge_l:.1f}, token F1 {means.token_f1:.1f}, exact "
            f"{means.exact_match:.1f}, stopped {header.stopped}/{header.rows}, {header.mean_answer_tokens:.0f} of "
            f"max {header.max_new_tokens} tokens")

