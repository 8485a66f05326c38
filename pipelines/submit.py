"""Submit the fine-tuning pipeline to Kubeflow Pipelines, once or on a schedule.

    export KFP_HOST=https://kubeflow.example.com/pipeline KFP_TOKEN=...      # or --host; token: see below
    python -m pipelines.submit --config lora --experiment llm-finetune
    python -m pipelines.submit --config lora --set training.learning_rate=5e-5 --wait
    python -m pipelines.submit --config qlora --dry-run                       # validate, print, send nothing
    python -m pipelines.submit --config lora --schedule "0 0 2 * * *"         # nightly at 02:00 (6 fields)
    python -m pipelines.submit --list-schedules
    python -m pipelines.submit --delete-schedule llm-finetune-lora-nightly

The config (preset name or YAML path, plus ``--set`` overrides) is validated and compiled before any
request is sent; the run receives the resolved config as its ``config`` parameter (``overrides`` stays
empty) and the Kubernetes parameters (PVC, GPU selector, tolerations, accelerator) from the config.

Authentication, first match wins: the token in ``$KFP_TOKEN`` (or the variable named by ``--token-env``),
the in-cluster KFP service-account token file (``$KF_PIPELINES_SA_TOKEN_PATH``, default
``/var/run/secrets/kubeflow/pipelines/token``), or none. Tokens are never taken as flag values and never
printed.

``--schedule`` uploads the compiled pipeline as a new version of the pipeline named after the config,
then creates a recurring run pinned to that version (max_concurrency=1, no_catchup); running the same
command again replaces the schedule of that name. Exit codes: 0 ok, 1 failure (API error, run not
SUCCEEDED, timeout), 2 usage or config error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from configs.schema import ConfigError, PipelineConfig, load_config
from pipelines import kfp_api
from pipelines.compile import compile_config
from pipelines.kfp_api import Auth, AuthError, describe_auth, error_text, public_host, redact, resolve_auth
from pipelines.schedule import (
    CronError,
    delete_recurring_runs,
    describe_recurring_run,
    list_recurring_runs,
    replace_recurring_run,
    upload_version,
    validate_cron,
)

HOST_ENV = "KFP_HOST"
NAMESPACE_ENV = "KFP_NAMESPACE"
IN_CLUSTER_HOST = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"


class UsageError(ValueError):
    """Flags that do not fit together or a missing setting; main() exits 2."""


@dataclass(frozen=True)
class Target:
    """Where requests go and as whom."""

    host: str
    namespace: str | None
    auth: Auth


def run_parameters(cfg: PipelineConfig) -> dict[str, Any]:
    """The pipeline parameters of one run: the resolved config and the Kubernetes settings it implies."""
    return {
        "config": cfg.model_dump_json(),
        "overrides": [],
        "pvc_name": cfg.storage.pvc_name,
        "gpu_node_selector": dict(cfg.cluster.gpu_node_selector),
        "gpu_tolerations": [t.model_dump(exclude_none=True) for t in cfg.cluster.gpu_tolerations],
        "accelerator_type": cfg.cluster.accelerator_type,
        "accelerator_count": cfg.cluster.accelerator_count,
    }


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def resolve_target(args: argparse.Namespace, *, require_host: bool) -> Target:
    """Host, namespace and credentials from the flags and the environment.

    Raises:
        UsageError: no host is set (and one is needed), the host has no http(s) scheme, or
            ``--token-env`` names an empty variable.
    """
    host = (args.host or os.environ.get(HOST_ENV, "")).strip().rstrip("/")
    if not host and require_host:
        raise UsageError(f"no KFP host: pass --host or set {HOST_ENV} (inside the cluster: {IN_CLUSTER_HOST})")
    if host and not host.startswith(("http://", "https://")):
        raise UsageError(f"--host {public_host(host)!r} must start with http:// or https://")
    namespace = args.namespace or os.environ.get(NAMESPACE_ENV) or None
    try:
        auth = resolve_auth(args.token_env)
    except AuthError as exc:
        raise UsageError(str(exc)) from None
    return Target(host=host, namespace=namespace, auth=auth)


def _summary(cfg: PipelineConfig, args: argparse.Namespace, target: Target, package: Path) -> dict[str, Any]:
    """What would be sent, for --dry-run (the token appears only masked)."""
    pipeline_doc, *platform = yaml.safe_load_all(package.read_text(encoding="utf-8"))
    steps = sorted(name.removeprefix("exec-") for name in pipeline_doc["deploymentSpec"]["executors"])
    summary: dict[str, Any] = {
        "host": public_host(target.host) if target.host else f"(not set: --host or {HOST_ENV})",
        "namespace": target.namespace,
        "auth": describe_auth(target.auth),
        "experiment": args.experiment or cfg.mlflow.experiment,
        "pipeline": {"name": cfg.name, "steps": steps,
                     "platform_spec": bool(platform and platform[0])},
        "config_hash": cfg.config_hash(),
        "parameters": run_parameters(cfg),
    }
    if args.schedule:
        summary["recurring_run"] = {"name": args.schedule_name or f"{cfg.name}-nightly", "cron": args.schedule,
                                    "max_concurrency": 1, "no_catchup": True,
                                    "pipeline_version": f"{_stamp()}-{cfg.config_hash()[:8]}"}
    else:
        summary["run"] = {"name": args.run_name or f"{cfg.name}-{_stamp()}", "wait": args.wait}
    return summary


def submit(cfg: PipelineConfig, args: argparse.Namespace, target: Target, package: Path) -> int:
    """Start one run of the compiled ``package`` (and with ``--wait``, follow it); returns the exit code.

    Reads ``name``, ``mlflow.experiment`` (default experiment) and the fields of :func:`run_parameters`.

    Raises:
        kfp_server_api.ApiException: the API refused a request.
        TimeoutError: ``--wait`` ran out of ``--timeout``.
    """
    client = kfp_api.make_client(target.host, target.namespace, target.auth)
    experiment = args.experiment or cfg.mlflow.experiment
    experiment_id = kfp_api.get_or_create_experiment(client, experiment, target.namespace)
    run_name = args.run_name or f"{cfg.name}-{_stamp()}"
    run_id = kfp_api.create_run(client, experiment_id=experiment_id, run_name=run_name, package_path=package,
                                parameters=run_parameters(cfg), service_account=args.service_account)
    print(f"run {run_name!r} created in experiment {experiment!r}: {public_host(target.host)}/#/runs/details/{run_id}")
    if not args.wait:
        return 0
    state = kfp_api.wait_for_run(client, run_id, timeout_s=args.timeout, poll_interval_s=args.poll_interval,
                                 report=lambda s: print(f"run {run_id}: {s}", flush=True))
    if state != "SUCCEEDED":
        print(f"run {run_id} ended {state}", file=sys.stderr)
        return 1
    return 0


def schedule(cfg: PipelineConfig, args: argparse.Namespace, target: Target, package: Path) -> int:
    """Upload ``package`` as a pipeline version and (re)create the recurring run pinned to it; returns 0.

    Reads ``name`` (pipeline name, default schedule name), ``mlflow.experiment``, the config hash (version
    name) and the fields of :func:`run_parameters`.

    Raises:
        kfp_server_api.ApiException: the API refused a request (an existing schedule is then left in place).
        ValueError: several pipelines share the config's name.
    """
    client = kfp_api.make_client(target.host, target.namespace, target.auth)
    name = args.schedule_name or f"{cfg.name}-nightly"
    version_name = f"{_stamp()}-{cfg.config_hash()[:8]}"
    pipeline_id, version_id = upload_version(
        client, package, pipeline_name=cfg.name, version_name=version_name, namespace=target.namespace,
        description=f"config {cfg.config_hash()} uploaded by pipelines.submit for schedule {name}")
    experiment = args.experiment or cfg.mlflow.experiment
    experiment_id = kfp_api.get_or_create_experiment(client, experiment, target.namespace)
    created, deleted = replace_recurring_run(
        client, name=name, cron=args.schedule, experiment_id=experiment_id, pipeline_id=pipeline_id,
        version_id=version_id, parameters=run_parameters(cfg), namespace=target.namespace,
        description=f"{cfg.name} on {args.schedule} (config {cfg.config_hash()})",
        service_account=args.service_account)
    print(f"pipeline {cfg.name!r} version {version_id} uploaded")
    print(f"recurring run {name!r} ({args.schedule}) created: {created}"
          + (f"; replaced {', '.join(deleted)}" if deleted else ""))
    return 0


def manage_schedules(args: argparse.Namespace, target: Target) -> int:
    """``--list-schedules`` and ``--delete-schedule``; returns 1 when there is nothing to delete.

    Raises:
        kfp_server_api.ApiException: the API refused a request.
    """
    client = kfp_api.make_client(target.host, target.namespace, target.auth)
    if args.list_schedules:
        runs = list_recurring_runs(client, target.namespace)
        for run in runs:
            print(describe_recurring_run(run))
        print(f"{len(runs)} recurring run(s)", file=sys.stderr)
        return 0
    deleted = delete_recurring_runs(client, args.delete_schedule, target.namespace)
    if not deleted:
        print(f"no recurring run named {args.delete_schedule!r}", file=sys.stderr)
        return 1
    print(f"deleted recurring run {args.delete_schedule!r}: {', '.join(deleted)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags of ``python -m pipelines.submit``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.submit",
        description="Submit the fine-tuning pipeline to Kubeflow Pipelines (see docs/submit.md).",
        epilog=f"Token: $KFP_TOKEN or --token-env NAME, else the in-cluster KFP service-account token. "
               f"Host: --host or ${HOST_ENV}. Exit: 0 ok, 1 failure, 2 usage/config error.")
    parser.add_argument("--config", help="Preset name (configs/<name>.yaml) or YAML path; needed to submit.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="Override a config value (repeatable), e.g. training.learning_rate=1e-4.")
    parser.add_argument("--host", help=f"KFP API endpoint, e.g. https://kubeflow.example.com/pipeline "
                                       f"(default ${HOST_ENV}).")
    parser.add_argument("--namespace", help=f"Kubeflow profile namespace (multi-user; default ${NAMESPACE_ENV}).")
    parser.add_argument("--experiment", help="KFP experiment (get-or-create; default mlflow.experiment).")
    parser.add_argument("--run-name", help="Run display name (default <config name>-<UTC timestamp>).")
    parser.add_argument("--service-account", help="Kubernetes service account the run's pods use.")
    parser.add_argument("--token-env", metavar="NAME", help="Read the bearer token from this variable "
                                                            "(default KFP_TOKEN).")
    parser.add_argument("--dry-run", action="store_true", help="Validate and compile; print what would be sent.")
    parser.add_argument("--wait", action="store_true", help="Wait for the run; exit 0 only if it SUCCEEDED.")
    parser.add_argument("--timeout", type=float, default=172800.0, help="--wait limit in seconds (default 48 h).")
    parser.add_argument("--poll-interval", type=float, default=30.0, help="--wait polling interval in seconds.")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--schedule", metavar="CRON", help='Create a recurring run; 6-field cron, seconds first, '
                                                           'e.g. "0 0 2 * * *" (daily 02:00).')
    action.add_argument("--list-schedules", action="store_true", help="List recurring runs.")
    action.add_argument("--delete-schedule", metavar="NAME", help="Delete the recurring run(s) with this name.")
    parser.add_argument("--schedule-name", help="Recurring run name (default <config name>-nightly).")
    return parser


def _check_flags(args: argparse.Namespace) -> None:
    managing = args.list_schedules or args.delete_schedule
    if managing and (args.config or args.overrides or args.dry_run or args.wait):
        raise UsageError("--list-schedules/--delete-schedule take no --config, --set, --dry-run or --wait")
    if not managing and not args.config:
        raise UsageError("--config is required (a preset such as lora, or a YAML path)")
    if args.schedule and args.wait:
        raise UsageError("--wait applies to a single run, not to --schedule")
    if args.schedule_name and not args.schedule:
        raise UsageError("--schedule-name needs --schedule")
    if args.timeout <= 0 or args.poll_interval <= 0:
        raise UsageError("--timeout and --poll-interval must be positive")


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 on success, 1 on an API error or a run that did not succeed, 2 on usage/config errors."""
    args = build_parser().parse_args(argv)
    secrets: list[str] = []
    try:
        _check_flags(args)
        if args.list_schedules or args.delete_schedule:
            target = resolve_target(args, require_host=True)
            secrets = target.auth.secrets()
            return manage_schedules(args, target)
        cfg = load_config(args.config, overrides=args.overrides)
        if args.schedule:
            args.schedule = validate_cron(args.schedule)
        target = resolve_target(args, require_host=not args.dry_run)
        secrets = target.auth.secrets()
        with tempfile.TemporaryDirectory(prefix="kfp-submit-") as tmp:
            package = compile_config(cfg, Path(tmp) / f"{cfg.name}.yaml")
            if args.dry_run:
                print(json.dumps(_summary(cfg, args, target, package), indent=2))
                return 0
            return (schedule if args.schedule else submit)(cfg, args, target, package)
    except (UsageError, ConfigError, CronError) as exc:
        print(redact(str(exc), secrets), file=sys.stderr)
        return 2
    except Exception as exc:  # API and connection errors of any kind: report them without a traceback
        print(f"submit failed: {error_text(exc, secrets)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
