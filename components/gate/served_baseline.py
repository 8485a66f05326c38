"""The baseline is what is served: the model ``models/<name>/current`` points at, which must be the registry's
champion.

- Nothing promoted yet (no ``champion`` alias and no ``current``): the base model (``storage.base_model``).
- ``champion`` and ``current`` name the same published directory: that directory.
- They disagree (the champion's version deleted or its alias removed, an alias moved by hand, a promotion cut
  short between moving the alias and moving ``current``): :func:`served_baseline` refuses with a
  :class:`~components.gate.registry.BaselineError` that names both and the command that makes them agree. It
  never falls back to the base model while a fine-tuned model is served: a candidate better than the base but
  worse than what is served would be promoted.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from components.common.storage import on_volume
from components.common.tags import PUBLISHED_VERSION_TAG
from components.gate.registry import (
    CHAMPION,
    BaselineError,
    RegistryError,
    alias_version,
    baseline_label,
    path_from_pvc_uri,
)
from components.merge.publish import CURRENT_FILE, CURRENT_LINK, current_version
from configs.schema import PipelineConfig

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient


class Baseline(NamedTuple):
    """The model a candidate is compared with."""

    label: str  # "champion v3" or "base model"
    model_dir: Path
    champion: ModelVersion | None  # the registry version; None for the base model


def served_baseline(client: MlflowClient, cfg: PipelineConfig) -> Baseline:
    """The model ``current`` serves, checked against the registry's champion (see the module docstring).

    Reads storage (mount_path, base_model, models_root) and mlflow.registered_model_name.

    Raises:
        BaselineError: ``champion`` and ``current`` disagree (the message says which is which and how to fix it),
            or the baseline's directory does not exist.
        RegistryError: the champion's source URI is not on this PVC.
    """
    name = cfg.mlflow.registered_model_name
    models_dir = on_volume(cfg, cfg.storage.models_root) / name
    served = current_version(models_dir)
    champion = alias_version(client, name, CHAMPION)
    if champion is None and served is None:
        model_dir = on_volume(cfg, cfg.storage.base_model)
        if not model_dir.is_dir():
            raise BaselineError(f"the base model directory {model_dir} does not exist on the volume (check "
                                "storage.base_model)")
        return Baseline(baseline_label(None), model_dir, None)
    champion_dir = path_from_pvc_uri(cfg, champion.source) if champion is not None else None
    served_dir = models_dir / served if served else None
    if champion_dir is not None and served_dir is not None and _same(champion_dir, served_dir):
        if not champion_dir.is_dir():
            raise BaselineError(f"the {baseline_label(champion.version)} directory {champion_dir} does not exist on "
                                f"the volume (registry source {champion.source})")
        return Baseline(baseline_label(champion.version), champion_dir, champion)
    raise BaselineError(_disagreement(client, cfg, models_dir, champion, champion_dir, served))


def _same(one: Path, other: Path) -> bool:
    return one.resolve() == other.resolve()


def _disagreement(client: MlflowClient, cfg: PipelineConfig, models_dir: Path, champion: ModelVersion | None,
                  champion_dir: Path | None, served: str | None) -> str:
    """Which is which, and the command that makes the registry and ``current`` agree."""
    name = cfg.mlflow.registered_model_name
    pointer = models_dir / CURRENT_LINK
    fix = ("python -m components.gate.promote_model --config <config> --kfp-run-id fix-baseline "
           "--model-version {number} --version {version}")
    serving = (f"{pointer} serves {served}" if served else
               f"nothing is served ({pointer} and {models_dir / CURRENT_FILE} do not exist)")
    registry = (f"the registry's champion of {name!r} is v{champion.version} ({champion_dir})" if champion else
                f"the registry has no champion of {name!r} (its version deleted, or the alias removed by hand)")
    fixes = []
    if champion is not None and champion_dir is not None:
        fixes.append(f"to serve champion v{champion.version}: "
                     + fix.format(number=champion.version, version=champion_dir.name))
    if served:
        serving_version = _registered_as(client, name, served)
        if serving_version is not None:
            fixes.append(f"to keep {served} (registry v{serving_version}): "
                         + fix.format(number=serving_version, version=served))
        else:
            fixes.append(f"{served} has no registry version: register it (python -m components.gate.register_model) "
                         f"and promote it, or retire it by removing {pointer} and {models_dir / CURRENT_FILE}")
    return (f"the baseline must be the model that is served, and they disagree: {serving}, but {registry}. "
            "The gate will not compare with another model (nor fall back to the base model) meanwhile. Make them "
            "agree, then run again: " + "; or ".join(fixes))


def _registered_as(client: MlflowClient, name: str, published: str) -> str | None:
    """The registry version whose published directory is ``published`` (by its tag), or None."""
    if "'" in name or "'" in published:
        raise RegistryError(f"model name {name!r} and version {published!r} must not contain quotes")
    found = client.search_model_versions(f"name = '{name}' and tags.`{PUBLISHED_VERSION_TAG}` = '{published}'")
    return str(min(int(version.version) for version in found)) if found else None
