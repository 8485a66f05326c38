"""The pipeline's exit handler: leave no MLflow run RUNNING and no training job behind.

Runs after every other task, whatever happened. When the pipeline failed or was cancelled it
ends the open child runs and the parent run FAILED (with the error), and deletes the multi-node
training job (the TrainJob or PyTorchJob of ``cluster.training_engine``) still there for this
pipeline run; when it succeeded it ends the parent FINISHED.

KFP does not let an exit handler take another task's output, so it reads the run's resolved config
from the volume, where resolve-config wrote it (``<output_root>/<run id>/resolved_config.json``). A run
that failed before that opened no MLflow run and started no job: there is nothing to close.

    python -m components.run.finalize_runs --config configs/local.yaml --kfp-run-id RUN --state FAILED
"""

import argparse
import json
import sys

from configs.schema import PipelineConfig

FINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELED")  # what KFP's PipelineTaskFinalStatus.state reports


def finalize(cfg: PipelineConfig, kfp_run_id: str, state: str, error: str = "") -> dict:
    """Close this pipeline run's MLflow runs according to its final ``state``; delete a leftover training job.

    Reads mlflow (tracking URI, experiment) and cluster.nodes and training_engine (a multi-node job to delete).

    Raises:
        TrackingUnavailable: the tracking server does not answer within the preflight timeout.
    """
    from components.common.tracking import finalize_pipeline_runs

    summary = finalize_pipeline_runs(cfg, kfp_run_id, state, error)
    if state.upper() != "SUCCEEDED" and cfg.cluster.nodes > 1:
        from components.train.multinode.training_job import delete_training_job

        summary["training_job_deleted"] = delete_training_job(cfg, kfp_run_id)
    return summary


def run_step(compiled_config: str, kfp_run_id: str, state: str, error: str = "") -> dict:
    """The exit handler: :func:`finalize` with the config resolve-config wrote for this run.

    Raises:
        ConfigError: the resolved config on the volume does not validate.
        TrackingUnavailable: the tracking server does not answer.
    """
    from components.run.resolve_config import read_resolved
    from configs.schema import config_from_json

    cfg = read_resolved(config_from_json(compiled_config), kfp_run_id)
    if cfg is None:
        summary = {"note": "the run stopped before resolve-config wrote its config: no MLflow run to close"}
    else:
        summary = finalize(cfg, kfp_run_id, state, error)
    print(json.dumps({"finalize": summary, "state": state}))
    return summary


def run_from_status(compiled_config: str, kfp_run_id: str, status) -> None:
    """Adapter for KFP's ``PipelineTaskFinalStatus`` (state and error message of the pipeline)."""
    run_step(compiled_config, kfp_run_id, status.state, status.error_message or "")


def build_parser() -> argparse.ArgumentParser:
    """The CLI: close a pipeline run's MLflow runs by hand (e.g. after a node was lost)."""
    parser = argparse.ArgumentParser(prog="python -m components.run.finalize_runs",
                                     description="Close the MLflow runs of a pipeline run.")
    parser.add_argument("--config", required=True, help="Config YAML (configs/*.yaml) or preset name.")
    parser.add_argument("--kfp-run-id", required=True, help="The KFP run id (MLflow tag kfp.run_id).")
    parser.add_argument("--state", default="FAILED", type=str.upper, choices=FINAL_STATES,
                        help="Final state: SUCCEEDED, FAILED or CANCELED.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.field=value")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit 0 when the runs were closed, 1 on errors, 2 on a usage error."""
    from configs.schema import ConfigError, load_config

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.kfp_run_id.strip():  # an empty id would match or create a parent run for no pipeline
        parser.error("--kfp-run-id must not be empty")
    try:
        summary = finalize(load_config(args.config, overrides=args.overrides), args.kfp_run_id, args.state)
    except (ConfigError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"finalize": summary, "state": args.state}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
