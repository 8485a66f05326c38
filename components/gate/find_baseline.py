"""The find-baseline step: which model the candidate is compared with, on which rows, and whether its scores are
stored.

The baseline is the model that is served: the one ``models/<name>/current`` points at, which must be the
registry's ``champion`` (:mod:`components.gate.served_baseline`: when they disagree the step refuses and says how to
fix it); before the first promotion it is the base model. The comparison uses only this run's held-out rows that
the champion was not trained on either (:mod:`components.gate.held_out`, from the split recorded on its version).
Its scores under this run's eval keys (the model's content, the held-out split, template and cutoff; the MMLU
data, n-shot and subjects) are looked up in MLflow: when both are stored, reuse-baseline-scores fetches them;
otherwise evaluate-baseline scores the model afresh, and the note says why: the stored file that cannot be used
(no artifact, truncated or damaged, another eval key; its MLflow run named), or the eval setting that changed
since the model's last stored score. Stored files are validated here, where they are found, so a damaged one never
sends a run down the reuse path. With generation on (``evaluation.generate_rows`` > 0) the baseline's generated
answers must be stored under their key too.
"""

from __future__ import annotations

from components.common.logs import configure_step_logging, step_logger
from components.common.pipeline_runs import step_run
from components.common.run_data import set_run_tags
from components.common.tags import (
    BASELINE_MMLU_EVAL_KEY_TAG,
    BASELINE_NOTE_TAG,
    BASELINE_TAG,
    BASELINE_TASK_EVAL_KEY_TAG,
    GENERATION_EVAL_KEY_TAG,
    HELD_OUT_BELOW_TAG,
    HELD_OUT_ROWS_TAG,
    LOCAL_PATH_TAG,
    MMLU_EVAL_KEY_TAG,
    MODEL_ID_TAG,
    TASK_EVAL_KEY_TAG,
)
from components.evaluate.evaluate import eval_keys, generation_key, generation_tags
from components.evaluate.generate.results import RESULTS_FILE as GENERATIONS_FILE
from components.evaluate.mmlu.results import RESULTS_FILE as MMLU_RESULTS_FILE
from components.evaluate.store import find_stored, why_not_stored
from components.evaluate.task.results import RESULTS_FILE as TASK_RESULTS_FILE
from components.gate.held_out import held_out_bound
from components.gate.served_baseline import served_baseline
from configs.loading import config_from_json

STEP = "find-baseline"
log = step_logger(STEP)


def run_step(config: str, kfp_run_id: str) -> tuple[bool, str, str, str, str, str, float, str]:
    """Find the baseline model, the held-out rows it shares with the candidate, and whether its scores must be
    computed.

    Reads storage, evaluation, training (template, cutoff_len), dataset (names, min_test_rows), gate
    (allow_unknown_baseline_split) and mlflow.

    Returns:
        ``(needs_eval, model_dir, baseline_name, note, MMLU eval key, task eval key, held_out_below,
        baseline_version)``: ``note`` says which stored scores are reused, or why none could be, and which
        held-out rows are left out; compare uses the rows whose key position is below ``held_out_below``;
        ``baseline_version`` is the champion's registry version, ``""`` for the base model (``baseline_name`` is
        its display label: ``champion v3``, ``base model``).

    Raises:
        ConfigError: the config parameter is invalid.
        BaselineError: the registry's champion and ``current`` disagree, the baseline's model directory does not
            exist on the volume, or too few held-out rows were held out for both (each message names the fix).
        RegistryError: the champion's source URI is not on this PVC.
        SplitError: this run's split snapshot cannot be read (validate-dataset writes it).
        TrackingUnavailable: the MLflow server does not answer.
    """
    from components.data.split import read_manifest, snapshot_dir

    configure_step_logging(STEP)

    cfg = config_from_json(config)
    name = cfg.mlflow.registered_model_name
    with step_run(cfg, kfp_run_id, STEP) as (client, run_id):
        label, model_dir, champion = served_baseline(client, cfg)
        if champion is not None and champion.tags.get(LOCAL_PATH_TAG) != str(model_dir):
            client.set_model_version_tag(name, champion.version, LOCAL_PATH_TAG, str(model_dir))
        rows = held_out_bound(cfg, read_manifest(snapshot_dir(cfg, kfp_run_id)), label,
                              champion.tags if champion is not None else None)
        mmlu_key, task_key, tags = eval_keys(cfg, kfp_run_id, model_dir)
        gen_key = generation_key(cfg, task_key)
        lookups = [find_stored(client, cfg, MMLU_EVAL_KEY_TAG, mmlu_key, MMLU_RESULTS_FILE),
                   find_stored(client, cfg, TASK_EVAL_KEY_TAG, task_key, TASK_RESULTS_FILE)]
        if gen_key:
            lookups.append(find_stored(client, cfg, GENERATION_EVAL_KEY_TAG, gen_key, GENERATIONS_FILE))
        needs_eval = any(lookup.found is None for lookup in lookups)
        if needs_eval:
            # Stored files that were found but cannot be used are the reason; otherwise an eval setting changed.
            problems = [problem for lookup in lookups if lookup.found is None for problem in lookup.problems]
            wanted = {**tags, **generation_tags(cfg)} if gen_key else tags
            reason = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "") \
                if problems else why_not_stored(client, cfg, tags[MODEL_ID_TAG], wanted)
            note = f"{label} evaluated afresh: {reason}"
        else:
            runs = sorted({lookup.found.run_id for lookup in lookups})
            note = f"{label}: stored scores reused (evaluate run{'s' * (len(runs) > 1)} {', '.join(runs)})"
        if rows.note:
            note += f"; {rows.note}"
        set_run_tags(client, run_id, {BASELINE_TAG: label, BASELINE_MMLU_EVAL_KEY_TAG: mmlu_key,
                                      BASELINE_TASK_EVAL_KEY_TAG: task_key, BASELINE_NOTE_TAG: note[:4000],
                                      HELD_OUT_BELOW_TAG: repr(rows.below),
                                      HELD_OUT_ROWS_TAG: f"{rows.rows} of {rows.scored}"})
    log.info(note)
    return needs_eval, str(model_dir), label, note, mmlu_key, task_key, rows.below, \
        str(champion.version) if champion is not None else ""
