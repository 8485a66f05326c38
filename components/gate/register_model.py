"""The register-model step: the published model as a new version in the MLflow Model Registry.

Every run registers a new version of ``mlflow.registered_model_name`` whose source is the published model on the
PVC as an opaque ``pvc://<pvc>/<path>`` URI (:func:`components.gate.registry.pvc_uri`) and whose run is the
pipeline's parent run. The registry page reads at a glance: the version's description says what was trained on
what and how it scored against the baseline, and it carries a handful of tags (decision, KFP run id, data hash,
eval keys, and the training split: key scheme and ``dataset.test_fraction``, read from the run's split snapshot,
which later runs need to compare with it on rows it never trained on, :mod:`components.gate.held_out`); the whole
lineage (config, hashes, library versions, image, every gate rule) is one JSON artifact of
the parent run, ``lineage/<version>.json``. The published directory is also an MLflow 3 external model
(``LoggedModel``) linked to the run and its scores, so the experiment's Models tab and the version's lineage show
it. Registration is idempotent: a retried task finds the version it created by its ``kfp.run_id`` tag. Then
promote-model or mark-challenger gives the version its alias.

    python -m components.gate.register_model --config configs/local.yaml --kfp-run-id RUN \\
        --model-dir models/tiny-llama-demo/v3 --version v3 --comparison output/RUN/compare/comparison.json \\
        --dataset-hash 1a2b3c

By hand, a version the gate kept out is marked challenger at once, as the pipeline's else-branch does. Exit codes:
0 registered (the version number is printed last), 1 the registration failed, 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.common import markdown
from components.common.cli import cli_config, fail, new_parser
from components.common.logs import configure_step_logging
from components.common.pipeline_runs import experiment_id, parent_run_id, step_run
from components.common.run_data import set_run_tags
from components.common.storage import StorageError, on_volume
from components.common.tags import (
    DATASET_HASH_TAG,
    DECISION_TAG,
    KFP_RUN_TAG,
    LOCAL_PATH_TAG,
    LOGGED_MODEL_TAG,
    MMLU_EVAL_KEY_TAG,
    MODEL_VERSION_TAG,
    MODEL_VERSIONS_TAG,
    PUBLISHED_VERSION_TAG,
    REGISTERED_TAG,
    REUSED_TAG,
    SOURCE_NAME_TAG,
    SOURCE_TAG,
    TASK_EVAL_KEY_TAG,
)
from components.common.typed_files import read_model
from components.data.split import SplitError, SplitManifest, read_manifest, snapshot_dir
from components.gate.held_out import training_split_tags
from components.gate.registry import (
    RegistryError,
    ensure_registered_model,
    pvc_uri,
    version_of_run,
)
from components.gate.rules import DECISIONS, Comparison
from configs.errors import StepError
from configs.loading import config_from_json
from configs.schema import PipelineConfig

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

STEP = "register-model"
LINEAGE_PACKAGES = ("llamafactory", "transformers", "peft", "torch")


def read_comparison(path: Path) -> Comparison:
    """The ``comparison.json`` compare wrote.

    Raises:
        RegistryError: the file is missing, not JSON, or does not validate (the file and the fields are named).
    """
    return read_model(path, Comparison, "comparison file", error=RegistryError)


def package_versions() -> dict[str, str]:
    """Installed versions of the training stack (``n/a`` when a package is missing)."""
    versions = {}
    for package in LINEAGE_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "n/a"
    return versions


def version_tags(kfp_run_id: str, comparison: Comparison, *, model_dir: Path, version: str,
                 dataset_hash: str, split: SplitManifest | None = None) -> dict[str, str]:
    """The handful of tags a version carries (the rest of the lineage is the JSON artifact); none is empty.

    ``split`` is the run's split snapshot: the rows the model was trained without (none recorded without it).
    """
    tags = {
        **(training_split_tags(split) if split is not None else {}),
        KFP_RUN_TAG: kfp_run_id,
        DECISION_TAG: comparison.decision,
        DATASET_HASH_TAG: dataset_hash,
        MMLU_EVAL_KEY_TAG: comparison.mmlu.candidate_eval_key,
        TASK_EVAL_KEY_TAG: comparison.task.candidate_eval_key,
        PUBLISHED_VERSION_TAG: version,
        LOCAL_PATH_TAG: str(model_dir),
    }
    return {key: value for key, value in tags.items() if value}


def version_description(cfg: PipelineConfig, comparison: Comparison, *, version: str, dataset_hash: str,
                        kfp_run_id: str) -> str:
    """A short Markdown description: what was trained on what, how it scored against the baseline, the decision."""
    task, mmlu = comparison.task, comparison.mmlu
    return (
        f"**{cfg.training.method}** fine-tune of {markdown.code(cfg.storage.base_model)} on "
        f"{markdown.text(', '.join(cfg.dataset.names))} (data {markdown.code(dataset_hash[:12])}), published as "
        f"{markdown.code(version)} by KFP run {markdown.code(kfp_run_id)}.\n\n"
        f"Held-out loss **{task.candidate_mean_nll:.4f}** vs {task.baseline_mean_nll:.4f} for the "
        f"{comparison.baseline_name} ({task.relative_change:+.1%}, {task.rows} rows); MMLU "
        f"**{mmlu.candidate_micro:.4f}** vs {mmlu.baseline_micro:.4f} ({mmlu.delta_micro:+.4f}).\n\n"
        f"Decision: **{comparison.headline}**")


def lineage(cfg: PipelineConfig, comparison: Comparison, *, kfp_run_id: str, version: str, source: str,
            dataset_hash: str) -> dict[str, Any]:
    """Everything a version was made of and how it was judged (the parent run's ``lineage/<version>.json``)."""
    return {"kfp_run_id": kfp_run_id, "version": version, "source": source, "dataset_hash": dataset_hash,
            "config_hash": cfg.config_hash(), "config": cfg.dump_public(), "image": cfg.cluster.image,
            "packages": package_versions(), "comparison": comparison.model_dump(mode="json")}


def _register_external_model(client: MlflowClient, cfg: PipelineConfig, parent: str, *, version: str,
                             source: str, comparison: Comparison) -> str:
    """The published directory as an MLflow 3 external model linked to the parent run and its scores."""
    import mlflow

    model = mlflow.create_external_model(
        name=f"{cfg.mlflow.registered_model_name}-{version}", source_run_id=parent, model_type="merged-llm",
        experiment_id=experiment_id(client, cfg.mlflow.experiment),
        tags={SOURCE_TAG: source, DECISION_TAG: comparison.decision,
              SOURCE_NAME_TAG: f"llm-finetune pipeline: {STEP}"},
        params={"method": cfg.training.method, "base_model": cfg.storage.base_model,
                "datasets": ",".join(cfg.dataset.names), "template": cfg.training.template})
    from mlflow.entities import LoggedModelOutput

    # The candidate's headline numbers under the names the compare step gives them on the parent run, linked to
    # the model too; and the model as the parent run's output (its "Logged models").
    scores = {"task_row_nll_candidate": comparison.task.candidate_mean_nll,
              "mmlu_candidate": comparison.mmlu.candidate_micro, "task_row_nll_change": comparison.task.relative_change}
    for key, value in scores.items():
        client.log_metric(parent, key, round(float(value), 6), model_id=model.model_id)
    client.log_outputs(parent, models=[LoggedModelOutput(model.model_id, 0)])
    return model.model_id


def training_split(cfg: PipelineConfig, kfp_run_id: str) -> SplitManifest | None:
    """The split the run trained with (its snapshot's manifest), or None when the run has none (by hand)."""
    try:
        return read_manifest(snapshot_dir(cfg, kfp_run_id))
    except SplitError:
        return None


def run_step(config: str, kfp_run_id: str, model_dir: str, version: str, decision: str, comparison_path: str,
                 dataset_hash: str) -> tuple[str]:
    """Register the published model as a new version (or find the one this run already registered).

    Reads storage (mount path, PVC name, base_model, output_root: the split snapshot), mlflow (tracking URI,
    experiment, registered_model_name),
    dataset.names, training (method, template), cluster.image and the config hash.

    Returns:
        ``(model_version,)``.

    Raises:
        ConfigError: the config parameter is invalid.
        RegistryError: unknown decision or one that disagrees with the comparison, model directory missing,
            outside the PVC or not the published ``version``, or an unreadable comparison file.
        TrackingUnavailable: the MLflow server does not answer.
    """
    configure_step_logging(STEP)
    cfg = config_from_json(config)
    if decision not in DECISIONS:
        raise RegistryError(f"decision must be one of {DECISIONS}, got {decision!r}")
    try:
        published = on_volume(cfg, model_dir).resolve()
        comparison = read_comparison(on_volume(cfg, comparison_path))
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
    tags = version_tags(kfp_run_id, comparison, model_dir=published, version=version, dataset_hash=dataset_hash,
                        split=training_split(cfg, kfp_run_id))
    with step_run(cfg, kfp_run_id, STEP) as (client, run_id):
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
            client.set_logged_model_tags(model_id, {MODEL_VERSIONS_TAG: json.dumps(
                [{"name": name, "version": str(registered.version)}])})
        else:
            registered = existing
            for key, value in tags.items():  # an earlier attempt may have died before finishing its tags
                client.set_model_version_tag(name, registered.version, key, value)
        set_run_tags(client, run_id, {MODEL_VERSION_TAG: registered.version,
                                      REUSED_TAG: str(existing is not None), DECISION_TAG: decision})
        set_run_tags(client, parent, {REGISTERED_TAG: f"{name} v{registered.version}"})
    print(json.dumps({"registered_model": name, "version": registered.version, "source": source,
                      "decision": decision, "reused": existing is not None}))
    return (str(registered.version),)


def build_parser() -> argparse.ArgumentParser:
    """The command line: register a published model version as the pipeline's step does."""
    parser = new_parser("components.gate.register_model", "Register a published model version in MLflow.")
    parser.add_argument("--kfp-run-id", required=True, help="Pipeline run id (tag kfp.run_id; makes retries safe).")
    parser.add_argument("--model-dir", required=True, help="Published model directory (relative to the mount).")
    parser.add_argument("--version", required=True, help="Published version name (the directory's name).")
    parser.add_argument("--comparison", required=True, help="comparison.json written by the compare step.")
    parser.add_argument("--dataset-hash", required=True, help="Dataset hash from validate_dataset.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Register (and mark a version the gate kept out challenger); 0 done, 1 failed, 2 usage or config error."""
    from components.gate import mark_challenger

    configure_step_logging(STEP)

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = cli_config(parser, args)
        config = cfg.model_dump_json()
        comparison = read_comparison(on_volume(cfg, args.comparison))
        model_version = run_step(config, args.kfp_run_id, args.model_dir, args.version, comparison.decision,
                                 args.comparison, args.dataset_hash)[0]
        if comparison.decision != "promote":  # what the pipeline's else-branch does
            mark_challenger.run_step(config, args.kfp_run_id, model_version, comparison.headline)
    except StepError as exc:
        return fail(parser, exc)
    print(model_version)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
