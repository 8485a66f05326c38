"""The pipeline's exit handler: leave no MLflow run RUNNING and no training job behind.

Runs after every other task, whatever happened. When the pipeline failed or was cancelled it
ends the open child runs and the parent run FAILED (with the error), and deletes the multi-node
training job (the TrainJob or PyTorchJob of ``cluster.training_engine``) still there for this
pipeline run; when it succeeded it ends the parent FINISHED.

    python -m components.finalize --config configs/local.yaml --kfp-run-id RUN --state FAILED
"""


import argparse
import json
import sys

from kfp.dsl import PipelineTaskFinalStatus

# Not `dsl.component`: a running task imports this module with _KFP_RUNTIME=true, and kfp.dsl then
# leaves `component` out; the decorator module itself imports fine there.
from kfp.dsl.component_decorator import component

from components.image import DEFAULT_IMAGE

FINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELED")  # what KFP's PipelineTaskFinalStatus.state reports


def run_step(config: str, overrides: list, pvc_name: str, kfp_run_id: str, state: str, error: str = "") -> dict:
    """Close this pipeline run's MLflow runs according to its final ``state``; return a summary.

    Reads mlflow (tracking URI, experiment) and cluster.nodes and training_engine (a multi-node job to delete).

    Raises:
        ConfigError: the config parameter is invalid (the pipeline already failed on it).
        TrackingUnavailable: the tracking server does not answer within the preflight timeout.
    """
    from components.tracking import finalize_pipeline_runs
    from configs.schema import config_from_json

    cfg = config_from_json(config, overrides=[*overrides, f"storage.pvc_name={pvc_name}"])
    summary = finalize_pipeline_runs(cfg, kfp_run_id, state, error)
    if state.upper() != "SUCCEEDED" and cfg.cluster.nodes > 1:
        from components.training_job import delete_training_job

        summary["training_job_deleted"] = delete_training_job(cfg, kfp_run_id)
    print(json.dumps({"finalize": summary, "state": state}))
    return summary


def run_from_status(config: str, overrides: list, pvc_name: str, kfp_run_id: str, status) -> None:
    """Adapter for KFP's ``PipelineTaskFinalStatus`` (state and error message of the pipeline)."""
    run_step(config, overrides, pvc_name, kfp_run_id, status.state, status.error_message or "")


@component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def finalize_runs(config: str, overrides: list, pvc_name: str, kfp_run_id: str, status: PipelineTaskFinalStatus):
    """Close the MLflow runs of this pipeline run: FAILED when the pipeline failed, FINISHED otherwise.

    Args:
        config: The pipeline configuration (JSON), as given to the pipeline.
        overrides: The pipeline's "section.field=value" overrides.
        pvc_name: The storage PVC name.
        kfp_run_id: The KFP run id; MLflow runs carry it as the tag kfp.run_id.
        status: The final status of the pipeline's tasks, filled in by KFP.
    """
    from components.finalize import run_from_status

    run_from_status(config, overrides, pvc_name, kfp_run_id, status)


def build_parser() -> argparse.ArgumentParser:
    """The CLI: close a pipeline run's MLflow runs by hand (e.g. after a node was lost)."""
    parser = argparse.ArgumentParser(description="Close the MLflow runs of a pipeline run.")
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
        cfg = load_config(args.config, overrides=args.overrides)
        run_step(cfg.model_dump_json(), [], cfg.storage.pvc_name, args.kfp_run_id, args.state)
    except (ConfigError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
