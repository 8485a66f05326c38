"""The evaluate step: score one model on MMLU and on the held-out task, with the model loaded once.

The candidate is scored as it will be served: the merged, published model directory (never base + adapter),
so that its scores are the champion's scores once it is promoted. Each suite's score carries an eval key
(:func:`eval_setup`): the model's content, the data, the held-out split, template and cutoff. A score with
the same key is never computed twice: a retried task finds its own file, and any model already scored in
this experiment (the champion, or a candidate identical to it) gets its stored score from MLflow.

MLflow: the child run ``evaluate-<role>`` holds both results files (``eval/results.json``,
``eval/task.json``), the metrics ``mmlu_micro``, ``mmlu_macro``, ``mmlu_<category>``, ``task_loss``,
``task_mean_nll``, ``task_perplexity``, ``task_token_accuracy``, and the tags ``llmft.eval_key``,
``llmft.task_eval_key`` and the setup (``llmft.model_id``, split hash, template, cutoff, MMLU data) that
:func:`components.gate.registry.why_not_stored` reads.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple

from components.common.storage import atomic_write_text, on_volume, run_dir
from components.common.tracking import step_run
from components.evaluate.mmlu.results import RESULTS_FILE as MMLU_RESULTS_FILE
from components.evaluate.mmlu.results import parse_mmlu_results
from components.evaluate.task.results import RESULTS_FILE as TASK_RESULTS_FILE
from components.evaluate.task.results import dump_task_results, load_task_results
from components.gate.registry import EVAL_KEY_TAG, TASK_EVAL_KEY_TAG, find_stored
from configs.loading import config_from_json
from configs.schema import PipelineConfig

STEP = "evaluate"
_SCORES = {("results.json",): "MMLU score", ("task.json",): "held-out score",
           ("results.json", "task.json"): "stored scores"}  # files reused -> how the log says it
ROLES = ("candidate", "baseline")


class EvalSetup(NamedTuple):
    """How a model's scores in this run are keyed."""

    mmlu_key: str
    task_key: str
    tags: dict[str, str]  # the setup, as MLflow tags of the evaluate run


def eval_setup(cfg: PipelineConfig, kfp_run_id: str, model_dir: Path) -> EvalSetup:
    """The eval keys a score of ``model_dir`` in this run carries, and the setup they cover.

    Raises:
        FileNotFoundError: ``model_dir`` is not a model directory.
        MmluDataError: the MMLU data has no test split.
        TaskDataError: the run's held-out rows cannot be read (validate-dataset writes them).
    """
    from components.data.split import snapshot_dir, split_hash
    from components.evaluate.mmlu.data import data_hash, eval_config_key, model_identity
    from components.evaluate.task.data import entries_digest, read_test_rows
    from components.evaluate.task.results import task_eval_key

    model_id = model_identity(model_dir)
    mmlu_dir = on_volume(cfg, cfg.storage.eval_data_dir)
    evaluation, training = cfg.evaluation, cfg.training
    mmlu_key = eval_config_key(mmlu_dir, n_shot=evaluation.n_shot, subjects=list(evaluation.subjects),
                               limit=evaluation.limit, model_id=model_id)
    entries, rows = read_test_rows(snapshot_dir(cfg, kfp_run_id), heldout_names(cfg))
    test_hash = split_hash([row.key for row in rows])
    task_key = task_eval_key(model_id, test_hash, training.template, training.cutoff_len, entries_digest(entries))
    tags = {"llmft.model_id": model_id, "llmft.task_split_hash": test_hash, "llmft.task_template": training.template,
            "llmft.task_cutoff_len": str(training.cutoff_len),
            "llmft.mmlu_data_hash": data_hash(mmlu_dir, list(evaluation.subjects)),
            "llmft.mmlu_n_shot": str(evaluation.n_shot), "llmft.mmlu_subjects": ",".join(evaluation.subjects) or "all"}
    return EvalSetup(mmlu_key, task_key, tags)


def heldout_names(cfg: PipelineConfig) -> list[str]:
    """The dataset_info.json entries of the held-out rows in the run's snapshot."""
    from components.data.split import heldout_entry_name

    return [heldout_entry_name(name) for name in cfg.dataset.names]


def _stored_text(client: Any, cfg: PipelineConfig, tag: str, key: str, file_name: str) -> str | None:
    """The text of a usable results file stored in MLflow under this eval key (validated), or None."""
    found = find_stored(client, cfg, tag, key, file_name).found
    return found.text if found else None


