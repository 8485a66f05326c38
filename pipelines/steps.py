"""Every step of the pipeline as a KFP lightweight component: the compile-time side, in one place.

Each wrapper is named after its step and only imports that step's ``run_step`` from the entry module of the
same name (``components.<package>.<step>``) and calls it; the logic lives there, importable and testable
without KFP. KFP copies a wrapper's *source* into the IR and runs it
with ``_KFP_RUNTIME=true``, where :mod:`kfp.dsl` leaves its compile-time parts out; the wrapper body therefore
imports nothing but the step's ``run_step``, and this module itself is never imported in a running task.
The docstrings become the inputs' and outputs' descriptions in the IR. The image is the default one; the
pipeline sets each task's image to ``cluster.image`` (``task.set_container_image``).

This module is longer than the others because every wrapper stays in the one file the tests parse, and
:func:`resolve_config` takes one typed parameter per run-form field (:func:`configs.form.form_fields`; a test
holds its parameters to them).
"""

# No `from __future__ import annotations`: KFP reads the wrappers' annotations as types.
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Markdown, Metrics, Model, Output

from configs.schema import DEFAULT_IMAGE

component = dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)


@component
def resolve_config(kfp_run_id: str, kfp_run_name: str, compiled_config: str, z_config: str, z_overrides: list,
                   a_base_model: str, a_chat_template: str, a_datasets: list, b_learning_rate: float,
                   b_learning_rate_sweep: list, b_method: str, c_batch_size: int, c_cutoff_len: int, c_epochs: float,
                   c_epochs_sweep: list, c_gradient_accumulation: int, c_max_steps: int, c_seed: int,
                   c_warmup_ratio_sweep: list, d_lora_alpha: int, d_lora_alpha_sweep: list, d_lora_dropout: float,
                   d_lora_dropout_sweep: list, d_lora_rank: int, d_lora_rank_sweep: list, d_lora_target: str,
                   e_generate_rows: int, e_mmlu_n_shot: int, e_mmlu_subjects: list, f_generation_max_drop: float,
                   f_max_regression: float, f_min_task_improvement: float, f_mmlu_max_drop: float,
                   f_require_generation: bool, f_require_significance: bool, g_mlflow_experiment: str,
                   g_registered_model_name: str, h_accelerator_count: int, h_accelerator_type: str,
                   h_eval_accelerator_count: int, h_gpu_node_selector: dict, h_gpu_tolerations: list,
                   h_pvc_name: str) -> NamedTuple(
        "Outputs", [("config", str), ("method", str), ("trials", list)]):
    """Resolve the run's configuration: z_config, then z_overrides, then the typed parameters.

    Args:
        kfp_run_id: The KFP run id (the run directory on the volume).
        kfp_run_name: The KFP run's name (the MLflow runs are named after it).
        compiled_config: The config this pipeline was compiled from (compile-time settings are checked against it).
        z_config: The whole configuration as JSON (the preset compiled into this pipeline). Typed parameters and z_overrides are applied on top: typed parameter > z_overrides > z_config.
        z_overrides: Changes to z_config as "section.field=value" strings, e.g. ["training.warmup_ratio=0.1"], for fields without a typed parameter.
        a_base_model: Base model directory on the volume, relative to its root (Hugging Face layout). Sets storage.base_model.
        a_chat_template: LLaMA-Factory chat template of the base model, e.g. llama3, qwen, mistral. Sets training.template.
        a_datasets: Dataset names from dataset_info.json (trained on together). Sets dataset.names.
        b_learning_rate: Peak learning rate (LoRA: ~1e-4; full: ~1e-5). Sets training.learning_rate.
        b_learning_rate_sweep: Learning rates to try (empty: training.learning_rate only). Sets sweep.learning_rate.
        b_method: lora, qlora (needs GPUs) or full. Sets training.method.
        c_batch_size: Micro-batch per GPU. Sets training.per_device_train_batch_size.
        c_cutoff_len: Token limit per example; longer is truncated. Sets training.cutoff_len.
        c_epochs: Epochs (ignored when max_steps > 0). Sets training.num_train_epochs.
        c_epochs_sweep: Epoch counts to try (empty: training.num_train_epochs only). Sets sweep.num_train_epochs.
        c_gradient_accumulation: Micro-batches per optimizer step. Sets training.gradient_accumulation_steps.
        c_max_steps: Stop after this many optimizer steps (-1: use epochs). Sets training.max_steps.
        c_seed: Seed for data order and initialisation. Sets training.seed.
        c_warmup_ratio_sweep: Warm-up shares to try (empty: training.warmup_ratio only). Sets sweep.warmup_ratio.
        d_lora_alpha: LoRA alpha; the update is scaled by alpha / r. Sets training.lora_alpha.
        d_lora_alpha_sweep: LoRA alphas to try (empty: training.lora_alpha only). Sets sweep.lora_alpha.
        d_lora_dropout: Dropout on the LoRA path. Sets training.lora_dropout.
        d_lora_dropout_sweep: LoRA dropouts to try (empty: training.lora_dropout only). Sets sweep.lora_dropout.
        d_lora_rank: LoRA rank r (higher: more capacity, more memory). Sets training.lora_rank.
        d_lora_rank_sweep: LoRA ranks to try (empty: training.lora_rank only). Sets sweep.lora_rank.
        d_lora_target: Target modules: 'all' linear layers or a comma list. Sets training.lora_target.
        e_generate_rows: Held-out rows each model answers (greedy, scored against the reference answers; 0: off). Sets evaluation.generate_rows.
        e_mmlu_n_shot: Few-shot examples from the subject's dev split. Sets evaluation.n_shot.
        e_mmlu_subjects: Subjects to evaluate (empty: all found). Sets evaluation.subjects.
        f_generation_max_drop: Largest allowed drop of the mean generation_metric (points of 100). Sets gate.generation_max_drop.
        f_max_regression: Largest allowed drop of any MMLU category. Sets gate.max_regression.
        f_min_task_improvement: How much lower the held-out loss must be than the baseline's, relative (0.01: 1 % lower). A tie never promotes. Sets gate.min_task_improvement.
        f_mmlu_max_drop: Largest allowed drop of MMLU micro accuracy (absolute, 0.01: one point). Sets gate.mmlu_max_drop.
        f_require_generation: Also rule on the generated answers (evaluation.generate_rows > 0): the mean generation_metric may drop by at most generation_max_drop, the stop rate by at most generation_max_stop_drop. Sets gate.require_generation.
        f_require_significance: Also require a one-sided Wilcoxon signed-rank test on the held-out rows, p < alpha. Sets gate.require_significance.
        g_mlflow_experiment: MLflow experiment the runs are logged to. Sets mlflow.experiment.
        g_registered_model_name: Registered model that carries the champion alias. Sets mlflow.registered_model_name.
        h_accelerator_count: GPUs per training pod; >1 launches torchrun. Sets cluster.accelerator_count.
        h_accelerator_type: Extended resource name of the GPU. Sets cluster.accelerator_type.
        h_eval_accelerator_count: GPUs per evaluation pod; a model too large for one is split across them (ignored when cluster.accelerator_count is 0). Sets evaluation.accelerator_count.
        h_gpu_node_selector: Node selector for GPU tasks, e.g. {"nvidia.com/gpu.present": "true"}. Sets cluster.gpu_node_selector.
        h_gpu_tolerations: Tolerations for GPU tasks (Kubernetes toleration objects). Sets cluster.gpu_tolerations.
        h_pvc_name: PersistentVolumeClaim (ReadWriteMany) with models and data. Sets storage.pvc_name.

    Returns:
        config: The resolved, validated configuration (JSON) every later task reads.
        method: The fine-tuning method of the resolved configuration.
        trials: The sweep's trial indices ([0] without a sweep), one train task each.
    """  # noqa: E501 (one line per parameter: KFP keeps the line breaks of a description)
    from components.run.resolve_config import run_step

    return run_step(kfp_run_id=kfp_run_id, kfp_run_name=kfp_run_name, compiled_config=compiled_config, config=z_config,
                    overrides=z_overrides, form={  # one line or more per group of the form (a_..., b_...)
                    "a_base_model": a_base_model, "a_chat_template": a_chat_template, "a_datasets": a_datasets,
                    "b_learning_rate": b_learning_rate, "b_learning_rate_sweep": b_learning_rate_sweep,
                    "b_method": b_method,
                    "c_batch_size": c_batch_size, "c_cutoff_len": c_cutoff_len, "c_epochs": c_epochs,
                    "c_epochs_sweep": c_epochs_sweep, "c_gradient_accumulation": c_gradient_accumulation,
                    "c_max_steps": c_max_steps, "c_seed": c_seed, "c_warmup_ratio_sweep": c_warmup_ratio_sweep,
                    "d_lora_alpha": d_lora_alpha, "d_lora_alpha_sweep": d_lora_alpha_sweep,
                    "d_lora_dropout": d_lora_dropout, "d_lora_dropout_sweep": d_lora_dropout_sweep,
                    "d_lora_rank": d_lora_rank, "d_lora_rank_sweep": d_lora_rank_sweep, "d_lora_target": d_lora_target,
                    "e_generate_rows": e_generate_rows, "e_mmlu_n_shot": e_mmlu_n_shot,
                    "e_mmlu_subjects": e_mmlu_subjects,
                    "f_generation_max_drop": f_generation_max_drop, "f_max_regression": f_max_regression,
                    "f_min_task_improvement": f_min_task_improvement, "f_mmlu_max_drop": f_mmlu_max_drop,
                    "f_require_generation": f_require_generation, "f_require_significance": f_require_significance,
                    "g_mlflow_experiment": g_mlflow_experiment, "g_registered_model_name": g_registered_model_name,
                    "h_accelerator_count": h_accelerator_count, "h_accelerator_type": h_accelerator_type,
                    "h_eval_accelerator_count": h_eval_accelerator_count, "h_gpu_node_selector": h_gpu_node_selector,
                    "h_gpu_tolerations": h_gpu_tolerations, "h_pvc_name": h_pvc_name})


