"""Recurring runs on Kubeflow Pipelines: cron validation, pipeline versions, replace/list/delete schedules.

KFP reads cron expressions with robfig/cron and **six** fields, seconds first::

    second minute hour day-of-month month day-of-week      e.g. "0 0 2 * * *" = every day at 02:00

A five-field Unix expression is accepted by KFP but read shifted by one field ("0 2 * * *" runs at
minute 2 of every hour), so :func:`validate_cron` refuses it and names the six-field equivalent. It also
refuses what KFP would accept and never or wrongly run: a day that no chosen month has (``0 0 0 31 2 *``;
robfig/cron gives up looking and the schedule never fires), an ``@every`` shorter than
:data:`MIN_EVERY_S` or with a fraction of a second (robfig/cron rounds ``@every 0.5s`` up to one second and
truncates fractions), and digits other than ASCII 0-9 (Python's ``str.isdigit`` is true for Arabic-Indic
and fullwidth digits; Go reads no such number).

KFP cannot update a recurring run. :func:`replace_recurring_run` therefore creates the new one first
and then deletes every older recurring run with the same display name: re-running the same command
converges on exactly one schedule, and a failed create never leaves you with none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import kfp

from configs.errors import UsageError
from pipelines.kfp_api import ApiError, UnexpectedReply, name_filter, quiet, required_id

DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
# A fine-tuning run takes far longer than this; a shorter @every only queues runs behind max_concurrency=1.
MIN_EVERY_S = 60
# Go's time.Duration is an int64 of nanoseconds: about 2,562,047 hours.
_MAX_EVERY_S = Decimal(2**63 - 1) / 10**9
_GO_UNITS = {"ns": Decimal("1e-9"), "us": Decimal("1e-6"), "\u00b5s": Decimal("1e-6"), "\u03bcs": Decimal("1e-6"),
             "ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}
_GO_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_ASCII_DIGITS = re.compile(r"[0-9]+")
_MONTH_DAYS = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}
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


class CronError(UsageError):
    """A cron expression KFP would reject or misread; the message says which field and how to fix it."""


def _number(text: str, spec: _Field) -> int:
    value = spec.names.get(text.lower()) if spec.names else None
    if value is None:
        if not _ASCII_DIGITS.fullmatch(text):  # str.isdigit() is also true for Arabic-Indic or fullwidth digits
            hint = f" or a name such as {next(iter(spec.names))}" if spec.names else ""
            raise CronError(f"{spec.name} field: {text!r} is not a number in ASCII digits 0-9{hint}")
        value = int(text)
    if not spec.low <= value <= spec.high:
        hint = " (Sunday is 0)" if spec.name == "day-of-week" and value == 7 else ""
        raise CronError(f"{spec.name} field: {value} is outside {spec.low}-{spec.high}{hint}")
    return value


def _item_values(item: str, spec: _Field) -> tuple[set[int], bool]:
    """One comma-separated item (``*``, ``?``, ``a``, ``a-b``, each optionally ``/step``) as robfig/cron reads it:
    the values it selects, and whether it is an unrestricted ``*``/``?`` (a step above 1 restricts it)."""
    base, slash, step_text = item.partition("/")
    if slash and (not _ASCII_DIGITS.fullmatch(step_text) or int(step_text) < 1):
        raise CronError(f"{spec.name} field: step in {item!r} must be a positive integer")
    step = int(step_text) if slash else 1
    if base == "?" and not spec.question_mark:
        raise CronError(f"{spec.name} field: '?' is only allowed in day-of-month and day-of-week")
    if base in ("*", "?"):
        return set(range(spec.low, spec.high + 1, step)), step == 1
    low, dash, high = base.partition("-")
    first = _number(low, spec)
    last = _number(high, spec) if dash else (spec.high if slash else first)  # "a/step" means "a-max/step"
    if last < first:
        raise CronError(f"{spec.name} field: range {base!r} runs backwards")
    return set(range(first, last + 1, step)), False


def _check_six_fields(fields: list[str]) -> None:
    """Check each field, and that the schedule fires at all (a chosen day that a chosen month has)."""
    values: dict[str, tuple[set[int], bool]] = {}
    for text, spec in zip(fields, CRON_FIELDS, strict=True):
        selected, star = set(), False
        for item in text.split(","):
            if not item:
                raise CronError(f"{spec.name} field: empty list item in {text!r}")
            more, item_star = _item_values(item, spec)
            selected |= more
            star = star or item_star
        values[spec.name] = (selected, star)
    days, days_star = values["day-of-month"]
    months = values["month"][0]
    # robfig/cron matches day-of-month AND day-of-week when either is '*' or '?', else either one. Only a
    # day-of-month restricted under an unrestricted day-of-week can select nothing: a day no chosen month has
    # (February 29 counts: robfig/cron looks five years ahead, which always holds a leap year).
    if values["day-of-week"][1] and not days_star and not any(
            day <= _MONTH_DAYS[month] for day in days for month in months):
        shown = ", ".join(name.capitalize() for name, number in _MONTHS.items() if number in months)
        raise CronError(f"day-of-month field: the schedule never fires: no chosen day ({min(days)} or later) "
                        f"occurs in {shown}, which {'has' if len(months) == 1 else 'have'} at most "
                        f"{max(_MONTH_DAYS[month] for month in months)} days")


def _every_seconds(duration: str) -> Decimal:
    """The length of a Go duration such as ``6h30m``, in seconds.

    Raises:
        CronError: not a Go duration (units ns, us, ms, s, m, h; ASCII digits), or longer than Go allows.
    """
    if not duration or _GO_PART.sub("", duration):
        raise CronError(f"@every {duration!r}: not a Go duration such as '6h', '90m' or '1h30m' (units ns, us, ms, "
                        "s, m, h; ASCII digits)")
    seconds = sum((Decimal(number) * _GO_UNITS[unit] for number, unit in _GO_PART.findall(duration)), Decimal(0))
    if seconds > _MAX_EVERY_S:
        raise CronError(f"@every {duration}: longer than the longest Go duration (about 2,562,047h)")
    return seconds


def validate_cron(expression: str) -> str:
    """Check a KFP (robfig/cron) schedule and return it with whitespace normalised.

    Accepts six fields (seconds first), the descriptors in :data:`DESCRIPTORS` and ``@every <duration>``.

    Raises:
        CronError: wrong field count (a five-field expression gets its six-field equivalent suggested),
            a value out of range or not in ASCII digits, a malformed item, a schedule that never fires, or an
            ``@every`` under :data:`MIN_EVERY_S` or with a fraction of a second; the message names the field.
    """
    text = " ".join(expression.split())
    if text.startswith("@"):
        if text in DESCRIPTORS:
            return text
        every, _, duration = text.partition(" ")
        if every == "@every":
            seconds = _every_seconds(duration)
            if seconds < MIN_EVERY_S:
                raise CronError(f"@every {duration}: {seconds.normalize():f} s is too short; the interval must be at "
                                f"least {MIN_EVERY_S} s (one fine-tuning run lasts far longer, and robfig/cron reads "
                                "anything under a second as one second)")
            if seconds != seconds.to_integral_value():
                raise CronError(f"@every {duration}: the interval must be whole seconds (robfig/cron drops the "
                                f"fraction of {seconds.normalize():f} s)")
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
        raise ApiError(f"{len(matches)} pipelines are called {name!r}; delete the extras in the KFP UI")
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
            pipeline_id = required_id(getattr(pipeline, "pipeline_id", None), "pipeline id")
            versions = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
            if not versions.pipeline_versions:
                raise UnexpectedReply(f"KFP created pipeline {pipeline_name!r} without a version")
            return pipeline_id, required_id(versions.pipeline_versions[0].pipeline_version_id, "pipeline version id")
        version = client.upload_pipeline_version(str(package_path), pipeline_version_name=version_name,
                                                 pipeline_id=pipeline_id, description=description)
    return pipeline_id, required_id(getattr(version, "pipeline_version_id", None), "pipeline version id")


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
        created_id = required_id(getattr(created, "recurring_run_id", None), "recurring run id")
        for recurring_run_id in older:  # only once the new one exists: a failed create leaves the old in place
            client.delete_recurring_run(recurring_run_id)
    return created_id, older


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
