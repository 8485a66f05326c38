"""MMLU evaluation step: a fast, deterministic few-shot evaluator (LLaMA-Factory 0.9.5 disabled its own).

Scores each test question by the next-token log-probabilities of " A".." D" after the standard MMLU
prompt (first n dev rows as shots), reusing each subject's few-shot prefix KV cache across batches. An
adapter is applied unmerged (peft), so the candidate is scored before the merge step. Writes
``results.json``: per-question records, per-subject/category accuracy, micro and macro averages, and an
eval key (data hash, n-shot, subjects, limit, prompt version, model identity) that says when a stored
score may be reused. Backend ``openai`` scores through an OpenAI-compatible completions server instead.

    python -m components.evaluate_mmlu --model storage/models/base-model --data-dir storage/eval/mmlu \\
        --output /tmp/mmlu-base
    python -m components.evaluate_mmlu --model storage/models/base-model --adapter storage/output/RUN/adapter \\
        --data-dir storage/eval/mmlu --n-shot 5 --subjects astronomy,nutrition --batch-size 32 --limit 10 \\
        --output /tmp/mmlu-candidate
    python -m components.evaluate_mmlu --model M --data-dir D --output O --backend openai \\
        --endpoint http://vllm.llm-training:8000/v1
"""

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from kfp.dsl import Artifact, Metrics, Output

# Not `dsl.component`: a running task imports this module, and kfp.dsl leaves `component` out at run
# time (_KFP_RUNTIME=true); the decorator module itself imports fine there.
from kfp.dsl.component_decorator import component

from components.image import DEFAULT_IMAGE
from components.mmlu_data import (
    LETTERS,
    PROMPT_VERSION,
    MmluDataError,
    SubjectData,
    data_hash,
    eval_config_key,
    load_subjects,
    model_identity,
    prompt_prefix,
    prompt_suffix,
)

ROLES = ("candidate", "baseline")
RESULTS_FILE = "results.json"

__all__ = ["eval_config_key", "evaluate", "evaluate_mmlu", "load_results", "model_identity", "run_step"]


def category_metric(category: str) -> str:
    """MLflow/KFP metric name of a category: ``social sciences`` -> ``mmlu_social_sciences``."""
    return "mmlu_" + category.lower().replace(" ", "_")