@component
def validate_dataset(config: str, kfp_run_id: str, metrics: Output[Metrics], report: Output[Markdown]) -> NamedTuple(
        "Outputs", [("dataset_hash", str), ("test_split_hash", str), ("row_count", int)]):
    """Validate the training datasets (every bad row named, MMLU contamination), split off the held-out rows.

    Args:
        config: The resolved configuration (JSON), from resolve-config.
        kfp_run_id: The KFP run id: the snapshot of train and held-out rows goes to output/<run id>/data.
        metrics: Rows, invalid, duplicate, contaminated and long rows, held-out rows, warnings.
        report: The validation report (also in MLflow).

    Returns:
        dataset_hash: sha256 over the named datasets' entries and contents (the data version, a cache key).
        test_split_hash: The identity of the held-out rows (part of the task score's eval key).
        row_count: Rows read.
    """
    from components.data.validate_dataset import run_step

    return run_step(config=config, kfp_run_id=kfp_run_id, metrics=metrics, report=report)


@component
def train(config: str, kfp_run_id: str, dataset_hash: str, trial: int, weights: Output[Model],
          metrics: Output[Metrics], loss_plot: Output[HTML]) -> NamedTuple(
        "Outputs", [("model_dir", str), ("train_loss", float), ("mlflow_run_id", str)]):
    """Fine-tune the base model on the train rows with LLaMA-Factory and publish its best checkpoint (lowest
    validation loss); a retry resumes from the trial's last checkpoint.

    Args:
        config: The resolved configuration (JSON).
        kfp_run_id: The KFP run id: names output/<run id>/ on the PVC and tags the MLflow runs.
        dataset_hash: The data version from validate-dataset (checked against the snapshot trained on).
        trial: The sweep trial (its settings; 0 without a sweep), one iteration of the trials loop.
        weights: Points at the trained weights on the PVC (model.json).
        metrics: train_loss, best_step and best_val_loss (with a validation side), runtime, tokens/s, global_step.
        loss_plot: The training loss curve (HTML).

    Returns:
        model_dir: The adapter (LoRA, QLoRA) or full weights directory, output/<run id>/adapter or /full (a
            sweep's trial N: output/<run id>/trials/trial-N/adapter).
        train_loss: The mean training loss over all steps.
        mlflow_run_id: The MLflow run of this step.
    """
    from components.train.train import run_step

    return run_step(config=config, kfp_run_id=kfp_run_id, dataset_hash=dataset_hash, trial=trial, weights=weights,
                    metrics=metrics, loss_plot=loss_plot)


