"""What every step shares: the volume, MLflow, untrusted input, typed files, command lines.

- :mod:`.storage`: paths on the volume (:func:`~.storage.on_volume`, the one resolver; :func:`~.storage.run_slug`,
  the one run-id slug), atomic writes, the output-path guard;
- :mod:`.mlflow_client`: the fail-fast MLflow client (settings, credentials, reachability) and what happens when
  the server is down;
- :mod:`.pipeline_runs`: the parent run and each step's run (:func:`~.pipeline_runs.step_run`), stale runs,
  the exit handler's closing;
- :mod:`.run_name`: what a pipeline run's MLflow runs are called (``run_name.json``);
- :mod:`.run_data`: params, metrics and tags, in batches;
- :mod:`.system_metrics`: MLflow's CPU/GPU monitor for the GPU steps and the trainer;
- :mod:`.mlflow_artifacts`: finding a file among a run's artifacts;
- :mod:`.tags`: every MLflow tag name, once;
- :mod:`.local_launcher`: who launched a local run; :mod:`.local_runs`: closing what a killed one left RUNNING;
- :mod:`.typed_files`: the files passed between steps, as pydantic models;
- :mod:`.cli`: ``--config``/``--set`` and flags whose defaults come from the schema; :func:`~.cli.fail`, how
  every command line ends on an error;
- :mod:`.logs`: progress and results through ``logging``: one logger per step, one line format, one reader;
- :mod:`.signals`: SIGTERM as an exception, so that a step cleans up;
- :mod:`.markdown`: untrusted text inside Markdown (code spans and escapes).
"""

__all__ = [
    "cli",
    "local_launcher",
    "local_runs",
    "logs",
    "markdown",
    "mlflow_artifacts",
    "mlflow_client",
    "pipeline_runs",
    "run_data",
    "run_name",
    "signals",
    "storage",
    "system_metrics",
    "tags",
    "typed_files",
]
