"""The reuse-baseline-scores step: the baseline's stored scores, fetched from MLflow instead of evaluating again.

find-baseline found the baseline's results files stored under this run's eval keys
(:func:`components.gate.registry.find_stored`): MMLU, the held-out task and, with generation on, the generated
answers (whose key follows from the task key and the generation settings,
:func:`components.evaluate.evaluate.generation_key`). This step copies them to ``<run dir>/eval/baseline/``,
where compare reads them, after checking that each validates and carries the key it was found by.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from components.common.storage import atomic_write_text, run_dir
from components.common.tracking import set_run_tags, step_run
from components.evaluate.evaluate import generation_key
from components.evaluate.generate.results import RESULTS_FILE as GENERATIONS_FILE
from components.evaluate.generate.results import GenerationResultsError, parse_generations
from components.evaluate.mmlu.results import RESULTS_FILE as MMLU_RESULTS_FILE
from components.evaluate.mmlu.results import read_mmlu_results
from components.evaluate.task.results import RESULTS_FILE as TASK_RESULTS_FILE
from components.gate.compare import ComparisonError, read_task
from components.gate.registry import (
    EVAL_KEY_TAG,
    GENERATION_EVAL_KEY_TAG,
    TASK_EVAL_KEY_TAG,
    BaselineError,
    find_stored,
)
from configs.loading import config_from_json

STEP = "reuse-baseline-scores"


def run_step(config: str, kfp_run_id: str, mmlu_key: str, task_key: str) -> tuple[str, str]:
    """Copy the baseline's stored results.json, task.json (and generations.jsonl) by eval key to
    ``<run dir>/eval/baseline/``.

    Raises:
        ConfigError: the config parameter is invalid.
        BaselineError: no stored results for the baseline's eval keys (find-baseline asks for an evaluation then).
        ComparisonError: a stored file is malformed or belongs to another eval key.
        TrackingUnavailable: the MLflow server does not answer.
    """
    cfg = config_from_json(config)
    target = run_dir(cfg, kfp_run_id) / "eval" / "baseline"
    wanted = [(EVAL_KEY_TAG, mmlu_key, MMLU_RESULTS_FILE), (TASK_EVAL_KEY_TAG, task_key, TASK_RESULTS_FILE)]
    gen_key = generation_key(cfg, task_key)
    if gen_key:
        wanted.append((GENERATION_EVAL_KEY_TAG, gen_key, GENERATIONS_FILE))
    with step_run(cfg, kfp_run_id, STEP) as (client, run_id), tempfile.TemporaryDirectory() as tmp:
        texts, sources = {}, {}
        for tag, key, file_name in wanted:
            stored = find_stored(client, cfg, tag, key, file_name)
            if stored is None:
                raise BaselineError(f"no FINISHED run in experiment {cfg.mlflow.experiment!r} has {tag}={key} and a "
                                    f"{file_name} artifact; evaluate the baseline instead")
            local = Path(client.download_artifacts(stored[0], stored[1], tmp))
            texts[file_name], sources[file_name] = local.read_text(encoding="utf-8"), stored[0]
            # Checked before anything is written: a refused file must not be left where compare would read it.
            stored_key = _stored_results(local, file_name)
            if stored_key.eval_key != key:
                raise ComparisonError(f"stored {file_name} of run {stored[0]} has eval key "
                                      f"{stored_key.eval_key}, not {key}")
        for _, _, file_name in wanted:
            atomic_write_text(target / file_name, texts[file_name])
        set_run_tags(client, run_id, {"llmft.baseline_eval_key": mmlu_key, "llmft.baseline_task_eval_key": task_key,
                                      "llmft.source_run_ids": ",".join(sorted(set(sources.values())))})
    return str(target / MMLU_RESULTS_FILE), str(target / TASK_RESULTS_FILE)


def _stored_results(path: Path, file_name: str) -> Any:
    """A downloaded results file, validated (its ``eval_key`` is what the caller checks).

    Raises:
        ComparisonError: the file does not validate (named).
    """
    if file_name == MMLU_RESULTS_FILE:
        return read_mmlu_results(path)
    if file_name == GENERATIONS_FILE:
        try:
            return parse_generations(path.read_text(encoding="utf-8"), f"stored {file_name}").header
        except GenerationResultsError as exc:
            raise ComparisonError(str(exc)) from None
    return read_task(path, "stored")