@component
def select_trial(config: str, kfp_run_id: str, model_dirs: list, selection: Output[Artifact],
                 trials: Output[Markdown]) -> NamedTuple("Outputs", [("model_dir", str), ("mlflow_run_id", str),
                                                                     ("trial", int)]):
    """Pick the sweep's trial with the lowest validation loss (ties: the lower trial); only it is merged and gated.

    Args:
        config: The resolved configuration (JSON).
        kfp_run_id: The KFP run id; selection.json goes to output/<run id>/.
        model_dirs: Every trial's published weights (the train tasks' model_dir, collected from the trials loop).
        selection: selection.json: every trial's settings, validation loss, best step and MLflow run; the winner.
        trials: The trials as a table, the winner marked.

    Returns:
        model_dir: The winning trial's weights directory.
        mlflow_run_id: The winning trial's train run.
        trial: The winning trial's index.
    """
    from components.train.select_trial import run_step

    return run_step(config=config, kfp_run_id=kfp_run_id, model_dirs=model_dirs, selection=selection, report=trials)


@component
def merge_lora(config: str, kfp_run_id: str, weights_dir: str, merged: Output[Model]) -> NamedTuple(
        "Outputs", [("model_dir", str), ("version", str)]):
    """Merge the LoRA adapter into the base model shard by shard and publish it as a new version for vLLM.

    The version appears atomically under models/<registered model name>/<version> with a checksum manifest;
    the current pointer is left for promote-model. Full fine-tunes are published as they are.

    Args:
        config: The resolved configuration (JSON).
        kfp_run_id: The KFP run id; names the version and links the MLflow child run.
        weights_dir: The trained weights directory: the LoRA adapter (full weights when training.method is full).
        merged: The published model: a pointer file with base, weights, dtype, checksum, version and model_dir.

    Returns:
        model_dir: The published version directory on the PVC (what vLLM serves once promoted).
        version: The version name (sortable: UTC time, then the run id).
    """
    from components.merge.merge_lora import run_step

    return run_step(config=config, kfp_run_id=kfp_run_id, weights_dir=weights_dir, merged=merged)


