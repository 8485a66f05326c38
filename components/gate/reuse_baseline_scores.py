"""The reuse-baseline-scores step: the baseline's stored scores, fetched from MLflow instead of evaluating again.

find-baseline found the baseline's results files stored under this run's eval keys
(:func:`components.evaluate.store.find_stored`): MMLU, the held-out task and, with generation on, the generated
answers (whose key follows from the task key and the generation settings,
:func:`components.evaluate.evaluate.generation_key`). This step copies them to ``<run dir>/eval/baseline/``,
where compare reads them, after checking that each validates and carries the key it was found by.
"""

from __future__ import annotations

from components.common.logs import configure_step_logging
from components.common.pipeline_runs import step_run
from components.common.run_data import set_run_tags
from components.common.storage import atomic_write_text, run_dir
from components.common.tags import (
    BASELINE_MMLU_EVAL_KEY_TAG,
    BASELINE_TASK_EVAL_KEY_TAG,
    GENERATION_EVAL_KEY_TAG,
    MMLU_EVAL_KEY_TAG,
    SOURCE_RUN_IDS_TAG,
    TASK_EVAL_KEY_TAG,
)
from components.evaluate.evaluate import generation_key
from components.evaluate.generate.results import RESULTS_FILE as GENERATIONS_FILE
from components.evaluate.mmlu.results import RESULTS_FILE as MMLU_RESULTS_FILE
from components.evaluate.store import find_stored
from components.evaluate.task.results import RESULTS_FILE as TASK_RESULTS_FILE
from components.gate.registry import BaselineError
from configs.loading import config_from_json

STEP = "reuse-baseline-scores"


def run_step(config: str, kfp_run_id: str, mmlu_key: str, task_key: str) -> tuple[str, str]:
    """Copy the baseline's stored results.json, task.json (and generations.jsonl) by eval key to
    ``<run dir>/eval/baseline/``.

    Raises:
        ConfigError: the config parameter is invalid.
        BaselineError: no usable stored results for the baseline's eval keys (find-baseline asks for an evaluation
            then); the message names each MLflow run passed over and why.
        TrackingUnavailable: the MLflow server does not answer.
    """
    configure_step_logging(STEP)
    cfg = config_from_json(config)
    target = run_dir(cfg, kfp_run_id) / "eval" / "baseline"
    wanted = [(MMLU_EVAL_KEY_TAG, mmlu_key, MMLU_RESULTS_FILE), (TASK_EVAL_KEY_TAG, task_key, TASK_RESULTS_FILE)]
    gen_key = generation_key(cfg, task_key)
    if gen_key:
        wanted.append((GENERATION_EVAL_KEY_TAG, gen_key, GENERATIONS_FILE))
    with step_run(cfg, kfp_run_id, STEP) as (client, run_id):
        found = {}
        for tag, key, file_name in wanted:
            # find_stored validates each file and its eval key before anything is written: a refused file is never
            # left where compare would read it.
            lookup = find_stored(client, cfg, tag, key, file_name)
            if lookup.found is None:
                why = "; ".join(lookup.problems) or f"no FINISHED run in experiment {cfg.mlflow.experiment!r} has " \
                                                    f"{tag}={key}"
                raise BaselineError(f"no usable stored {file_name} for {tag}={key[:12]}...: {why}; evaluate the "
                                    "baseline instead")
            found[file_name] = lookup.found
        for file_name, stored in found.items():
            atomic_write_text(target / file_name, stored.text)
        set_run_tags(client, run_id, {BASELINE_MMLU_EVAL_KEY_TAG: mmlu_key, BASELINE_TASK_EVAL_KEY_TAG: task_key,
                                      SOURCE_RUN_IDS_TAG: ",".join(sorted({stored.run_id
                                                                              for stored in found.values()}))})
    return str(target / MMLU_RESULTS_FILE), str(target / TASK_RESULTS_FILE)

