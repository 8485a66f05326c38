"""What defines a training: the fingerprint recorded with its checkpoints, so that only the same training resumes them.

A rerun of a run id resumes its checkpoints (:func:`components.train.checkpoints.keep_only_same_training`) only when
these fields are unchanged:

- the base model's content (:func:`model_digest`), not its path;
- the data: ``dataset.names`` and the sha256 of each dataset's train side (the split snapshot's train files);
- the method and every ``training`` hyper-parameter, except :data:`SCHEDULE_FIELDS`;
- what the trainer makes of the cluster: precision, DeepSpeed stage and the number of processes (the global
  batch is per-device batch x accumulation x processes).

:data:`SCHEDULE_FIELDS` only lengthen or reshape the schedule of the same training, so a rerun with more
``max_steps`` continues where the last one stopped. Anything else, including a field added to the schema
later, makes another training: its checkpoints are moved aside and training starts fresh.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from components.train.render import deepspeed_stage, resolve_precision
from configs.schema import PipelineConfig

SCHEDULE_FIELDS = frozenset({"max_steps", "num_train_epochs", "save_steps", "save_total_limit", "logging_steps"})
# Files larger than this are fingerprinted by their size and their first and last SAMPLE_BYTES: reading every
# byte of a 140 GB base model at each retry would cost minutes; a different model differs in its first bytes.
FULL_HASH_LIMIT = 64 << 20
SAMPLE_BYTES = 4 << 20


def _file_digest(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= FULL_HASH_LIMIT:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        else:
            digest.update(handle.read(SAMPLE_BYTES))
            handle.seek(size - SAMPLE_BYTES)
            digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()


def model_digest(model_dir: Path) -> str:
    """sha256 over a model directory: every file's relative path, size and content (sampled above 64 MiB).

    Raises:
        OSError: a file cannot be read.
    """
    digest = hashlib.sha256()
    for path in sorted(path for path in model_dir.rglob("*") if path.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(model_dir)}\0{size}\0{_file_digest(path, size)}\n".encode())
    return digest.hexdigest()


def training_fingerprint(cfg: PipelineConfig, *, base_model: Path, dataset_hashes: dict[str, str],
                         gpu: bool) -> dict[str, str]:
    """The fields that define this training (see the module docstring), as strings by name.

    Reads ``training`` (all fields but :data:`SCHEDULE_FIELDS`), ``dataset.names`` and ``cluster``
    (accelerator_count, nodes).

    Args:
        cfg: The resolved pipeline configuration.
        base_model: The base model directory (its content is fingerprinted).
        dataset_hashes: sha256 of each dataset's train side by name (the split manifest's train_sha256).
        gpu: Whether the trainer runs on GPUs (precision, DeepSpeed).

    Raises:
        OSError: a base model file cannot be read.
    """
    fields = {f"training.{key}": json.dumps(value, sort_keys=True)
              for key, value in cfg.training.model_dump(mode="json").items() if key not in SCHEDULE_FIELDS}
    fields["dataset.names"] = json.dumps(cfg.dataset.names)
    fields.update({f"dataset.sha256.{name}": digest for name, digest in sorted(dataset_hashes.items())})
    fields["base_model.sha256"] = model_digest(base_model)
    fields["precision"] = resolve_precision(cfg, gpu)
    fields["deepspeed_stage"] = str(deepspeed_stage(cfg, gpu))
    fields["processes"] = str(cfg.cluster.nodes * max(1, cfg.cluster.accelerator_count))  # torchrun: one per GPU
    return fields
