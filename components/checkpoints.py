"""Pick the checkpoint a retried training task resumes from, and move broken ones out of the trainer's way.

The Hugging Face Trainer writes ``checkpoint-<step>/`` in place, file by file, with
``trainer_state.json`` last; a pod killed while saving leaves a directory that looks like a checkpoint
but is not one, and ``transformers.trainer_utils.get_last_checkpoint`` would happily pick it. Here a
checkpoint counts as complete only when:

- ``trainer_state.json`` parses and its ``global_step`` matches the directory name;
- its weights are there and whole: every ``*.safetensors`` file's size matches its header, and an
  index's shards all exist (adapter, full weights or DeepSpeed's ``latest`` + ``global_step*/``);
- the optimizer state is there and whole (``optimizer.pt`` is a readable zip archive, or DeepSpeed's
  ``global_step*/`` holds files).

:func:`prepare_resume` returns the newest complete checkpoint and moves every incomplete one to a
discard directory, so that neither LLaMA-Factory's own auto-resume nor checkpoint rotation trips
over it. With no complete checkpoint it moves the whole output directory aside and training starts over.
"""

from __future__ import annotations

import os
import re
import struct
import uuid
import zipfile
from pathlib import Path

from components.safe_json import parse_json, read_json

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
SAFETENSORS_INDEXES = ("adapter_model.safetensors.index.json", "model.safetensors.index.json")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", *SAFETENSORS_INDEXES, "adapter_model.bin",
                "pytorch_model.bin")


def checkpoint_step(path: Path) -> int | None:
    """The step of a ``checkpoint-<step>`` directory name, else None."""
    match = CHECKPOINT_NAME.match(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: Path) -> list[Path]:
    """The ``checkpoint-<step>`` directories in ``output_dir``, oldest step first."""
    if not output_dir.is_dir():
        return []
    found = [path for path in output_dir.iterdir() if path.is_dir() and checkpoint_step(path) is not None]
    return sorted(found, key=checkpoint_step)


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is unusable (missing, truncated, bad header), or None when it is whole."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated ({size} bytes)"
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8:
                return f"{path.name} is truncated (header of {header_len} bytes, file of {size})"
            if header_len > MAX_HEADER_BYTES:
                return f"{path.name} claims a header of {header_len} bytes (safetensors allows 100 MB)"
            header = parse_json(handle.read(header_len), f"{path.name} header", max_bytes=MAX_HEADER_BYTES)
    except FileNotFoundError:
        return f"{path.name} is missing"
    except (OSError, ValueError) as exc:  # DocumentError is a ValueError
        return f"{path.name} has an unreadable header ({exc})"
    try:
        ends = [int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"]
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return f"{path.name} has a malformed header (a tensor without data_offsets)"
    expected = 8 + header_len + max(ends, default=0)
    if size < expected:
        return f"{path.name} is truncated ({size} of {expected} bytes)"
    return None


def _weights_problem(checkpoint: Path) -> str | None:
    present = [name for name in WEIGHT_FILES if (checkpoint / name).is_file()]
    if not present and not (checkpoint / "latest").is_file():
        return "no model or adapter weights"
    for name in present:
        if name in SAFETENSORS_INDEXES:
            try:
                shards = set(read_json(checkpoint / name)["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # DocumentError: a ValueError
                return f"{name} is unreadable ({exc})"
            if not all(isinstance(shard, str) and "/" not in shard and shard not in ("", ".", "..")
                       for shard in shards):
                return f"{name} names a shard outside the checkpoint"
            for shard in sorted(shards):
                if problem := safetensors_problem(checkpoint / shard):
                    return problem
        elif name.endswith(".safetensors") and (problem := safetensors_problem(checkpoint / name)):
            return problem
    return None


def _optimizer_problem(checkpoint: Path) -> str | None:
    latest = checkpoint / "latest"
    if latest.is_file():  # DeepSpeed keeps optimizer (and ZeRO-3 weight) shards in global_step<N>/
        tag = latest.read_text().strip()
        shard_dir = checkpoint / tag
        if not tag or not shard_dir.is_dir() or not any(shard_dir.iterdir()):
            return f"DeepSpeed state {tag or '(empty latest)'} is missing"
        return None
    optimizer = checkpoint / "optimizer.pt"
    if not optimizer.is_file():
        return "no optimizer state (optimizer.pt)"
    try:
        with zipfile.ZipFile(optimizer) as archive:  # torch.save writes a zip; a cut-off file has no directory
            archive.infolist()
    except (OSError, zipfile.BadZipFile) as exc:
        return f"optimizer.pt is truncated or corrupt ({exc})"
    return None


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or None when it is complete (see the module docstring)."""
    step = checkpoint_step(checkpoint)
    try:
        state = read_json(checkpoint / TRAINER_STATE)
    except FileNotFoundError:
        return f"no {TRAINER_STATE} (the save did not finish)"
    except (OSError, ValueError) as exc:  # DocumentError is a ValueError
        return f"{TRAINER_STATE} is unreadable ({exc})"
    if not isinstance(state, dict) or state.get("global_step") != step:
        found = state.get("global_step") if isinstance(state, dict) else None
        return f"{TRAINER_STATE} says global_step {found}, the directory says {step}"
    return _weights_problem(checkpoint) or _optimizer_problem(checkpoint)


def _move_aside(path: Path, discard_dir: Path) -> Path:
    discard_dir.mkdir(parents=True, exist_ok=True)
    target = discard_dir / f"{path.name}-{uuid.uuid4().hex[:8]}"
    os.rename(path, target)  # same volume: instant, and nothing is lost for a post-mortem
    return target


def prepare_resume(output_dir: Path, discard_dir: Path) -> tuple[Path | None, list[tuple[str, str]]]:
    """Choose the newest complete checkpoint in ``output_dir``; move incomplete ones to ``discard_dir``.

    When no checkpoint is complete, anything already in ``output_dir`` (logs or weights of an attempt
    that died before its first checkpoint) is moved aside too, so that training starts over cleanly.

    Args:
        output_dir: The trainer's output directory (``checkpoint-<step>/`` inside).
        discard_dir: Where incomplete checkpoints go (created when needed; same volume).

    Returns:
        (the checkpoint to resume from or None, [(moved directory name, why)]).

    Raises:
        OSError: a directory could not be moved (the volume refused the rename).
    """
    chosen, discarded = None, []
    for checkpoint in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(checkpoint)
        if problem:
            _move_aside(checkpoint, discard_dir)
            discarded.append((checkpoint.name, problem))
        elif chosen is None:
            chosen = checkpoint
    if chosen is None and output_dir.is_dir() and any(output_dir.iterdir()):
        _move_aside(output_dir, discard_dir)
        discarded.append((output_dir.name, "no complete checkpoint; starting over"))
    return chosen, discarded


def checkpoint_tokens_seen(checkpoint: Path | None) -> int:
    """``num_input_tokens_seen`` recorded in a checkpoint's trainer state (0 without a checkpoint)."""
    if checkpoint is None:
        return 0
    state = read_json(checkpoint / TRAINER_STATE)
    return int(state.get("num_input_tokens_seen") or 0)
