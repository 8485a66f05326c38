"""The model registry side of the gate: the champion, its files on the volume, and the scores stored for it.

- **Aliases** (MLflow 3.x, no stages): ``champion`` is the model in use (served through the ``current`` pointer),
  ``previous`` the one before it, ``challenger`` a version that did not beat it. The baseline of a run is the
  version holding ``champion``; before the first promotion it is the base model (:func:`baseline_label`).
- **Sources on the PVC**: a version's source is an opaque ``pvc://<pvc>/<path>`` URI (:func:`pvc_uri`,
  :func:`path_from_pvc_uri`), never a path that only one pod could read.
- **Stored scores** (:func:`find_stored`): every evaluation stores its results on its MLflow run, tagged with its
  eval keys (``llmft.eval_key`` for MMLU, ``llmft.task_eval_key`` for the held-out task,
  ``llmft.generation_eval_key`` for the generated answers). A key covers everything
  that decides the score (the model's content, the data, the split, the template...), so a score with the same
  key is reused instead of spending GPU time again: the scores a promoted candidate got are the champion's in
  the next run. Each stored file is validated where it is found (a missing, damaged or foreign one is passed over,
  its run named); when none matches, :func:`why_not_stored` says which part of the setup changed.

    python -m components.gate.registry --config configs/local.yaml      # print the aliases

Exit codes: 0 printed, 1 the registry cannot be read, 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, NamedTuple

from components.common.cli import cli_config, fail, new_parser
from components.common.storage import StorageError, on_volume, storage_root
from components.common.tracking import KFP_RUN_TAG, experiment_id, find_artifact, make_client
from configs.errors import StepError
from configs.schema import PipelineConfig

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

CHAMPION = "champion"
PREVIOUS = "previous"
CHALLENGER = "challenger"
BASE_MODEL_NAME = "base model"
LOCAL_PATH_TAG = "llmft.local_path"
PREVIOUS_CHAMPION_TAG = "llmft.previous_champion"
REJECTED_REASON_TAG = "llmft.rejected_reason"
PUBLISHED_VERSION_TAG = "llmft.published_version"
LOGGED_MODEL_TAG = "llmft.logged_model_id"
MAX_TAG_CHARS = 4000  # keeps long reason lists well inside every MLflow backend's tag limit
EVAL_KEY_TAG = "llmft.eval_key"  # MMLU
TASK_EVAL_KEY_TAG = "llmft.task_eval_key"
GENERATION_EVAL_KEY_TAG = "llmft.generation_eval_key"  # generated answers (components.evaluate.generate)
MODEL_ID_TAG = "llmft.model_id"
# What a stored evaluation records of its setup (tags of the evaluate run), to say why a score was not reused.
SETUP_TAGS = {"llmft.task_split_hash": "the held-out split", "llmft.task_template": "the template",
              "llmft.task_cutoff_len": "cutoff_len", "llmft.mmlu_data_hash": "the MMLU data",
              "llmft.mmlu_n_shot": "the MMLU n-shot", "llmft.mmlu_subjects": "the MMLU subjects",
              "llmft.generate_rows": "evaluation.generate_rows", "llmft.max_new_tokens": "evaluation.max_new_tokens"}


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


def mark_challenger(client: MlflowClient, name: str, model_version: str, reasons: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, model_version)
    except MlflowException as exc:
        if is_missing(exc):
            raise RegistryError(f"registered model {name!r} has no version {model_version!r}") from None
        raise
    client.set_registered_model_alias(name, CHALLENGER, model_version)
    client.set_model_version_tag(name, model_version, REJECTED_REASON_TAG, reasons[:MAX_TAG_CHARS] or "not promoted")


# The baseline and its stored scores ----------------------------------------------------------------------------


def baseline_label(champion_version: str | None) -> str:
    """The baseline's display name: ``champion v3`` or ``base model``."""
    return f"{CHAMPION} v{champion_version}" if champion_version else BASE_MODEL_NAME


