"""Register the published merged model in the MLflow Model Registry, and promote it when the gate says so.

Every run registers a new version of ``mlflow.registered_model_name`` (MLflow 3.x aliases, no
stages) whose source is the published model on the PVC as an opaque ``pvc://<pvc>/<path>`` URI,
whose run is the pipeline's parent run, and whose tags carry the lineage: dataset hash, config hash,
seed, library versions, image, KFP run id and the MMLU scores. Registration is idempotent: a retried
task finds the version it created by its ``kfp.run_id`` tag. A rejected version gets the alias
``challenger`` and the reason; a promoted one takes ``champion`` (the old champion becomes
``previous``) and the published ``current`` pointer moves to it.

    python -m components.register_model register --config configs/local.yaml --kfp-run-id RUN \\
        --model-dir models/tiny-llama-demo/v3 --version v3 --comparison output/RUN/compare/comparison.json \\
        --dataset-hash 1a2b3c
    python -m components.register_model promote --config configs/local.yaml --kfp-run-id RUN \\
        --model-version 3 --version v3
    python -m components.register_model show --config configs/local.yaml
"""

import argparse
import json
import sys
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, NamedTuple

# Not `dsl.component`: a running task imports this module, and kfp.dsl leaves `component` out at run
# time (_KFP_RUNTIME=true); the decorator module itself imports fine there.
from kfp.dsl.component_decorator import component

from components.image import DEFAULT_IMAGE
from components.storage import StorageError, inside, storage_root
from components.tracking import KFP_RUN_TAG
from configs.schema import PipelineConfig

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

CHAMPION = "champion"
PREVIOUS = "previous"
CHALLENGER = "challenger"
LOCAL_PATH_TAG = "llmft.local_path"
PREVIOUS_CHAMPION_TAG = "llmft.previous_champion"
REJECTED_REASON_TAG = "llmft.rejected_reason"
LINEAGE_PACKAGES = ("llamafactory", "transformers", "peft", "torch")
MAX_TAG_CHARS = 4000  # keeps long reason lists well inside every MLflow backend's tag limit
DECISIONS = ("promote", "reject")

class RegistryError(RuntimeError):
    """The model cannot be registered or promoted; the message names the model, version or path."""


# ---------------------------------------------------------------- paths <-> opaque source URIs


def storage_path(cfg: PipelineConfig, path: str | Path) -> Path:
    """An absolute path for ``path``: absolute paths as given, relative ones under the storage root."""
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate.resolve()
    try:
        return cfg.storage.resolve(str(path))
    except ValueError as exc:  # '..' or a symlink out of the storage root
        raise RegistryError(f"{path}: {exc}") from None


def pvc_uri(cfg: PipelineConfig, path: str | Path) -> str:
    """The opaque ``pvc://<pvc>/<path relative to the mount>`` URI of a directory on the volume.

    Raises:
        RegistryError: the path is outside the storage root (it could not be found through the PVC).
    """
    absolute = storage_path(cfg, path)
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
        return inside(storage_root(cfg), relative)
    except StorageError as exc:
        raise RegistryError(f"model source {uri!r}: {exc}") from None


# ---------------------------------------------------------------- registry look-ups


def _is_missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def registered_aliases(client: "MlflowClient", name: str) -> dict[str, str]:
    """``{alias: version}`` of a registered model; empty when the model does not exist yet."""
    from mlflow.exceptions import MlflowException

    try:  # a SQLite store gives int versions, a tracking server strings: normalise to strings
        return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}
    except MlflowException as exc:
        if _is_missing(exc):
            return {}
        raise


def alias_version(client: "MlflowClient", name: str, alias: str) -> "ModelVersion | None":
    """The model version holding ``alias``, or None (no such alias, or no such registered model)."""
    version = registered_aliases(client, name).get(alias)
    return client.get_model_version(name, version) if version else None


