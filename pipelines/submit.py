"""Submit the fine-tuning pipeline to Kubeflow Pipelines, once or on a schedule.

    export KFP_HOST=https://kubeflow.example.com/pipeline KFP_TOKEN=...      # or --host; token: see below
    python -m pipelines.submit --config lora --experiment llm-finetune
    python -m pipelines.submit --config lora --set training.learning_rate=5e-5 --wait
    python -m pipelines.submit --config qlora --dry-run                       # validate, print, send nothing
    python -m pipelines.submit --config lora --schedule "0 0 2 * * *"         # nightly at 02:00 (6 fields)
    python -m pipelines.submit --list-schedules
    python -m pipelines.submit --delete-schedule llm-finetune-lora-nightly

The config (preset name or YAML path, plus ``--set`` overrides) is validated and compiled before any
request is sent, by the same resolver the pipeline's resolve-config task runs. A ``--set`` of a field that
has a typed run parameter (:mod:`configs.form`, e.g. ``training.learning_rate`` -> ``b_learning_rate``) is
sent as that parameter, so the KFP run page and "Compare runs" show it; any other ``--set`` is compiled
into the pipeline (its name then carries a hash of those changes).

Authentication, first match wins: the token in ``$KFP_TOKEN`` (or the variable named by ``--token-env``),
the in-cluster KFP service-account token file (``$KF_PIPELINES_SA_TOKEN_PATH``, default
``/var/run/secrets/kubeflow/pipelines/token``), or none. Tokens are never taken as flag values and never
printed.

``--schedule`` uploads the compiled pipeline as a new version of the pipeline named after the config,
then creates a recurring run pinned to that version (max_concurrency=1, no_catchup); running the same
command again replaces the schedule of that name. Exit codes: 0 ok, 1 failure (API error, run not
SUCCEEDED, timeout), 2 usage or config error.

Every request waits at most ``--request-timeout`` seconds, and a reply that is not the API's JSON (a login
page answered with 200) is an error: a hung or misconfigured server fails with a message, never "created".
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

from components.common.cli import fail
from components.common.logs import configure_step_logging, step_logger
from configs.errors import StepError, UsageError
from configs.loading import load_config
from configs.schema import ConfigError, PipelineConfig
from pipelines import kfp_api
from pipelines.compile import compile_config
from pipelines.kfp_api import Auth, AuthError, describe_auth, public_host, resolve_auth
from pipelines.schedule import (
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
STEP = "submit"  # its progress lines: [submit] ...
log = step_logger(STEP)


@dataclass(frozen=True)
class Target:
    """Where requests go and as whom."""

    host: str
    namespace: str | None
    auth: Auth


@dataclass(frozen=True)
class RunRequest:
    """What one submit sends: the config compiled into the pipeline, and the run's typed parameters."""

    compiled: PipelineConfig  # the preset plus the --set values that have no typed parameter
    compiled_changes: list[str]  # those --set values
    parameters: dict[str, Any]  # typed parameters from --set (the rest keep their compiled defaults)
    resolved: PipelineConfig  # what resolve-config will make of it


