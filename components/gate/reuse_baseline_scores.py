"""The reuse-baseline-scores step: the baseline's stored scores, fetched from MLflow instead of evaluating again.

find-baseline found both of the baseline's results files stored under this run's eval keys
(:func:`components.gate.registry.find_stored`); this step copies them to ``<run dir>/eval/baseline/``, where
compare reads them, after checking that each validates and carries the key it was found by.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from components.common.storage import atomic_write_text, run_dir
from components.common.tracking import set_run_tags, step_run
from components.evaluate.mmlu.results import RESULTS_FILE as MMLU_RESULTS_FILE
from components.evaluate.mmlu.results import read_mmlu_results
from components.evaluate.task.results import RESULTS_FILE as TASK_RESULTS_FILE
from components.gate.compare import ComparisonError, read_task
from components.gate.registry import EVAL_KEY_TAG, TASK_EVAL_KEY_TAG, BaselineError, find_stored
from configs.loading import config_from_json

STEP = "reuse-baseline-scores"


def run_step(config: str, kfp_run_id: str, mmlu_key: str, task_key: str) -> tuple[str, str]:
    """Copy the baseline's stored results.json and task.json (by eval key) to ``<run dir>/eval/baseline/``.

    Raises:
        ConfigError: the config parameter is invalid.
        BaselineError: no stored results for the baseline's eval keys (find-baseline asks for an evaluation then).
        ComparisonError: a stored file is malformed or belongs to another eval key.
        TrackingUnavailable: the MLflow server does not answer.
    """
    cfg = config_from_json(config)
    target = run_dir(cfg, kfp_run_id) / "eval" / "baseline"
    wanted = ((EVAL_KEY_TAG, mmlu_key, MMLU_RESULTS_FILE), (TASK_EVAL_KEY_TAG, task_key, TASK_RESULTS_FILE))
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
            stored_key = read_mmlu_results(local) if file_name == MMLU_RESULTS_FILE else read_task(local, "stored")
            if stored_key.eval_key != key:
                raise ComparisonError(f"stored {file_name} of run {stored[0]} has eval key "
                                      f"{stored_key.eval_key}, not {key}")
        for file_name in (MMLU_RESULTS_FILE, TASK_RESULTS_FILE):
            atomic_write_text(target / file_name, texts[file_name])
        set_run_tags(client, run_id, {"llmft.baseline_eval_key": mmlu_key, "llmft.baseline_task_eval_key": task_key,
                                      "llmft.source_run_ids": ",".join(sorted(set(sources.values())))})
    return str(target / MMLU_RESULTS_FILE), str(target / TASK_RESULTS_FILE)