def ensure_registered_model(client: "MlflowClient", name: str) -> None:
    """Create the registered model when missing (safe when another run creates it at the same time)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return
    except MlflowException as exc:
        if not _is_missing(exc):
            raise
    try:
        client.create_registered_model(name, description="Fine-tuned LLMs; the alias 'champion' is served.")
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise


def version_of_run(client: "MlflowClient", name: str, kfp_run_id: str) -> "ModelVersion | None":
    """The version a (possibly earlier attempt of a) pipeline run registered, found by ``kfp.run_id``."""
    if "'" in name or "'" in kfp_run_id:
        raise RegistryError(f"model name {name!r} and run id {kfp_run_id!r} must not contain quotes")
    found = client.search_model_versions(f"name = '{name}' and tags.`{KFP_RUN_TAG}` = '{kfp_run_id}'")
    return min(found, key=lambda version: int(version.version)) if found else None


def set_run_tags(client: "MlflowClient", run_id: str, tags: dict[str, str]) -> None:
    """Set several tags on a run in one request."""
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])


# ---------------------------------------------------------------- lineage


def package_versions() -> dict[str, str]:
    """Installed versions of the training stack (``n/a`` when a package is missing)."""
    from importlib import metadata

    versions = {}
    for package in LINEAGE_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "n/a"
    return versions


def lineage_tags(cfg: PipelineConfig, kfp_run_id: str, *, model_dir: Path, version: str, decision: str,
                 reasons: str, comparison: dict[str, Any], dataset_hash: str) -> dict[str, str]:
    """Every tag a model version carries: what it was trained on, with what, and how it scored."""
    candidate = comparison.get("candidate", {})
    losses = comparison.get("losses", {}).get("candidate", {})
    tags = {
        KFP_RUN_TAG: kfp_run_id,
        "llmft.dataset_hash": dataset_hash,
        "llmft.datasets": ",".join(cfg.dataset.names),
        "llmft.config_hash": cfg.config_hash(),
        "llmft.seed": str(cfg.training.seed),
        "llmft.method": cfg.training.method,
        "llmft.image": cfg.cluster.image,
        "llmft.published_version": version,
        LOCAL_PATH_TAG: str(model_dir),
        "llmft.decision": decision,
        "llmft.reasons": reasons[:MAX_TAG_CHARS],
        "llmft.baseline": str(comparison.get("baseline_name", "n/a")),
        "llmft.mcnemar_p": str(comparison.get("mcnemar", {}).get("p_value", "n/a")),
        "llmft.train_run_id": str(comparison.get("train_run_id") or "n/a"),
        "llmft.train_loss": str(losses.get("train_loss", "n/a")),
        "llmft.eval_loss": str(losses.get("eval_loss", "n/a")),
        "llmft.mmlu_micro": str(candidate.get("micro", "n/a")),
        "llmft.mmlu_macro": str(candidate.get("macro", "n/a")),
    }
    for category, row in comparison.get("categories", {}).items():
        tags[f"llmft.mmlu.{category.replace(' ', '_')}"] = str(row.get("candidate", "n/a"))
    for package, installed in package_versions().items():
        tags[f"llmft.version.{package}"] = installed
    return tags


# ---------------------------------------------------------------- steps


def run_register(config: str, kfp_run_id: str, model_dir: str, version: str, decision: str, reasons: str,
                 comparison_path: str, dataset_hash: str) -> tuple[str, str]:
    """Register the published model as a new version (or find the one this run already registered).

    Reads storage (mount path, PVC name), mlflow (tracking URI, experiment, registered_model_name),
    dataset.names, training (seed, method), cluster.image and the config hash.

    Returns:
        ``(model_version, "registered")``.

    Raises:
        ConfigError: the config parameter is invalid.
        RegistryError: unknown decision, model directory missing or outside the PVC, or an unreadable
            comparison file.
        TrackingUnavailable: the MLflow server does not answer.
    """
    from components.tracking import parent_run_id, step_run
    from configs.schema import config_from_json

    cfg = config_from_json(config)
    if decision not in DECISIONS:
        raise RegistryError(f"decision must be one of {DECISIONS}, got {decision!r}")
    published = storage_path(cfg, model_dir)
    if not published.is_dir():
        raise RegistryError(f"published model directory {published} does not exist; merge-lora publishes it first")
    source = pvc_uri(cfg, published)
    comparison = _read_comparison(storage_path(cfg, comparison_path))
    name = cfg.mlflow.registered_model_name
    tags = lineage_tags(cfg, kfp_run_id, model_dir=published, version=version, decision=decision, reasons=reasons,
                        comparison=comparison, dataset_hash=dataset_hash)
    with step_run(cfg, kfp_run_id, "register-model") as (client, run_id):
        ensure_registered_model(client, name)
        existing = version_of_run(client, name, kfp_run_id)
        if existing is None:
            registered = client.create_model_version(
                name, source=source, run_id=parent_run_id(client, cfg, kfp_run_id), tags=tags,
                description=f"{cfg.name} {version} ({cfg.training.method}), KFP run {kfp_run_id}: {decision}")
        else:
            registered = existing
            for key, value in tags.items():  # an earlier attempt may have died before finishing its tags
                client.set_model_version_tag(name, registered.version, key, value)
        set_run_tags(client, run_id, {"llmft.model_version": registered.version,
                                      "llmft.reused": str(existing is not None), "llmft.decision": decision})
    print(json.dumps({"registered_model": name, "version": registered.version, "source": source,
                      "decision": decision, "reused": existing is not None}))
    return str(registered.version), "registered"


def run_mark_challenger(config: str, kfp_run_id: str, model_version: str, reasons: str) -> tuple[str]:
    """A rejected version: give it the alias ``challenger`` and record why (the champion stays).

    Reads mlflow (tracking URI, experiment, registered_model_name).

    Returns:
        ``("challenger",)``.

    Raises:
        ConfigError: the config parameter is invalid.
        RegistryError: the model version does not exist.
        TrackingUnavailable: the MLflow server does not answer.
    """
    from mlflow.exceptions import MlflowException

    from components.tracking import step_run
    from configs.schema import config_from_json

    cfg = config_from_json(config)
    name = cfg.mlflow.registered_model_name
    with step_run(cfg, kfp_run_id, "mark-challenger") as (client, run_id):
        try:
            client.get_model_version(name, model_version)
        except MlflowException as exc:
            if _is_missing(exc):
                raise RegistryError(f"registered model {name!r} has no version {model_version!r}") from None
            raise
        client.set_registered_model_alias(name, CHALLENGER, model_version)
        client.set_model_version_tag(name, model_version, REJECTED_REASON_TAG, reasons[:MAX_TAG_CHARS])
        set_run_tags(client, run_id, {"llmft.model_version": str(model_version), "llmft.rejected_reason": reasons})
    print(json.dumps({"registered_model": name, "challenger": str(model_version), "reasons": reasons}))
    return (CHALLENGER,)


def run_promote(config: str, kfp_run_id: str, model_version: str, version: str) -> tuple[str, str]:
    """Move ``champion`` to ``model_version`` (the old champion becomes ``previous``) and ``current`` to ``version``.

    Idempotent: a retry after the alias moved reports the same previous champion (kept as a version
    tag before anything moves). Reads storage (mount path, models_root) and mlflow
    (tracking URI, experiment, registered_model_name).

    Returns:
        ``("champion", previous champion version or "")``.

    Raises:
        ConfigError: the config parameter is invalid.
        RegistryError: the model version does not exist, belongs to another published version, or
            its published directory is missing or incomplete (checked before any alias moves).
        TrackingUnavailable: the MLflow server does not answer.
    """
    from mlflow.exceptions import MlflowException

    from components.publish import PublishError, set_current, verify_model_dir
    from components.tracking import step_run
    from configs.schema import config_from_json

    cfg = config_from_json(config)
    name = cfg.mlflow.registered_model_name
    models_dir = cfg.storage.resolve(cfg.storage.models_root) / name
    with step_run(cfg, kfp_run_id, "promote-model") as (client, run_id):
        try:
            target = client.get_model_version(name, model_version)
        except MlflowException as exc:
            if _is_missing(exc):
                raise RegistryError(f"registered model {name!r} has no version {model_version!r}") from None
            raise
        published = target.tags.get("llmft.published_version")
        if published and published != version:
            raise RegistryError(f"{name} version {model_version} was published as {published!r}, not {version!r}")
        try:  # fail before any alias moves, not halfway through the promotion
            verify_model_dir(models_dir / version, checksums=False)
        except PublishError as exc:
            raise RegistryError(f"cannot promote {name} version {model_version}: {exc}") from None
        aliases = registered_aliases(client, name)
        old = aliases.get(CHAMPION, "")
        if old == str(model_version):
            previous = target.tags.get(PREVIOUS_CHAMPION_TAG, "")
        else:
            previous = old
            # Record the old champion before moving anything, so a retry knows it after the move.
            client.set_model_version_tag(name, model_version, PREVIOUS_CHAMPION_TAG, previous)
            if previous:
                client.set_registered_model_alias(name, PREVIOUS, previous)
            client.set_registered_model_alias(name, CHAMPION, model_version)
        if aliases.get(CHALLENGER) == str(model_version):
            client.delete_registered_model_alias(name, CHALLENGER)
        client.delete_model_version_tag(name, model_version, REJECTED_REASON_TAG)
        set_current(models_dir, version)
        set_run_tags(client, run_id, {"llmft.model_version": str(model_version), "llmft.previous_champion": previous})
    print(json.dumps({"registered_model": name, "champion": str(model_version), "previous": previous,
                      "current": version}))
    return CHAMPION, previous


def _read_comparison(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"comparison file {path} does not exist; compare-with-baseline writes it") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"comparison file {path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RegistryError(f"comparison file {path}: the top level must be an object")
    return data


# ---------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The CLI: register, promote, or show the aliases of the registered model."""
    parser = argparse.ArgumentParser(description="Register and promote fine-tuned models in MLflow.")
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", required=True, help="Config YAML (configs/*.yaml) or preset name.")
    common.add_argument("--set", dest="overrides", action="append", default=[], help="section.field=value")
    register = commands.add_parser("register", parents=[common], help="Register a published model version.")
    register.add_argument("--kfp-run-id", required=True, help="Pipeline run id (tag kfp.run_id; makes retries safe).")
    register.add_argument("--model-dir", required=True, help="Published model directory (relative to the mount).")
    register.add_argument("--version", required=True, help="Published version name, e.g. v3.")
    register.add_argument("--comparison", required=True, help="comparison.json written by compare_baseline.")
    register.add_argument("--dataset-hash", required=True, help="Dataset hash from validate_dataset.")
    register.add_argument("--decision", choices=DECISIONS, help="Override the decision in the comparison file.")
    promote = commands.add_parser("promote", parents=[common], help="Make a version the champion.")
    promote.add_argument("--kfp-run-id", required=True, help="Pipeline run id (for the MLflow child run).")
    promote.add_argument("--model-version", required=True, help="Registry version number, e.g. 3.")
    promote.add_argument("--version", required=True, help="Published version name the current pointer moves to.")
    commands.add_parser("show", parents=[common], help="Print the aliases of the registered model.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit 0 on success, 1 on failure, 2 on usage errors."""
    from configs.schema import ConfigError, load_config

    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, overrides=args.overrides)
        config = cfg.model_dump_json()
        if args.command == "register":
            comparison = _read_comparison(storage_path(cfg, args.comparison))
            decision = args.decision or str(comparison.get("decision", ""))
            reasons = "; ".join(comparison.get("reasons", []))
            model_version = run_register(config, args.kfp_run_id, args.model_dir, args.version, decision, reasons,
                                         args.comparison, args.dataset_hash)[0]
            if decision == "reject":  # what the pipeline's else-branch does
                run_mark_challenger(config, args.kfp_run_id, model_version, reasons)
            print(model_version)
        elif args.command == "promote":
            print(run_promote(config, args.kfp_run_id, args.model_version, args.version)[1])
        else:
            from components.tracking import make_client

            print(json.dumps(registered_aliases(make_client(cfg), cfg.mlflow.registered_model_name), sort_keys=True))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RegistryError, StorageError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- KFP components


@component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def register_model(config: str, kfp_run_id: str, model_dir: str, version: str, decision: str, reasons: str,
                   comparison_path: str, dataset_hash: str) -> NamedTuple("Outputs", [("model_version", str),
                                                                                      ("status", str)]):
    """Register the merged model in the MLflow Model Registry with its lineage (retries reuse the version).

    Args:
        config: The resolved pipeline configuration (JSON).
        kfp_run_id: The KFP run id; the version is tagged kfp.run_id with it, which makes retries idempotent.
        model_dir: The published merged model directory on the PVC (from merge-lora).
        version: The published version name, e.g. v3.
        decision: The gate's decision, "promote" or "reject".
        reasons: Why, as one line (kept as a tag).
        comparison_path: comparison.json from compare-with-baseline (MMLU scores and losses for the tags).
        dataset_hash: The training data hash from validate-dataset (lineage tag).

    Returns:
        model_version: The registry version number.
        status: "registered".
    """
    from components.register_model import run_register

    return run_register(config=config, kfp_run_id=kfp_run_id, model_dir=model_dir, version=version,
                        decision=decision, reasons=reasons, comparison_path=comparison_path,
                        dataset_hash=dataset_hash)


@component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def promote_model(config: str, kfp_run_id: str, model_version: str,
                  version: str) -> NamedTuple("Outputs", [("alias", str), ("previous", str)]):
    """Make the new version the champion (the old one becomes previous) and point current at it.

    Args:
        config: The resolved pipeline configuration (JSON).
        kfp_run_id: The KFP run id (for the MLflow child run).
        model_version: The registry version to promote (from register-model).
        version: The published version name the storage pointer "current" moves to.

    Returns:
        alias: "champion".
        previous: The version number of the former champion ("" for the first model).
    """
    from components.register_model import run_promote

    return run_promote(config=config, kfp_run_id=kfp_run_id, model_version=model_version, version=version)



@component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def mark_challenger(config: str, kfp_run_id: str, model_version: str,
                    reasons: str) -> NamedTuple("Outputs", [("alias", str)]):
    """Keep the champion: tag the rejected version "challenger" and record why it was rejected.

    Args:
        config: The resolved pipeline configuration (JSON).
        kfp_run_id: The KFP run id (for the MLflow child run).
        model_version: The registry version that was rejected (from register-model).
        reasons: The gate's reasons (from compare-with-baseline), kept as the tag llmft.rejected_reason.

    Returns:
        alias: "challenger".
    """
    from components.register_model import run_mark_challenger

    return run_mark_challenger(config=config, kfp_run_id=kfp_run_id, model_version=model_version, reasons=reasons)


if __name__ == "__main__":
    raise SystemExit(main())
