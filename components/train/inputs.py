"""What the train step reads and where it writes: the run's paths, and the validated data it trains on.

Every path is run-scoped (``<output_root>/<run slug>/``), so concurrent runs never share one; a sweep's trial
writes its own under ``<run dir>/trials/trial-N/`` (:func:`components.train.trials.trial_dir`), all but the
snapshot, which the trials share:

``data/``                   the split snapshot validate-dataset wrote; the trainer reads its train and validation
                            entries only (never a test file: no test row is read before the gate)
``checkpoints/``            the trainer's ``output_dir`` (checkpoints, trainer log, final weights)
``checkpoints-discarded/``  checkpoints that cannot or must not be resumed (:mod:`components.train.checkpoints`)
``training_fingerprint.json``  which training wrote ``checkpoints/`` (:mod:`components.train.fingerprint`)
``train.yaml``              the rendered LLaMA-Factory config (:mod:`components.train.render`)
``logs/``                   the trainer's whole output, one file per attempt
``adapter/`` or ``full/``   the published weights (:mod:`components.train.outputs`)
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from components.common.logs import step_logger
from components.common.storage import on_volume, run_dir
from components.data.split import SNAPSHOT_DIR, SplitError, SplitManifest, verify_snapshot
from components.train.trials import trial_dir
from configs.errors import StepError
from configs.schema import PipelineConfig

TRAIN_SIDES = ("train", "val")  # what the train step reads of the snapshot (the test side is the gate's)

TRAIN_YAML = "train.yaml"
log = step_logger("train")  # the train step's lines


class TrainError(StepError, RuntimeError):
    """The inputs of the training step are unusable (base model, datasets) or the trainer left no state; the
    message names the path."""


class TrainPaths(NamedTuple):
    """Where one run's training reads and writes (all absolute, on the storage volume)."""

    base_model: Path
    dataset_dir: Path  # data/: the validated split snapshot (the trainer reads its train and val entries only)
    run_dir: Path
    output_dir: Path  # checkpoints/: the trainer's output_dir
    discard_dir: Path  # checkpoints-discarded/: incomplete checkpoints moved out of the way
    model_dir: Path  # adapter/ or full/: the published final weights
    train_yaml: Path
    log_dir: Path


def resolve_paths(cfg: PipelineConfig, kfp_run_id: str, *, check: bool = True, trial: int = 0) -> TrainPaths:
    """The paths of this run's training (of sweep trial ``trial``), checking the inputs exist unless ``check`` is
    False.

    Reads ``storage`` (mount_path, base_model, data_dir, output_root), ``training.method`` and ``sweep``.

    Raises:
        TrainError: the base model has no ``config.json``, or there is no split snapshot yet and the data
            directory has no ``dataset_info.json`` to build it from.
        StorageError: a path resolves outside the storage root.
    """
    base = trial_dir(cfg, kfp_run_id, trial)
    source = on_volume(cfg, cfg.storage.data_dir)
    paths = TrainPaths(
        base_model=on_volume(cfg, cfg.storage.base_model),
        dataset_dir=run_dir(cfg, kfp_run_id) / SNAPSHOT_DIR,
        run_dir=base,
        output_dir=base / "checkpoints",
        discard_dir=base / "checkpoints-discarded",
        model_dir=base / ("full" if cfg.training.method == "full" else "adapter"),
        train_yaml=base / TRAIN_YAML,
        log_dir=base / "logs",
    )
    if check and not (paths.base_model / "config.json").is_file():
        raise TrainError(f"base model {paths.base_model} has no config.json (storage.base_model="
                         f"{cfg.storage.base_model!r}); put a Hugging Face model directory there")
    if check and not paths.dataset_dir.exists() and not (source / "dataset_info.json").is_file():
        raise TrainError(f"{source / 'dataset_info.json'} does not exist (storage.data_dir={cfg.storage.data_dir!r}); "
                         "the data directory needs LLaMA-Factory's dataset_info.json")
    return paths


def prepare_data(cfg: PipelineConfig, kfp_run_id: str, paths: TrainPaths) -> SplitManifest:
    """The split snapshot this run trains on, verified against its manifest.

    The validate step wrote it; a run by hand without that step builds it here, validating the data first.
    Reads ``dataset`` (names, test_fraction, min_test_rows, max_test_rows, val_fraction, min_val_rows,
    max_val_rows; all of it when it builds). Only the train and validation files are verified: the test files
    are the gate's, and the train step never opens them.

    Raises:
        TrainError: the data is invalid (the problems are listed); a snapshot file changed after validation
            or its manifest is invalid (the file is named); or the snapshot was split for other datasets
            or settings than this config's.
        StorageError: the volume refused a write while building the snapshot.
    """
    names = cfg.dataset.names
    if not paths.dataset_dir.exists():
        from components.data.validate_dataset import validate_config_data

        result, split = validate_config_data(cfg, kfp_run_id)
        if split is None:
            listed = ", ".join(repr(name) for name in names)
            raise TrainError(f"cannot train on dataset{'s' if len(names) > 1 else ''} {listed} (dataset.names): "
                             f"{result.failure_message()}")
        log.info(f"validated the data and wrote its split snapshot to {paths.dataset_dir}")
    else:  # written by the validate step: re-hash it (one just written here needs no second read)
        try:
            split = verify_snapshot(paths.dataset_dir, sides=TRAIN_SIDES)
        except SplitError as exc:
            raise TrainError(f"the validated training data cannot be used: {exc}") from None
    data = cfg.dataset
    validation = (data.min_val_rows, data.max_val_rows) if data.val_fraction else (0, 0)
    wanted = (data.test_fraction, data.min_test_rows, data.max_test_rows, data.val_fraction, *validation)
    made = (split.test_fraction, split.min_test_rows, split.max_test_rows, split.val_fraction, split.min_val_rows,
            split.max_val_rows)
    has = [item.name for item in split.datasets]
    if made != wanted or not set(names) <= set(has):
        raise TrainError(f"the split snapshot {paths.dataset_dir} holds {has} split with (test_fraction, "
                         f"min_test_rows, max_test_rows, val_fraction, min_val_rows, max_val_rows) = {made}; this "
                         f"config asks for {names} with {wanted}: validate again (a new pipeline run, or a new "
                         "--run-id by hand)")
    return split
