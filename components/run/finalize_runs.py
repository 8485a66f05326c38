"""The finalize-runs step, the pipeline's exit handler: leave no MLflow run RUNNING and no training job behind.

Runs after every other task, whatever happened. When the pipeline failed or was cancelled it ends the open
child runs and the parent run FAILED (with the error), and deletes the multi-node training job (the TrainJob or
PyTorchJob of ``cluster.training_engine``) still there for this pipeline run; when it succeeded it ends the
parent FINISHED.

KFP does not let an exit handler take another task's output, so it reads the run's resolved config from the
volume, where resolve-config wrote it (``<output_root>/<run slug>/resolved_config.json``). A run that failed
before that opened no MLflow run and started no job: there is nothing to close. By hand (after a lost node)::

    python -m components.run.finalize_runs --config configs/local.yaml --kfp-run-id RUN --state FAILED

Exit codes: 0 closed, 1 the tracking server or the cluster refused, 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import json

from components.common.cli import cli_config, fail, new_parser
from components.common.tracking import finalize_pipeline_runs
from components.run.resolve_config import read_resolved
from configs.loading import config_from_json
from configs.schema import ConfigError, PipelineConfig

STEP = "finalize-runs"
FINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELED")  # what KFP's PipelineTaskFinalStatus.state reports


def finalize(cfg: PipelineConfig, kfp_run_id: str, state: str, error: str = "") -> dict:
    """Close this pipeline run's MLflow runs according to its final ``state``; delete a leftover training job.

    Reads mlflow (tracking URI, experiment) and cluster.nodes and training_engine (a multi-node job to delete).

    Raises:
        TrackingUnavailable: the tracking server does not answer within the preflight timeout.
        TrainingJobError: the cluster refused listing or deleting the run's training job.
    """
    summary = finalize_pipeline_runs(cfg, kfp_run_id, state, error)
    if state.upper() != "SUCCEEDED" and cfg.cluster.nodes > 1:
        from components.train.multinode.training_job import delete_training_job

        summary["training_job_deleted"] = delete_training_job(cfg, kfp_run_id)
    return summary


def run_step(compiled_config: str, kfp_run_id: str, state: str, error: str | None = "") -> dict:
    """The exit handler: :func:`finalize` with the config resolve-config wrote for this run.

    Args:
        compiled_config: The config the pipeline was compiled from (where to look for the run's directory).
        kfp_run_id: The KFP run id.
        state: The pipeline's final state (KFP's ``PipelineTaskFinalStatus.state``).
        error: The pipeline's error message, if any.

    Raises:
        ConfigError: the resolved config on the volume does not validate (the file and fields are named).
        TrackingUnavailable: the tracking server does not answer.
    """
    cfg = read_resolved(config_from_json(compiled_config), kfp_run_id)
    if cfg is None:
        summary = {"note": "the run stopped before resolve-config wrote its config: no MLflow run to close"}
    else:
        summary = finalize(cfg, kfp_run_id, state, error or "")
    print(json.dumps({"finalize": summary, "state": state}))
    return summary


def build_parser() -> argparse.ArgumentParser:
    """The command line: close a pipeline run's MLflow runs by hand (e.g. after a node was lost)."""
    parser = new_parser("components.run.finalize_runs", "Close the MLflow runs of a pipeline run.")
    parser.add_argument("--kfp-run-id", required=True, help="The KFP run id (MLflow tag kfp.run_id).")
    parser.add_argument("--state", default="FAILED", type=str.upper, choices=FINAL_STATES,
                        help="Final state: SUCCEEDED, FAILED or CANCELED.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Close the runs; exit 0 when closed, 1 on errors, 2 on a usage or configuration error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.kfp_run_id.strip():  # an empty id would match or create a parent run for no pipeline
        parser.error("--kfp-run-id must not be empty")
    try:
        summary = finalize(cli_config(parser, args), args.kfp_run_id, args.state)
    except ConfigError as exc:
        return fail(parser, exc, 2)
    except RuntimeError as exc:
        return fail(parser, exc)
    print(json.dumps({"finalize": summary, "state": args.state}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
