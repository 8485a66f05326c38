"""MMLU evaluation: a fast, deterministic few-shot evaluator (LLaMA-Factory 0.9.5 disabled its own).

Scores each test question by the next-token log-probabilities of " A".." D" after the standard MMLU
prompt (first n dev rows as shots), reusing each subject's few-shot prefix KV cache across batches. The
pipeline's evaluate step (:mod:`components.evaluate.evaluate`) calls :func:`evaluate` on the merged model; the CLI
also takes an adapter, applied unmerged (peft). Writes
``results.json``: per-question records, per-subject/category accuracy, micro and macro averages, and an
eval key (data hash, n-shot, subjects, limit, prompt version, model identity) that says when a stored
score may be reused. Backend ``openai`` scores through an OpenAI-compatible completions server instead.

    python -m components.evaluate.mmlu.evaluate_mmlu --config local --model storage/models/base-model \\
        --output /tmp/mmlu-base                      # the data: storage.eval_data_dir of the local preset
    python -m components.evaluate.mmlu.evaluate_mmlu --model storage/models/base-model \\
        --adapter storage/output/RUN/adapter --data-dir storage/eval/mmlu --n-shot 5 \\
        --subjects astronomy,nutrition --batch-size 32 --limit 10 --output /tmp/mmlu-candidate
    python -m components.evaluate.mmlu.evaluate_mmlu --model M --data-dir D --output O --backend openai \\
        --endpoint http://vllm.llm-training:8000/v1

``--n-shot``, ``--subjects``, ``--batch-size`` and ``--limit`` set the ``evaluation`` fields of ``--config`` (the
schema's defaults without one).
"""

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from components.common.cli import cli_config, fail, field_flag, new_parser
from components.common.logs import configure_step_logging
from components.evaluate.mmlu.data import (
    LETTERS,
    PROMPT_VERSION,
    TOOL,
    SubjectData,
    data_hash,
    eval_config_key,
    load_subjects,
    log,
    model_identity,
    prompt_prefix,
    prompt_suffix,
)
from components.evaluate.mmlu.results import RESULTS_FILE
from components.evaluate.mmlu.scoring import ScoringError
from configs.errors import StepError, UsageError


def category_metric(category: str) -> str:
    """MLflow/KFP metric name of a category: ``social sciences`` -> ``mmlu_social_sciences``."""
    return "mmlu_" + category.lower().replace(" ", "_")


def _score_hf(data: list[SubjectData], model_dir: Path, adapter_dir: Path | None, *, batch_size: int,
              scorer: str, device: str | None, progress: bool,
              loaded: tuple[Any, Any] | None = None) -> dict[str, list[list[float]]]:
    from components.evaluate.mmlu.scoring import (
        answer_token_ids,
        context_length,
        load_model,
        pad_token_id,
        score_groups,
        tokenize_subject,
    )

    model, tokenizer = loaded or load_model(model_dir, adapter_dir, device=device)
    answer_ids, pad_id = answer_token_ids(tokenizer), pad_token_id(tokenizer)
    max_length = context_length(model, tokenizer)
    scores = {}
    for number, subject in enumerate(data, 1):
        started = time.monotonic()
        groups = tokenize_subject(tokenizer, subject, max_length)
        scores[subject.subject] = score_groups(model, groups, answer_ids, len(subject.questions),
                                               batch_size=batch_size, pad_id=pad_id, cached=scorer == "cached")
        if progress:
            _log_progress(number, len(data), subject, scores[subject.subject], time.monotonic() - started)
    return scores


def _score_openai(data: list[SubjectData], endpoint: str, *, batch_size: int,
                  progress: bool) -> dict[str, list[list[float]]]:
    from components.evaluate.mmlu.openai_backend import score_prompts, served_model

    model = served_model(endpoint)
    scores = {}
    for number, subject in enumerate(data, 1):
        started = time.monotonic()
        prefix = prompt_prefix(subject.subject, subject.shots)
        prompts = [prefix + prompt_suffix(question) for question in subject.questions]
        scores[subject.subject] = score_prompts(endpoint, prompts, model=model, batch_size=batch_size)
        if progress:
            _log_progress(number, len(data), subject, scores[subject.subject], time.monotonic() - started)
    return scores


