"""What many tests share: the repository's paths, and results files built the way the evaluators build them.

Results files: every summary is computed, never typed in.

MMLU results (``results.json``) come from :func:`components.evaluate.mmlu.results.results_from_records` over
per-question records; held-out task results (``task.json``) from the :mod:`components.evaluate.task.results` models
over per-row records, with the totals from :func:`components.evaluate.task.results.totals` and the split hash from
:func:`components.data.split.split_hash`. A test states only what decides its outcome: which questions each
model answers right, and each row's loss.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from components.demo.samples import SAMPLE_DATA, SAMPLE_MMLU, SAMPLES
from components.evaluate.generate.results import Generations
from components.evaluate.mmlu.results import MmluResults, results_from_records
from components.evaluate.task.results import (
    DIGITS,
    SCORING_VERSION,
    ExampleScore,
    SkippedExample,
    TaskResults,
    dump_task_results,
    totals,
)
from components.gate.rules import TaskScores
from configs.loading import load_config
from configs.schema import PipelineConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
__all__ = ["REPO_ROOT", "SAMPLES", "SAMPLE_DATA", "SAMPLE_MMLU"]  # re-exported for the tests

# One sample subject per MMLU category (the shipped sample_mmlu has these five; astronomy and elementary
# mathematics are both STEM).
CATEGORY = {"astronomy": "STEM", "world_religions": "humanities", "high_school_geography": "social sciences",
            "nutrition": "other"}
LETTERS = "ABCD"
ANSWER_TOKENS = 4  # per held-out row: every row weighs the same in the token-weighted loss
DATASET = "alpaca_sample@test"


def sha(text: str) -> str:
    """A 64-hex-digit stand-in for a hash (eval keys, model ids) derived from ``text``."""
    return hashlib.sha256(text.encode()).hexdigest()


def gold(index: int) -> str:
    """The gold letter of question ``index`` of every subject (the same for every model)."""
    return LETTERS[index % 4]


# ---------------------------------------------------------------- MMLU


def flags_first_right(right: dict[str, int], *, per_subject: int, default: int = 0) -> dict[str, list[bool]]:
    """Per-subject correctness where the first ``right[subject]`` (else ``default``) questions are right."""
    return {subject: [index < right.get(subject, default) for index in range(per_subject)] for subject in CATEGORY}


def moved(flags: dict[str, list[bool]], **moves: tuple[int, int]) -> dict[str, list[bool]]:
    """A copy of ``flags`` where, per subject, ``(gain, lose)`` wrong answers become right and right ones wrong."""
    result = {subject: list(values) for subject, values in flags.items()}
    for subject, (gain, lose) in moves.items():
        values = result[subject]
        for index in [i for i, ok in enumerate(values) if not ok][:gain]:
            values[index] = True
        for index in [i for i, ok in enumerate(values) if ok][:lose]:
            values[index] = False
    return result


def mmlu_results(flags: dict[str, list[bool]], *, eval_key: str = "mmlu-key", model: str = "m",
                 data_hash: str = "data-1", n_shot: int = 5, gold_of=gold) -> MmluResults:
    """MMLU results in which question ``i`` of ``subject`` is answered right exactly when ``flags[subject][i]``.

    A wrong answer is the letter after the gold one. ``gold_of(index)`` gives the gold letters.
    """
    questions = []
    for subject, values in flags.items():
        for index, right in enumerate(values):
            answer = gold_of(index)
            questions.append({"subject": subject, "index": index, "gold": answer,
                              "pred": answer if right else LETTERS[(LETTERS.index(answer) + 1) % 4],
                              "correct": right, "logprobs": [-1.0, -2.0, -3.0, -4.0]})
    meta = {"eval_key": eval_key, "prompt_version": "p1", "n_shot": n_shot, "limit": 0, "subjects_requested": [],
            "model": model, "adapter": "", "model_id": sha(model), "data_hash": data_hash, "backend": "hf"}
    return results_from_records(meta, questions, {subject: CATEGORY[subject] for subject in flags})


def mmlu_text(results: MmluResults) -> str:
    """The file text of MMLU results (what the evaluate step writes)."""
    from components.evaluate.mmlu.evaluate_mmlu import dump_results

    return dump_results(results.model_dump())


# ---------------------------------------------------------------- held-out task


def row_key(index: int) -> str:
    """The (32 hex digit) content key of held-out row ``index``."""
    return hashlib.md5(f"row-{index}".encode()).hexdigest()  # a stand-in content key, not security


def task_results(losses: list[float | None], *, model: str = "candidate", eval_key: str | None = None,
                 template: str = "default", cutoff_len: int = 256, dataset: str = DATASET,
                 keys: list[str] | None = None) -> TaskResults:
    """Task results in which held-out row ``i`` has the mean answer loss ``losses[i]`` (``ANSWER_TOKENS`` tokens);
    a row whose loss is None had its answer truncated away (it counts in the split hash, not in the scores).
    Row ``i``'s key is ``keys[i]`` (e.g. a real split's test keys), else :func:`row_key`."""
    from components.data.split import split_hash

    keys = keys or [row_key(index) for index in range(len(losses))]
    records, skipped = [], []
    for index, loss in enumerate(losses):
        if loss is None:
            skipped.append(SkippedExample(key=keys[index], dataset=dataset, tokens=cutoff_len))
            continue
        nll_sum = round(loss * ANSWER_TOKENS, DIGITS)
        records.append(ExampleScore(key=keys[index], dataset=dataset, tokens=ANSWER_TOKENS + 8,
                                    answer_tokens=ANSWER_TOKENS, nll_sum=nll_sum,
                                    nll_mean=round(nll_sum / ANSWER_TOKENS, DIGITS), correct_tokens=1))
    records.sort(key=lambda record: (record.dataset, record.key))
    skipped.sort(key=lambda example: (example.dataset, example.key))
    test_hash = split_hash(keys[:len(losses)])
    return TaskResults(
        eval_key=eval_key or sha(f"task:{model}:{test_hash}:{template}:{cutoff_len}"), scoring_version=SCORING_VERSION,
        model=model, adapter="", model_id=sha(model), template=template, cutoff_len=cutoff_len, datasets=[dataset],
        entries_hash=sha("entries"), test_split_hash=test_hash, rows=len(losses), duplicate_rows=0,
        truncated_away=skipped, records=records, **totals(records))


def task_scores(losses: list[float], **options) -> TaskScores:
    """What the gate reads of :func:`task_results` (through the compare step's own conversion)."""
    from components.gate.compare import task_scores as scores_of

    return scores_of(task_results(losses, **options))


def task_text(results: TaskResults) -> str:
    """The file text of task results (what the evaluate step writes)."""
    return dump_task_results(results)


# ---------------------------------------------------------------- generated answers


def generations_results(chrf: list[float], *, stopped: list[bool] | None = None, model: str = "candidate",
                        eval_key: str | None = None, max_new_tokens: int = 64, dataset: str = DATASET,
                        answers: dict[int, str] | None = None, prompts: dict[int, str] | None = None) -> Generations:
    """Generations in which held-out row ``i`` scores ``chrf[i]`` chrF points (ROUGE-L and token F1 half that,
    exact match 100 only at 100) and stopped before max_new_tokens when ``stopped[i]`` (default: every row).
    ``answers`` / ``prompts`` replace the text of some rows (the report's escaping)."""
    from components.data.split import split_hash
    from components.evaluate.generate.results import (
        GENERATION_VERSION,
        AnswerScores,
        GeneratedAnswer,
        GenerationsHeader,
        generation_totals,
        rounded,
    )

    stopped = [True] * len(chrf) if stopped is None else stopped
    records = sorted((GeneratedAnswer(
        dataset=dataset, key=row_key(index), prompt=(prompts or {}).get(index, f"question {index}"),
        history_turns=0, reference=f"reference {index}", answer=(answers or {}).get(index, f"{model} says {index}"),
        prompt_tokens=12, truncated_tokens=0, answer_tokens=5 if stopped[index] else max_new_tokens,
        stopped=stopped[index], scores=AnswerScores(chrf=rounded(score), rouge_l=rounded(score / 2),
                                                    token_f1=rounded(score / 2),
                                                    exact_match=100.0 if score == 100 else 0.0))
        for index, score in enumerate(chrf)), key=lambda answer: (answer.dataset, answer.key))
    test_hash = split_hash([row_key(index) for index in range(len(chrf))])
    header = GenerationsHeader(
        eval_key=eval_key or sha(f"generations:{model}:{test_hash}:{max_new_tokens}"),
        generation_version=GENERATION_VERSION, task_eval_key=sha(f"task:{model}"), model=model, model_id=sha(model),
        template="default", cutoff_len=256, test_split_hash=test_hash, generate_rows=100,
        max_new_tokens=max_new_tokens, stop_token_ids=[2], skipped=[], **generation_totals(records))
    return Generations(header=header, answers=records)


def generations_text(generations: Generations) -> str:
    """The file text of generations (what the evaluate step writes)."""
    from components.evaluate.generate.results import dump_generations

    return dump_generations(generations)


# ---------------------------------------------------------------- on disk


def write_results(folder: Path, mmlu: MmluResults, task: TaskResults) -> tuple[Path, Path]:
    """Write ``results.json`` and ``task.json`` into ``folder`` (as the evaluate step lays them out)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(mmlu_text(mmlu), encoding="utf-8")
    (folder / "task.json").write_text(task_text(task), encoding="utf-8")
    return folder / "results.json", folder / "task.json"


def base_losses(rows: int = 40, *, low: int = 150, high: int = 300, step: int = 7) -> list[float]:
    """Distinct per-row losses with two decimals (exact after the file's 6-digit rounding, and after * 0.9)."""
    return [(low + (index * step) % (high - low)) / 100 for index in range(rows)]


def stand_in_config(root: Path, tracking_uri: str, experiment: str, *overrides: str) -> PipelineConfig:
    """The local preset on a fresh storage root ``root`` with a stand-in base model (a config and a few bytes of
    "weights": the registry and the eval keys never read their values), the sample data and MMLU, and its own
    MLflow experiment (``<experiment>-<random tag>``) and registered model name."""
    base = root / "models" / "base-model"
    base.mkdir(parents=True)
    (base / "config.json").write_text('{"model_type": "llama"}')
    (base / "model.safetensors").write_bytes(b"base weights")
    shutil.copytree(SAMPLE_DATA, root / "data")
    shutil.copytree(SAMPLE_MMLU, root / "eval" / "mmlu")
    tag = uuid.uuid4().hex[:8]
    return load_config("local", overrides=[
        f"storage.mount_path={root}", f"mlflow.tracking_uri={tracking_uri}",
        f"mlflow.experiment={experiment}-{tag}", f"mlflow.registered_model_name=model-{tag}",
        "gate.bootstrap_samples=200", *overrides,
    ])


def publish_version(cfg: PipelineConfig, version: str) -> Path:
    """What merge-lora leaves: a verified ``models/<registered name>/<version>`` (one tiny tensor, the checksum
    manifest; ``current`` not moved)."""
    import numpy as np
    from safetensors.numpy import save_file

    from components.common.storage import on_volume
    from components.merge.publish import publish_model, staging_dir_for
    from components.merge.verify import write_manifest

    models = on_volume(cfg, cfg.storage.models_root) / cfg.mlflow.registered_model_name
    staging = staging_dir_for(models, version)
    staging.mkdir(parents=True)
    (staging / "config.json").write_text('{"model_type": "llama"}')
    save_file({"weight": np.full(4, len(version), dtype=np.float32)}, str(staging / "model.safetensors"))
    write_manifest(staging)
    return publish_model(staging, models, version, set_current=False)


def write_dataset(root: Path, info: Any, files: dict[str, Any]) -> Path:
    """A dataset directory: dataset_info.json (dict, or raw bytes) and data files (bytes, text, or a list of
    rows written as a JSON array for .json and as JSON Lines for .jsonl)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_info.json").write_bytes(info if isinstance(info, bytes) else json.dumps(info).encode())
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, list):
            content = (json.dumps(content, indent=2) if name.endswith(".json")
                       else "".join(json.dumps(row) + "\n" for row in content))
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root
