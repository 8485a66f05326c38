"""The train run's metrics: what the trainer logs while it trains, and what the step logs after it.

A fine-tuning user reads three things on the train run: the LLaMA-Factory settings we rendered (its params,
:func:`components.train.render.render_params`), the loss curve and its neighbours (one name per metric), and how
busy the hardware was (system metrics, from MLflow's monitor in the trainer process). So the trainer does not use
Hugging Face's MLflow callback (which logs ~270 TrainingArguments and model-config params and its own
end-of-training summary under second names); it logs through :func:`metrics_callback`:

- per step: :data:`STEP_METRICS` (``loss``, ``grad_norm``, ``learning_rate``, ``epoch``,
  ``num_input_tokens_seen``) and every number of an evaluation on the validation rows under ``val_*``
  (``val_loss`` at each checkpoint: the curve the best checkpoint is chosen from), at the trainer's global step,
  without waiting on the server (see "When the tracking server is down" in :mod:`components.common.mlflow_client`).
  The evaluation LLaMA-Factory runs after training (of the best weights, already loaded) is not a point of the
  curve and is left out;
- after training the step reads the trainer's final state (:func:`collect_metrics`: ``train_loss`` over all
  steps, resumes included, ``best_step`` and ``best_val_loss``, ``train_runtime_s``, ``tokens_per_second``...),
  re-logs any point the server missed (:func:`backfill_metrics`: :func:`step_points` is the one definition of a
  point, so the backfill logs exactly what the callback would have) and draws the loss plot (:func:`plot_loss`).
"""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path
from typing import Any

from components.train.checkpoints import ResumePoint
from components.train.inputs import TrainError

STEP_METRICS = ("loss", "grad_norm", "learning_rate", "epoch", "num_input_tokens_seen")
_MLFLOW_UNSAFE = re.compile(r"[^0-9A-Za-z_\-\. :/]")
EVAL_PREFIX, VAL_PREFIX = "eval_", "val_"  # the Trainer evaluates the validation rows; the run calls them so


def step_points(entry: dict[str, Any]) -> dict[str, float]:
    """The metric points one trainer log entry gives the run: :data:`STEP_METRICS`, and the trainer's ``eval_*``
    numbers (of the validation rows) as ``val_*``."""
    return {_MLFLOW_UNSAFE.sub("_", VAL_PREFIX + key.removeprefix(EVAL_PREFIX)
                               if key.startswith(EVAL_PREFIX) else key): float(value)
            for key, value in entry.items()
            if (key in STEP_METRICS or key.startswith(EVAL_PREFIX))
            and isinstance(value, int | float) and not isinstance(value, bool)}


def metrics_callback() -> Any:
    """A transformers ``TrainerCallback`` that logs :func:`step_points` of every trainer log to the active run."""
    import mlflow
    from transformers import TrainerCallback

    class MlflowStepMetrics(TrainerCallback):
        """Logs each trainer log's step metrics to the active MLflow run (rank 0 only), without waiting; nothing
        after training ended (LLaMA-Factory's evaluation of the best weights would add a second point at the last
        step)."""

        def __init__(self) -> None:
            self.ended = False

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.ended = True

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            points = step_points(logs or {})
            if state.is_world_process_zero and points and not self.ended and mlflow.active_run() is not None:
                mlflow.log_metrics(points, step=state.global_step, synchronous=False)

    return MlflowStepMetrics()


