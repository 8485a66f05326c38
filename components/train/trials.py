"""The trials of a sweep: which settings trial N trains with, where it writes, and what it is called.

A config's ``sweep`` section (:class:`configs.schema.SweepConfig`) lists values for some training fields; the
trials are every combination (:meth:`~configs.schema.SweepConfig.trials`). The pipeline trains them in a
``dsl.ParallelFor`` over ``range(trial_count(cfg))``; a run without a sweep is the same loop with one trial.

- :func:`trial_config`: the config trial N trains with: the base config with its settings applied and the
  sweep section emptied, so a trial's identity (its config hash, its checkpoints' fingerprint) is its own
  settings, not the grid around it: a rerun of the run id with a longer grid reuses the trials it already
  trained.
- :func:`trial_dir`: a sweep's trial N writes under ``<run dir>/trials/trial-N/`` (its own checkpoints, adapter,
  train.yaml, logs), so trials never share a file and each resumes its own checkpoints; a single trial writes
  in the run directory itself, as a run without a sweep always did.
- :func:`trial_label`: ``trial-N``, the name of its MLflow run (``train · trial-N · <run>``) and of its
  multi-node job's suffix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.common.storage import run_dir
from configs.schema import ConfigError, PipelineConfig, SweepConfig

TRIALS_DIR = "trials"


def trial_count(cfg: PipelineConfig) -> int:
    """How many trials the config's sweep has (1 without a sweep)."""
    return len(cfg.sweep.trials())


def is_sweep(cfg: PipelineConfig) -> bool:
    """Whether the config trains more than one trial."""
    return trial_count(cfg) > 1


def trial_settings(cfg: PipelineConfig, trial: int) -> dict[str, Any]:
    """The training settings trial ``trial`` varies (``{}`` without a sweep).

    Raises:
        ConfigError: the config has no such trial.
    """
    trials = cfg.sweep.trials()
    if not 0 <= trial < len(trials):
        raise ConfigError(f"trial {trial} does not exist: the sweep has {len(trials)} trial(s), 0 to "
                          f"{len(trials) - 1}")
    return trials[trial]


def trial_config(cfg: PipelineConfig, trial: int) -> PipelineConfig:
    """The config trial ``trial`` trains with: its settings in ``training``, the sweep section at its defaults
    (``parallelism`` kept: it is compiled in).

    Raises:
        ConfigError: the config has no such trial.
    """
    from configs.loading import config_from_dict

    data = cfg.model_dump(mode="json")
    data["training"].update(trial_settings(cfg, trial))
    data["sweep"] = SweepConfig(parallelism=cfg.sweep.parallelism).model_dump(mode="json")
    return config_from_dict(data, source=f"trial {trial}")


def describe_settings(settings: dict[str, Any]) -> str:
    """A trial's settings in one line, ``learning_rate=0.0002, lora_rank=16`` (``the training as configured`` for
    none)."""
    return ", ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in settings.items()) or "the training as configured"


def trial_label(trial: int) -> str:
    """``trial-N``: the trial's directory, MLflow run and multi-node job suffix."""
    return f"trial-{trial}"


def trial_dir(cfg: PipelineConfig, kfp_run_id: str, trial: int) -> Path:
    """Where trial ``trial`` writes: ``<run dir>/trials/trial-N`` in a sweep, the run directory itself otherwise."""
    base = run_dir(cfg, kfp_run_id)
    return base / TRIALS_DIR / trial_label(trial) if is_sweep(cfg) else base


__all__ = ["TRIALS_DIR", "describe_settings", "is_sweep", "trial_config", "trial_count", "trial_dir", "trial_label",
           "trial_settings"]
