"""Task evaluation: a model's held-out loss on the user's own data, scored the way the trainer sees it.

Every held-out row is encoded with LLaMA-Factory's own converter, template and supervised processor
(same template and cutoff as training, prompt tokens masked; :mod:`components.evaluate.task.data`), then scored in
batched forward passes without generating anything (:mod:`components.evaluate.task.scoring`). ``task.json``
(:mod:`components.evaluate.task.results`) holds one record per row key (answer tokens, summed and mean NLL,
top-1 correct tokens), the token-weighted loss, the mean per-example NLL, perplexity, token accuracy, the
rows truncated away, and an eval key (model identity, split hash, template, cutoff, entries, scoring
version) under which the score may be reused. Candidate and baseline records pair up by (dataset, key).

    python -m components.evaluate.task.evaluate_task --model storage/models/base-model \\
        --data-dir storage/output/RUN/data --dataset alpaca_sample@test --template default --cutoff-len 256 \\
        --output /tmp/task-base
    python -m components.evaluate.task.evaluate_task --config local --model storage/models/base-model \\
        --adapter storage/output/RUN/adapter --data-dir storage/output/RUN/data \\
        --dataset alpaca_sample@test,sharegpt_sample@test --batch-size 32 --output /tmp/task-candidate

``--template`` and ``--cutoff-len`` set the ``training`` fields (the training's own, so that rows are encoded as the
trainer saw them), ``--batch-size`` ``evaluation.batch_size``; each defaults to ``--config`` (else the schema).
A second run into the same --output reuses a task.json with the same eval key (--force rescores).
Exit status: 0 scored (or reused), 1 the evaluation failed (data, model or write), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from components.common.cli import cli_config, comma_list, fail, field_flag, new_parser
from components.common.logs import configure_step_logging, step_logger
from components.data.split import split_hash
from components.evaluate.task.data import TaskDataError, TestRow, encode_rows, entries_digest, read_test_rows
from components.evaluate.task.results import (
    DIGITS,
    RESULTS_FILE,
    SCORING_VERSION,
    ExampleScore,
    SkippedExample,
    TaskResults,
    TaskResultsError,
    dump_task_results,
    load_task_results,
    task_eval_key,
    totals,
)
from configs.errors import StepError

TOOL = "task"  # its lines: [task] ...
log = step_logger(TOOL)


def _key(model_id: str, entries: dict[str, dict], rows: list[TestRow], template: str, cutoff_len: int) -> str:
    return task_eval_key(model_id, split_hash([row.key for row in rows]), template, cutoff_len,
                         entries_digest(entries))


def eval_key_for(model_dir: str | Path, data_dir: str | Path, names: list[str], *, template: str, cutoff_len: int,
                 adapter_dir: str | Path | None = None) -> str:
    """The eval key a score of this model on these rows would carry, without loading the model.

    Raises:
        TaskDataError: the held-out data cannot be read.
        ModelLoadError: ``model_dir`` or ``adapter_dir`` is not a model / adapter directory.
    """
    from components.evaluate.mmlu.data import model_identity

    entries, rows = read_test_rows(data_dir, names)
    return _key(model_identity(model_dir, adapter_dir), entries, rows, template, cutoff_len)


def score_loaded(model: Any, tokenizer: Any, data_dir: str | Path, names: list[str], *, template: str,
                 cutoff_len: int, model_dir: str | Path, adapter_dir: str | Path | None = None,
                 model_id: str | None = None, batch_size: int = 16, progress: bool = True) -> TaskResults:
    """Score an already loaded model (e.g. the one the evaluate step loaded for MMLU) on the held-out rows.

    ``model_dir``/``adapter_dir`` are recorded (and hashed into ``model_id`` when it is not given); rows
    identical to an earlier row of the same entry are scored once and counted as ``duplicate_rows``.

    Raises:
        TaskDataError: the data cannot be read or encoded, or no row keeps an answer token after truncation.
        ModelLoadError: ``model_id`` is not given and ``model_dir`` is not a model directory.
        ValueError: ``batch_size`` < 1 or ``cutoff_len`` < 1.
        ScoringError: a token beyond the model's vocabulary, or a non-finite loss.
    """
    from components.evaluate.mmlu.data import model_identity
    from components.evaluate.mmlu.scoring import pad_token_id
    from components.evaluate.task.scoring import score_examples

    started = time.monotonic()
    entries, rows = read_test_rows(data_dir, names)
    model_id = model_id or model_identity(model_dir, adapter_dir)
    first: dict[tuple[str, str], TestRow] = {}
    for row in rows:
        first.setdefault((row.dataset, row.key), row)
    unique = list(first.values())
    examples = encode_rows(tokenizer, entries, unique, template=template, cutoff_len=cutoff_len)
    losses = score_examples(model, examples, batch_size=batch_size, pad_id=pad_token_id(tokenizer))
    records, skipped = [], []
    for example, loss in zip(examples, losses, strict=True):
        if not loss.answer_tokens:
            skipped.append(SkippedExample(key=example.key, dataset=example.dataset, tokens=len(example.input_ids)))
            continue
        nll_sum = round(loss.nll_sum, DIGITS)
        records.append(ExampleScore(key=example.key, dataset=example.dataset, tokens=len(example.input_ids),
                                    answer_tokens=loss.answer_tokens, nll_sum=nll_sum,
                                    nll_mean=round(loss.nll_sum / loss.answer_tokens, DIGITS),
                                    correct_tokens=loss.correct_tokens))
    if not records:
        raise TaskDataError(f"no held-out row keeps an answer token after truncation to cutoff_len={cutoff_len} "
                            f"({len(skipped)} rows): raise cutoff_len")
    records.sort(key=lambda record: (record.dataset, record.key))
    skipped.sort(key=lambda example: (example.dataset, example.key))
    results = TaskResults(
        eval_key=_key(model_id, entries, rows, template, cutoff_len), scoring_version=SCORING_VERSION,
        model=str(model_dir), adapter=str(adapter_dir or ""), model_id=model_id, template=template,
        cutoff_len=cutoff_len, datasets=list(entries), entries_hash=entries_digest(entries),
        test_split_hash=split_hash([row.key for row in rows]), rows=len(rows), duplicate_rows=len(rows) - len(unique),
        truncated_away=skipped, records=records, **totals(records))
    if progress:
        log.info(f"{results.examples} examples, {results.answer_tokens} answer tokens: loss {results.loss:.4f}, "
                 f"perplexity {results.perplexity:.3f}, token accuracy {results.token_accuracy:.3f}, "
                 f"{len(skipped)} truncated away, in {time.monotonic() - started:.2f} s")
    return results


def evaluate_task(model_dir: str | Path, data_dir: str | Path, names: list[str], *, template: str, cutoff_len: int,
                  batch_size: int = 16, adapter_dir: str | Path | None = None, device: str | None = None,
                  progress: bool = True) -> TaskResults:
    """Load ``model_dir`` (+ an unmerged adapter) and score it on the held-out rows of ``names``.

    The data is read and checked before the model is loaded (components.evaluate.mmlu.scoring.load_model: bf16 on
    a GPU, float32 on the CPU).

    Raises:
        TaskDataError: the held-out data cannot be read or encoded (entry, file and row named).
        ModelLoadError: ``model_dir`` or ``adapter_dir`` is not a model / adapter directory, or cannot be loaded.
        DeviceError: ``device`` is not usable here.
        ValueError: a bad ``batch_size`` or ``cutoff_len``.
        ScoringError: a non-finite loss.
    """
    from components.evaluate.mmlu.data import model_identity
    from components.evaluate.mmlu.scoring import load_model

    read_test_rows(data_dir, names)  # fail on bad data before the (slow) model load
    model_id = model_identity(model_dir, adapter_dir)
    model, tokenizer = load_model(model_dir, adapter_dir, device=device)
    return score_loaded(model, tokenizer, data_dir, names, template=template, cutoff_len=cutoff_len,
                        model_dir=model_dir, adapter_dir=adapter_dir, model_id=model_id, batch_size=batch_size,
                        progress=progress)


def reusable_results(path: str | Path, eval_key: str) -> TaskResults | None:
    """The results already at ``path`` when they are valid and carry ``eval_key``, else None."""
    try:
        results = load_task_results(path)
    except (OSError, TaskResultsError):
        return None
    return results if results.eval_key == eval_key else None


def build_parser() -> argparse.ArgumentParser:
    """The command line: score a model's held-out loss on LLaMA-Factory dataset entries and write task.json."""
    parser = new_parser("components.evaluate.task.evaluate_task", "Held-out loss of a model on LLaMA-Factory "
                        "dataset entries (encoded as SFT training encodes them).")
    parser.add_argument("--model", required=True, help="Model directory (Hugging Face layout).")
    parser.add_argument("--adapter", default="", help="PEFT adapter directory, applied unmerged.")
    parser.add_argument("--data-dir", required=True, help="Directory with dataset_info.json and the held-out files.")
    parser.add_argument("--dataset", required=True, type=comma_list,
                        help="Comma-separated entries to score, e.g. alpaca_sample@test.")
    field_flag(parser, "--template", "training.template")
    field_flag(parser, "--cutoff-len", "training.cutoff_len")
    field_flag(parser, "--batch-size", "evaluation.batch_size")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu).")
    parser.add_argument("--output", required=True, help="Directory to write task.json into.")
    parser.add_argument("--force", action="store_true", help="Rescore even when task.json has the same eval key.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Score (or reuse) and write task.json; exit 0 on success, 1 when the evaluation fails, 2 on a usage error."""
    from components.common.storage import atomic_write_text, guard_output
    from components.evaluate.mmlu.scoring import pick_device

    configure_step_logging(TOOL)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.dataset:
        parser.error("--dataset must name an entry")
    path = Path(args.output) / RESULTS_FILE
    adapter = args.adapter or None
    try:
        cfg = cli_config(parser, args)
        if args.device:  # an unusable device is named now, not after the data is read and the model loaded
            pick_device(args.device)
        template, cutoff_len = cfg.training.template, cfg.training.cutoff_len
        guard_output(path, {"--model": args.model, "--adapter": adapter, "--data-dir": args.data_dir})
        key = eval_key_for(args.model, args.data_dir, args.dataset, template=template, cutoff_len=cutoff_len,
                           adapter_dir=adapter)
        results = None if args.force else reusable_results(path, key)
        reused = results is not None
        if results is None:
            results = evaluate_task(args.model, args.data_dir, args.dataset, template=template, cutoff_len=cutoff_len,
                                    batch_size=cfg.evaluation.batch_size, adapter_dir=adapter, device=args.device)
            atomic_write_text(path, dump_task_results(results))
    except StepError as exc:
        return fail(parser, exc)
    print(json.dumps({"results": str(path), "reused": reused, "loss": results.loss, "perplexity": results.perplexity,
                      "token_accuracy": results.token_accuracy, "examples": results.examples,
                      "truncated_away": len(results.truncated_away), "eval_key": results.eval_key}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