def plan_run(config: str, overrides: list[str]) -> RunRequest:
    """Load the config with its ``--set`` values exactly as compile and run_local do, then split the values into
    typed run parameters and compile-time changes, and resolve the run as the pipeline will.

    The split only carries the values: it is used only when the pipeline resolves it to the very config compile
    would make. ``training.method`` set together with a field that follows it (``training.quantization_bit``, which
    has no parameter) is compiled in with that field; when no split holds, every ``--set`` value is compiled in.

    Raises:
        ConfigError: a value is invalid or cannot take effect (the field is named), as compile would say.
    """
    from components.run.resolve_config import form_from_overrides, resolve
    from configs.form import by_path
    from configs.loading import METHOD, parse_override

    wanted = load_config(config, overrides=overrides)  # the one loading path: what compile and run_local make
    typed, rest = form_from_overrides(overrides)
    method_param = by_path()[METHOD].name
    splits = [(typed, rest)]
    if method_param in typed:  # the method travels with its followers, compiled in
        splits.append(({name: value for name, value in typed.items() if name != method_param},
                       [*rest, *(text for text in overrides if ".".join(parse_override(text)[0]) == METHOD)]))
    for parameters, changes in [*splits, ({}, list(overrides))]:
        try:
            compiled = load_config(config, overrides=changes)
            resolved = resolve(compiled.model_dump_json(), [], parameters, compiled)
        except ConfigError:  # these --set values only hold together
            continue
        if resolved == wanted:
            return RunRequest(compiled=compiled, compiled_changes=changes, parameters=parameters, resolved=resolved)
    raise ConfigError(f"the --set values {overrides} cannot be sent so that the run resolves to the config compile "
                      "makes of them; compile the config instead (python -m pipelines.compile --config ... --set ...)")


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


def _pipeline_name(request: RunRequest) -> str:
    from pipelines.finetune import pipeline_name

    return pipeline_name(request.compiled, request.compiled_changes)[0]


def request_json(request: RunRequest, args: argparse.Namespace, target: Target) -> dict[str, Any]:
    """The full request, for ``--dry-run --json`` (the token appears only masked)."""
    name = _pipeline_name(request)
    body: dict[str, Any] = {
        "host": public_host(target.host) if target.host else f"(not set: --host or {HOST_ENV})",
        "namespace": target.namespace, "auth": describe_auth(target.auth),
        "experiment": args.experiment or request.resolved.mlflow.experiment, "pipeline": name,
        "compiled_changes": request.compiled_changes, "parameters": request.parameters,
        "resolved_config": request.resolved.dump_public(), "config_hash": request.resolved.config_hash(),
    }
    if args.schedule:
        body["recurring_run"] = {"name": args.schedule_name or f"{name}-nightly", "cron": args.schedule,
                                 "max_concurrency": 1, "no_catchup": True}
    else:
        body["run"] = {"name": args.run_name or f"{name}-{_stamp()}", "wait": args.wait}
    return body


def dry_run_summary(request: RunRequest, args: argparse.Namespace, target: Target) -> str:
    """A short, readable account of what would run (``--dry-run``)."""
    from configs.form import canonical, field_value, form_fields
    from pipelines.finetune import gpu_tasks, pipeline_name

    cfg, compiled = request.resolved, request.compiled
    name, display = pipeline_name(compiled, request.compiled_changes)
    host = public_host(target.host) if target.host else f"(not set: --host or ${HOST_ENV})"
    lines = [f"dry run: nothing sent to {host} ({describe_auth(target.auth)})",
             f"  pipeline    {name}  ({display})",
             f"  experiment  {args.experiment or cfg.mlflow.experiment}" + (f", namespace {target.namespace}"
                                                                            if target.namespace else "")]
    if args.schedule:
        lines.append(f"  schedule    {args.schedule_name or name + '-nightly'}: {args.schedule} (max 1 at a time)")
    else:
        lines.append(f"  run         {args.run_name or name + '-' + _stamp()}" + (" (waits)" if args.wait else ""))
    paths = {field.name: field.path for field in form_fields()}
    base = load_config(args.config)
    differ = [f"    {field}={canonical(value)}  ({paths[field]})" for field, value in sorted(request.parameters.items())
              if canonical(value) != canonical(field_value(base, paths[field]))]
    lines.append("  parameters that differ from the preset:" if differ else "  parameters: as the preset")
    lines += differ
    if request.compiled_changes:
        lines.append("  compiled in (no typed parameter): " + ", ".join(request.compiled_changes))
    gpus = ", ".join(gpu_tasks(cfg))
    scheduling = (f"{cfg.cluster.accelerator_count} x {cfg.cluster.accelerator_type}" if cfg.cluster.accelerator_count
                  else "no GPU (CPU pods)")
    if cfg.cluster.accelerator_count and cfg.evaluation.accelerator_count != cfg.cluster.accelerator_count:
        scheduling += f" ({cfg.evaluation.accelerator_count} for the evaluate tasks)"
    lines.append(f"  GPU tasks   {gpus}: {scheduling}, node selector {canonical(cfg.cluster.gpu_node_selector)}, "
                 f"{len(cfg.cluster.gpu_tolerations)} toleration(s)")
    if cfg.cluster.nodes > 1:
        lines.append(f"  training    {cfg.cluster.nodes} nodes through a {cfg.cluster.training_engine}"
                     if hasattr(cfg.cluster, "training_engine") else f"  training    {cfg.cluster.nodes} nodes")
    lines.append(f"  config hash {cfg.config_hash()}; the full request: add --json")
    return "\n".join(lines)