def _prediction(logprobs: list[float]) -> str:
    """The letter with the highest log-probability (the earliest letter on an exact tie)."""
    return LETTERS[max(range(len(LETTERS)), key=lambda i: (logprobs[i], -i))]


def _log_progress(number: int, total: int, subject: SubjectData, scores: list[list[float]], seconds: float) -> None:
    correct = sum(_prediction(row) == q.answer for row, q in zip(scores, subject.questions, strict=True))
    count = len(subject.questions)
    log.info(f"{number}/{total} {subject.subject}: {correct}/{count} correct ({correct / max(count, 1):.1%}) in "
             f"{seconds:.2f} s")


def summarise(data: list[SubjectData], scores: dict[str, list[list[float]]], meta: dict[str, Any]) -> dict:
    """The results document (:class:`components.evaluate.mmlu.results.MmluResults`): ``meta`` plus per-question records
    and every summary computed from them (per subject and category, micro, macro).

    Raises:
        ScoringError: a log-probability is NaN or infinite (the model's weights are broken); nothing is scored.
    """
    from components.evaluate.mmlu.results import results_from_records

    questions = []
    for subject in data:
        for question, logprobs in zip(subject.questions, scores[subject.subject], strict=True):
            if not all(math.isfinite(value) for value in logprobs):
                raise ScoringError(f"the model gave non-finite answer log-probabilities {logprobs} for "
                                   f"{subject.subject}#{question.index}: its weights hold NaN or inf; nothing was "
                                   "scored")
            pred = _prediction(logprobs)
            questions.append({"subject": subject.subject, "index": question.index, "gold": question.answer,
                              "pred": pred, "correct": pred == question.answer,
                              "logprobs": [round(float(value), 6) for value in logprobs]})
    category_of = {subject.subject: subject.category for subject in data}
    return results_from_records(meta, questions, category_of).model_dump()


def evaluate(model_dir: str | Path, data_dir: str | Path, *, adapter_dir: str | Path | None = None, n_shot: int = 5,
             subjects: list[str] | None = None, batch_size: int = 16, limit: int = 0, backend: str = "hf",
             endpoint: str = "", scorer: str = "cached", device: str | None = None, progress: bool = True,
             loaded: tuple[Any, Any] | None = None) -> dict:
    """Evaluate a model (plus an optional unmerged adapter) on MMLU data; return the results document.

    The data is read and checked in full before the model is loaded; ``loaded`` is ``(model, tokenizer)``
    already loaded from ``model_dir`` (the evaluate step shares one load between MMLU and the task).
    ``scorer`` "straightforward" runs the whole prompt per question (the reference the prefix-cached scorer
    must match).

    Raises:
        MmluDataError: files missing or rows malformed (each named as ``file:line``).
        ModelLoadError: ``model_dir`` or ``adapter_dir`` is not a model / adapter directory, or cannot be loaded.
        ValueError: an unknown backend or scorer.
        UsageError: an adapter with the openai backend.
        BackendError: the openai endpoint failed.
    """
    if backend not in ("hf", "openai") or scorer not in ("cached", "straightforward"):
        raise ValueError(f"backend must be hf or openai and scorer cached or straightforward, got {backend!r}, "
                         f"{scorer!r}")
    if backend == "openai" and adapter_dir:
        raise UsageError("backend 'openai' scores the model the server serves; merge the adapter first "
                         "or use backend 'hf' (adapter_dir must be empty)")
    data_dir, model_dir = Path(data_dir), Path(model_dir)
    adapter_dir = Path(adapter_dir) if adapter_dir else None
    subject_list = sorted(set(subjects or []))
    data = load_subjects(data_dir, subject_list, n_shot=n_shot, limit=limit)
    model_id = model_identity(model_dir, adapter_dir)
    meta = {
        "eval_key": eval_config_key(data_dir, n_shot=n_shot, subjects=subject_list, limit=limit, model_id=model_id),
        "prompt_version": PROMPT_VERSION, "n_shot": n_shot, "limit": limit, "subjects_requested": subject_list,
        "model": str(model_dir), "adapter": str(adapter_dir) if adapter_dir else "", "model_id": model_id,
        "data_hash": data_hash(data_dir, subject_list), "backend": backend,
    }
    if backend == "openai":
        scores = _score_openai(data, endpoint, batch_size=batch_size, progress=progress)
    else:
        scores = _score_hf(data, model_dir, adapter_dir, batch_size=batch_size, scorer=scorer, device=device,
                           progress=progress, loaded=loaded)
    return summarise(data, scores, meta)


