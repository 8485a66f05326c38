"""The tokenized training data, built once per run and shared by its trials (LLaMA-Factory's ``tokenized_path``).

Every trial of a sweep trains on the same rows with the same template and cutoff, so their tokenization is the
same; LLaMA-Factory loads a saved tokenized dataset from ``tokenized_path`` instead of tokenizing when the
directory holds one, and saves it there when it does not. Here:

- **the key** (:func:`tokenization_key`): the directory is ``<run dir>/tokenized/<key>``, where the key hashes
  everything that decides the tokens: the snapshot's ``dataset_info.json`` and the train and validation files
  (their sha256 from the manifest), the dataset section LLaMA-Factory reads (names, template, cutoff, the
  validation entries), the seed, the base model's content (its tokenizer with it) and the versions of
  LLaMA-Factory, transformers, tokenizers and datasets. A change to any of them is another directory: a changed
  input never reuses a stale tokenization;
- **built once** (:func:`claim`, run in the trainer process before LLaMA-Factory starts): the trainer of rank 0
  that finds no tokenized data takes a lock file (``<key>.lock``, created exclusively), has LLaMA-Factory save the
  tokenization into a private ``<key>.tmp-<pid>`` and renames it into place when training begins
  (:func:`publish_callback`), so a reader sees the whole directory or none. A trial that finds the lock waits for
  the directory (polling every :data:`POLL_S` seconds) and loads it; a lock whose holder died (not touched for
  :data:`STALE_S` seconds; the holder touches it every :data:`HEARTBEAT_S`) is taken over. Other ranks of a
  multi-process trainer load the directory when it is there and tokenize as usual (from the datasets cache
  rank 0 fills) when it is not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

TOKENIZED_DIR = "tokenized"
PACKAGES = ("llamafactory", "transformers", "tokenizers", "datasets")
# Rendered dataset keys that do not change the tokens (where the files are, how many workers, caching).
NOT_TOKENS = frozenset({"dataset_dir", "preprocessing_num_workers", "overwrite_cache", "tokenized_path"})
HEARTBEAT_S = 10.0
STALE_S = 120.0
POLL_S = 2.0
WAIT_LIMIT_S = 6 * 3600.0  # a tokenization taking longer than this is not waited for: this trial tokenizes itself


def tokenization_key(dataset_section: dict[str, Any], eval_entries: str, seed: int, file_hashes: dict[str, str],
                     model_sha256: str) -> str:
    """The 32-hex-digit identity of a tokenization (see the module docstring).

    Args:
        dataset_section: The rendered LLaMA-Factory dataset arguments (``components.train.render``).
        eval_entries: The rendered ``eval_dataset`` ("" without a validation side).
        seed: ``training.seed`` (LLaMA-Factory's sampling of ``num_samples`` draws with it).
        file_hashes: sha256 of ``dataset_info.json`` and of each train and validation file of the snapshot.
        model_sha256: The base model's content digest (its tokenizer files among them).
    """
    versions = {}
    for package in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    described = {"dataset": {key: value for key, value in dataset_section.items() if key not in NOT_TOKENS},
                 "eval_dataset": eval_entries, "seed": seed, "files": dict(sorted(file_hashes.items())),
                 "model": model_sha256, "versions": versions, "stage": "sft"}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:32]


def is_tokenized(path: Path) -> bool:
    """Whether ``path`` holds a saved tokenized dataset (LLaMA-Factory's own test: a non-empty directory)."""
    return path.is_dir() and any(path.iterdir())


class Claim:
    """What this trainer does about the tokenized data: load it, build it (holding the lock), or neither."""

    def __init__(self, final: Path, build_into: Path | None = None, lock: Path | None = None):
        self.final, self.build_into, self.lock = final, build_into, lock
        self._stop = threading.Event()
        if lock is not None:
            threading.Thread(target=self._heartbeat, args=(lock,), daemon=True).start()

    @property
    def path(self) -> Path | None:
        """The ``tokenized_path`` to hand LLaMA-Factory (None: tokenize without saving)."""
        return self.build_into or (self.final if is_tokenized(self.final) else None)

    def publish(self) -> None:
        """Rename the finished build into place (once; another trial's complete copy wins) and release the lock."""
        if self.build_into is not None and is_tokenized(self.build_into):
            try:
                os.rename(self.build_into, self.final)
            except OSError:  # a complete copy is there already; ours is not needed
                shutil.rmtree(self.build_into, ignore_errors=True)
            self.build_into = None
        self.release()

    def release(self) -> None:
        """Stop the heartbeat and remove the lock (idempotent); a half-built directory is left for the next holder."""
        self._stop.set()
        if self.lock is not None:
            with contextlib.suppress(FileNotFoundError):
                self.lock.unlink()
            self.lock = None

    def _heartbeat(self, lock: Path) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(lock)


def _take_lock(lock: Path) -> bool:
    try:
        descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as handle:
        handle.write(f"{os.uname().nodename} {os.getpid()}\n")
    return True


def _stale(lock: Path) -> bool:
    try:
        return time.time() - lock.stat().st_mtime > STALE_S
    except FileNotFoundError:
        return False


def claim(final: Path, *, rank: int = 0, wait_limit_s: float = WAIT_LIMIT_S) -> Claim:
    """Decide how this trainer gets its tokenized data at ``final`` (see the module docstring).

    Rank 0 either loads ``final`` (it is there), waits for the trial building it and loads it, or takes the lock
    and builds it. Other ranks load it when it is there and otherwise tokenize without saving.

    Raises:
        OSError: the lock cannot be created for another reason than its existence (a read-only volume).
    """
    if is_tokenized(final) or rank != 0:
        return Claim(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = final.with_name(final.name + ".lock")
    deadline = time.monotonic() + wait_limit_s
    while True:
        if is_tokenized(final):
            return Claim(final)
        if _take_lock(lock):
            for leftover in final.parent.glob(f"{final.name}.tmp-*"):  # a dead holder's half-built copy
                shutil.rmtree(leftover, ignore_errors=True)
            return Claim(final, final.with_name(f"{final.name}.tmp-{os.getpid()}"), lock)
        if _stale(lock):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # its holder died; take it over on the next pass
            continue
        if time.monotonic() > deadline:
            return Claim(final)  # tokenize without saving rather than wait forever
        time.sleep(POLL_S)  # another trial is tokenizing the same data: wait for its copy


def publish_callback(held: Claim) -> Any:
    """A transformers ``TrainerCallback`` that publishes ``held``'s build when training begins (LLaMA-Factory has
    saved the tokenized data by then)."""
    from transformers import TrainerCallback

    class PublishTokenized(TrainerCallback):
        """Renames the tokenized data this trainer built into place, for the trials after it."""

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                held.publish()

    return PublishTokenized()


__all__ = ["TOKENIZED_DIR", "Claim", "claim", "is_tokenized", "publish_callback", "tokenization_key"]