@component
def evaluate_candidate(config: str, kfp_run_id: str, model_dir: str, metrics: Output[Metrics],
                       mmlu_results: Output[Artifact], task_results: Output[Artifact]) -> NamedTuple(
        "Outputs", [("mmlu_path", str), ("task_path", str), ("mmlu_micro", float), ("task_token_loss", float)]):
    """Score the candidate as it will be served (the merged model) on MMLU, on the held-out rows, and on the answers
    it generates for them (generations.jsonl beside task.json).

    Args:
        config: The resolved configuration (JSON).
        kfp_run_id: The KFP run id; results go to output/<run id>/eval/candidate/.
        model_dir: The published (merged) model directory, from merge-lora.
        metrics: MMLU micro, macro and per-category accuracy; held-out loss, perplexity and token accuracy.
        mmlu_results: results.json: every MMLU question's prediction and log-probabilities.
        task_results: task.json: every held-out row's answer loss, keyed by the row's content hash.

    Returns:
        mmlu_path: results.json on the PVC.
        task_path: task.json on the PVC.
        mmlu_micro: MMLU accuracy over all questions.
        task_token_loss: The held-out loss over all answer tokens (compare gates on the per-row mean, task_row_nll).
    """
    from components.evaluate.evaluate import run_step

    return run_step(config=config, kfp_run_id=kfp_run_id, model_dir=model_dir, role="candidate", metrics=metrics,
                    mmlu_results=mmlu_results, task_results=task_results)


@component
def find_baseline(config: str, kfp_run_id: str) -> NamedTuple(
        "Outputs", [("needs_eval", bool), ("model_dir", str), ("baseline_name", str), ("note", str),
                    ("mmlu_key", str), ("task_key", str), ("held_out_below", float), ("baseline_version", str)]):
    """Find the baseline (the model current serves, which must be the registry's champion; else the base model),
    the held-out rows neither model trained on, and whether the baseline's scores are stored.

    Args:
        config: The resolved configuration (JSON).
        kfp_run_id: The KFP run id (the held-out rows of this run decide the task score's key).

    Returns:
        needs_eval: True when no stored score matches the baseline and this run's evaluation settings.
        model_dir: The baseline model directory on the PVC.
        baseline_name: "champion v<N>" or "base model".
        note: Which stored scores are reused, or why none could be (shown in the report).
        mmlu_key: The MMLU score's eval key.
        task_key: The held-out task score's eval key.
        held_out_below: Held-out rows whose key position is below this were held out for both models.
        baseline_version: The champion's registry version, e.g. "3"; "" when the baseline is the base model.
    """
    from components.gate.find_baseline import run_step

    return run_step(config=config, kfp_run_id=kfp_run_id)


