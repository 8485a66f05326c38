"""What the train step leaves: the published weights with their summary, and the pointer KFP shows.

- ``adapter/`` (or ``full/``) in the run directory: the trainer's final weights, moved there whole by
  :func:`publish_weights` (a crash leaves the complete directory or none), with ``train_summary.json``
  (:class:`TrainSummary`), ``train.yaml``, ``trainer_log.jsonl`` and the loss plot beside them. A retry that
  finds them, made by the same configuration, reuses them instead of training again.
- ``model.json`` in the KFP ``weights`` artifact (:class:`ModelPointer`): where the weights are on the PVC and
  what made them; merge-lora gets the directory itself as the ``model_dir`` output.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from components.common.storage import atomic_directory
from components.common.typed_files import read_model
from components.train.inputs import TrainError

SUMMARY_FILE = "train_summary.json"
POINTER_FILE = "model.json"


class TrainSummary(BaseModel):
    """``train_summary.json``, next to the published weights: what the training was and how it went."""

    model_config = ConfigDict(extra="forbid")

    metrics: dict[str, float] = Field(description="train_loss, best_step, best_val_loss, train_runtime_s, "
                                      "tokens_per_second, ...")
    mlflow_run_id: str = Field(min_length=1, description="The train step's MLflow run.")
    kfp_run_id: str = Field(min_length=1, description="The pipeline run that trained.")
    method: str = Field(description="training.method.")
    base_model: str = Field(description="The base model directory on the volume.")
    resumed_from: str | None = Field(description="The checkpoint the last attempt resumed from, if any.")
    dataset_hash: str = Field(description="The data version validate-dataset reported.")
    dataset_hashes: dict[str, str] = Field(description="sha256 of each dataset's train side, by name.")
    config_hash: str = Field(min_length=1, description="PipelineConfig.config_hash() of the training's config.")
    training_fingerprint: str = Field(description="sha256 of what defines the training (components.train.fingerprint).")
    finished_at: str = Field(description="UTC time the weights were published.")
    trial: int = Field(0, ge=0, description="The sweep trial this is (0 without a sweep).")
    settings: dict[str, int | float] = Field(default_factory=dict,
                                             description="The training settings the trial varies.")


class ModelPointer(BaseModel):
    """``model.json`` in the KFP ``weights`` artifact: the trained weights on the PVC and their lineage."""

    model_config = ConfigDict(extra="forbid")

    model_dir: str = Field(min_length=1, description="adapter/ (or full/) in the run directory.")
    method: str = Field(description="training.method.")
    base_model: str = Field(description="The base model directory on the volume.")
    pvc_name: str = Field(description="storage.pvc_name: the volume the paths are on.")
    mlflow_run_id: str = Field(min_length=1, description="The train step's MLflow run.")
    dataset_hash: str = Field(description="The data version trained on.")
    global_step: int = Field(ge=0, description="The optimizer steps of the whole training.")


def read_summary(model_dir: Path) -> TrainSummary | None:
    """The summary of weights an earlier attempt of this run published, or None when there are none.

    Raises:
        TrainError: ``train_summary.json`` exists but does not validate (an older release's, a damaged one); the
            message names the file and the fields.
    """
    path = model_dir / SUMMARY_FILE
    if not path.is_file():
        return None
    return read_model(path, TrainSummary, "the train summary", error=TrainError)


def _move(source: Path, target: Path) -> None:
    try:
        # Same volume: instant, no second copy of the weights, and no hard link that a later trainer run
        # could rewrite in place under the published name.
        os.replace(source, target)
    except OSError:
        shutil.copy2(source, target)


def publish_weights(output_dir: Path, model_dir: Path, extra: dict[str, bytes]) -> Path:
    """Move the trainer's final weights (the files at the top of ``output_dir``) and write ``extra`` files into
    ``model_dir`` atomically: a crash leaves either the complete directory or none. The checkpoints stay, so
    a retry after a crash here resumes from the last one and saves the weights again.

    Raises:
        StorageError: the volume refused the write.
    """
    with atomic_directory(model_dir, replace=True) as staging:
        for source in sorted(output_dir.iterdir()):
            if source.is_file() and source.name not in extra:
                _move(source, staging / source.name)
        for name, data in extra.items():
            (staging / name).write_bytes(data)
    return model_dir