def collect_metrics(output_dir: Path, resumed: ResumePoint | None) -> tuple[dict[str, float], list[dict]]:
    """Summary metrics and the log history of a finished training in ``output_dir``.

    ``train_loss`` is the step-weighted mean of the logged losses over the whole run, so a resumed run
    reports its full history (the Trainer's own figure only covers the last attempt); the last logged loss is
    the last point of the per-step ``loss`` metric. ``best_step`` and ``best_val_loss`` are the checkpoint with the
    lowest validation loss (the trainer state's best, tracked across resumes), when there is a validation side.
    ``tokens_per_second`` counts this attempt's tokens over its
    runtime; it is left out when this attempt trained nothing (it resumed from the last step). ``resumed`` was
    read before training: the checkpoint it names may be gone by now (rotation), and nothing here reads it.

    Raises:
        TrainError: the trainer left no ``trainer_state.json`` (it did not finish).
    """
    try:
        state = json.loads((output_dir / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainError(f"the trainer finished without a readable {output_dir / 'trainer_state.json'}: {exc}") \
            from None
    results_file = output_dir / "all_results.json"
    results = json.loads(results_file.read_text(encoding="utf-8")) if results_file.is_file() else {}
    history = [entry for entry in state.get("log_history", []) if isinstance(entry, dict)]
    losses = [(entry["step"], entry["loss"]) for entry in history if "loss" in entry and "step" in entry]
    metrics: dict[str, float] = {"global_step": float(state.get("global_step", 0))}
    if losses:
        previous, total = 0, 0.0
        for step, loss in losses:
            total += loss * (step - previous)
            previous = step
        metrics["train_loss"] = total / previous if previous else losses[-1][1]
    elif "train_loss" in results:
        metrics["train_loss"] = float(results["train_loss"])
    best_step, best_loss = state.get("best_global_step"), state.get("best_metric")
    if isinstance(best_step, int) and isinstance(best_loss, int | float) and not isinstance(best_step, bool):
        metrics["best_step"], metrics["best_val_loss"] = float(best_step), float(best_loss)
    runtime = float(results.get("train_runtime", 0.0))
    tokens = int(state.get("num_input_tokens_seen") or 0) - (resumed.tokens_seen if resumed else 0)
    metrics["train_runtime_s"] = runtime
    if runtime > 0 and tokens > 0:
        metrics["tokens_per_second"] = tokens / runtime
    metrics["num_input_tokens_seen"] = float(state.get("num_input_tokens_seen") or 0)
    metrics["resumed_from_step"] = float(resumed.step if resumed else 0)
    return metrics, history


def trainer_points(history: list[dict], after_step: int = 0) -> dict[str, dict[int, float]]:
    """The metric points the trainer's MLflow callback logs for ``history`` (trainer_state.json's log_history),
    as ``{key: {step: value}}``: :func:`step_points` of each entry, at its step.

    Only steps after ``after_step`` (the checkpoint a resumed attempt started from) belong to this attempt.
    """
    points: dict[str, dict[int, float]] = {}
    for entry in history:
        step = entry.get("step")
        if not isinstance(step, int) or step <= after_step:
            continue
        for key, value in step_points(entry).items():
            points.setdefault(key, {})[step] = value
    return points


def backfill_metrics(client: Any, run_id: str, history: list[dict], after_step: int = 0) -> int:
    """Log the trainer's metric points that the run lacks (the server was down); return how many were logged.

    ``trainer_state.json`` on the volume is the source of truth (:func:`trainer_points`). Idempotent: a point
    already in the run, matched by key and step, is not logged again. Backfilled points carry the time of
    the backfill (the trainer log has no timestamps); their steps and values are the trainer's.

    Raises:
        MlflowException: the tracking server refused the history query or the batch.
    """
    from mlflow.entities import Metric

    missing = []
    now = int(time.time() * 1000)
    for key, by_step in trainer_points(history, after_step).items():
        logged = {metric.step for metric in client.get_metric_history(run_id, key)}
        missing += [Metric(key, value, now, step) for step, value in sorted(by_step.items()) if step not in logged]
    for start in range(0, len(missing), 1000):  # log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=missing[start:start + 1000])
    return len(missing)


def plot_loss(history: list[dict], png_path: Path, title: str) -> Path:
    """Draw training (and eval) loss by step into ``png_path`` (matplotlib, no global pyplot state)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    axes = figure.add_subplot()
    for key, label in (("loss", "train loss"), ("eval_loss", "validation loss")):
        points = [(entry["step"], entry[key]) for entry in history if key in entry and "step" in entry]
        if points:
            axes.plot(*zip(*points, strict=True), marker="o" if key == "eval_loss" else "", label=label)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png_path, format="png")
    return png_path


def loss_plot_html(png_path: Path, metrics: dict[str, float]) -> str:
    """A self-contained HTML page with the loss plot embedded as base64 (what the Kubeflow UI shows)."""
    encoded = base64.b64encode(png_path.read_bytes()).decode()
    rows = "".join(f"<tr><td>{key}</td><td>{value:.6g}</td></tr>" for key, value in sorted(metrics.items()))
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Training loss</title></head><body>"
            f"<img alt=\"training loss\" src=\"data:image/png;base64,{encoded}\"/>"
            f"<table>{rows}</table></body></html>\n")
