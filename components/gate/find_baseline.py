"""The find-baseline step: which model the candidate is compared with, and whether its scores are stored.

The baseline is the registry version holding the alias ``champion`` (:mod:`components.gate.registry`); before the
first promotion it is the base model. Its scores under this run's eval keys (the model's content, the held-out
split, template and cutoff; the MMLU data, n-shot and subjects) are looked up in MLflow: when both are stored,
reuse-baseline-scores fetches them; otherwise evaluate-baseline scores the model afresh, and the note says why:
the stored file that cannot be used (no artifact, truncated or damaged, another eval key; its MLflow run named),
or the part of the setup that changed since the model's last stored score. Stored files are validated here, where
they are found, so a damaged one never sends a run down the reuse path.
"""

from __future__ import annotations

from components.common.storage import on_volume
from components.common.tracking import set_run_tags, step_run
from components.evaluate.evaluate import eval_setup
from components.evaluate.mmlu.results import RESULTS_FILE as MMLU_RESULTS_FILE
from components.evaluate.task.results import RESULTS_FILE as TASK_RESULTS_FILE
from components.gate.registry import (
    CHAMPION,
    EVAL_KEY_TAG,
    LOCAL_PATH_TAG,
    MODEL_ID_TAG,
    TASK_EVAL_KEY_TAG,
    BaselineError,
    alias_version,
    baseline_label,
    find_stored,
    path_from_pvc_uri,
    why_not_stored,
)
from configs.loading import config_from_json

STEP = "find-baseline"


def run_step(config: str, kfp_run_id: str) -> tuple[bool, str, str, str, str, str]:
    """Find the baseline model and whether its scores must be computed.

    Reads storage, evaluation, training (template, cutoff_len), dataset.names and mlflow.

    Returns:
        ``(needs_eval, model_dir, baseline_name, note, MMLU eval key, task eval key)``: ``note`` says which stored
        scores are reused, or why none could be.

    Raises:
        ConfigError: the config parameter is invalid.
        BaselineError: the baseline's model directory does not exist on the volume.
        RegistryError: the champion's source URI is not on this PVC.
        TrackingUnavailable: the MLflow server does not answer.
    """
    cfg = config_from_json(config)
    name = cfg.mlflow.registered_model_name
    with step_run(cfg, kfp_run_id, STEP) as (client, run_id):
        champion = alias_version(client, name, CHAMPION)
        if champion is None:
            model_dir = on_volume(cfg, cfg.storage.base_model)
        else:
            model_dir = path_from_pvc_uri(cfg, champion.source)
            if champion.tags.get(LOCAL_PATH_TAG) != str(model_dir):
                client.set_model_version_tag(name, champion.version, LOCAL_PATH_TAG, str(model_dir))
        label = baseline_label(champion.version if champion else None)
        if not model_dir.is_dir():
            hint = f"registry source {champion.source}" if champion else "check storage.base_model"
            raise BaselineError(f"the {label} directory {model_dir} does not exist on the volume ({hint})")
        mmlu_key, task_key, setup = eval_setup(cfg, kfp_run_id, model_dir)
        lookups = [find_stored(client, cfg, EVAL_KEY_TAG, mmlu_key, MMLU_RESULTS_FILE),
                   find_stored(client, cfg, TASK_EVAL_KEY_TAG, task_key, TASK_RESULTS_FILE)]
        needs_eval = any(lookup.found is None for lookup in lookups)
        if needs_eval:
            # Stored files that were found but cannot be used are the reason; otherwise the setup changed.
            problems = [problem for lookup in lookups if lookup.found is None for problem in lookup.problems]
            reason = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "") \
                if problems else why_not_stored(client, cfg, setup[MODEL_ID_TAG], setup)
            note = f"{label} evaluated afresh: {reason}"
        else:
            runs = sorted({lookup.found.run_id for lookup in lookups})
            note = f"{label}: stored scores reused (evaluate run{'s' * (len(runs) > 1)} {', '.join(runs)})"
        set_run_tags(client, run_id, {"llmft.baseline": label, "llmft.baseline_eval_key": mmlu_key,
                                      "llmft.baseline_task_eval_key": task_key, "llmft.baseline_note": note[:4000]})
    print(f"[{STEP}] {note}", flush=True)
    return needs_eval, str(model_dir), label, note, mmlu_key, task_key
