"""The validate-dataset step: fail fast before any GPU time is spent, name the row, version the data.

    python -m components.data.validate_dataset --dataset-dir storage/data --dataset alpaca_sample
    python -m components.data.validate_dataset --config local --dataset-dir storage/data \\
        --dataset alpaca_sample,sharegpt_sample --eval-data-dir storage/eval/mmlu --cutoff-len 256 \\
        --report /tmp/validation.md

Exit status: 0 valid, 1 invalid (every problem printed as ``FILE:ROW: field 'NAME': what is wrong``),
2 usage or configuration error. ``--dataset``, ``--cutoff-len``, ``--ngram``, ``--max-contaminated`` and
``--max-errors`` set their ``dataset``/``training`` fields of ``--config`` (the schema's defaults without one).

The checks live in :func:`components.data.validation.validate_datasets` (shared by the CLI and
:func:`run_step`). The step also splits the rows into train and held-out test sides in the same pass
and publishes the split snapshot in the run directory, ``<output_root>/<run slug>/data``
(:func:`components.data.split_writer.validate_and_split`), with a validation side in the band after the test side
(``dataset.val_fraction``); training reads only that snapshot's train and validation files. A dataset
with fewer than ``dataset.min_test_rows`` held-out rows (``dataset.min_val_rows`` validation rows) is a problem.
The step adds the outputs: a Markdown report (:func:`components.data.result.render_report`) and Metrics for
the Kubeflow UI, MLflow dataset inputs on the step's run and the pipeline's parent run (context ``training``: the
source data, digest = the first 16 hex digits of its sha256, the full hash as a tag; context ``test``: each
dataset's scored test rows, digest = the first 16 hex digits of its test split hash; context ``validation``: its
scored validation rows, likewise), the combined hash as the ``dataset_hash`` output, part of the downstream cache
key, and the test side's identity as ``test_split_hash``. Invalid data
raises :class:`DatasetValidationError`, which fails the task and stops the pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from components.common.cli import cli_config, fail, field_flag, new_parser
from components.common.logs import configure_step_logging, step_logger
from components.common.pipeline_runs import parent_run_id, step_run
from components.common.storage import atomic_write_text, guard_output, on_volume
from components.common.tags import (
    DATA_CONTEXT_TAG,
    DATASET_HASH_TAG,
    DATASET_OK_TAG,
    SHA256_TAG,
    TEST_SPLIT_HASH_TAG,
    VAL_SPLIT_HASH_TAG,
)
from components.data.result import ValidationResult, render_report
from components.data.split import SplitManifest, snapshot_dir
from components.data.split_writer import validate_and_split
from components.data.validation import validate_datasets
from configs.errors import StepError, UsageError
from configs.loading import config_from_json
from configs.schema import PipelineConfig

STEP = "validate-dataset"
log = step_logger(STEP)


class DatasetValidationError(StepError, ValueError):
    """The datasets are invalid; the message lists the problems (``FILE:ROW: field 'NAME': ...``)."""


def validate_config_data(cfg: PipelineConfig, kfp_run_id: str, *,
                         replace: bool = False) -> tuple[ValidationResult, SplitManifest | None]:
    """Validate the configured datasets and publish their split snapshot in the run directory.

    Shared by :func:`run_step` and a training run by hand (:mod:`components.train.train`). Reads ``storage``
    (mount_path, data_dir, eval_data_dir, output_root), ``dataset`` (names, max_reported_errors,
    contamination_ngram, max_contaminated_rows, max_leaked_rows, test_fraction, min_test_rows, max_test_rows,
    val_fraction, min_val_rows, max_val_rows) and
    ``training.cutoff_len``. The MMLU contamination check runs over every row (both sides) when
    ``<eval_data_dir>/test`` exists; the leak check over the scored held-out rows (both sides) against the train side.

    Returns:
        The validation result and the :class:`~components.data.split.SplitManifest` (None when invalid:
        then nothing was written).

    Raises:
        StorageError: the volume refused a write, a snapshot exists and ``replace`` is False, or the snapshot
            would land on, inside or above the data or the MMLU data (``storage.output_root``).
    """
    mmlu = on_volume(cfg, cfg.storage.eval_data_dir)
    source = on_volume(cfg, cfg.storage.data_dir)
    data = cfg.dataset
    destination = guard_output(snapshot_dir(cfg, kfp_run_id), {"storage.data_dir": source,
                                                               "storage.eval_data_dir": mmlu},
                               flag="the split snapshot (storage.output_root)", replace=replace)
    return validate_and_split(
        source, data.names, destination, replace=replace,
        test_fraction=data.test_fraction, min_test_rows=data.min_test_rows, max_test_rows=data.max_test_rows,
        val_fraction=data.val_fraction, min_val_rows=data.min_val_rows, max_val_rows=data.max_val_rows,
        max_leaked=data.max_leaked_rows, cutoff_len=cfg.training.cutoff_len,
        eval_data_dir=mmlu if (mmlu / "test").is_dir() else None,
        ngram=data.contamination_ngram, max_contaminated=data.max_contaminated_rows,
        max_errors=data.max_reported_errors,
    )


def run_step(config: str, kfp_run_id: str, metrics: Any, report: Any) -> tuple[str, str, int]:
    """The validate-dataset pipeline step: validate and split, log to MLflow, write the outputs.

    Reads the fields :func:`validate_config_data` reads, and ``mlflow``. A retried step replaces the
    snapshot an earlier attempt published.

    Returns:
        (combined sha256 of the named datasets, test split hash, total rows).

    Raises:
        ConfigError: the config parameter is invalid (the message names the field).
        DatasetValidationError: the data is invalid; the message lists the problems.
        TrackingUnavailable: the MLflow server does not answer.
        StorageError: the volume refused a write.
    """
    configure_step_logging(STEP)
    cfg = config_from_json(config)
    with step_run(cfg, kfp_run_id, STEP) as (client, run_id):
        result, split = validate_config_data(cfg, kfp_run_id, replace=True)
        markdown = render_report(result, split)
        atomic_write_text(report.path, markdown)
        numbers = dict(result.metrics(), **_split_metrics(split))
        for key, value in numbers.items():
            metrics.log_metric(key, value)
        test_split_hash = split.test_split_hash if split else ""
        report.metadata.update({"dataset_hash": result.combined_sha256, "test_split_hash": test_split_hash,
                                "ok": result.ok})
        log_to_mlflow(client, run_id, cfg, kfp_run_id, result, markdown, split)
        if not result.ok:
            raise DatasetValidationError(result.failure_message())
    held = _split_metrics(split)
    log.info(f"{result.rows} rows valid in {', '.join(result.names)}; {held.get('held_out_rows', 0)} held out for "
             f"the task evaluation, {held.get('val_rows', 0)} for validation, {held.get('train_rows', 0)} to train on")
    return result.combined_sha256, test_split_hash, result.rows


def _split_metrics(split: SplitManifest | None) -> dict[str, int]:
    if split is None:
        return {}
    return {"train_rows": sum(item.train_rows for item in split.datasets),
            "held_out_rows": sum(item.held_out_rows for item in split.datasets),
            "scored_test_rows": sum(item.scored_rows for item in split.datasets),
            "val_rows": sum(item.val_rows for item in split.datasets),
            "scored_val_rows": sum(item.scored_val_rows for item in split.datasets)}


def log_to_mlflow(client: Any, run_id: str, cfg: Any, kfp_run_id: str, result: ValidationResult,
                  markdown: str, split: SplitManifest | None = None) -> None:
    """Log the datasets as MLflow dataset inputs (on the step's run and the pipeline's parent run), the
    counts as metrics, the hashes as tags and the report as an artifact.

    Each dataset is a ``training`` input (the source data); with ``split`` each also gets a ``test`` input:
    its scored test rows, digest the first 16 hex digits of the test split hash (MLflow digests are short),
    the full hash as the tag ``llmft.test_split_hash``; and, with a validation side, a ``validation`` input
    likewise (tag ``llmft.val_split_hash``).
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

    now_ms = int(time.time() * 1000)
    inputs = []
    for version in result.datasets:
        profile = {"num_rows": version.rows, "invalid_rows": version.invalid_rows, "files": len(version.files),
                   "formatting": version.formatting, "ranking": version.ranking}
        source = {"uri": str(Path(result.dataset_dir) / version.file_name)}
        dataset = Dataset(name=version.name, digest=version.sha256[:16] or "invalid", source_type="local",
                          source=json.dumps(source), profile=json.dumps(profile))
        inputs.append(DatasetInput(dataset, tags=[InputTag(DATA_CONTEXT_TAG, "training"),
                                                  InputTag(SHA256_TAG, version.sha256)]))
    numbers = dict(result.metrics(), **_split_metrics(split),
                   **{f"rows.{version.name}": version.rows for version in result.datasets})
    params = [Param("dataset.names", ",".join(result.names)), Param("dataset.dir", result.dataset_dir),
              Param("training.cutoff_len", str(result.cutoff_len))]
    tags = [RunTag(DATASET_HASH_TAG, result.combined_sha256), RunTag(DATASET_OK_TAG, str(result.ok))]
    if split is not None:
        snapshot = snapshot_dir(cfg, kfp_run_id)
        for item in split.datasets:
            profile = {"num_rows": item.scored_rows, "held_out_rows": item.held_out_rows,
                       "train_rows": item.train_rows, "test_fraction": split.test_fraction}
            dataset = Dataset(name=item.name, digest=item.test_split_hash[:16], source_type="local",
                              source=json.dumps({"uri": str(snapshot / item.test_file)}), profile=json.dumps(profile))
            inputs.append(DatasetInput(dataset, tags=[InputTag(DATA_CONTEXT_TAG, "test"),
                                                      InputTag(TEST_SPLIT_HASH_TAG, item.test_split_hash),
                                                      InputTag(SHA256_TAG, item.test_sha256)]))
            numbers.update({f"train_rows.{item.name}": item.train_rows,
                            f"held_out_rows.{item.name}": item.held_out_rows,
                            f"scored_test_rows.{item.name}": item.scored_rows})
            if item.val_file and item.val_split_hash and item.val_sha256:
                profile = {"num_rows": item.scored_val_rows, "val_rows": item.val_rows,
                           "train_rows": item.train_rows, "val_fraction": split.val_fraction}
                dataset = Dataset(name=item.name, digest=item.val_split_hash[:16], source_type="local",
                                  source=json.dumps({"uri": str(snapshot / item.val_file)}),
                                  profile=json.dumps(profile))
                inputs.append(DatasetInput(dataset, tags=[InputTag(DATA_CONTEXT_TAG, "validation"),
                                                          InputTag(VAL_SPLIT_HASH_TAG, item.val_split_hash),
                                                          InputTag(SHA256_TAG, item.val_sha256)]))
                numbers.update({f"val_rows.{item.name}": item.val_rows,
                                f"scored_val_rows.{item.name}": item.scored_val_rows})
        params += [Param("dataset.test_fraction", str(split.test_fraction)),
                   Param("dataset.val_fraction", str(split.val_fraction)),
                   Param("dataset.snapshot", str(snapshot))]
        tags.append(RunTag(TEST_SPLIT_HASH_TAG, split.test_split_hash))
        if split.val_split_hash:
            tags.append(RunTag(VAL_SPLIT_HASH_TAG, split.val_split_hash))
    client.log_batch(run_id, metrics=[Metric(key, float(value), now_ms, 0) for key, value in numbers.items()],
                     params=params, tags=tags)
    if inputs:
        client.log_inputs(run_id, datasets=inputs)
        client.log_inputs(parent_run_id(client, cfg, kfp_run_id), datasets=inputs)
    client.log_text(run_id, markdown, "validation/report.md")
    client.log_text(run_id, json.dumps(result.to_dict(), indent=2), "validation/result.json")
    if split is not None:
        client.log_text(run_id, split.model_dump_json(indent=2), "validation/split.json")


