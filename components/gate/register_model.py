"""Register the published merged model in the MLflow Model Registry, and promote it when the gate says so.

Every run registers a new version of ``mlflow.registered_model_name`` (MLflow 3.x aliases, no
stages) whose source is the published model on the PVC as an opaque ``pvc://<pvc>/<path>`` URI and
whose run is the pipeline's parent run. The registry page reads at a glance: the version's description
says what was trained on what and how it scored against the baseline, and it carries a handful of tags
(decision, KFP run id, data hash, eval keys); the whole lineage (config, hashes, library versions, image,
every gate rule) is one JSON artifact of the parent run, ``lineage/<version>.json``. The published directory
is also an MLflow 3 external model (``LoggedModel``) linked to the run and its scores, so the experiment's
Models tab and the version's lineage show it. Registration is idempotent: a retried task finds the version
it created by its ``kfp.run_id`` tag. A version that is not promoted gets the alias ``challenger`` and the
reason; a promoted one takes ``champion`` (the old champion becomes ``previous``) and the published
``current`` pointer moves to it, but only while the champion is still the baseline it beat.

    python -m components.gate.register_model register --config configs/local.yaml --kfp-run-id RUN \\
        --model-dir models/tiny-llama-demo/v3 --version v3 --comparison output/RUN/compare/comparison.json \\
        --dataset-hash 1a2b3c
    python -m components.gate.register_model promote --config configs/local.yaml --kfp-run-id RUN \\
        --model-version 3 --version v3
    python -m components.gate.register_model show --config configs/local.yaml
"""

import argparse
import contextlib
import fcntl
import json
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from components.common.storage import StorageError, inside, on_volume, storage_root
from components.common.tracking import KFP_RUN_TAG
from configs.schema import PipelineConfig

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

    from components.gate.rules import Comparison

CHAMPION = "champion"
PREVIOUS = "previous"
CHALLENGER = "challenger"
LOCAL_PATH_TAG = "llmft.local_path"
PREVIOUS_CHAMPION_TAG = "llmft.previous_champion"
REJECTED_REASON_TAG = "llmft.rejected_reason"
PUBLISHED_VERSION_TAG = "llmft.published_version"
LOGGED_MODEL_TAG = "llmft.logged_model_id"
LINEAGE_PACKAGES = ("llamafactory", "transformers", "peft", "torch")
MAX_TAG_CHARS = 4000  # keeps long reason lists well inside every MLflow backend's tag limit
DECISIONS = ("promote", "keep-champion")

class RegistryError(RuntimeError):
    """The model cannot be registered or promoted; the message names the model, version or path."""


# ---------------------------------------------------------------- paths <-> opaque source URIs


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


# ---------------------------------------------------------------- what a version says about itself


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


def version_tags(kfp_run_id: str, comparison: "Comparison", *, model_dir: Path, version: str,
                 dataset_hash: str) -> dict[str, str]:
    """The handful of tags a version carries (the rest of the lineage is the JSON artifact); none is empty."""
    tags = {
        KFP_RUN_TAG: kfp_run_id,
        "llmft.decision": comparison.decision,
        "llmft.dataset_hash": dataset_hash,
        "llmft.eval_key": comparison.mmlu.candidate_eval_key,
        "llmft.task_eval_key": comparison.task.candidate_eval_key,
        PUBLISHED_VERSION_TAG: version,
        LOCAL_PATH_TAG: str(model_dir),
    }
    return {key: value for key, value in tags.items() if value}


