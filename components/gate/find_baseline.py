"""The find-baseline step: which model the candidate is compared with, and whether its scores are stored.

The baseline is the registry version holding the alias ``champion`` (:mod:`components.gate.registry`); before the
first promotion it is the base model. Its scores under this run's eval keys (the model's content, the held-out
split, template and cutoff; the MMLU data, n-shot and subjects) are looked up in MLflow: when both are stored,
reuse-baseline-scores fetches them; otherwise evaluate-baseline scores the model afresh, and the note says why
(the part of the setup that changed since its last stored score). With generation on
(``evaluation.generate_rows`` > 0) the baseline's generated answers must be stored under their key too.
"""

from __future__ import annotations

from components.common.storage import on_volume
from components.common.tracking import set_run_tags, step_run
from components.evaluate.evaluate import eval_setup, generation_key, generation_tags
from components.evaluate.generate.results import RESULTS_FILE as GENERATIONS_FILE
from components.evaluate.mmlu.results import RESULTS_FILE as MMLU_RESULTS_FILE
from components.evaluate.task.results import RESULTS_FILE as TASK_RESULTS_FILE
from components.gate.registry import (
    CHAMPION,
    EVAL_KEY_TAG,
    GENERATION_EVAL_KEY_TAG,
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
        stored_mmlu = find_stored(client, cfg, EVAL_KEY_TAG, mmlu_key, MMLU_RESULTS_FILE)
        stored_task = find_stored(client, cfg, TASK_EVAL_KEY_TAG, task_key, TASK_RESULTS_FILE)
        gen_key = generation_key(cfg, task_key)
        stored_gen = find_stored(client, cfg, GENERATION_EVAL_KEY_TAG, gen_key, GENERATIONS_FILE) if gen_key else None
        needs_eval = stored_mmlu is None or stored_task is None or bool(gen_key and stored_gen is None)
        if needs_eval:
            wanted = {**setup, **generation_tags(cfg)} if gen_key else setup
            note = f"{label} evaluated afresh: {why_not_stored(client, cfg, setup[MODEL_ID_TAG], wanted)}"
        else:
            runs = sorted({stored_mmlu[0], stored_task[0], *(stored_gen[:1] if stored_gen else ())})
            note = f"{label}: stored scores reused (evaluate run{'s' * (len(runs) > 1)} {', '.join(runs)})"
        set_run_tags(client, run_id, {"llmft.baseline": label, "llmft.baseline_eval_key": mmlu_key,
                                      "llmft.baseline_task_eval_key": task_key, "llmft.baseline_note": note[:4000]})
    print(f"[{STEP}] {note}", flush=True)
    return needs_eval, str(model_dir), label, note, mmlu_key, task_key