@component
def evaluate_baseline(config: str, kfp_run_id: str, model_dir: str, metrics: Output[Metrics],
                      mmlu_results: Output[Artifact], task_results: Output[Artifact]) -> NamedTuple(
        "Outputs", [("mmlu_path", str), ("task_path", str), ("mmlu_micro", float), ("task_token_loss", float)]):
    """Score the baseline on the same MMLU questions and held-out rows as the candidate, and its generated answers.

    Args:
        config: The resolved configuration (JSON).
        kfp_run_id: The KFP run id; results go to output/<run id>/eval/baseline/.
        model_dir: The baseline model directory, from find-baseline.
        metrics: MMLU micro, macro and per-category accuracy; held-out loss, perplexity and token accuracy.
        mmlu_results: results.json of the baseline.
        task_results: task.json of the baseline.

    Returns:
        mmlu_path: results.json on the PVC.
        task_path: task.json on the PVC.
        mmlu_micro: MMLU accuracy over all questions.
        task_token_loss: The held-out loss over all answer tokens (compare gates on the per-row mean, task_row_nll).
    """
    from components.evaluate.evaluate import run_step

    return run_step(config=config, kfp_run_id=kfp_run_id, model_dir=model_dir, role="baseline", metrics=metrics,
                    mmlu_results=mmlu_results, task_results=task_results)


@component
def reuse_baseline_scores(config: str, kfp_run_id: str, mmlu_key: str, task_key: str) -> NamedTuple(
        "Outputs", [("mmlu_path", str), ("task_path", str)]):
    """Reuse the baseline's stored scores from MLflow (same eval keys) instead of evaluating it again.

    Args:
        config: The resolved configuration (JSON).
        kfp_run_id: The KFP run id; the files go to output/<run id>/eval/baseline/.
        mmlu_key: The MMLU score's eval key, from find-baseline.
        task_key: The held-out task score's eval key, from find-baseline.

    Returns:
        mmlu_path: The baseline's results.json on the PVC.
        task_path: The baseline's task.json on the PVC.
    """
    from components.gate.reuse_baseline_scores import run_step

    return run_step(config=config, kfp_run_id=kfp_run_id, mmlu_key=mmlu_key, task_key=task_key)


@component
def compare(config: str, kfp_run_id: str, candidate_mmlu: str, candidate_task: str, baseline_mmlu: str,
            baseline_task: str, baseline_version: str, baseline_note: str, held_out_below: float, train_run_id: str,
            report: Output[Markdown], report_html: Output[HTML], metrics: Output[Metrics]) -> NamedTuple(
        "Outputs", [("decision", str), ("headline", str), ("comparison_path", str)]):
    """Apply the promotion gate: a lower held-out loss, no MMLU drop, no worse generated answers
    (components/gate/rules.py has the rules); the report shows both models' answers side by side.

    Args:
        config: The resolved configuration (JSON); the gate section sets the thresholds.
        kfp_run_id: The KFP run id; comparison.json goes to output/<run id>/compare/.
        candidate_mmlu: The candidate's results.json.
        candidate_task: The candidate's task.json.
        baseline_mmlu: The baseline's results.json (evaluated now or reused).
        baseline_task: The baseline's task.json (evaluated now or reused).
        baseline_version: From find-baseline: the champion's registry version, "" when the baseline is the base
            model; the report calls it "champion v<N>" or "base model".
        baseline_note: Which stored scores were reused, or why the baseline was evaluated afresh.
        held_out_below: From find-baseline: only held-out rows below this key position are compared (the rows
            neither model trained on).
        train_run_id: The MLflow run of the train step (training loss and its curve).
        report: The report as Markdown (loss curve as a sparkline).
        report_html: The report as a web page, with the training loss plot.
        metrics: Held-out loss of both and its change, MMLU of both and the deltas, promote (1/0).

    Returns:
        decision: "promote" or "keep-champion".
        headline: The decision in one line.
        comparison_path: comparison.json on the PVC (every number, every rule).
    """
    from components.gate.compare import run_step

    return run_step(config=config, kfp_run_id=kfp_run_id, candidate_mmlu=candidate_mmlu, candidate_task=candidate_task,
                    baseline_mmlu=baseline_mmlu, baseline_task=baseline_task, baseline_version=baseline_version,
                    baseline_note=baseline_note, held_out_below=held_out_below, train_run_id=train_run_id,
                    report=report, report_html=report_html, metrics=metrics)


