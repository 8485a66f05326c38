"""MLflow lineage shared by every step: one parent run per pipeline run, one child run per step.

The parent run is found or created by the tag ``kfp.run_id`` (so retries and later steps attach to the same one);
each step opens a child run through :func:`step_run`, named after the step (``train``, ``compare``...), which ends
it FAILED when the step raises and closes RUNNING leftovers of an earlier, killed attempt of the same step. Error
texts written to MLflow tags pass through :func:`configs.redaction.redact` with the credential values masked.

A pipeline run on the cluster is closed by its exit handler (:func:`finalize_pipeline_runs`); a local run that
was SIGKILLed runs none, and the next local run closes what it left (:mod:`components.common.local_runs`).
What happens when the server is down: :mod:`components.common.mlflow_client`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from components.common.local_launcher import launcher_tags
from components.common.mlflow_client import make_client, tracking_secrets
from components.common.run_data import log_params, public_params
from components.common.run_name import run_name
from components.common.system_metrics import start_system_metrics, system_metrics_env
from components.common.tags import (
    ATTEMPT_TAG,
    CLOSED_BY_TAG,
    CONFIG_HASH_TAG,
    ERROR_TAG,
    EXPERIMENT_KIND_TAG,
    KFP_FINAL_STATE_TAG,
    KFP_RUN_TAG,
    METHOD_TAG,
    MODEL_TRAINING_KIND,
    PARENT_ROLE,
    PARENT_RUN_TAG,
    ROLE_TAG,
    STEP_TAG,
    TRIAL_TAG,
)
from configs.redaction import redact
from configs.schema import PipelineConfig

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

MAX_ERROR_CHARS = 4000  # an error tag, well inside every MLflow backend's tag limit


def experiment_id(client: MlflowClient, name: str) -> str:
    """Id of the named experiment, created when missing (race-safe); marked as model training for MLflow's UI
    unless it already has a kind."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
    except Exception:  # created concurrently by another step
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _runs_with_tags(client: MlflowClient, exp_id: str, tags: dict[str, str]) -> list:
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    return client.search_runs([exp_id], filter_string=query, max_results=1000, order_by=["attributes.start_time ASC"])


def parent_run_id(client: MlflowClient, cfg: PipelineConfig, kfp_run_id: str) -> str:
    """The parent run of this pipeline run: found by ``kfp.run_id``, else created with the run's params (and the
    launcher tags of a local run, from this process's environment)."""
    exp_id = experiment_id(client, cfg.mlflow.experiment)
    found = _runs_with_tags(client, exp_id, {KFP_RUN_TAG: kfp_run_id, ROLE_TAG: PARENT_ROLE})
    if found:
        return found[0].info.run_id
    run = client.create_run(
        exp_id,
        run_name=run_name(cfg, kfp_run_id),
        tags={KFP_RUN_TAG: kfp_run_id, ROLE_TAG: PARENT_ROLE, CONFIG_HASH_TAG: cfg.config_hash(),
              METHOD_TAG: cfg.training.method, **launcher_tags(os.environ)},
    )
    log_params(client, run.info.run_id, public_params(cfg))
    return run.info.run_id


def close_stale_runs(client: MlflowClient, cfg: PipelineConfig, kfp_run_id: str, step: str | None = None,
                     status: str = "KILLED", trial: str = "") -> list[str]:
    """End RUNNING runs of this pipeline run (of one step, or all; of one trial of it when ``trial`` names one, so
    that trials running side by side never close each other's runs) with ``status``; return their ids."""
    exp_id = experiment_id(client, cfg.mlflow.experiment)
    tags = {KFP_RUN_TAG: kfp_run_id}
    if step:
        tags[STEP_TAG] = step
    if trial:
        tags[TRIAL_TAG] = trial
    closed = []
    for run in _runs_with_tags(client, exp_id, tags):
        if run.info.status == "RUNNING" and (step is None or run.data.tags.get(ROLE_TAG) != PARENT_ROLE):
            client.set_tag(run.info.run_id, CLOSED_BY_TAG, "stale-run-cleanup")
            client.set_terminated(run.info.run_id, status=status)
            closed.append(run.info.run_id)
    return closed


@contextlib.contextmanager
def step_run(cfg: PipelineConfig, kfp_run_id: str, step: str, *, system_metrics: bool = False,
             trial: str = "") -> Iterator[tuple[MlflowClient, str]]:
    """Open this step's child run under the pipeline's parent run; yield ``(client, run_id)``.

    Earlier attempts of the same step (and ``trial``: a sweep's ``trial-N``, in the run's name and the tag
    ``llmft.trial``) left RUNNING (a killed pod) are ended KILLED first. The child ends FINISHED when the block
    completes, FAILED (with the error as a tag) when it raises, and KILLED when it is interrupted (Ctrl-C, or a
    SIGTERM raised as KeyboardInterrupt). With ``system_metrics`` (the GPU steps), MLflow's monitor samples CPU,
    memory and GPU into the run meanwhile (settings from this process's environment).
    """
    client = make_client(cfg)
    parent = parent_run_id(client, cfg, kfp_run_id)
    close_stale_runs(client, cfg, kfp_run_id, step=step, trial=trial)
    exp_id = experiment_id(client, cfg.mlflow.experiment)
    which = {KFP_RUN_TAG: kfp_run_id, STEP_TAG: step, **({TRIAL_TAG: trial} if trial else {})}
    attempt = len(_runs_with_tags(client, exp_id, which)) + 1
    label = f"{step} · {trial}" if trial else step
    run = client.create_run(
        exp_id,
        run_name=f"{label} · {run_name(cfg, kfp_run_id)}" + ("" if attempt == 1 else f" (attempt {attempt})"),
        tags={PARENT_RUN_TAG: parent, **which, ROLE_TAG: step, ATTEMPT_TAG: str(attempt)},
    )
    run_id = run.info.run_id
    monitor = start_system_metrics(run_id, cfg.mlflow.tracking_uri, system_metrics_env(os.environ)) \
        if system_metrics else None
    try:
        yield client, run_id
    except BaseException as exc:
        with contextlib.suppress(Exception):
            if monitor:
                monitor.finish()
            error = redact(f"{type(exc).__name__}: {exc}", tracking_secrets(os.environ))
            client.set_tag(run_id, ERROR_TAG, error[:MAX_ERROR_CHARS])
            client.set_terminated(run_id, status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    if monitor:
        monitor.finish()
    client.set_terminated(run_id, status="FINISHED")


def finalize_pipeline_runs(cfg: PipelineConfig, kfp_run_id: str, pipeline_state: str, error: str = "") -> dict:
    """Exit-handler logic: close every run of this pipeline run according to the pipeline's final state.

    A failed or cancelled pipeline leaves no RUNNING run: open children end FAILED and the parent
    ends FAILED with the error as a tag. A successful pipeline ends its parent FINISHED.
    Returns a summary ``{"parent": id, "closed": [...], "status": ...}``.
    """
    client = make_client(cfg)
    parent = parent_run_id(client, cfg, kfp_run_id)
    succeeded = pipeline_state.upper() == "SUCCEEDED"
    status = "FINISHED" if succeeded else "FAILED"
    closed = [] if succeeded else close_stale_runs(client, cfg, kfp_run_id, status="FAILED")
    client.set_tag(parent, KFP_FINAL_STATE_TAG, pipeline_state)
    if error:
        client.set_tag(parent, ERROR_TAG, redact(error, tracking_secrets(os.environ))[:MAX_ERROR_CHARS])
    client.set_terminated(parent, status=status)
    return {"parent": parent, "closed": [run for run in closed if run != parent], "status": status}
