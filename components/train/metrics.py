"""What the train step's MLflow run holds, and the trainer's own logging into it.

A fine-tuning user reads three things on the train run: the LLaMA-Factory settings we rendered (its params),
the loss curve and its neighbours (one name per metric), and how busy the hardware was (system metrics).
So the trainer does not use Hugging Face's MLflow callback (which logs ~270 TrainingArguments and model-config
params and its own end-of-training summary under second names); it logs through :func:`metrics_callback`:

- per step: :data:`STEP_METRICS` (``loss``, ``grad_norm``, ``learning_rate``, ``epoch``,
  ``num_input_tokens_seen``) and every ``eval_*`` number, at the trainer's global step, asynchronously (training
  never waits on the server; :data:`components.train.train.TRAINER_MLFLOW_HTTP` rides out a restart);
- the step itself logs the summary once (``train_loss``, ``train_runtime_s``, ``tokens_per_second``, ...);
- system metrics (CPU, memory, disk, network; GPU utilisation and memory when NVIDIA's bindings are present)
  come from MLflow's own monitor in the trainer process (:func:`start_trainer_run`).

:func:`step_points` is the one definition of what the callback logs; the backfill after an outage
(:func:`components.train.train.backfill_metrics`) re-logs exactly those points from ``trainer_state.json``.
"""

from __future__ import annotations

import re
from typing import Any

STEP_METRICS = ("loss", "grad_norm", "learning_rate", "epoch", "num_input_tokens_seen")
_MLFLOW_UNSAFE = re.compile(r"[^0-9A-Za-z_\-\. :/]")
# MLflow's system metrics monitor: a sample every few seconds, logged at once, unless the environment says
# otherwise (a run shorter than one interval records nothing; the tests sample every second).
SYSTEM_METRICS_DEFAULTS = {"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "5",
                           "MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING": "1"}


def system_metrics_env() -> dict[str, str]:
    """The monitor's settings for a process we start: the defaults, overridden by this process's environment."""
    import os

    return {key: os.environ.get(key, value) for key, value in SYSTEM_METRICS_DEFAULTS.items()}


def step_points(entry: dict[str, Any]) -> dict[str, float]:
    """The metric points one trainer log entry gives the run: :data:`STEP_METRICS` and ``eval_*`` numbers."""
    return {_MLFLOW_UNSAFE.sub("_", key): float(value) for key, value in entry.items()
            if (key in STEP_METRICS or key.startswith("eval_"))
            and isinstance(value, int | float) and not isinstance(value, bool)}


def metrics_callback() -> Any:
    """A transformers ``TrainerCallback`` that logs :func:`step_points` of every trainer log to the active run."""
    import mlflow
    from transformers import TrainerCallback

    class MlflowStepMetrics(TrainerCallback):
        """Logs each trainer log's step metrics to the active MLflow run (rank 0 only), without waiting."""

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            points = step_points(logs or {})
            if state.is_world_process_zero and points and mlflow.active_run() is not None:
                mlflow.log_metrics(points, step=state.global_step, synchronous=False)

    return MlflowStepMetrics()


def start_trainer_run(run_id: str) -> None:
    """Attach the trainer process to the step's run, with MLflow's system metrics monitor sampling meanwhile.

    GPU figures need NVIDIA's bindings (``nvidia-ml-py``, in the image's ``gpu`` extra); CPU, memory, disk and
    network come from ``psutil``.
    """
    import mlflow

    mlflow.start_run(run_id=run_id, log_system_metrics=True)


def rendered_params(sections: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The LLaMA-Factory settings we rendered (:func:`components.train.render.render_sections`) as run params,
    under their LLaMA-Factory names (``learning_rate``, ``lora_rank``, ``cutoff_len``...)."""
    import json

    return {key: value if isinstance(value, str) else json.dumps(value)
            for section in sections.values() for key, value in section.items()}


__all__ = ["STEP_METRICS", "SYSTEM_METRICS_DEFAULTS", "metrics_callback", "rendered_params", "start_trainer_run",
           "step_points", "system_metrics_env"]
