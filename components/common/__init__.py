"""What every step shares: the volume, MLflow, untrusted input, typed files, command lines.

- :mod:`.storage`: paths on the volume (:func:`~.storage.on_volume`, the one resolver; :func:`~.storage.run_slug`,
  the one run-id slug), atomic writes, the output-path guard;
- :mod:`.tracking`: the parent and step runs in MLflow, fail-fast client, what happens when the server is down;
- :mod:`.local_runs`: closing what a killed local run left RUNNING;
- :mod:`.safe_json`: the one reader for untrusted JSON and YAML;
- :mod:`.typed_files`: the files passed between steps, as pydantic models;
- :mod:`.cli`: ``--config``/``--set`` and flags whose defaults come from the schema; :func:`~.cli.fail`, how
  every command line ends on an error;
- :mod:`.logs`: progress and results through ``logging``: one logger per step, one line format, one reader;
- :mod:`.signals`: SIGTERM as an exception, so that a step cleans up;
- :mod:`.markdown`: untrusted text inside Markdown (code spans and escapes).
"""

__all__ = [
    "cli",
    "local_runs",
    "logs",
    "markdown",
    "safe_json",
    "signals",
    "storage",
    "tracking",
    "typed_files",
]