@component
def register_model(config: str, kfp_run_id: str, model_dir: str, version: str, decision: str, comparison_path: str,
                   dataset_hash: str) -> NamedTuple("Outputs", [("model_version", str)]):
    """Register the published model in the MLflow Model Registry (a retry finds the version it registered).

    Args:
        config: The resolved configuration (JSON).
        kfp_run_id: The KFP run id; the version is tagged with it, which makes retries idempotent.
        model_dir: The published model directory on the PVC, from merge-lora.
        version: The published version name.
        decision: The gate's decision, "promote" or "keep-champion".
        comparison_path: comparison.json from compare (scores for the description).
        dataset_hash: The training data version from validate-dataset.

    Returns:
        model_version: The registry version number.
    """
    from components.gate.register_model import run_step

    return run_step(config=config, kfp_run_id=kfp_run_id, model_dir=model_dir, version=version, decision=decision,
                    comparison_path=comparison_path, dataset_hash=dataset_hash)


@component
def promote_model(config: str, kfp_run_id: str, model_version: str, version: str, baseline_version: str) -> NamedTuple(
        "Outputs", [("alias", str), ("previous", str)]):
    """Make the new version the champion (the old one becomes previous) and point current at it, if the champion
    is still the baseline it beat; otherwise keep it as challenger.

    Args:
        config: The resolved configuration (JSON).
        kfp_run_id: The KFP run id (for the MLflow child run).
        model_version: The registry version to promote, from register-model.
        version: The published version name the storage pointer "current" moves to.
        baseline_version: The registry version of the champion the candidate beat, from find-baseline ("" for the
            base model).

    Returns:
        alias: "champion", or "challenger" when another run promoted a new champion meanwhile.
        previous: The version number of the former champion ("" for the first model).
    """
    from components.gate.promote_model import run_step

    return run_step(config=config, kfp_run_id=kfp_run_id, model_version=model_version, version=version,
                    baseline_version=baseline_version)


@component
def mark_challenger(config: str, kfp_run_id: str, model_version: str, headline: str) -> NamedTuple(
        "Outputs", [("alias", str)]):
    """Keep the champion: give the new version the alias "challenger" and record why.

    Args:
        config: The resolved configuration (JSON).
        kfp_run_id: The KFP run id (for the MLflow child run).
        model_version: The registry version that was not promoted, from register-model.
        headline: The gate's decision line, from compare.

    Returns:
        alias: "challenger".
    """
    from components.gate.mark_challenger import run_step

    return run_step(config=config, kfp_run_id=kfp_run_id, model_version=model_version, headline=headline)


@component
def finalize_runs(compiled_config: str, kfp_run_id: str, status: dsl.PipelineTaskFinalStatus):
    """Exit handler: end this run's MLflow runs by the pipeline's final state, delete a multi-node training job.

    Args:
        compiled_config: The config the pipeline was compiled from; the run's resolved config is read from
            output/<run id>/resolved_config.json on the PVC (an exit handler cannot take a task's output).
        kfp_run_id: The KFP run id.
        status: The pipeline's final status (set by KFP).
    """
    from components.run.finalize_runs import run_step

    run_step(compiled_config=compiled_config, kfp_run_id=kfp_run_id, state=status.state, error=status.error_message)


__all__ = ["compare", "evaluate_baseline", "evaluate_candidate", "finalize_runs", "find_baseline", "mark_challenger",
           "merge_lora", "promote_model", "register_model", "resolve_config", "reuse_baseline_scores", "select_trial",
           "train", "validate_dataset"]
