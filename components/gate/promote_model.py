"""The promote-model step: the new version becomes the champion, and ``current`` points at it.

The version takes the alias ``champion`` (the old champion becomes ``previous``) and the published ``current``
pointer (:func:`components.merge.publish.set_current`) moves to it, so that vLLM serves it after its next
restart. Only while the champion is still the baseline the candidate beat: when another run promoted a new
champion in the meantime, this version becomes ``challenger`` instead, with that reason. Promotions of one
registered model take turns under a lock file on the volume.

    python -m components.gate.promote_model --config configs/local.yaml --kfp-run-id RUN --model-version 3 \\
        --version v3

Exit codes: 0 promoted (the previous champion's version is printed), 1 the promotion failed, 2 a usage or
configuration error.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
from collections.abc import Iterator
from pathlib import Path

from components.common.cli import cli_config, fail, new_parser
from components.common.logs import configure_step_logging
from components.common.pipeline_runs import step_run
from components.common.run_data import set_run_tags
from components.common.storage import on_volume
from components.common.tags import MODEL_VERSION_TAG, PREVIOUS_CHAMPION_TAG, PUBLISHED_VERSION_TAG, REJECTED_REASON_TAG
from components.gate.registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    RegistryError,
    baseline_label,
    is_missing,
    mark_challenger,
    registered_aliases,
)
from components.merge.publish import set_current
from components.merge.verify import PublishError, verify_model_dir
from configs.errors import StepError
from configs.loading import config_from_json

STEP = "promote-model"


@contextlib.contextmanager
def promotion_lock(models_dir: Path) -> Iterator[None]:
    """Serialise promotions of one registered model across pipeline runs (a lock file on the shared volume)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / ".promote.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def run_step(config: str, kfp_run_id: str, model_version: str, version: str,
             baseline_version: str | None = None) -> tuple[str, str]:
    """Move ``champion`` to ``model_version`` (the old champion becomes ``previous``) and ``current`` to ``version``.

    Only while the champion is still ``baseline_version`` (find-baseline's: the champion's registry version the
    candidate was compared with, ``""`` for the base model; None: not checked, as by hand): when another
    run promoted a new champion in the meantime, the version becomes ``challenger`` instead, with that reason
    (promotions of one model take turns under :func:`promotion_lock`). Idempotent: a retry after the alias moved
    reports the same previous champion (kept as a version tag before anything moves). Reads storage (mount path,
    models_root) and mlflow (tracking URI, experiment, registered_model_name).

    Returns:
        ``("champion", previous champion version or "")``, or ``("challenger", the current champion)``.

    Raises:
        ConfigError: the config parameter is invalid.
        RegistryError: the model version does not exist, belongs to another published version, or
            its published directory is missing or incomplete (checked before any alias moves).
        TrackingUnavailable: the MLflow server does not answer.
    """
    from mlflow.exceptions import MlflowException

    configure_step_logging(STEP)

    cfg = config_from_json(config)
    name = cfg.mlflow.registered_model_name
    models_dir = on_volume(cfg, cfg.storage.models_root) / name
    with step_run(cfg, kfp_run_id, STEP) as (client, run_id), promotion_lock(models_dir):
        try:
            target = client.get_model_version(name, model_version)
        except MlflowException as exc:
            if is_missing(exc):
                raise RegistryError(f"registered model {name!r} has no version {model_version!r}") from None
            raise
        published = target.tags.get(PUBLISHED_VERSION_TAG)
        if published and published != version:
            raise RegistryError(f"{name} version {model_version} was published as {published!r}, not {version!r}")
        try:  # fail before any alias moves, not halfway through the promotion
            verify_model_dir(models_dir / version, checksums=False)
        except PublishError as exc:
            raise RegistryError(f"cannot promote {name} version {model_version}: {exc}") from None
        aliases = registered_aliases(client, name)
        old = aliases.get(CHAMPION, "")
        if baseline_version is not None and old not in (baseline_version, str(model_version)):
            reason = (f"not promoted: the champion is now v{old}, promoted by another run after this one compared "
                      f"with the {baseline_label(baseline_version or None)}; run the pipeline again to compare with "
                      f"v{old}")
            mark_challenger(client, name, model_version, reason)
            set_run_tags(client, run_id, {MODEL_VERSION_TAG: str(model_version), REJECTED_REASON_TAG: reason})
            print(json.dumps({"registered_model": name, "challenger": str(model_version), "reason": reason}))
            return CHALLENGER, old
        if old == str(model_version):
            previous = target.tags.get(PREVIOUS_CHAMPION_TAG, "")
        else:
            previous = old
            if previous:  # recorded before anything moves, so a retry knows it after the move
                client.set_model_version_tag(name, model_version, PREVIOUS_CHAMPION_TAG, previous)
                client.set_registered_model_alias(name, PREVIOUS, previous)
            client.set_registered_model_alias(name, CHAMPION, model_version)
        if aliases.get(CHALLENGER) == str(model_version):
            client.delete_registered_model_alias(name, CHALLENGER)
        client.delete_model_version_tag(name, model_version, REJECTED_REASON_TAG)
        set_current(models_dir, version)
        set_run_tags(client, run_id, {MODEL_VERSION_TAG: str(model_version),
                                      PREVIOUS_CHAMPION_TAG: previous or "none"})
    print(json.dumps({"registered_model": name, "champion": str(model_version), "previous": previous,
                      "current": version}))
    return CHAMPION, previous


def build_parser() -> argparse.ArgumentParser:
    """The command line: make a registered version the champion."""
    parser = new_parser("components.gate.promote_model", "Make a registered version the champion and point "
                                                         "current at its published directory.")
    parser.add_argument("--kfp-run-id", required=True, help="Pipeline run id (for the MLflow child run).")
    parser.add_argument("--model-version", required=True, help="Registry version number, e.g. 3.")
    parser.add_argument("--version", required=True, help="Published version name the current pointer moves to.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Promote; 0 done, 1 failed, 2 usage or config error."""
    configure_step_logging(STEP)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _, previous = run_step(cli_config(parser, args).model_dump_json(), args.kfp_run_id, args.model_version,
                                   args.version)
    except StepError as exc:
        return fail(parser, exc)
    print(previous)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
