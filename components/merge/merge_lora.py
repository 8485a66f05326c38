"""The merge-lora step: merge the LoRA adapter into its base model shard by shard, and publish it for vLLM.

Features:

- **Streaming, exact merge** (``merge.dtype``, ``merge.max_shard_size_mb``): the base's safetensors shards are read
  one tensor at a time (plain reads, no mmap, no model object); each LoRA-targeted weight gets ``scale * B @ A``
  as peft's ``merge_and_unload`` adds it, bit for bit, and goes straight into the output shard. Peak memory is the
  adapter plus a few tensor-sized buffers, not the model, so a 70B merge fits on an ordinary node.
- **What peft merges, and nothing it would get wrong** (:mod:`components.merge.adapter`): LoRA and rsLoRA on linear
  and embedding layers (``rank_pattern``, ``alpha_pattern``, ``modules_to_save``, saved embeddings), DoRA on linear
  layers, tied embeddings (untied when the adapter changes one side), ``Conv1D`` layers transposed as peft decides.
  Refused with the file and field named: NaN or infinite factors or results, DoRA on embeddings, LoRA biases,
  trainable tokens, QA-LoRA, aLoRA, layer replication, initialisations that changed the base, quantized bases
  (merge a QLoRA adapter into the full-precision base) and non-safetensors bases.
- **A directory vLLM serves as it is**: shards, ``model.safetensors.index.json``, ``config.json`` (dtype set),
  generation config, tokenizer and chat template (the adapter's when it carries a tokenizer), ``merge_info.json``
  (:class:`MergeInfo`) and ``checksums.sha256`` (:mod:`components.merge.verify`).
- **Atomic, immutable versions** (``storage.models_root``, ``mlflow.registered_model_name``): the merge is written
  to a hidden staging directory and published as ``models/<name>/<version>`` in one rename
  (:mod:`components.merge.publish`); ``current`` moves only in promote-model. A retry of a run that already
  published finds its version (:func:`find_published`) instead of merging again.
- **Full fine-tunes** (``training.method: full``) are published the same way, their weights copied through the
  same checks. The step keeps its name for them: merging the adapter is what it does (and what it costs) for LoRA
  and QLoRA, and the task, its MLflow runs (``merge-lora · <run>``, tag ``llmft.step``) and the KFP cache are known
  by it; its input and its record name what they carry, the trained ``weights``.

:func:`merge_model` reads in call order: the base's layout, the adapter, the plan, the weights, the config and
side files, the record, the checks and the manifest.

Usage::

    # plain output directory, written atomically (replace an earlier merge there with --force)
    python -m components.merge.merge_lora --base /storage/models/base-model \\
        --adapter /storage/output/RUN/adapter --output /tmp/merged --dtype bf16
    # versioned layout (models/<name>/<version> + the current pointer)
    python -m components.merge.merge_lora --base /storage/models/base-model \\
        --adapter /storage/output/RUN/adapter --publish-to /storage/models/my-model [--version V] [--no-set-current]
    # full fine-tune: publish its weights (streamed copy, same checks): leave out --adapter
    python -m components.merge.merge_lora --base /storage/output/RUN/full --publish-to /storage/models/my-model

Exit codes: 0 merged, 1 the merge or the publication failed (the message names the file), 2 a usage or
configuration error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from components.common.cli import cli_config, fail, field_flag, new_parser
from components.common.logs import configure_step_logging
from components.common.pipeline_runs import step_run
from components.common.run_data import log_metrics, set_run_tags
from components.common.storage import (
    StorageError,
    atomic_directory,
    atomic_write_text,
    describe_os_error,
    guard_output,
    on_volume,
    run_slug,
)
from components.common.tags import MODEL_DIR_TAG, REUSED_VERSION_TAG
from components.common.typed_files import read_model, write_model
from components.merge.adapter import load_adapter, orient_deltas
from components.merge.inputs import MAX_CONFIG_BYTES, MergeError
from components.merge.plan import base_layout, group_shards, output_dtype, plan_tensors
from components.merge.publish import STAGING_PREFIX, publish_model, published_versions, staging_dir_for, version_name
from components.merge.verify import (
    MERGE_INFO,
    WEIGHT_INDEX,
    PublishError,
    manifest_checksum,
    verify_model_dir,
    write_manifest,
)
from components.merge.write import (
    check_against_plan,
    copy_side_files,
    has_chat_template,
    return_freed_memory_to_the_os,
    write_weights,
)
from configs.errors import StepError
from configs.loading import config_from_json
from configs.safe_json import DocumentError, read_json

STEP = "merge-lora"


class MergeInfo(BaseModel):
    """``merge_info.json`` in every merged model directory: what it was merged from and what it holds."""

    model_config = ConfigDict(extra="forbid")

    base: str = Field(description="The base model directory (the full weights, for a full fine-tune).")
    adapter: str = Field(description="The LoRA adapter directory; empty for a full fine-tune.")
    dtype: str = Field(description="torch dtype of the floating-point weights.")
    shards: int = Field(ge=1, description="Output safetensors shards.")
    tensors: int = Field(ge=1, description="Tensors in the output.")
    bytes: int = Field(ge=0, description="Bytes of tensor data.")
    merged: int = Field(ge=0, description="Weights that got a LoRA update.")
    replaced: int = Field(ge=0, description="Base tensors replaced by the adapter's (modules_to_save, embeddings).")
    untied: list[str] = Field(description="Tied weights written separately because the adapter changed one side.")
    chat_template: bool = Field(description="Whether vLLM finds a chat template.")
    version: str | None = Field(None, description="The published version name (merge-lora and --publish-to).")
    kfp_run_id: str | None = Field(None, description="The pipeline run that published it.")
    method: str | None = Field(None, description="training.method of that run.")
    base_model: str | None = Field(None, description="storage.base_model of that run, resolved.")


def merge_model(base_dir: Path, adapter_dir: Path | None, output_dir: Path, *, dtype: str = "auto",
                max_shard_size_mb: int = 4096, info: dict | None = None) -> dict[str, Any]:
    """Write the merged model (or, without an adapter, a streamed copy of the base) into ``output_dir``.

    ``output_dir`` must be empty or absent; write it through a staging directory (see
    :func:`merge_and_publish`) so that nobody reads it half-written. ``info`` (version, kfp_run_id, method,
    base_model) is recorded in ``merge_info.json``.

    Returns:
        A summary: dtype, shards, tensors, merged, replaced, untied, bytes, chat_template, checksum (SHA-256 of
        ``checksums.sha256``).

    Raises:
        MergeError: the base or adapter cannot be merged (see :func:`components.merge.plan.base_layout`,
            :func:`components.merge.adapter.load_adapter`).
        StorageError: the output directory is not empty.
    """
    base_dir, output_dir = Path(base_dir), Path(output_dir)
    adapter_dir = Path(adapter_dir) if adapter_dir else None
    return_freed_memory_to_the_os()
    config, shards = base_layout(base_dir)
    adapter = orient_deltas(load_adapter(adapter_dir), config, shards) if adapter_dir else None
    target = output_dtype(dtype, config, shards)
    plan, untied = plan_tensors(shards, adapter, config, target)
    groups = group_shards(plan, max_shard_size_mb * 1024 * 1024)
    output_dir.mkdir(parents=True, exist_ok=True)
    if any(output_dir.iterdir()):
        raise StorageError(f"{output_dir} is not empty; merge into a fresh directory")
    digests, weight_map = write_weights(output_dir, groups, shards, adapter, target)
    total = sum(tensor.nbytes for tensor in plan)
    _write_json(output_dir / WEIGHT_INDEX, {"metadata": {"total_size": total},
                                            "weight_map": dict(sorted(weight_map.items()))})
    config["dtype"] = target
    config["torch_dtype"] = target  # vLLM on transformers < 4.56 reads only torch_dtype
    if untied:
        config["tie_word_embeddings"] = False
    _write_json(output_dir / "config.json", config)
    side_files = copy_side_files(base_dir, adapter_dir, output_dir)
    record = MergeInfo(base=str(base_dir), adapter=str(adapter_dir or ""), dtype=target, shards=len(groups),
                       tensors=len(plan), bytes=total, merged=len(adapter.deltas) if adapter else 0,
                       replaced=len(adapter.replacements) if adapter else 0, untied=untied,
                       chat_template=has_chat_template(output_dir, side_files), **(info or {}))
    write_model(output_dir / MERGE_INFO, record)
    check_against_plan(output_dir, groups)
    checksum = write_manifest(output_dir, digests)
    summary = record.model_dump(include={"dtype", "shards", "tensors", "bytes", "merged", "replaced", "untied",
                                         "chat_template"})
    return {**summary, "checksum": checksum}


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def find_published(models_dir: Path, kfp_run_id: str) -> Path | None:
    """The newest verified version this run already published (a retry after a late failure), or None."""
    suffix = f"-{run_slug(kfp_run_id)}"
    for version in reversed(published_versions(models_dir)):
        path = Path(models_dir) / version
        if not version.endswith(suffix) or not (path / MERGE_INFO).is_file():
            continue
        with contextlib.suppress(ValueError, OSError, PublishError):  # another run's, or damaged: not ours
            if read_model(path / MERGE_INFO, MergeInfo, "the merge record").kfp_run_id == kfp_run_id:
                verify_model_dir(path)
                return path
    return None


def remove_stale_staging(models_dir: Path, kfp_run_id: str) -> list[Path]:
    """Delete staging directories that earlier, killed attempts of this run left behind."""
    pattern = f"{STAGING_PREFIX}*-{run_slug(kfp_run_id)}-????????"
    stale = sorted(Path(models_dir).glob(pattern)) if Path(models_dir).is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def merge_and_publish(base_dir: Path, adapter_dir: Path | None, models_dir: Path, version: str, *,
                      dtype: str = "auto", max_shard_size_mb: int = 4096, set_current: bool = False,
                      info: dict | None = None) -> tuple[Path, dict[str, Any]]:
    """Merge into a hidden staging directory next to the versions, then publish it as ``version``.

    Returns ``(published dir, summary)``. A failure at any point removes the staging directory and
    leaves every published version and ``current`` as they were.

    Raises:
        MergeError: the inputs cannot be merged.
        PublishError: the result failed verification or the version exists.
        StorageError: the volume refused a write.
    """
    staging = staging_dir_for(models_dir, version)
    try:
        summary = merge_model(base_dir, adapter_dir, staging, dtype=dtype, max_shard_size_mb=max_shard_size_mb,
                              info={"version": version, **(info or {})})
        return publish_model(staging, models_dir, version, set_current=set_current), summary
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def run_step(config: str, kfp_run_id: str, weights_dir: str, merged: Any) -> tuple[str, str]:
    """Merge the trained adapter (or copy full weights) and publish a new version without moving ``current``.

    Reads storage (mount_path, base_model, models_root), mlflow (registered_model_name and the
    tracking settings), training.method (``full``: ``weights_dir`` holds full weights, else the LoRA adapter) and merge
    (dtype, max_shard_size_mb). Idempotent: a retry of a run that already published returns that
    version. Logs the MLflow child run ``merge-lora`` (params base, weights, dtype, version, checksum).

    Returns:
        ``(model_dir, version)``: the published directory (absolute) and its version name.

    Raises:
        ConfigError: the config parameter is invalid.
        MergeError, PublishError, StorageError: see :func:`merge_and_publish`.
        TrackingUnavailable: the MLflow server does not answer.
    """
    configure_step_logging(STEP)
    cfg = config_from_json(config)
    base = on_volume(cfg, cfg.storage.base_model)
    trained = on_volume(cfg, weights_dir, absolute_ok=False)
    models_dir = on_volume(cfg, Path(cfg.storage.models_root) / cfg.mlflow.registered_model_name)
    guard_output(models_dir, {"storage.base_model": base, "the trained weights": trained},
                 flag="storage.models_root/mlflow.registered_model_name")
    full = cfg.training.method == "full"
    with step_run(cfg, kfp_run_id, STEP, system_metrics=True) as (client, run_id):
        started = time.monotonic()
        published = find_published(models_dir, kfp_run_id)
        reused = published is not None
        if published is None:
            remove_stale_staging(models_dir, kfp_run_id)
            published, _ = merge_and_publish(
                trained if full else base, None if full else trained, models_dir, version_name(kfp_run_id),
                dtype=cfg.merge.dtype, max_shard_size_mb=cfg.merge.max_shard_size_mb, set_current=False,
                info={"kfp_run_id": kfp_run_id, "method": cfg.training.method, "base_model": str(base)},
            )
        details = read_model(published / MERGE_INFO, MergeInfo, "the merge record", error=MergeError)
        record = {"base": str(base), "weights": str(trained), "dtype": details.dtype, "version": published.name,
                  "checksum": manifest_checksum(published), "method": cfg.training.method,
                  "model_dir": str(published)}
        for key in ("base", "weights", "dtype", "version", "checksum"):
            client.log_param(run_id, key, record[key])
        set_run_tags(client, run_id, {MODEL_DIR_TAG: str(published), REUSED_VERSION_TAG: str(reused).lower()})
        log_metrics(client, run_id, {"merge_seconds": time.monotonic() - started, "model_bytes": details.bytes,
                                     "merged_tensors": details.merged})
    merged.metadata.update(record)
    Path(merged.path).parent.mkdir(parents=True, exist_ok=True)
    Path(merged.path).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({STEP: record, "reused": reused}))
    return str(published), published.name


def _check_replaceable(output: Path) -> None:
    """``--output --force`` replaces only a model an earlier ``--output`` merge wrote, never anything else.

    Raises:
        StorageError: ``output`` exists and is not such a directory (no merge_info.json, a published version).
    """
    output = Path(output)
    if not output.exists() and not output.is_symlink():
        return
    info_file = output / MERGE_INFO
    if output.is_symlink() or not output.is_dir() or not info_file.is_file():
        raise StorageError(f"--output {output} exists and is not a merged model ({MERGE_INFO} is missing); --force "
                           "replaces only a directory an earlier merge_lora --output wrote")
    try:
        version = read_json(info_file, max_bytes=MAX_CONFIG_BYTES).get("version")
    except (DocumentError, AttributeError):
        version = None
    if version is not None:
        raise StorageError(f"--output {output} is the published version {version!r}; published versions are "
                           "immutable: publish a new one with --publish-to")


def build_parser() -> argparse.ArgumentParser:
    """The command line: merge into a plain directory (--output) or publish a version (--publish-to)."""
    parser = new_parser("components.merge.merge_lora", "Merge a LoRA adapter into its base model shard by shard (or "
                        "copy full weights without --adapter) and write it atomically for vLLM.")
    parser.add_argument("--base", required=True, type=Path, help="Base model directory (safetensors).")
    parser.add_argument("--adapter", type=Path, help="peft LoRA adapter directory; leave out to copy --base.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--output", type=Path, help="Plain output directory, written atomically (no versions).")
    where.add_argument("--publish-to", type=Path, metavar="MODELS_DIR",
                       help="Versioned layout: MODELS_DIR/<version> plus the current pointer.")
    parser.add_argument("--version", help="Version name with --publish-to (default: UTC time YYYYmmdd-HHMMSS).")
    parser.add_argument("--no-set-current", action="store_true", help="With --publish-to: do not move current.")
    parser.add_argument("--force", action="store_true", help="With --output: replace an earlier merge there.")
    field_flag(parser, "--dtype", "merge.dtype")
    field_flag(parser, "--max-shard-size-mb", "merge.max_shard_size_mb")
    return parser


def _merge_by_hand(args: argparse.Namespace, dtype: str, max_shard_size_mb: int) -> dict[str, Any]:
    """What the CLI does: merge into ``--output`` or publish into ``--publish-to`` (outputs guarded first).

    Raises:
        MergeError, StorageError: as :func:`merge_model` and :func:`merge_and_publish`; a write the volume refused
            (full, read-only) is a StorageError naming where it happened.
    """
    try:
        return _merge_or_publish(args, dtype, max_shard_size_mb)
    except StepError:
        raise
    except OSError as exc:  # a full or read-only volume mid-write: name where it happened
        raise StorageError(describe_os_error(exc, Path(args.output or args.publish_to))) from exc


def _merge_or_publish(args: argparse.Namespace, dtype: str, max_shard_size_mb: int) -> dict[str, Any]:
    inputs = {"--base": args.base, "--adapter": args.adapter}
    if args.output:
        guard_output(args.output, inputs, replace=True)  # never an input, inside one or above one
        if args.output.exists() and not args.force:
            raise StorageError(f"--output {args.output} already exists; pass --force to replace an earlier merge "
                               "there")
        if args.force:
            _check_replaceable(args.output)
        with atomic_directory(args.output, replace=args.force) as staging:
            summary = merge_model(args.base, args.adapter, staging, dtype=dtype, max_shard_size_mb=max_shard_size_mb)
            verify_model_dir(staging)
        return {"output": str(args.output), **summary}
    guard_output(args.publish_to, inputs, flag="--publish-to")
    version = args.version or version_name()
    path, summary = merge_and_publish(args.base, args.adapter, args.publish_to, version, dtype=dtype,
                                      max_shard_size_mb=max_shard_size_mb, set_current=not args.no_set_current)
    return {"published": str(path), "version": version, "current": not args.no_set_current, **summary}


def main(argv: list[str] | None = None) -> int:
    """Merge by hand; exit 0 on success, 1 when the merge or publish fails, 2 on usage or configuration errors."""
    configure_step_logging(STEP)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.output and (args.version or args.no_set_current):
        parser.error("--version and --no-set-current go with --publish-to")
    try:
        cfg = cli_config(parser, args)
        result = _merge_by_hand(args, cfg.merge.dtype, cfg.merge.max_shard_size_mb)
    except StepError as exc:
        return fail(parser, exc)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
