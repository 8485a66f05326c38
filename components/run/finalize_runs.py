"""The finalize-runs step, the pipeline's exit handler: leave no training job and no MLflow run RUNNING behind.

Runs after every other task, whatever happened. When the pipeline failed or was cancelled it first deletes the
multi-node training job (the TrainJob or PyTorchJob of ``cluster.training_engine``) still there for this pipeline
run, so that its GPUs go back even when nothing else works, then ends the open child runs and the parent run
FAILED (with the error); when it succeeded it ends the parent FINISHED.

Each part runs whatever happened to the others: the job is found with the config the pipeline was compiled with
and the run id alone (no MLflow, no file on the volume needed), and every failure met is reported at the end
(:class:`FinalizeError`, one line per failure), after everything else was done.

KFP does not let an exit handler take another task's output, so it reads the run's resolved config from the
volume, where resolve-config wrote it (``<output_root>/<run slug>/resolved_config.json``). A run that failed
before that opened no MLflow run. A damaged file is reported, and the MLflow runs are still ended, found with the
file's ``mlflow`` section when that still validates, else with the compiled config's. By hand (after a lost
node)::

    python -m components.run.finalize_runs --config configs/local.yaml --kfp-run-id RUN --state FAILED

Exit codes: 0 closed, 1 the tracking server or the cluster refused, 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from components.common.cli import cli_config, fail, new_parser
from components.common.logs import configure_step_logging
from components.common.pipeline_runs import finalize_pipeline_runs
from components.common.storage import run_dir
from components.run.resolve_config import RESOLVED_FILE, read_resolved
from configs.errors import StepError
from configs.loading import config_from_json
from configs.schema import ConfigError, MlflowConfig, PipelineConfig

STEP = "finalize-runs"
FINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELED")  # what KFP's PipelineTaskFinalStatus.state reports


class FinalizeError(StepError, RuntimeError):
    """Part of the exit handler's work failed; the message names every failure (the other parts were done)."""


def _attempt(failures: list[str], what: str, work: Callable[[], Any]) -> Any:
    """``work()``, or None with ``what`` and the error added to ``failures``: one failure never stops the rest."""
    try:
        return work()
    except Exception as exc:  # any failure: the exit handler must go on to the next part
        failures.append(f"{what}: {type(exc).__name__}: {exc}")
        return None


def finalize(cfg: PipelineConfig, kfp_run_id: str, state: str, error: str = "", *,
             tracking: PipelineConfig | None, failures: list[str] | None = None) -> dict:
    """Delete a leftover training job, then close this pipeline run's MLflow runs according to its final ``state``;
    each part is attempted whatever happened to the other.

    Reads cluster.nodes and training_engine of ``cfg`` (the job to delete: only when the pipeline did not succeed
    and trained on several nodes) and mlflow (tracking URI, experiment) of ``tracking`` (None: no MLflow run to
    close).

    Returns:
        The summary: ``training_job_deleted`` (when a job was looked for), the MLflow runs closed (``parent``,
        ``closed``, ``status``) and ``failures``, one line per part that failed (the cluster refused listing or
        deleting the job, the tracking server did not answer...), after ``failures`` given.
    """
    failures = [] if failures is None else failures
    summary: dict[str, Any] = {}
    if state.upper() != "SUCCEEDED" and cfg.cluster.nodes > 1:
        from components.train.multinode.training_job import delete_training_job

        summary["training_job_deleted"] = _attempt(
            failures, f"deleting the {cfg.cluster.training_engine} of run {kfp_run_id}",
            lambda: delete_training_job(cfg, kfp_run_id))
    if tracking is not None:
        summary.update(_attempt(failures, f"closing the MLflow runs at {tracking.mlflow.tracking_uri}",
                                lambda: finalize_pipeline_runs(tracking, kfp_run_id, state, error)) or {})
    summary["failures"] = failures
    return summary


def _report(summary: dict, state: str) -> dict:
    """Print the summary (one JSON line); raise :class:`FinalizeError` naming every failure in it."""
    print(json.dumps({"finalize": summary, "state": state}))
    if summary["failures"]:
        raise FinalizeError("; ".join(summary["failures"]))
    return summary


def _resolved_or_fallback(compiled: PipelineConfig, kfp_run_id: str, failures: list[str]) -> PipelineConfig | None:
    """The run's resolved config; when the file is damaged, the compiled config with the file's ``mlflow`` section if
    that still validates (the experiment may have been chosen at run time), the failure added to ``failures``;
    None when resolve-config never wrote the file."""
    path = run_dir(compiled, kfp_run_id) / RESOLVED_FILE
    try:
        return read_resolved(compiled, kfp_run_id)
    except (ConfigError, OSError, UnicodeDecodeError) as exc:
        failures.append(f"reading {path}: {exc}")
    try:
        section = json.loads(path.read_text(encoding="utf-8"))["mlflow"]
        return compiled.model_copy(update={"mlflow": MlflowConfig.model_validate(section)})
    except Exception:  # nothing of the file is usable: the compiled settings are the best guess
        return compiled


def run_step(compiled_config: str, kfp_run_id: str, state: str, error: str | None = "") -> dict:
    """The exit handler: :func:`finalize`, the job found with the compiled config and the run id, the MLflow runs
    with the config resolve-config wrote for this run.

    Args:
        compiled_config: The config the pipeline was compiled from (node count and engine; where the run's
            directory is).
        kfp_run_id: The KFP run id.
        state: The pipeline's final state (KFP's ``PipelineTaskFinalStatus.state``).
        error: The pipeline's error message, if any.

    Raises:
        ConfigError: ``compiled_config`` does not validate (nothing can be found without it).
        FinalizeError: a part failed, or the resolved config on the volume is damaged (the file and fields are
            named); every other part was still done.
    """
    configure_step_logging(STEP)
    compiled = config_from_json(compiled_config)
    failures: list[str] = []
    resolved = _resolved_or_fallback(compiled, kfp_run_id, failures)
    # The job first, and even without a resolved config: whatever the volume says, its GPUs must go back.
    summary = finalize(resolved or compiled, kfp_run_id, state, error or "", tracking=resolved, failures=failures)
    if resolved is None:
        summary["note"] = "the run stopped before resolve-config wrote its config: no MLflow run to close"
    return _report(summary, state)


def build_parser() -> argparse.ArgumentParser:
    """The command line: close a pipeline run's MLflow runs by hand (e.g. after a node was lost)."""
    parser = new_parser("components.run.finalize_runs", "Close the MLflow runs of a pipeline run.")
    parser.add_argument("--kfp-run-id", required=True, help="The KFP run id (MLflow tag kfp.run_id).")
    parser.add_argument("--state", default="FAILED", type=str.upper, choices=FINAL_STATES,
                        help="Final state: SUCCEEDED, FAILED or CANCELED.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Close the runs; exit 0 when closed, 1 on errors, 2 on a usage or configuration error."""
    configure_step_logging(STEP)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.kfp_run_id.strip():  # an empty id would match or create a parent run for no pipeline
        parser.error("--kfp-run-id must not be empty")
    try:
        cfg = cli_config(parser, args)
        _report(finalize(cfg, args.kfp_run_id, args.state, tracking=cfg), args.state)
    except StepError as exc:
        return fail(parser, exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
