"""Every MLflow tag name the pipeline sets or searches by, in one place (``tests/test_layout.py`` keeps it so).

A tag name is a user-visible interface: people filter runs by it in MLflow's UI, and later pipeline runs find
stored scores, parents and stale runs by it. Names say what they cover (``llmft.mmlu_eval_key``, not
``llmft.eval_key``), grouped here by the step that sets them; values that are part of the interface (the parent's
role, the experiment kind) sit beside their tag.
"""

# Lineage: which pipeline run, which step, which attempt (components.common.pipeline_runs) -----------------------
KFP_RUN_TAG = "kfp.run_id"  # every run and registered version; also the multi-node job's annotation
KFP_FINAL_STATE_TAG = "kfp.final_state"  # the parent run, set by the exit handler
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own: nests a step's run under the pipeline's
ROLE_TAG = "llmft.role"  # PARENT_ROLE on the parent run, the step's name on a step's run
PARENT_ROLE = "pipeline"
STEP_TAG = "llmft.step"
TRIAL_TAG = "llmft.trial"  # a sweep's trial (trial-N) of a step that runs once per trial
ATTEMPT_TAG = "llmft.attempt"
ERROR_TAG = "llmft.error"  # why a run ended FAILED or KILLED (credentials masked)
CLOSED_BY_TAG = "llmft.closed_by"  # a RUNNING leftover of a killed attempt, closed by the next one
CONFIG_HASH_TAG = "llmft.config_hash"  # the parent run; also the multi-node job's annotation
METHOD_TAG = "llmft.method"
# MLflow 3's UI opens an experiment in its GenAI view (traces, prompts) unless this tag says it holds model training.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"

# A local run's launcher, to close what a killed one left RUNNING (components.common.local_runs) ---------------
LAUNCHER_HOST_TAG = "llmft.launcher.host"
LAUNCHER_PID_TAG = "llmft.launcher.pid"
LAUNCHER_START_TAG = "llmft.launcher.process_start"

# validate-dataset ---------------------------------------------------------------------------------------------
DATASET_HASH_TAG = "llmft.dataset_hash"  # also on each registered version
DATASET_OK_TAG = "llmft.dataset_ok"
TEST_SPLIT_HASH_TAG = "llmft.test_split_hash"  # the run, and the test dataset input
VAL_SPLIT_HASH_TAG = "llmft.val_split_hash"  # the run, and the validation dataset input
SHA256_TAG = "llmft.sha256"  # a dataset input's file digest in full (MLflow's digest holds 36 characters)
DATA_CONTEXT_TAG = "mlflow.data.context"  # MLflow's own: training, test or validation

# train and select-trial ---------------------------------------------------------------------------------------
LINEAGE_PARAM_PREFIX = "llmft."  # the train run's lineage params (llmft.test_split_hash...)
MODEL_DIR_TAG = "llmft.model_dir"  # train: its output; merge-lora: the published directory
REUSED_FROM_RUN_TAG = "llmft.reused_from_run"
DISCARDED_CHECKPOINTS_TAG = "llmft.discarded_checkpoints"
TRAINING_FINGERPRINT_TAG = "llmft.training_fingerprint"
RESUMED_FROM_TAG = "llmft.resumed_from"
BACKFILL_TAG = "llmft.backfilled_metric_points"  # points re-logged from trainer_state.json after an outage
WINNER_TRIAL_TAG = "llmft.winner_trial"  # the parent run of a sweep
WINNER_RUN_TAG = "llmft.winner_run"
TRIALS_TAG = "llmft.trials"

# merge-lora ---------------------------------------------------------------------------------------------------
REUSED_VERSION_TAG = "llmft.reused_version"

# evaluate: the eval keys a stored score is found by, and the settings they cover (components.evaluate.store) -------
MMLU_EVAL_KEY_TAG = "llmft.mmlu_eval_key"  # also on each registered version
TASK_EVAL_KEY_TAG = "llmft.task_eval_key"  # also on each registered version
GENERATION_EVAL_KEY_TAG = "llmft.generation_eval_key"  # generated answers (components.evaluate.generate)
MODEL_ID_TAG = "llmft.model_id"
EVAL_ROLE_TAG = "llmft.eval_role"
EVAL_MODEL_DIR_TAG = "llmft.eval_model_dir"
EVAL_REUSED_TAG = "llmft.eval_reused"
TASK_SPLIT_HASH_TAG = "llmft.task_split_hash"
TASK_TEMPLATE_TAG = "llmft.task_template"
TASK_CUTOFF_LEN_TAG = "llmft.task_cutoff_len"
MMLU_DATA_HASH_TAG = "llmft.mmlu_data_hash"
MMLU_N_SHOT_TAG = "llmft.mmlu_n_shot"
MMLU_SUBJECTS_TAG = "llmft.mmlu_subjects"
GENERATE_ROWS_TAG = "llmft.generate_rows"
MAX_NEW_TOKENS_TAG = "llmft.max_new_tokens"

# the gate: find-baseline, reuse-baseline-scores, compare ------------------------------------------------------
BASELINE_TAG = "llmft.baseline"
BASELINE_MMLU_EVAL_KEY_TAG = "llmft.baseline_mmlu_eval_key"
BASELINE_TASK_EVAL_KEY_TAG = "llmft.baseline_task_eval_key"
BASELINE_NOTE_TAG = "llmft.baseline_note"
HELD_OUT_BELOW_TAG = "llmft.held_out_below"
HELD_OUT_ROWS_TAG = "llmft.held_out_rows"
SOURCE_RUN_IDS_TAG = "llmft.source_run_ids"
DECISION_TAG = "llmft.decision"  # compare's run and the parent; also each registered version
DECISION_LINE_TAG = "llmft.decision_line"
RULE_TAG_PREFIX = "llmft.rule."  # llmft.rule.<rule>: pass or fail
RUN_NOTE_TAG = "mlflow.note.content"  # MLflow's own: the run's description in the UI

# the registry: register-model, promote, mark-challenger, and the model versions ------------------------------
MODEL_VERSION_TAG = "llmft.model_version"
REGISTERED_TAG = "llmft.registered"  # the parent run: "<model> v<version>"
REUSED_TAG = "llmft.reused"  # register-model found the version an earlier attempt registered
SOURCE_TAG = "llmft.source"  # the external model's pvc:// source
SOURCE_NAME_TAG = "mlflow.source.name"  # MLflow's own: what made the external model
MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # MLflow's own: the logged model's registered versions
LOCAL_PATH_TAG = "llmft.local_path"
PREVIOUS_CHAMPION_TAG = "llmft.previous_champion"
REJECTED_REASON_TAG = "llmft.rejected_reason"
PUBLISHED_VERSION_TAG = "llmft.published_version"
LOGGED_MODEL_TAG = "llmft.logged_model_id"
SPLIT_SCHEME_TAG = "llmft.split_scheme"  # the rows a version was trained without (components.gate.held_out)
TEST_FRACTION_TAG = "llmft.test_fraction"


def rule_tag(rule: str) -> str:
    """The tag that records whether compare's ``rule`` passed (``llmft.rule.<rule>``)."""
    return f"{RULE_TAG_PREFIX}{rule}"