def submit(request: RunRequest, args: argparse.Namespace, target: Target, package: Path) -> int:
    """Start one run of the compiled ``package`` (and with ``--wait``, follow it); returns the exit code.

    Raises:
        kfp_server_api.ApiException: the API refused a request.
        kfp_api.UnexpectedReply: the server answered something other than the API's JSON.
        urllib3.exceptions.HTTPError: the server cannot be reached or did not answer within ``--request-timeout``.
        kfp_api.RunTimeout: ``--wait`` ran out of ``--timeout``.
        StepError: with ``--wait``, the run ended in another state than SUCCEEDED.
    """
    client = kfp_api.make_client(target.host, target.namespace, target.auth, args.request_timeout)
    experiment = args.experiment or request.resolved.mlflow.experiment
    experiment_id = kfp_api.get_or_create_experiment(client, experiment, target.namespace)
    run_name = args.run_name or f"{_pipeline_name(request)}-{_stamp()}"
    run_id = kfp_api.create_run(client, experiment_id=experiment_id, run_name=run_name, package_path=package,
                                parameters=request.parameters, service_account=args.service_account)
    print(f"run {run_name!r} created in experiment {experiment!r}: {public_host(target.host)}/#/runs/details/{run_id}")
    if not args.wait:
        return 0
    state = kfp_api.wait_for_run(client, run_id, timeout_s=args.timeout, poll_interval_s=args.poll_interval,
                                 report=lambda s: log.info(f"run {run_id}: {s}"))
    if state != "SUCCEEDED":
        raise StepError(f"run {run_id} ended {state}")
    return 0


def schedule(request: RunRequest, args: argparse.Namespace, target: Target, package: Path) -> int:
    """Upload ``package`` as a pipeline version and (re)create the recurring run pinned to it; returns 0.

    Raises:
        kfp_server_api.ApiException: the API refused a request (an existing schedule is then left in place).
        kfp_api.UnexpectedReply: the server answered something other than the API's JSON.
        urllib3.exceptions.HTTPError: the server cannot be reached or did not answer within ``--request-timeout``.
        ApiError: several pipelines share the config's name.
    """
    client = kfp_api.make_client(target.host, target.namespace, target.auth, args.request_timeout)
    pipeline = _pipeline_name(request)
    name = args.schedule_name or f"{pipeline}-nightly"
    digest = request.compiled.config_hash()
    version_name = f"{_stamp()}-{digest[:8]}"
    pipeline_id, version_id = upload_version(
        client, package, pipeline_name=pipeline, version_name=version_name, namespace=target.namespace,
        description=f"config {digest} uploaded by pipelines.submit for schedule {name}")
    experiment = args.experiment or request.resolved.mlflow.experiment
    experiment_id = kfp_api.get_or_create_experiment(client, experiment, target.namespace)
    created, deleted = replace_recurring_run(
        client, name=name, cron=args.schedule, experiment_id=experiment_id, pipeline_id=pipeline_id,
        version_id=version_id, parameters=request.parameters, namespace=target.namespace,
        description=f"{pipeline} on {args.schedule} (config {request.resolved.config_hash()})",
        service_account=args.service_account)
    print(f"pipeline {pipeline!r} version {version_id} uploaded")
    print(f"recurring run {name!r} ({args.schedule}) created: {created}"
          + (f"; replaced {', '.join(deleted)}" if deleted else ""))
    return 0


