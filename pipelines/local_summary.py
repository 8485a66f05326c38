"""What a local run produced, read back from MLflow and the storage root, and its summary on the console.

:func:`summarise` finds the newest parent run of this launcher (two local runs side by side each report their own),
its steps, the winning trial, the comparison file, the registered version and what ``current`` serves;
:func:`format_summary` writes the lines ``python -m pipelines.run_local`` ends with; :func:`runs_page` is the link
to the experiment's runs in MLflow's model-training view.
"""

from __future__ import annotations

from typing import Any

from configs.errors import StepError
from configs.schema import PipelineConfig


def summarise(cfg: PipelineConfig, since_ms: int, launcher: dict[str, str] | None = None) -> dict[str, Any]:
    """Collect what the run produced from MLflow and the storage root: the newest parent run since ``since_ms``,
    of the launcher ``launcher`` names (its launcher tags, e.g. ``local_launcher.this_launcher_tags()``; None:
    any), so that two local runs side by side each report their own."""
    from mlflow.tracking import MlflowClient

    from components.common import tags
    from components.common.local_launcher import launcher_filter
    from components.common.storage import on_volume, run_dir
    from components.common.typed_files import read_model
    from components.gate.compare import COMPARISON_FILE
    from components.gate.compare import STEP as COMPARE
    from components.gate.generation import METRIC_LABELS
    from components.gate.registry import CHAMPION, registered_aliases
    from components.gate.rules import Comparison

    client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    # With the run started after since_ms, host and pid name the launcher.
    ours = launcher_filter(launcher or {})
    parents = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{tags.ROLE_TAG}` = '{tags.PARENT_ROLE}'{ours}",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    if not parents or parents[0].info.start_time < since_ms:
        raise StepError("no pipeline run was recorded in MLflow")
    parent = parents[0]
    kfp_run_id = parent.data.tags[tags.KFP_RUN_TAG]
    children = {
        run.data.tags.get(tags.STEP_TAG): run
        for run in client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`{tags.KFP_RUN_TAG}` = '{kfp_run_id}'",
            order_by=["attributes.start_time ASC"],
        )
        if run.data.tags.get(tags.ROLE_TAG) != tags.PARENT_ROLE
    }
    summary: dict[str, Any] = {"kfp_run_id": kfp_run_id, "parent_run": parent.info.run_id,
                               "parent_status": parent.info.status, "steps": sorted(k for k in children if k)}
    summary["dataset_hash"] = _first_tag(children, tags.DATASET_HASH_TAG)
    winner = parent.data.tags.get(tags.WINNER_RUN_TAG)  # a sweep's winning trial (select-trial tags the parent)
    train = client.get_run(winner) if winner else children.get("train")
    summary["train_loss"] = train.data.metrics.get("train_loss") if train else None
    summary["best_val_loss"] = train.data.metrics.get("best_val_loss") if train else None
    summary["winner"] = parent.data.tags.get(tags.WINNER_TRIAL_TAG)
    summary["trials"] = int(parent.data.tags.get(tags.TRIALS_TAG, "1"))
    comparison_file = run_dir(cfg, kfp_run_id) / COMPARE / COMPARISON_FILE
    if comparison_file.exists():
        comparison = read_model(comparison_file, Comparison, "comparison file")
        summary.update(decision=comparison.decision, headline=comparison.headline, reasons=comparison.reasons,
                       baseline=comparison.baseline_name, mmlu_candidate=comparison.mmlu.candidate_micro,
                       mmlu_baseline=comparison.mmlu.baseline_micro, task_candidate=comparison.task.candidate_mean_nll,
                       task_baseline=comparison.task.baseline_mean_nll, task_change=comparison.task.relative_change)
        if comparison.generation is not None:
            generation = comparison.generation
            gated, baseline = generation.gated(), comparison.baseline_name
            label = METRIC_LABELS.get(gated.name, gated.name)
            summary.update(generation=f"{label} {gated.candidate:.2f} candidate, {gated.baseline:.2f} {baseline} "
                                      f"({gated.mean_difference:+.2f}); stopped {generation.candidate_stopped}/"
                                      f"{generation.rows} candidate, {generation.baseline_stopped}/{generation.rows} "
                                      f"{baseline}")
    name = cfg.mlflow.registered_model_name
    versions = client.search_model_versions(f"name = '{name}' and tag.`{tags.KFP_RUN_TAG}` = '{kfp_run_id}'")
    aliases = registered_aliases(client, name)
    if versions:
        number = str(versions[0].version)
        summary["registered"] = f"{name} v{number}"
        summary["aliases"] = sorted(alias for alias, version in aliases.items() if version == number)
    summary["champion"] = f"{name} v{aliases[CHAMPION]}" if CHAMPION in aliases else None
    models_dir = on_volume(cfg, cfg.storage.models_root) / name
    current = models_dir / "current"
    summary["served_model"] = str(current.resolve()) if current.exists() else None
    summary["mlflow_ui"] = f"mlflow ui --backend-store-uri {cfg.mlflow.tracking_uri} --port 5000"
    summary["mlflow_page"] = runs_page("http://127.0.0.1:5000", experiment.experiment_id)
    return summary


def runs_page(mlflow_url: str, experiment_id: str) -> str:
    """The experiment's runs table in MLflow's UI, in its model-training view: MLflow 3.17 picks the view with its
    GenAI / Model training switch (GenAI until a browser switches once), not from the experiment's kind tag."""
    return f"{mlflow_url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def _first_tag(runs: dict[str, Any], key: str) -> str | None:
    for run in runs.values():
        if key in run.data.tags:
            return run.data.tags[key]
        if key in run.data.params:
            return run.data.params[key]
    return None


def format_summary(summary: dict[str, Any], seconds: float) -> str:
    """A short human summary of one run."""
    def fmt(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value if value is not None else "n/a")

    lines = [
        "",
        f"== Pipeline run {summary['kfp_run_id']} finished in {seconds:.0f} s ==",
        f"dataset hash      : {fmt(summary.get('dataset_hash'))}",
        f"train loss        : {fmt(summary.get('train_loss'))}",
        f"validation loss   : {fmt(summary.get('best_val_loss'))} (best checkpoint)"
        + (f"; {summary['winner']} of {summary['trials']} trials won" if summary.get("trials", 1) > 1 else ""),
        f"held-out loss     : {fmt(summary.get('task_candidate'))} candidate, {fmt(summary.get('task_baseline'))} "
        f"{fmt(summary.get('baseline'))}",
        f"MMLU              : {fmt(summary.get('mmlu_candidate'))} candidate, {fmt(summary.get('mmlu_baseline'))} "
        f"{fmt(summary.get('baseline'))}",
        *([f"generated answers : {summary['generation']}"] if summary.get("generation") else []),
        f"decision          : {fmt(summary.get('headline'))}",
        *[f"                    - {reason}" for reason in summary.get("reasons", [])],
        f"registered        : {fmt(summary.get('registered'))} aliases={summary.get('aliases', [])}",
        f"champion          : {fmt(summary.get('champion'))}",
        f"served model      : {fmt(summary.get('served_model'))}",
        f"MLflow UI         : {summary['mlflow_ui']}",
        f"                    then open {summary['mlflow_page']}",
    ]
    return "\n".join(lines)
