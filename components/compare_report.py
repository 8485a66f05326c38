"""The comparison report: losses from MLflow, the loss curve, and the Markdown shown in the Kubeflow UI.

Used by :mod:`components.compare_baseline`; split out so each module reads in one pass.
"""

import base64
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from configs.schema import PipelineConfig

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

LOSS_METRICS = {"train_loss": ("train_loss", "loss"), "eval_loss": ("eval_loss",)}
LOSS_HISTORY_METRICS = ("loss", "train/loss")
MAX_PLOT_BYTES = 2_000_000  # larger plots bloat the UI's Markdown artifact; the sparkline stands in
SPARK = "▁▂▃▄▅▆▇█"


def find_artifact(client: "MlflowClient", run_id: str, wanted: Callable[[str], bool], depth: int = 2) -> str | None:
    """The first artifact path (breadth first, ``depth`` levels) whose file name satisfies ``wanted``."""
    folders = [None]
    for _ in range(depth):
        deeper = []
        for folder in folders:
            for item in client.list_artifacts(run_id, folder):
                if item.is_dir:
                    deeper.append(item.path)
                elif wanted(Path(item.path).name):
                    return item.path
        folders = deeper
    return None


def run_losses(client: "MlflowClient", run_id: str | None) -> dict[str, Any]:
    """Final train/eval loss of a training run (``n/a`` when absent or the run is unknown)."""
    from mlflow.exceptions import MlflowException

    losses: dict[str, Any] = {"run_id": run_id or "n/a", "train_loss": "n/a", "eval_loss": "n/a"}
    if not run_id or run_id == "n/a":
        return losses
    try:
        metrics = client.get_run(run_id).data.metrics
    except MlflowException as exc:
        losses["note"] = f"run {run_id} not readable: {getattr(exc, 'error_code', exc)}"
        return losses
    for field, names in LOSS_METRICS.items():
        losses[field] = next((float(metrics[name]) for name in names if name in metrics), "n/a")
    return losses


def champion_losses(client: "MlflowClient", cfg: PipelineConfig, version: str | None) -> dict[str, Any]:
    """The champion's training losses, from its version tags (set at registration); ``n/a`` for the base model."""
    if version is None:
        return {"run_id": "n/a", "train_loss": "n/a", "eval_loss": "n/a", "note": "the base model was not trained here"}
    tags = client.get_model_version(cfg.mlflow.registered_model_name, version).tags
    losses = run_losses(client, tags.get("llmft.train_run_id"))
    for field in LOSS_METRICS:
        if losses[field] == "n/a" and tags.get(f"llmft.{field}", "n/a") != "n/a":
            losses[field] = float(tags[f"llmft.{field}"])
    return losses


def sparkline(values: list[float]) -> str:
    """A one-line text plot of ``values`` (``▁`` lowest to ``█`` highest)."""
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((value - low) / span * len(SPARK)))] for value in values)


def loss_curve_markdown(client: "MlflowClient", train_run_id: str | None) -> str:
    """The training loss curve: the train run's loss plot (PNG as a data URI) or a sparkline of its history."""
    from mlflow.exceptions import MlflowException

    if not train_run_id or train_run_id == "n/a":
        return "_No training run: no loss curve._"
    try:
        plot = find_artifact(client, train_run_id, lambda name: name.endswith(".png") and "loss" in name)
        if plot:
            with tempfile.TemporaryDirectory() as tmp:
                data = Path(client.download_artifacts(train_run_id, plot, tmp)).read_bytes()
            if len(data) <= MAX_PLOT_BYTES:
                return f"![training loss]({'data:image/png;base64,' + base64.b64encode(data).decode()})"
        for name in LOSS_HISTORY_METRICS:
            history = sorted(client.get_metric_history(train_run_id, name), key=lambda m: (m.step, m.timestamp))
            if history:
                values = [m.value for m in history]
                return (f"`{sparkline(values)}`  \n{name} over {len(values)} logged steps "
                        f"(step {history[0].step}: {values[0]:.4f}, min {min(values):.4f}, "
                        f"step {history[-1].step}: {values[-1]:.4f})")
    except MlflowException as exc:
        return f"_Loss history of run {train_run_id} not readable: {getattr(exc, 'error_code', exc)}_"
    return f"_Run {train_run_id} logged no loss history._"


def _number(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else str(value)


def render_report(comparison: dict[str, Any], loss_curve: str = "") -> str:
    """The Markdown report: decision, reasons, per-category table, paired statistics, losses and loss curve."""
    decision = comparison["decision"]
    baseline = comparison.get("baseline_name", "baseline")
    boot = comparison["bootstrap"]
    test = comparison["mcnemar"]
    against = "first model, compared with the base model" if comparison["first_model"] else "compared with the champion"
    lines = [
        f"# {'✅ Promote' if decision == 'promote' else '❌ Reject'}: candidate vs {baseline}",
        "",
        f"**Decision: {decision}** on {comparison['metric']} "
        f"({against}).",
        "",
        *[f"- {reason}" for reason in comparison["reasons"]],
        "",
        f"## MMLU on the same {comparison['questions']} questions",
        "",
        "| | Questions | Candidate | Baseline | Delta | Only candidate right | Only baseline right | McNemar p |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| **overall (micro)** | {comparison['questions']} | {_number(comparison['candidate']['micro'])} | "
        f"{_number(comparison['baseline']['micro'])} | {comparison['delta']['micro']:+.4f} | "
        f"{test['candidate_only']} | {test['baseline_only']} | {test['p_value']:.4g} |",
        f"| macro | | {_number(comparison['candidate']['macro'])} | {_number(comparison['baseline']['macro'])} | "
        f"{comparison['delta']['macro']:+.4f} | | | |",
    ]
    for name, row in comparison["categories"].items():
        lines.append(f"| {name} | {row['questions']} | {_number(row['candidate'])} | {_number(row['baseline'])} | "
                     f"{row['delta']:+.4f} | {row['candidate_only']} | {row['baseline_only']} | {row['p_value']:.4g} |")
    lines += [
        "",
        f"Paired bootstrap {boot['confidence']:.0%} interval for the {boot['metric']} difference: "
        f"[{boot['low']:+.4f}, {boot['high']:+.4f}] (estimate {boot['estimate']:+.4f}, {boot['samples']} resamples, "
        f"seed {boot['seed']}).",
    ]
    losses = comparison.get("losses")
    if losses:
        cand, base = losses["candidate"], losses["baseline"]
        lines += [
            "",
            "## Loss",
            "",
            f"| | Candidate (run {cand['run_id']}) | Baseline: {baseline} (run {base['run_id']}) |",
            "|---|---:|---:|",
            f"| train loss | {_number(cand['train_loss'])} | {_number(base['train_loss'])} |",
            f"| eval loss | {_number(cand['eval_loss'])} | {_number(base['eval_loss'])} |",
        ]
    if loss_curve:
        lines += ["", "### Training loss curve", "", loss_curve]
    return "\n".join(lines) + "\n"