def version_description(cfg: PipelineConfig, comparison: "Comparison", *, version: str, dataset_hash: str,
                        kfp_run_id: str) -> str:
    """A short Markdown description: what was trained on what, how it scored against the baseline, the decision."""
    task, mmlu = comparison.task, comparison.mmlu
    return (
        f"**{cfg.training.method}** fine-tune of `{cfg.storage.base_model}` on {', '.join(cfg.dataset.names)} "
        f"(data `{dataset_hash[:12]}`), published as `{version}` by KFP run `{kfp_run_id}`.\n\n"
        f"Held-out loss **{task.candidate_mean_nll:.4f}** vs {task.baseline_mean_nll:.4f} for the "
        f"{comparison.baseline_name} ({task.relative_change:+.1%}, {task.rows} rows); MMLU "
        f"**{mmlu.candidate_micro:.4f}** vs {mmlu.baseline_micro:.4f} ({mmlu.delta_micro:+.4f}).\n\n"
        f"Decision: **{comparison.headline}**")


def lineage(cfg: PipelineConfig, comparison: "Comparison", *, kfp_run_id: str, version: str, source: str,
            dataset_hash: str) -> dict[str, Any]:
    """Everything a version was made of and how it was judged (the parent run's ``lineage/<version>.json``)."""
    return {"kfp_run_id": kfp_run_id, "version": version, "source": source, "dataset_hash": dataset_hash,
            "config_hash": cfg.config_hash(), "config": cfg.dump_public(), "image": cfg.cluster.image,
            "packages": package_versions(), "comparison": comparison.model_dump(mode="json")}


def _read_comparison(path: Path) -> "Comparison":
    from pydantic import ValidationError

    from components.evaluate.mmlu.results import describe_validation_error
    from components.gate.rules import Comparison

    try:
        return Comparison.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"comparison file {path} does not exist; the compare step writes it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"comparison file {path} is not readable: {exc}") from None
    except ValidationError as exc:
        raise RegistryError(f"comparison file {path}: {describe_validation_error(exc)}") from None


def _register_external_model(client: "MlflowClient", cfg: PipelineConfig, parent: str, *, version: str,
                             source: str, comparison: "Comparison") -> str:
    """The published directory as an MLflow 3 external model linked to the parent run and its scores."""
    import mlflow

    from components.common.tracking import experiment_id

    model = mlflow.create_external_model(
        name=f"{cfg.mlflow.registered_model_name}-{version}", source_run_id=parent, model_type="merged-llm",
        experiment_id=experiment_id(client, cfg.mlflow.experiment),
        tags={"llmft.source": source, "llmft.decision": comparison.decision,
              "mlflow.source.name": "llm-finetune pipeline: register-model"},
        params={"method": cfg.training.method, "base_model": cfg.storage.base_model,
                "datasets": ",".join(cfg.dataset.names), "template": cfg.training.template})
    from mlflow.entities import LoggedModelOutput

    # The candidate's headline numbers under the names the compare step gives them on the parent run, linked to
    # the model too; and the model as the parent run's output (its "Logged models").
    scores = {"task_loss_candidate": comparison.task.candidate_mean_nll,
              "mmlu_candidate": comparison.mmlu.candidate_micro, "task_loss_change": comparison.task.relative_change}
    for key, value in scores.items():
        client.log_metric(parent, key, round(float(value), 6), model_id=model.model_id)
    client.log_outputs(parent, models=[LoggedModelOutput(model.model_id, 0)])
    return model.model_id


# ---------------------------------------------------------------- steps


