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
What the step's metrics need from the chosen checkpoint (its step, the tokens seen so far) is read then,
into a :class:`ResumePoint`: the Trainer's checkpoint rotation (``save_total_limit``) may delete that
very directory during training.

With a validation side the trainer state names the best checkpoint (``best_global_step``, lowest validation
loss); the Trainer's rotation never deletes it, and :func:`finish_from_checkpoint` publishes its weights.

Checkpoints are resumed only by the training that made them. :func:`keep_only_same_training` compares
the fingerprint recorded next to them (``training_fingerprint.json``, see
:mod:`components.train.fingerprint`) with the current one and moves the whole output directory to the
discard directory, with the reason in ``discarded.json``, when they differ or none was recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import struct
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

from components.common.storage import StorageError, atomic_write_text, describe_os_error
from configs.safe_json import parse_json, read_json

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
SAFETENSORS_INDEXES = ("adapter_model.safetensors.index.json", "model.safetensors.index.json")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", *SAFETENSORS_INDEXES, "adapter_model.bin",
                "pytorch_model.bin")
FINGERPRINT_FILE = "training_fingerprint.json"  # next to the output directory, not in it (the Trainer owns it)
DISCARD_NOTE = "discarded.json"


class ResumePoint(NamedTuple):
    """The checkpoint a run resumes from and what the metrics need from it, read before training starts."""

    path: Path
    step: int
    tokens_seen: int  # the trainer state's num_input_tokens_seen at that step


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


def prepare_resume(output_dir: Path, discard_dir: Path,
                   last_step: int | None = None) -> tuple[ResumePoint | None, list[tuple[str, str]]]:
    """Choose the newest complete checkpoint in ``output_dir``; move incomplete ones to ``discard_dir``.

    When no checkpoint is complete, anything already in ``output_dir`` (logs or weights of an attempt
    that died before its first checkpoint) is moved aside too, so that training starts over cleanly.
    Checkpoints past ``last_step`` (a rerun with fewer ``max_steps``) cannot give this run's result and
    are moved aside as well.

    Args:
        output_dir: The trainer's output directory (``checkpoint-<step>/`` inside).
        discard_dir: Where incomplete checkpoints go (created when needed; same volume).
        last_step: The step this training ends at, when known (``training.max_steps``).

    Returns:
        (where to resume, with its step and tokens seen, or None; [(moved directory name, why)]).

    Raises:
        OSError: a directory could not be moved (the volume refused the rename).
    """
    chosen, discarded = None, []
    for checkpoint in reversed(list_checkpoints(output_dir)):
        step = checkpoint_step(checkpoint) or 0
        problem = f"step {step} is past the last step, {last_step}" if last_step and step > last_step else None
        problem = problem or checkpoint_problem(checkpoint)
        if problem:
            _move_aside(checkpoint, discard_dir)
            discarded.append((checkpoint.name, problem))
        elif chosen is None:
            chosen = checkpoint
    if chosen is None and output_dir.is_dir() and any(output_dir.iterdir()):
        _move_aside(output_dir, discard_dir)
        discarded.append((output_dir.name, "no complete checkpoint; starting over"))
    return (resume_point(chosen) if chosen else None), discarded


def resume_point(checkpoint: Path) -> ResumePoint:
    """Step and tokens seen of a complete checkpoint (:func:`checkpoint_problem` found nothing wrong)."""
    state = read_json(checkpoint / TRAINER_STATE)
    tokens = state.get("num_input_tokens_seen")
    return ResumePoint(checkpoint, int(state["global_step"]),
                       int(tokens) if isinstance(tokens, (int, float)) and not isinstance(tokens, bool) else 0)


# Files of a checkpoint that only resuming needs: optimizer, scheduler, RNG and loss-scaler state, DeepSpeed's.
RESUME_ONLY = re.compile(r"^(optimizer\.pt|optimizer\.bin|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth|latest|"
                         r"zero_to_fp32\.py)$")


def best_checkpoint(output_dir: Path, state_dir: Path | None = None) -> Path | None:
    """The checkpoint with the lowest validation loss, as the trainer state in ``state_dir`` (default
    ``output_dir``) names it (``best_global_step``), or None when the training has no validation side.

    Raises:
        TrainError: the state names a best checkpoint whose weights are not whole in ``output_dir`` (publishing
            the last one's instead would publish the wrong weights).
    """
    from components.train.inputs import TrainError

    try:
        step = read_json((state_dir or output_dir) / TRAINER_STATE).get("best_global_step")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(step, int) or isinstance(step, bool):
        return None
    best = output_dir / f"checkpoint-{step}"
    problem = _weights_problem(best) if best.is_dir() else "it is gone"
    if problem:
        raise TrainError(f"the best checkpoint (lowest validation loss) is {best}, but {problem}; rotation keeps it, "
                         "so something else removed it: rerun with a new run id")
    return best


