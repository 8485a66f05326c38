"""The model registry side of the gate: the champion and its files on the volume.

- **Aliases** (MLflow 3.x, no stages): ``champion`` is the model in use (served through the ``current`` pointer),
  ``previous`` the one before it, ``challenger`` a version that did not beat it. The baseline of a run is the
  version holding ``champion``; before the first promotion it is the base model (:func:`baseline_label`).
- **Sources on the PVC**: a version's source is an opaque ``pvc://<pvc>/<path>`` URI (:func:`pvc_uri`,
  :func:`path_from_pvc_uri`), never a path that only one pod could read.
- **Stored scores** live with evaluation (:mod:`components.evaluate.store`): find-baseline looks up the
  baseline's there by eval key.

    python -m components.gate.registry --config configs/local.yaml      # print the aliases

Exit codes: 0 printed, 1 the registry cannot be read, 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from components.common.cli import cli_config, fail, new_parser
from components.common.mlflow_client import make_client
from components.common.storage import StorageError, on_volume, storage_root
from components.common.tags import KFP_RUN_TAG, REJECTED_REASON_TAG
from configs.errors import StepError
from configs.schema import PipelineConfig

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

CHAMPION = "champion"
PREVIOUS = "previous"
CHALLENGER = "challenger"
BASE_MODEL_NAME = "base model"
MAX_TAG_CHARS = 4000  # keeps long reason lists well inside every MLflow backend's tag limit


class RegistryError(StepError, RuntimeError):
    """The model cannot be registered or promoted; the message names the model, version or path."""


class BaselineError(StepError, RuntimeError):
    """The baseline cannot be found or its stored results cannot be fetched; names the model or eval key."""


# Paths <-> opaque source URIs ---------------------------------------------------------------------------------


def pvc_uri(cfg: PipelineConfig, path: str | Path) -> str:
    """The opaque ``pvc://<pvc>/<path relative to the mount>`` URI of a directory on the volume.

    Raises:
        RegistryError: the path is outside the storage root (it could not be found through the PVC).
    """
    try:
        absolute = on_volume(cfg, path).resolve()
    except StorageError as exc:
        raise RegistryError(str(exc)) from None
    try:
        relative = absolute.relative_to(storage_root(cfg))
    except ValueError:
        raise RegistryError(f"{absolute} is outside the storage root {storage_root(cfg)}; only models on the "
                            f"PVC {cfg.storage.pvc_name} can be registered") from None
    return f"pvc://{cfg.storage.pvc_name}/{relative.as_posix()}"


def path_from_pvc_uri(cfg: PipelineConfig, uri: str) -> Path:
    """The local path (under ``storage.mount_path``) of a ``pvc://`` source URI.

    Raises:
        RegistryError: not a ``pvc://`` URI, another PVC than ``storage.pvc_name``, or a path
            escaping the storage root.
    """
    if not uri.startswith("pvc://"):
        raise RegistryError(f"model source {uri!r} is not a pvc:// URI; it was not registered by this pipeline")
    pvc, _, relative = uri.removeprefix("pvc://").partition("/")
    if pvc != cfg.storage.pvc_name:
        raise RegistryError(f"model source {uri!r} lives on PVC {pvc!r}, but this run mounts "
                            f"storage.pvc_name={cfg.storage.pvc_name!r}")
    if not relative or PurePosixPath(relative).is_absolute():
        raise RegistryError(f"model source {uri!r} has no path inside the PVC")
    try:
        return on_volume(cfg, relative)
    except StorageError as exc:
        raise RegistryError(f"model source {uri!r}: {exc}") from None


# Registry look-ups ---------------------------------------------------------------------------------------------


def is_missing(exc: Exception) -> bool:
    """Whether an MLflow error says the model or version does not exist."""
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def registered_aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """``{alias: version}`` of a registered model; empty when the model does not exist yet."""
    from mlflow.exceptions import MlflowException

    try:  # a SQLite store gives int versions, a tracking server strings: normalise to strings
        return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}
    except MlflowException as exc:
        if is_missing(exc):
            return {}
        raise


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The model version holding ``alias``, or None (no such alias, or no such registered model)."""
    version = registered_aliases(client, name).get(alias)
    return client.get_model_version(name, version) if version else None


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    """Create the registered model when missing (safe when another run creates it at the same time)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return
    except MlflowException as exc:
        if not is_missing(exc):
            raise
    try:
        client.create_registered_model(name, description="Fine-tuned LLMs; the alias 'champion' is served.")
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise


def version_of_run(client: MlflowClient, name: str, kfp_run_id: str) -> ModelVersion | None:
    """The version a (possibly earlier attempt of a) pipeline run registered, found by ``kfp.run_id``."""
    if "'" in name or "'" in kfp_run_id:
        raise RegistryError(f"model name {name!r} and run id {kfp_run_id!r} must not contain quotes")
    found = client.search_model_versions(f"name = '{name}' and tags.`{KFP_RUN_TAG}` = '{kfp_run_id}'")
    return min(found, key=lambda version: int(version.version)) if found else None


def mark_challenger(client: MlflowClient, name: str, model_version: str, reason: str) -> None:
    """Give ``model_version`` the alias ``challenger`` and record ``reason``, why it was not promoted (the gate's
    headline, or promote-model's race), as its tag ``llmft.rejected_reason``.

    Raises:
        RegistryError: the version does not exist.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, model_version)
    except MlflowException as exc:
        if is_missing(exc):
            raise RegistryError(f"registered model {name!r} has no version {model_version!r}") from None
        raise
    client.set_registered_model_alias(name, CHALLENGER, model_version)
    client.set_model_version_tag(name, model_version, REJECTED_REASON_TAG, reason[:MAX_TAG_CHARS] or "not promoted")


# The baseline ----------------------------------------------------------------------------------------------------


def baseline_label(champion_version: str | None) -> str:
    """The baseline's display name: ``champion v3`` or ``base model``."""
    return f"{CHAMPION} v{champion_version}" if champion_version else BASE_MODEL_NAME


def build_parser() -> argparse.ArgumentParser:
    """The command line: print the registered model's aliases."""
    return new_parser("components.gate.registry", "Print the aliases (champion, previous, challenger) of "
                                                  "mlflow.registered_model_name.")


def main(argv: list[str] | None = None) -> int:
    """Print ``{alias: version}``; 0 printed, 1 the registry cannot be read, 2 a usage or configuration error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = cli_config(parser, args)
        aliases = registered_aliases(make_client(cfg), cfg.mlflow.registered_model_name)
    except StepError as exc:
        return fail(parser, exc)
    print(json.dumps(aliases, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