def dump_results(results: dict) -> str:
    """The canonical bytes of a results document (sorted keys, so two equal runs give identical files)."""
    return json.dumps(results, sort_keys=True, indent=1) + "\n"


def load_results(path: str | Path) -> dict:
    """Read and validate a results.json written by this step (:func:`.results.read_mmlu_results`).

    Raises:
        ResultsFileError: the file is missing, not JSON, or inconsistent (the message names the file and field).
    """
    from components.evaluate.mmlu.results import read_mmlu_results

    return read_mmlu_results(path).model_dump()


def build_parser() -> argparse.ArgumentParser:
    """The command line: evaluate a model directory on MMLU files and write results.json to --output."""
    parser = new_parser("components.evaluate.mmlu.evaluate_mmlu", "Evaluate a model on MMLU (hendrycks CSV layout).")
    parser.add_argument("--model", required=True, help="Model directory (Hugging Face layout).")
    parser.add_argument("--adapter", default="", help="PEFT adapter directory, applied unmerged.")
    parser.add_argument("--data-dir", default=None, help="MMLU data with dev/ and test/ (default: the config's "
                        "storage.eval_data_dir under storage.mount_path).")
    parser.add_argument("--output", required=True, help="Directory to write results.json into.")
    field_flag(parser, "--n-shot", "evaluation.n_shot")
    field_flag(parser, "--subjects", "evaluation.subjects")
    field_flag(parser, "--batch-size", "evaluation.batch_size")
    field_flag(parser, "--limit", "evaluation.limit")
    parser.add_argument("--backend", choices=["hf", "openai"], default="hf", help="hf (in-process) or openai.")
    parser.add_argument("--endpoint", default="", help="OpenAI-compatible completions URL (backend openai).")
    parser.add_argument("--scorer", choices=["cached", "straightforward"], default="cached",
                        help="cached: reuse the few-shot prefix KV cache; straightforward: whole prompt per question.")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu).")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Evaluate and write results.json; exit 0 on success, 1 when the evaluation fails, 2 on a usage error."""
    from components.common.storage import atomic_write_text, guard_output, on_volume
    from components.evaluate.mmlu.scoring import pick_device

    configure_step_logging(TOOL)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.backend == "openai" and not args.endpoint:
        parser.error("--endpoint is required with --backend openai")
    try:
        cfg = cli_config(parser, args)
        if args.device and args.backend == "hf":  # an unusable device is named now, before any data is read
            pick_device(args.device)
        settings, data_dir = cfg.evaluation, args.data_dir or on_volume(cfg, cfg.storage.eval_data_dir)
        guard_output(Path(args.output) / RESULTS_FILE, {"--model": args.model, "--adapter": args.adapter,
                                                        "--data-dir": data_dir})
        results = evaluate(args.model, data_dir, adapter_dir=args.adapter or None, n_shot=settings.n_shot,
                           subjects=settings.subjects, batch_size=settings.batch_size, limit=settings.limit,
                           backend=args.backend, endpoint=args.endpoint, scorer=args.scorer, device=args.device)
        path = atomic_write_text(Path(args.output) / RESULTS_FILE, dump_results(results))
    except StepError as exc:
        return fail(parser, exc)
    print(json.dumps({"results": str(path), "micro": results["micro"], "macro": results["macro"],
                      "eval_key": results["eval_key"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