def run_step(config: str, kfp_run_id: str, model_dir: str, role: str, metrics: Any, mmlu_results: Any,
             task_results: Any) -> tuple[str, str, float, float]:
    """Score ``model_dir`` on MMLU and on the run's held-out rows as ``role``; reuse any score with the same key.

    Reads storage (eval_data_dir, output_root), evaluation (n_shot, subjects, batch_size, limit), training
    (template, cutoff_len), dataset.names (the held-out entries) and mlflow. Writes
    ``<output_root>/<run id>/eval/<role>/results.json`` and ``task.json`` atomically.

    Returns:
        ``(MMLU results path, task results path, MMLU micro accuracy, held-out loss)``.

    Raises:
        ConfigError: the config parameter is invalid.
        ValueError: ``role`` is not candidate or baseline, or the model gave non-finite scores.
        MmluDataError, TaskDataError: the evaluation data is missing or malformed (file and row named).
        FileNotFoundError: the model directory is not one.
        StorageError: the volume refused the write.
        TrackingUnavailable: the MLflow server does not answer.
    """
    from mlflow.entities import Metric, RunTag

    from components.data.split import snapshot_dir
    from components.evaluate.mmlu.evaluate_mmlu import category_metric, dump_results, evaluate
    from components.evaluate.task.evaluate_task import score_loaded

    cfg = config_from_json(config)
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    model_path = on_volume(cfg, model_dir)
    out_dir = run_dir(cfg, kfp_run_id) / "eval" / role
    mmlu_path, task_path = out_dir / MMLU_RESULTS_FILE, out_dir / TASK_RESULTS_FILE
    with step_run(cfg, kfp_run_id, f"{STEP}-{role}", system_metrics=True) as (client, run_id):
        started = time.monotonic()
        setup = eval_setup(cfg, kfp_run_id, model_path)
        client.log_batch(run_id, tags=[RunTag(key, value) for key, value in {
            EVAL_KEY_TAG: setup.mmlu_key, TASK_EVAL_KEY_TAG: setup.task_key, "llmft.eval_role": role,
            "llmft.eval_model_dir": str(model_path), **setup.tags}.items()])
        reused = []
        for path, tag, key in ((mmlu_path, EVAL_KEY_TAG, setup.mmlu_key), (task_path, TASK_EVAL_KEY_TAG,
                                                                             setup.task_key)):
            if not _has_key(path, key):
                text = _stored_text(client, cfg, tag, key, path.name)
                if text is not None:
                    atomic_write_text(path, text)
            if _has_key(path, key):
                reused.append(path.name)
        if len(reused) < 2:
            from components.evaluate.mmlu.scoring import load_model

            loaded = load_model(model_path)
            if not _has_key(mmlu_path, setup.mmlu_key):
                settings = cfg.evaluation
                results = evaluate(model_path, on_volume(cfg, cfg.storage.eval_data_dir), n_shot=settings.n_shot,
                                   subjects=settings.subjects, batch_size=settings.batch_size, limit=settings.limit,
                                   loaded=loaded)
                atomic_write_text(mmlu_path, dump_results(results))
            if not _has_key(task_path, setup.task_key):
                task = score_loaded(*loaded, snapshot_dir(cfg, kfp_run_id), heldout_names(cfg),
                                    template=cfg.training.template, cutoff_len=cfg.training.cutoff_len,
                                    model_dir=model_path, batch_size=cfg.evaluation.batch_size)
                atomic_write_text(task_path, dump_task_results(task))
        mmlu = parse_mmlu_results(mmlu_path.read_text(encoding="utf-8"), str(mmlu_path))
        task = load_task_results(task_path)
        values = {"mmlu_micro": mmlu.micro, "mmlu_macro": mmlu.macro, "mmlu_questions": float(mmlu.total),
                  **{category_metric(name): row.accuracy for name, row in mmlu.categories.items()},
                  "task_loss": task.loss, "task_mean_nll": task.mean_example_nll, "task_perplexity": task.perplexity,
                  "task_token_accuracy": task.token_accuracy, "task_rows": float(task.examples),
                  "eval_seconds": round(time.monotonic() - started, 3)}
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(key, float(value), now, 0) for key, value in values.items()],
                         tags=[RunTag("llmft.eval_reused", ",".join(reused) or "none")])
        client.log_artifact(run_id, str(mmlu_path), artifact_path="eval")
        client.log_artifact(run_id, str(task_path), artifact_path="eval")
    for key in ("mmlu_micro", "mmlu_macro", "task_loss", "task_perplexity", "task_token_accuracy"):
        metrics.log_metric(key, round(float(values[key]), 6))
    for name, row in mmlu.categories.items():
        metrics.log_metric(category_metric(name), row.accuracy)
    for artifact, path in ((mmlu_results, mmlu_path), (task_results, task_path)):
        Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, artifact.path)
    mmlu_results.metadata.update({"eval_key": setup.mmlu_key, "mmlu_micro": mmlu.micro, "role": role})
    task_results.metadata.update({"eval_key": setup.task_key, "task_loss": task.loss, "role": role})
    print(f"[{STEP}] {role}: held-out loss {task.mean_example_nll:.4f} on {task.examples} rows, MMLU "
          f"{mmlu.micro:.4f} on {mmlu.total} questions" + (f" ({_SCORES[tuple(sorted(reused))]} of this model "
                                                           "reused)" if reused else ""), flush=True)
    return str(mmlu_path), str(task_path), float(mmlu.micro), float(task.loss)


def _has_key(path: Path, key: str) -> bool:
    """Whether ``path`` holds a valid results file (MMLU or task) scored under ``key``."""
    if not path.is_file():
        return False
    try:
        results = (parse_mmlu_results(path.read_text(encoding="utf-8"), str(path)) if path.name == MMLU_RESULTS_FILE
                   else load_task_results(path))
    except (ValueError, OSError):
        return False
    return results.eval_key == key
