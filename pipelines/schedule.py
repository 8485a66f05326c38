"""Recurring runs on Kubeflow Pipelines: cron validation, pipeline versions, replace/list/delete schedules.

KFP reads cron expressions with robfig/cron and **six** fields, seconds first::

    second minute hour day-of-month month day-of-week      e.g. "0 0 2 * * *" = every day at 02:00

A five-field Unix expression is accepted by KFP but read shifted by one field ("0 2 * * *" runs at
minute 2 of every hour), so :func:`validate_cron` refuses it and names the six-field equivalent.

KFP cannot update a recurring run. :func:`replace_recurring_run` therefore creates the new one first
and then deletes every older recurring run with the same display name: re-running the same command
converges on exactly one schedule, and a failed create never leaves you with none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kfp

from pipelines.kfp_api import name_filter, quiet

DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_GO_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")
_MONTHS = {name: number for number, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
_DAYS = {name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int]
    question_mark: bool = False


CRON_FIELDS = (
    _Field("second", 0, 59, {}),
    _Field("minute", 0, 59, {}),
    _Field("hour", 0, 23, {}),
    _Field("day-of-month", 1, 31, {}, question_mark=True),
    _Field("month", 1, 12, _MONTHS),
    _Field("day-of-week", 0, 6, _DAYS, question_mark=True),
)


class CronError(ValueError):
    """A cron expression KFP would reject or misread; the message says which field and how to fix it."""


def _number(text: str, spec: _Field) -> int:
    value = spec.names.get(text.lower()) if spec.names else None
    if value is None:
        if not text.isdigit():
            hint = f" or a name such as {next(iter(spec.names))}" if spec.names else ""
            raise CronError(f"{spec.name} field: {text!r} is not a number{hint}")
        value = int(text)
    if not spec.low <= value <= spec.high:
        hint = " (Sunday is 0)" if spec.name == "day-of-week" and value == 7 else ""
        raise CronError(f"{spec.name} field: {value} is outside {spec.low}-{spec.high}{hint}")
    return value


def _check_item(item: str, spec: _Field) -> None:
    """One comma-separated item: ``*``, ``?``, ``a``, ``a-b``, each optionally ``/step``."""
    base, slash, step = item.partition("/")
    if slash and (not step.isdigit() or int(step) < 1):
        raise CronError(f"{spec.name} field: step in {item!r} must be a positive integer")
    if base == "?":
        if not spec.question_mark:
            raise CronError(f"{spec.name} field: '?' is only allowed in day-of-month and day-of-week")
        return
    if base == "*":
        return
    low, dash, high = base.partition("-")
    first = _number(low, spec)
    if dash and _number(high, spec) < first:
        raise CronError(f"{spec.name} field: range {base!r} runs backwards")


def _check_six_fields(fields: list[str]) -> None:
    for text, spec in zip(fields, CRON_FIELDS, strict=True):
        for item in text.split(","):
            if not item:
                raise CronError(f"{spec.name} field: empty list item in {text!r}")
            _check_item(item, spec)


def validate_cron(expression: str) -> str:
    """Check a KFP (robfig/cron) schedule and return it with whitespace normalised.

    Accepts six fields (seconds first), the descriptors in :data:`DESCRIPTORS` and ``@every <duration>``.

    Raises:
        CronError: wrong field count (a five-field expression gets its six-field equivalent suggested),
            a value out of range, or a malformed item; the message names the field.
    """
    text = " ".join(expression.split())
    if text.startswith("@"):
        if text in DESCRIPTORS:
            return text
        every, _, duration = text.partition(" ")
        if every == "@every" and _GO_DURATION.match(duration):
            return text
        raise CronError(f"cron {expression!r}: unknown descriptor; use one of {', '.join(DESCRIPTORS)} "
                        "or '@every <duration>' such as '@every 6h'")
    fields = text.split(" ") if text else []
    if len(fields) == 5:
        suggestion = f"0 {text}"
        try:
            _check_six_fields(suggestion.split(" "))
        except CronError as exc:
            raise CronError(f"cron {expression!r} has 5 fields, but KFP expects 6 (seconds first); "
                            f"and as 'minute hour day month weekday' it is invalid: {exc}") from None
        raise CronError(f"cron {expression!r} has 5 fields, but KFP expects 6 with seconds first "
                        f"(second minute hour day-of-month month day-of-week) and would misread it; "
                        f"did you mean {suggestion!r}?")
    if len(fields) != 6:
        raise CronError(f"cron {expression!r} has {len(fields)} fields; KFP expects 6: "
                        "second minute hour day-of-month month day-of-week, e.g. '0 0 2 * * *' (daily at 02:00)")
    try:
        _check_six_fields(fields)
    except CronError as exc:
        raise CronError(f"cron {expression!r}: {exc}") from None
    return text


def find_pipeline_id(client: kfp.Client, name: str, namespace: str | None) -> str | None:
    """The id of the pipeline whose display name is ``name``, or None."""
    with quiet():
        reply = client.list_pipelines(filter=name_filter(name), namespace=namespace, page_size=100)
    matches = [p.pipeline_id for p in reply.pipelines or [] if p.display_name == name]
    if len(matches) > 1:
        raise ValueError(f"{len(matches)} pipelines are called {name!r}; delete the extras in the KFP UI")
    return matches[0] if matches else None


def upload_version(client: kfp.Client, package_path: Path, *, pipeline_name: str, version_name: str,
                   namespace: str | None, description: str) -> tuple[str, str]:
    """Upload ``package_path`` as a new version of the pipeline ``pipeline_name`` (created when missing).

    A new pipeline's first version is the uploaded package itself, so no second copy is uploaded.
    Returns ``(pipeline_id, pipeline_version_id)``.
    """
    pipeline_id = find_pipeline_id(client, pipeline_name, namespace)
    with quiet():
        if pipeline_id is None:
            pipeline = client.upload_pipeline(str(package_path), pipeline_name=pipeline_name,
                                              description=description, namespace=namespace)
            versions = client.list_pipeline_versions(pipeline.pipeline_id, page_size=1, sort_by="created_at desc")
            if not versions.pipeline_versions:
                raise ValueError(f"KFP created pipeline {pipeline_name!r} without a version")
            return pipeline.pipeline_id, versions.pipeline_versions[0].pipeline_version_id
        version = client.upload_pipeline_version(str(package_path), pipeline_version_name=version_name,
                                                 pipeline_id=pipeline_id, description=description)
    return pipeline_id, version.pipeline_version_id


def list_recurring_runs(client: kfp.Client, namespace: str | None, display_name: str | None = None) -> list[Any]:
    """Every recurring run (optionally only those named ``display_name``), following all pages.

    The name is also compared here, so a server that ignores the filter cannot widen a delete.
    """
    found, token = [], ""
    while True:
        with quiet():
            reply = client.list_recurring_runs(page_token=token, page_size=100, namespace=namespace,
                                               filter=name_filter(display_name) if display_name else None)
        found.extend(r for r in reply.recurring_runs or [] if display_name is None or r.display_name == display_name)
        token = reply.next_page_token or ""
        if not token:
            return found


def delete_recurring_runs(client: kfp.Client, name: str, namespace: str | None) -> list[str]:
    """Delete every recurring run called ``name``; returns the deleted ids (empty when none existed)."""
    ids = [run.recurring_run_id for run in list_recurring_runs(client, namespace, name)]
    with quiet():
        for recurring_run_id in ids:
            client.delete_recurring_run(recurring_run_id)
    return ids


def replace_recurring_run(client: kfp.Client, *, name: str, cron: str, experiment_id: str, pipeline_id: str,
                          version_id: str, parameters: dict[str, Any], namespace: str | None,
                          description: str, service_account: str | None = None) -> tuple[str, list[str]]:
    """Create the recurring run ``name`` pinned to one pipeline version, then delete older ones of that name.

    The new run never overlaps itself (``max_concurrency=1``) and does not backfill missed slots
    (``no_catchup=True``). Returns ``(new_recurring_run_id, deleted_ids)``.
    """
    older = [run.recurring_run_id for run in list_recurring_runs(client, namespace, name)]
    with quiet():
        created = client.create_recurring_run(
            experiment_id=experiment_id, job_name=name, description=description, cron_expression=cron,
            max_concurrency=1, no_catchup=True, params=parameters, pipeline_id=pipeline_id,
            version_id=version_id, enabled=True, service_account=service_account)
        for recurring_run_id in older:
            client.delete_recurring_run(recurring_run_id)
    return created.recurring_run_id, older


def describe_recurring_run(run: Any) -> str:
    """One line for ``--list-schedules``: name, cron, mode, pinned version and id."""
    trigger = run.trigger
    if trigger and trigger.cron_schedule:
        when = trigger.cron_schedule.cron
    elif trigger and trigger.periodic_schedule:
        when = f"every {trigger.periodic_schedule.interval_second}s"
    else:
        when = "?"
    reference = run.pipeline_version_reference
    version = reference.pipeline_version_id if reference else (run.pipeline_version_id or "inline spec")
    return f"{run.display_name}\t{when}\t{run.mode or ''}\tversion={version}\tid={run.recurring_run_id}"