def run_register(config: str, kfp_run_id: str, model_dir: str, version: str, decision: str, comparison_path: str,
                 dataset_hash: str) -> tuple[str]:
    """Register the published model as a new version (or find the one this run already registered).

    Reads storage (mount path, PVC name, base_model), mlflow (tracking URI, experiment, registered_model_name),
    dataset.names, training (method, template), cluster.image and the config hash.

    Returns:
        ``(model_version,)``.

    Raises:
        ConfigError: the config parameter is invalid.
        RegistryError: unknown decision or one that disagrees with the comparison, model directory missing,
            outside the PVC or not the published ``version``, or an unreadable comparison file.
        TrackingUnavailable: the MLflow server does not answer.
    """
    from components.common.tracking import parent_run_id, step_run
    from configs.schema import config_from_json

    cfg = config_from_json(config)
    if decision not in DECISIONS:
        raise RegistryError(f"decision must be one of {DECISIONS}, got {decision!r}")
    try:
        published = on_volume(cfg, model_dir).resolve()
        comparison = _read_comparison(on_volume(cfg, comparison_path))
    except StorageError as exc:
        raise RegistryError(str(exc)) from None
    if not published.is_dir():
        raise RegistryError(f"published model directory {published} does not exist; merge-lora publishes it first")
    if published.name != version:
        raise RegistryError(f"--model-dir {published} is not the published version {version!r} (its directory is "
                            f"named {published.name!r}); the champion's source would point at the wrong model")
    if comparison.decision != decision:
        raise RegistryError(f"decision {decision!r} disagrees with {comparison_path} ({comparison.decision!r})")
    source = pvc_uri(cfg, published)
    name = cfg.mlflow.registered_model_name
    tags = version_tags(kfp_run_id, comparison, model_dir=published, version=version, dataset_hash=dataset_hash)
    with step_run(cfg, kfp_run_id, "register-model") as (client, run_id):
        ensure_registered_model(client, name)
        parent = parent_run_id(client, cfg, kfp_run_id)
        existing = version_of_run(client, name, kfp_run_id)
        if existing is None:
            client.log_dict(parent, lineage(cfg, comparison, kfp_run_id=kfp_run_id, version=version, source=source,
                                            dataset_hash=dataset_hash), f"lineage/{version}.json")
            model_id = _register_external_model(client, cfg, parent, version=version, source=source,
                                                comparison=comparison)
            # An open-source registry does not keep model_id on the version: the link is recorded both ways, as a
            # version tag and (as mlflow.register_model does) the logged model's mlflow.modelVersions tag.
            registered = client.create_model_version(
                name, source=source, run_id=parent, tags={**tags, LOGGED_MODEL_TAG: model_id}, model_id=model_id,
                description=version_description(cfg, comparison, version=version, dataset_hash=dataset_hash,
                                                 kfp_run_id=kfp_run_id))
            client.set_logged_model_tags(model_id, {"mlflow.modelVersions": json.dumps(
                [{"name": name, "version": str(registered.version)}])})
        else:
            registered = existing
            for key, value in tags.items():  # an earlier attempt may have died before finishing its tags
                client.set_model_version_tag(name, registered.version, key, value)
        set_run_tags(client, run_id, {"llmft.model_version": registered.version,
                                      "llmft.reused": str(existing is not None), "llmft.decision": decision})
        set_run_tags(client, parent, {"llmft.registered": f"{name} v{registered.version}"})
    print(json.dumps({"registered_model": name, "version": registered.version, "source": source,
                      "decision": decision, "reused": existing is not None}))
    return (str(registered.version),)


def run_mark_challenger(config: str, kfp_run_id: str, model_version: str, reasons: str) -> tuple[str]:
    """A version that is not promoted: give it the alias ``challenger`` and record why (the champion stays).

    Reads mlflow (tracking URI, experiment, registered_model_name).

    Returns:
        ``("challenger",)``.

    Raises:
        ConfigError: the config parameter is invalid.
        RegistryError: the model version does not exist.
        TrackingUnavailable: the MLflow server does not answer.
    """
    from components.common.tracking import step_run
    from configs.schema import config_from_json

    cfg = config_from_json(config)
    with step_run(cfg, kfp_run_id, "mark-challenger") as (client, run_id):
        _mark_challenger(client, cfg.mlflow.registered_model_name, model_version, reasons)
        set_run_tags(client, run_id, {"llmft.model_version": str(model_version), "llmft.rejected_reason": reasons})
    print(json.dumps({"registered_model": cfg.mlflow.registered_model_name, "challenger": str(model_version),
                      "reasons": reasons}))
    return (CHALLENGER,)


