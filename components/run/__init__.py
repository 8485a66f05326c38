"""The steps around the pipeline: what a run is configured with, and closing it.

- :mod:`.resolve_config`: the resolve-config step, the one place a run's configuration is decided;
- :mod:`.finalize_runs`: the finalize-runs step, the exit handler that leaves no MLflow run RUNNING.
"""

__all__ = [
    "finalize_runs",
    "resolve_config",
]
