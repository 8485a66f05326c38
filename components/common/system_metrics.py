"""MLflow's system metrics monitor (CPU, memory, GPU) for the GPU steps and the trainer they start."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# A sample every few seconds, logged at once, unless the environment says otherwise (a run shorter than one
# interval records nothing; the tests sample every second).
SYSTEM_METRICS_DEFAULTS = {"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "5",
                           "MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING": "1"}


def system_metrics_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The monitor's settings (for this process, or a process we start): the defaults, overridden by
    ``environ``."""
    return {key: environ.get(key, value) for key, value in SYSTEM_METRICS_DEFAULTS.items()}


def start_system_metrics(run_id: str, tracking_uri: str, settings: Mapping[str, str]) -> Any:
    """MLflow's monitor, started, sampling into ``run_id`` as ``settings`` (:func:`system_metrics_env`) say until
    its ``finish()``."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=float(settings["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"]),
                                   samples_before_logging=int(settings["MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING"]),
                                   tracking_uri=tracking_uri)
    monitor.start()
    return monitor