def build_parser() -> argparse.ArgumentParser:
    """The command line: validate datasets by hand, with the step's checks."""
    parser = new_parser("components.data.validate_dataset", "Validate LLaMA-Factory datasets before training.")
    parser.add_argument("--dataset-dir", required=True, type=Path, help="Directory with dataset_info.json.")
    field_flag(parser, "--dataset", "dataset.names", metavar="NAME[,NAME...]")
    parser.add_argument("--eval-data-dir", type=Path, help="MMLU directory (hendrycks layout) for the "
                        "contamination check.")
    parser.add_argument("--report", type=Path, help="Write the Markdown report here.")
    field_flag(parser, "--cutoff-len", "training.cutoff_len")
    field_flag(parser, "--ngram", "dataset.contamination_ngram")
    field_flag(parser, "--max-contaminated", "dataset.max_contaminated_rows")
    field_flag(parser, "--max-errors", "dataset.max_reported_errors")
    parser.add_argument("--json", action="store_true", help="Print the result as JSON instead of text.")
    return parser


def _print_result(result: ValidationResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    for item in result.warnings:
        print(f"warning: {item}")
    if result.warning_count > len(result.warnings):
        print(f"warning: ... and {result.warning_count - len(result.warnings)} more")
    for version in result.datasets:
        print(f"{version.name}: {version.rows} rows, sha256 {version.sha256 or '-'}")
    print(result.failure_message() if not result.ok else
          f"OK: {result.rows} rows valid; combined sha256 {result.combined_sha256}")


def main(argv: list[str] | None = None) -> int:
    """Validate; returns 0 when valid, 1 when not (or the report cannot be written), 2 on a usage error."""
    configure_step_logging(STEP)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = cli_config(parser, args)
        if not os.path.isdir(args.dataset_dir):
            raise UsageError(f"--dataset-dir {args.dataset_dir} is not a directory")
        if args.report:  # checked first: the report must never replace the data it describes
            guard_output(args.report, {"--dataset-dir": args.dataset_dir, "--eval-data-dir": args.eval_data_dir},
                         flag="--report")
    except StepError as exc:
        return fail(parser, exc, code=2)  # refused before anything was read: a usage error
    data = cfg.dataset
    result = validate_datasets(args.dataset_dir, data.names, cutoff_len=cfg.training.cutoff_len,
                               eval_data_dir=args.eval_data_dir, ngram=data.contamination_ngram,
                               max_contaminated=data.max_contaminated_rows, max_errors=data.max_reported_errors)
    if args.report:
        try:
            atomic_write_text(args.report, render_report(result))
        except StepError as exc:  # a full or read-only volume: say where, write nothing
            return fail(parser, exc)
    _print_result(result, args.json)
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