def _mark_challenger(client: "MlflowClient", name: str, model_version: str, reasons: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, model_version)
    except MlflowException as exc:
        if _is_missing(exc):
            raise RegistryError(f"registered model {name!r} has no version {model_version!r}") from None
        raise
    client.set_registered_model_alias(name, CHALLENGER, model_version)
    client.set_model_version_tag(name, model_version, REJECTED_REASON_TAG, reasons[:MAX_TAG_CHARS] or "not promoted")


@contextlib.contextmanager
def promotion_lock(models_dir: Path) -> Iterator[None]:
    """Serialise promotions of one registered model across pipeline runs (a lock file on the shared volume)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / ".promote.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def run_promote(config: str, kfp_run_id: str, model_version: str, version: str,
                baseline_name: str = "") -> tuple[str, str]:
    """Move ``champion`` to ``model_version`` (the old champion becomes ``previous``) and ``current`` to ``version``.

    Only while the champion is still ``baseline_name``, the model the candidate was compared with: when another
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

    from components.common.tracking import step_run
    from components.merge.publish import PublishError, set_current, verify_model_dir
    from configs.schema import config_from_json

    cfg = config_from_json(config)
    name = cfg.mlflow.registered_model_name
    models_dir = cfg.storage.resolve(cfg.storage.models_root) / name
    with step_run(cfg, kfp_run_id, "promote-model") as (client, run_id), promotion_lock(models_dir):
        try:
            target = client.get_model_version(name, model_version)
        except MlflowException as exc:
            if _is_missing(exc):
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
        beaten = baseline_name.removeprefix(f"{CHAMPION} v") if baseline_name.startswith(CHAMPION) else ""
        if baseline_name and old not in (beaten, str(model_version)):
            reason = (f"not promoted: the champion is now v{old}, promoted by another run after this one compared "
                      f"with the {baseline_name}; run the pipeline again to compare with v{old}")
            _mark_challenger(client, name, model_version, reason)
            set_run_tags(client, run_id, {"llmft.model_version": str(model_version), "llmft.rejected_reason": reason})
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
        set_run_tags(client, run_id, {"llmft.model_version": str(model_version),
                                      "llmft.previous_champion": previous or "none"})
    print(json.dumps({"registered_model": name, "champion": str(model_version), "previous": previous,
                      "current": version}))
    return CHAMPION, previous


# ---------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The CLI: register, promote, or show the aliases of the registered model."""
    parser = argparse.ArgumentParser(prog="python -m components.gate.register_model",
                                     description="Register and promote fine-tuned models in MLflow.")
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", required=True, help="Config YAML (configs/*.yaml) or preset name.")
    common.add_argument("--set", dest="overrides", action="append", default=[], help="section.field=value")
    register = commands.add_parser("register", parents=[common], help="Register a published model version.")
    register.add_argument("--kfp-run-id", required=True, help="Pipeline run id (tag kfp.run_id; makes retries safe).")
    register.add_argument("--model-dir", required=True, help="Published model directory (relative to the mount).")
    register.add_argument("--version", required=True, help="Published version name (the directory's name).")
    register.add_argument("--comparison", required=True, help="comparison.json written by the compare step.")
    register.add_argument("--dataset-hash", required=True, help="Dataset hash from validate_dataset.")
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
            comparison = _read_comparison(on_volume(cfg, args.comparison))
            model_version = run_register(config, args.kfp_run_id, args.model_dir, args.version, comparison.decision,
                                         args.comparison, args.dataset_hash)[0]
            if comparison.decision != "promote":  # what the pipeline's else-branch does
                run_mark_challenger(config, args.kfp_run_id, model_version, comparison.headline)
            print(model_version)
        elif args.command == "promote":
            print(run_promote(config, args.kfp_run_id, args.model_version, args.version)[1])
        else:
            from components.common.tracking import make_client

            print(json.dumps(registered_aliases(make_client(cfg), cfg.mlflow.registered_model_name), sort_keys=True))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RegistryError, StorageError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