def manage_schedules(args: argparse.Namespace, target: Target) -> int:
    """``--list-schedules`` and ``--delete-schedule``; returns 0.

    Raises:
        StepError: there is no recurring run of that name to delete.
        kfp_server_api.ApiException: the API refused a request.
        kfp_api.UnexpectedReply: the server answered something other than the API's JSON.
        urllib3.exceptions.HTTPError: the server cannot be reached or did not answer within ``--request-timeout``.
    """
    client = kfp_api.make_client(target.host, target.namespace, target.auth, args.request_timeout)
    if args.list_schedules:
        runs = list_recurring_runs(client, target.namespace)
        for run in runs:
            print(describe_recurring_run(run))
        print(f"{len(runs)} recurring run(s)", file=sys.stderr)
        return 0
    deleted = delete_recurring_runs(client, args.delete_schedule, target.namespace)
    if not deleted:
        raise StepError(f"no recurring run named {args.delete_schedule!r}")
    print(f"deleted recurring run {args.delete_schedule!r}: {', '.join(deleted)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags of ``python -m pipelines.submit``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.submit",
        description="Submit the fine-tuning pipeline to Kubeflow Pipelines (README: Submit from the command line).",
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
    parser.add_argument("--dry-run", action="store_true", help="Validate; print a summary of what would run.")
    parser.add_argument("--json", action="store_true", help="With --dry-run: print the full request as JSON.")
    parser.add_argument("--wait", action="store_true", help="Wait for the run; exit 0 only if it SUCCEEDED.")
    parser.add_argument("--timeout", type=float, default=172800.0, help="--wait limit in seconds (default 48 h).")
    parser.add_argument("--poll-interval", type=float, default=30.0, help="--wait polling interval in seconds.")
    parser.add_argument("--request-timeout", type=float, default=kfp_api.DEFAULT_REQUEST_TIMEOUT_S,
                        help="Longest wait for one API request, in seconds (default %(default)g).")
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
    if args.json and not args.dry_run:
        raise UsageError("--json goes with --dry-run")
    if args.schedule and args.wait:
        raise UsageError("--wait applies to a single run, not to --schedule")
    if args.schedule_name and not args.schedule:
        raise UsageError("--schedule-name needs --schedule")
    if not all(0 < value < float("inf") for value in (args.timeout, args.poll_interval, args.request_timeout)):
        raise UsageError("--timeout, --poll-interval and --request-timeout must be positive numbers of seconds")


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 on success, 1 on an API error or a run that did not succeed, 2 on usage/config errors."""
    configure_step_logging(STEP)
    parser = build_parser()
    args = parser.parse_args(argv)
    secrets: list[str] = []
    try:
        _check_flags(args)
        if args.list_schedules or args.delete_schedule:
            target = resolve_target(args, require_host=True)
            secrets = target.auth.secrets()
            with kfp_api.api_errors(secrets):
                return manage_schedules(args, target)
        request = plan_run(args.config, args.overrides)
        if args.schedule:
            args.schedule = validate_cron(args.schedule)
        target = resolve_target(args, require_host=not args.dry_run)
        secrets = target.auth.secrets()
        if args.dry_run:
            print(json.dumps(request_json(request, args, target), indent=2) if args.json
                  else dry_run_summary(request, args, target))
            return 0
        with tempfile.TemporaryDirectory(prefix="kfp-submit-") as tmp, kfp_api.api_errors(secrets):
            package = compile_config(request.compiled, Path(tmp) / "pipeline.yaml", request.compiled_changes)
            return (schedule if args.schedule else submit)(request, args, target, package)
    except StepError as exc:
        return fail(parser, exc, secrets=secrets)


if __name__ == "__main__":
    raise SystemExit(main())