def _score_hf(data: list[SubjectData], model_dir: Path, adapter_dir: Path | None, *, batch_size: int,
              scorer: str, device: str | None, progress: bool,
              loaded: tuple[Any, Any] | None = None) -> dict[str, list[list[float]]]:
    from components.mmlu_scoring import (
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
            _print_progress(number, len(data), subject, scores[subject.subject], time.monotonic() - started)
    return scores


def _score_openai(data: list[SubjectData], endpoint: str, *, batch_size: int,
                  progress: bool) -> dict[str, list[list[float]]]:
    from components.mmlu_openai import score_prompts, served_model

    model = served_model(endpoint)
    scores = {}
    for number, subject in enumerate(data, 1):
        started = time.monotonic()
        prefix = prompt_prefix(subject.subject, subject.shots)
        prompts = [prefix + prompt_suffix(question) for question in subject.questions]
        scores[subject.subject] = score_prompts(endpoint, prompts, model=model, batch_size=batch_size)
        if progress:
            _print_progress(number, len(data), subject, scores[subject.subject], time.monotonic() - started)
    return scores


def _prediction(logprobs: list[float]) -> str:
    """The letter with the highest log-probability (the earliest letter on an exact tie)."""
    return LETTERS[max(range(len(LETTERS)), key=lambda i: (logprobs[i], -i))]


def _print_progress(number: int, total: int, subject: SubjectData, scores: list[list[float]], seconds: float) -> None:
    correct = sum(_prediction(row) == q.answer for row, q in zip(scores, subject.questions, strict=True))
    count = len(subject.questions)
    print(f"[mmlu] {number}/{total} {subject.subject}: {correct}/{count} correct "
          f"({correct / max(count, 1):.1%}) in {seconds:.2f} s", flush=True)


def _accuracy(correct: int, total: int) -> float:
    return round(correct / total, 6) if total else 0.0


def summarise(data: list[SubjectData], scores: dict[str, list[list[float]]], meta: dict[str, Any]) -> dict:
    """The results document (:class:`components.mmlu_results.MmluResults`): ``meta`` plus per-question records
    and every summary computed from them (per subject and category, micro, macro).

    Raises:
        ValueError: a log-probability is NaN or infinite (the model's weights are broken); nothing is scored.
    """
    from components.mmlu_results import results_from_records

    questions = []
    for subject in data:
        for question, logprobs in zip(subject.questions, scores[subject.subject], strict=True):
            if not all(math.isfinite(value) for value in logprobs):
                raise ValueError(f"the model gave non-finite answer log-probabilities {logprobs} for "
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
        FileNotFoundError: ``model_dir`` or ``adapter_dir`` is not a model / adapter directory.
        ValueError: an unknown backend or scorer, or an adapter with the openai backend.
        BackendError: the openai endpoint failed.
    """
    if backend not in ("hf", "openai") or scorer not in ("cached", "straightforward"):
        raise ValueError(f"backend must be hf or openai and scorer cached or straightforward, got {backend!r}, "
                         f"{scorer!r}")
    if backend == "openai" and adapter_dir:
        raise ValueError("backend 'openai' scores the model the server serves; merge the adapter first "
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
    """Read and validate a results.json written by this step (:func:`components.mmlu_results.read_mmlu_results`).

    Raises:
        ResultsFileError: the file is missing, not JSON, or inconsistent (the message names the file and field).
    """
    from components.mmlu_results import read_mmlu_results

    return read_mmlu_results(path).model_dump()


def _on_volume(cfg: Any, path: str) -> Path:
    """A step input path: absolute as given, relative ones under the storage root."""
    return Path(path) if Path(path).is_absolute() else cfg.storage.resolve(path)


def _reusable(path: Path, eval_key: str) -> dict | None:
    """The results already at ``path`` (a retried task) when they were computed the same way."""
    try:
        results = load_results(path)
    except ValueError:
        return None
    return results if results["eval_key"] == eval_key else None


def run_step(config: str, kfp_run_id: str, model_dir: str, adapter_dir: str, role: str, metrics: Any,
             results: Any) -> tuple[str, float, str]:
    """Evaluate ``model_dir`` (+ ``adapter_dir`` unless "") on MMLU as ``role``; return (path, micro, eval key).

    Reads storage.eval_data_dir (the MMLU data), storage.output_root (where results go) and evaluation
    (n_shot, subjects, batch_size, limit, backend, endpoint); the mlflow section for the child run
    ``evaluate-<role>`` (tags llmft.eval_key, llmft.eval_role; metrics mmlu_micro, mmlu_macro,
    mmlu_<category>; results.json under artifact path "eval"). Writes results.json atomically to
    ``<output>/<run id>/eval/<role>/results.json`` and copies it to the ``results`` artifact; a retry finds
    a complete file with the same eval key there and reuses it. Relative model/adapter paths are read
    under the storage root.

    Raises:
        ConfigError: the config parameter is invalid.
        ValueError: ``role`` is not candidate or baseline, or the evaluation settings do not fit together.
        MmluDataError: the MMLU files are missing or malformed (file and line named).
        FileNotFoundError: the model or adapter directory is not one.
        StorageError: the volume refused the write.
        TrackingUnavailable: the MLflow server does not answer.
    """
    from mlflow.entities import Metric, Param

    from components.storage import atomic_write_text, run_dir
    from components.tracking import step_run
    from configs.schema import config_from_json

    cfg = config_from_json(config)
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    settings = cfg.evaluation
    data_dir = cfg.storage.resolve(cfg.storage.eval_data_dir)
    model_path = _on_volume(cfg, model_dir)
    adapter_path = _on_volume(cfg, adapter_dir) if adapter_dir else None
    out_path = run_dir(cfg, kfp_run_id) / "eval" / role / RESULTS_FILE
    with step_run(cfg, kfp_run_id, f"evaluate-{role}") as (client, run_id):
        started = time.monotonic()
        eval_key = eval_config_key(data_dir, n_shot=settings.n_shot, subjects=settings.subjects,
                                   limit=settings.limit, model_id=model_identity(model_path, adapter_path))
        client.set_tag(run_id, "llmft.eval_key", eval_key)
        client.set_tag(run_id, "llmft.eval_role", role)
        summary = _reusable(out_path, eval_key)
        client.set_tag(run_id, "llmft.eval_reused", str(summary is not None).lower())
        if summary is None:
            summary = evaluate(model_path, data_dir, adapter_dir=adapter_path, n_shot=settings.n_shot,
                               subjects=settings.subjects, batch_size=settings.batch_size, limit=settings.limit,
                               backend=settings.backend, endpoint=settings.endpoint)
            atomic_write_text(out_path, dump_results(summary))
        values = {"mmlu_micro": summary["micro"], "mmlu_macro": summary["macro"],
                  "mmlu_questions": float(summary["total"]), "eval_seconds": round(time.monotonic() - started, 3),
                  **{category_metric(name): entry["accuracy"] for name, entry in summary["categories"].items()}}
        now = int(time.time() * 1000)
        params = {"eval_n_shot": settings.n_shot, "eval_subjects": ",".join(settings.subjects) or "all",
                  "eval_limit": settings.limit, "eval_backend": settings.backend, "eval_model_dir": str(model_path),
                  "eval_adapter_dir": str(adapter_path or ""), "eval_prompt_version": PROMPT_VERSION}
        client.log_batch(run_id, metrics=[Metric(key, float(value), now, 0) for key, value in values.items()],
                         params=[Param(key, str(value)) for key, value in params.items()])
        client.log_artifact(run_id, str(out_path), artifact_path="eval")
    metrics.log_metric("mmlu_avg", summary["micro"])
    metrics.log_metric("mmlu_macro", summary["macro"])
    for name, entry in summary["categories"].items():
        metrics.log_metric(category_metric(name), entry["accuracy"])
    Path(results.path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out_path, results.path)
    results.metadata.update({"eval_key": summary["eval_key"], "mmlu_avg": summary["micro"], "role": role})
    return str(out_path), float(summary["micro"]), summary["eval_key"]


@component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def evaluate_mmlu(config: str, kfp_run_id: str, model_dir: str, adapter_dir: str, role: str,
                  metrics: Output[Metrics], results: Output[Artifact],
                  ) -> NamedTuple("Outputs", [("results_path", str), ("mmlu_avg", float), ("eval_key", str)]):
    """Score a model on MMLU (few-shot, log-likelihood of the answer letter) and record the result.

    Args:
        config: The resolved pipeline configuration (JSON); the evaluation section sets n-shot, subjects,
            batch size, question limit and backend.
        kfp_run_id: The KFP run id; results go to <output_root>/<run id>/eval/<role>/ and MLflow runs carry it.
        model_dir: The model directory on the volume (relative to the storage root, or absolute).
        adapter_dir: A LoRA adapter applied unmerged on top of model_dir; "" for none.
        role: "candidate" (the new adapter) or "baseline" (the current champion).
        metrics: MMLU accuracy: mmlu_avg (micro), mmlu_macro and one mmlu_<category> per category.
        results: The results.json file: per-question predictions and log-probabilities, per-subject scores.

    Returns:
        results_path: Where results.json was written on the volume.
        mmlu_avg: Micro-averaged accuracy over all questions.
        eval_key: Hash of data, n-shot, subjects, limit, prompt version and model identity (score reuse key).
    """
    from components.evaluate_mmlu import run_step

    return run_step(config=config, kfp_run_id=kfp_run_id, model_dir=model_dir, adapter_dir=adapter_dir, role=role,
                    metrics=metrics, results=results)


def build_parser() -> argparse.ArgumentParser:
    """The CLI: evaluate a model directory on MMLU files and write results.json to --output."""
    parser = argparse.ArgumentParser(description="Evaluate a model on MMLU (hendrycks CSV layout).")
    parser.add_argument("--model", required=True, help="Model directory (Hugging Face layout).")
    parser.add_argument("--adapter", default="", help="PEFT adapter directory, applied unmerged.")
    parser.add_argument("--data-dir", required=True, help="MMLU data with dev/ and test/.")
    parser.add_argument("--n-shot", type=int, default=5, help="Few-shot examples (first n dev rows).")
    parser.add_argument("--subjects", default="", help="Comma-separated subjects (default: all found).")
    parser.add_argument("--batch-size", type=int, default=16, help="Questions per forward pass.")
    parser.add_argument("--limit", type=int, default=0, help="Questions per subject (0: all).")
    parser.add_argument("--output", required=True, help="Directory to write results.json into.")
    parser.add_argument("--backend", choices=["hf", "openai"], default="hf", help="hf (in-process) or openai.")
    parser.add_argument("--endpoint", default="", help="OpenAI-compatible completions URL (backend openai).")
    parser.add_argument("--scorer", choices=["cached", "straightforward"], default="cached",
                        help="cached: reuse the few-shot prefix KV cache; straightforward: whole prompt per question.")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu).")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit 0 on success, 1 when the evaluation fails, 2 on a usage error."""
    from components.mmlu_openai import BackendError
    from components.storage import StorageError, atomic_write_text

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.n_shot < 0 or args.batch_size < 1 or args.limit < 0:
        parser.error("--n-shot and --limit must be >= 0 and --batch-size >= 1")
    if args.backend == "openai" and not args.endpoint:
        parser.error("--endpoint is required with --backend openai")
    subjects = [name.strip() for name in args.subjects.split(",") if name.strip()]
    try:
        results = evaluate(args.model, args.data_dir, adapter_dir=args.adapter or None, n_shot=args.n_shot,
                           subjects=subjects, batch_size=args.batch_size, limit=args.limit, backend=args.backend,
                           endpoint=args.endpoint, scorer=args.scorer, device=args.device)
        path = atomic_write_text(Path(args.output) / RESULTS_FILE, dump_results(results))
    except (MmluDataError, BackendError, StorageError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"results": str(path), "micro": results["micro"], "macro": results["macro"],
                      "eval_key": results["eval_key"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