def finish_from_checkpoint(checkpoint: Path, output_dir: Path) -> list[str]:
    """Copy a checkpoint of the last step into ``output_dir`` as the trainer's final save would have left it.

    For a retry whose newest complete checkpoint is already the last step (the previous attempt died after
    it: in the final save, or while the step published): the Trainer, resumed there, would train one step
    past ``max_steps`` (transformers 5.6 checks the limit only after a step). The checkpoint holds the final
    config, tokenizer and ``trainer_state.json``; the weights are the best checkpoint's (:func:`best_checkpoint`)
    when the training has a validation side, as the Trainer's ``load_best_model_at_end`` would have saved them,
    else its own. Copies, not links, since a later trainer may rewrite a checkpoint file in place. Returns the
    names copied, each as ``<checkpoint>/<file>``.

    Raises:
        StorageError: the volume refused a write.
        TrainError: the best checkpoint the state names is not whole.
    """
    best = best_checkpoint(checkpoint.parent, checkpoint) or checkpoint
    copied = []
    for origin in dict.fromkeys((checkpoint, best)):  # the best one's weights last, over the last one's
        for source in sorted(origin.iterdir()):
            if source.is_file() and not RESUME_ONLY.match(source.name) and (
                    origin == checkpoint or source.name != TRAINER_STATE):
                try:
                    shutil.copy2(source, output_dir / source.name)
                except OSError as exc:
                    raise StorageError(describe_os_error(exc, output_dir / source.name)) from exc
                copied.append(f"{origin.name}/{source.name}")
    return copied


def trim_trainer_log(path: Path, last_step: int | None) -> None:
    """Drop LLaMA-Factory log lines after the checkpoint we resume from (it appends, and would repeat them)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            if last_step is not None and json.loads(line).get("current_steps", 0) <= last_step:
                kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


# Which training made the checkpoints -----------------------------------------------------------------------


def read_fingerprint(record: Path) -> dict[str, str] | None:
    """The fingerprint fields recorded in ``record``, or None when it is missing or unreadable."""
    try:
        fields = json.loads(record.read_text(encoding="utf-8")).get("fields")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(fields, dict) or not all(isinstance(value, str) for value in fields.values()):
        return None
    return fields


def fingerprint_differences(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """One ``field: old -> new`` line per field that differs (long values, hashes, cut to 16 characters)."""
    def short(value: str | None) -> str:
        if value is None:
            return "(absent)"
        return value if len(value) <= 24 else value[:16] + "..."

    return [f"{key}: {short(recorded.get(key))} -> {short(current.get(key))}"
            for key in sorted(recorded.keys() | current.keys()) if recorded.get(key) != current.get(key)]


def keep_only_same_training(output_dir: Path, discard_dir: Path, record: Path,
                            fingerprint: dict[str, str]) -> str | None:
    """Move ``output_dir`` to ``discard_dir`` unless ``record`` says the same training made it; record ``fingerprint``.

    The output directory of another training (a rerun of the run id with another model, data, method or
    hyper-parameter), or one with no readable record, must not be resumed: it moves aside whole, with a
    ``discarded.json`` that says why, and training starts fresh. ``record`` is then (re)written, before the
    trainer writes anything, so a checkpoint never exists without the fingerprint of its training.

    Args:
        output_dir: The trainer's output directory (checkpoints, logs).
        discard_dir: Where it goes when it is not this training's (same volume).
        record: The fingerprint file, next to ``output_dir``.
        fingerprint: What defines this training (:func:`components.train.fingerprint.training_fingerprint`).

    Returns:
        Why the output directory was moved aside, or None when it was kept (or was empty).

    Raises:
        StorageError: the volume refused the move or the write.
    """
    recorded = read_fingerprint(record)
    reason = None
    if output_dir.is_dir() and any(output_dir.iterdir()) and recorded != fingerprint:
        if recorded is None:
            reason = f"no readable {record.name} says which training wrote them"
        else:
            reason = "another training wrote them (" + "; ".join(fingerprint_differences(recorded, fingerprint)) + ")"
        try:
            moved = _move_aside(output_dir, discard_dir)
        except OSError as exc:
            raise StorageError(describe_os_error(exc, discard_dir)) from exc
        note = {"reason": reason, "fingerprint": recorded, "discarded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                            time.gmtime())}
        atomic_write_text(moved / DISCARD_NOTE, json.dumps(note, indent=2, sort_keys=True) + "\n")
    payload: dict[str, Any] = {"sha256": fingerprint_digest(fingerprint), "fields": fingerprint}
    atomic_write_text(record, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return reason


def fingerprint_digest(fingerprint: dict[str, str]) -> str:
    """A stable sha256 of the fingerprint fields (for summaries and tags)."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