def _finished_runs_tagged(client: MlflowClient, cfg: PipelineConfig, tag: str, value: str) -> list:
    if not re.fullmatch(r"[A-Za-z0-9_.:\-]+", value):
        raise BaselineError(f"{tag} {value!r} must be letters, digits and '_.:-'")
    return client.search_runs([experiment_id(client, cfg.mlflow.experiment)],
                              filter_string=f"tags.`{tag}` = '{value}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.end_time DESC"], max_results=20)


class StoredScore(NamedTuple):
    """A results file stored in MLflow that validates and carries the eval key it was looked up by."""

    run_id: str
    text: str


class StoredLookup(NamedTuple):
    """What :func:`find_stored` found: the newest usable file, and why newer evaluations were passed over."""

    found: StoredScore | None
    problems: list[str]  # one line per evaluation passed over, newest first, each naming its MLflow run


def find_stored(client: MlflowClient, cfg: PipelineConfig, tag: str, key: str, file_name: str) -> StoredLookup:
    """The newest FINISHED evaluation tagged ``tag`` = ``key`` whose ``file_name`` artifact is usable.

    Each candidate file is downloaded and validated here, where it is found, not only where it is used: a run
    without the artifact, a file that does not parse or validate (truncated, damaged) or one that carries another
    eval key is passed over with the reason, so a bad stored file never blocks later runs (the next evaluation
    under the same key is stored, and found first).

    Raises:
        BaselineError: ``key`` is not a plain eval key.
    """
    problems = []
    for run in _finished_runs_tagged(client, cfg, tag, key):
        run_id = run.info.run_id
        path = find_artifact(client, run_id, lambda name, wanted=file_name: name == wanted)
        if path is None:
            problems.append(f"evaluate run {run_id} has no {file_name} artifact")
            continue
        problem, text = _check_stored(client, run_id, path, file_name, key)
        if problem is None:
            return StoredLookup(StoredScore(run_id, text), problems)
        problems.append(problem)
    return StoredLookup(None, problems)


def _check_stored(client: MlflowClient, run_id: str, path: str, file_name: str, key: str) -> tuple[str | None, str]:
    """``(why the stored file cannot be used or None, its text)``; messages name the run, never a download path."""
    import tempfile

    from mlflow.exceptions import MlflowException

    from components.evaluate.generate.results import RESULTS_FILE as GENERATIONS_FILE
    from components.evaluate.generate.results import GenerationResultsError, parse_generations
    from components.evaluate.mmlu.results import RESULTS_FILE as MMLU_RESULTS_FILE
    from components.evaluate.mmlu.results import ResultsFileError, parse_mmlu_results
    from components.evaluate.task.results import TaskResultsError, parse_task_results

    source = f"stored {file_name} of evaluate run {run_id}"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            text = Path(client.download_artifacts(run_id, path, tmp)).read_text(encoding="utf-8")
        except (MlflowException, OSError, UnicodeDecodeError) as exc:
            reason = str(exc).replace(tmp, "<download>")[:300]
            return f"{source} cannot be read: {type(exc).__name__}: {reason}", ""
    try:
        if file_name == MMLU_RESULTS_FILE:
            results = parse_mmlu_results(text, source)
        elif file_name == GENERATIONS_FILE:
            results = parse_generations(text, source).header
        else:
            results = parse_task_results(text, source)
    except (ResultsFileError, TaskResultsError, GenerationResultsError) as exc:
        return str(exc)[:1000], text
    if results.eval_key != key:
        return f"{source} has eval key {results.eval_key[:12]}..., not {key[:12]}...", text
    return None, text


def why_not_stored(client: MlflowClient, cfg: PipelineConfig, model_id: str, wanted: dict[str, str]) -> str:
    """Why no stored score matches: the setup fields in which the model's last stored evaluation differs."""
    runs = _finished_runs_tagged(client, cfg, MODEL_ID_TAG, model_id)
    if not runs:
        return "this model has no stored score yet"
    tags = runs[0].data.tags
    changed = [f"{label} ({tags.get(tag, 'unrecorded')[:12]} -> {wanted[tag][:12]})"
               for tag, label in SETUP_TAGS.items() if tag in wanted and tags.get(tag) != wanted[tag]]
    return ("its stored scores were computed differently: " + ", ".join(changed)) if changed else \
        "its stored scores were computed with another scoring version"


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
