"""Write the split snapshot in the same streaming pass that validates the rows.

:func:`validate_and_split` runs :func:`components.data.validation.validate_datasets` with a :class:`SplitWriter`
as its row sink: each valid row is keyed (:func:`components.data.row_keys.row_key`: its example, then its
content, as the trainer sees them), given its side by its example's position (:func:`components.data.split.row_side`)
and written, in canonical JSON, to its dataset's train file or to the test or validation candidates; at the end,
the ``dataset.max_test_rows`` test rows (``dataset.max_val_rows`` validation rows) with the smallest keys become
the test (validation) file, ``split.json`` (:class:`components.data.split.SplitManifest`) records counts and
hashes, and the leak check (:func:`components.data.leakage.find_leaks`) looks for the scored held-out rows'
answers (both sides) on the train side. The snapshot appears in one rename, only when validation passed; memory
stays bounded (rows stream to files, at most twice the cap of candidate keys is held per dataset and side).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from components.common.storage import StorageError, atomic_directory, describe_os_error
from components.data.checks import DATA_CONFIG, DatasetSpec, Problem
from components.data.leakage import SideRow, answers, answers_of, find_leaks
from components.data.result import ValidationResult
from components.data.row_keys import conversation, key_of
from components.data.split import (
    KEY_HEX_CHARS,
    MANIFEST_FILE,
    DatasetSplit,
    SplitManifest,
    combined_test_hash,
    combined_val_hash,
    heldout_entry_name,
    row_side,
    split_hash,
    validation_entry_name,
)
from components.data.validation import validate_datasets

# Entry keys that say where and how to fetch the source rows; the snapshot's JSONL files make them moot.
SOURCE_ONLY_KEYS = ("file_name", "split", "subset", "folder", "file_sha1")


_CANONICAL_STRICT = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@dataclass
class _Dataset:
    """One dataset's streaming state while validation reads its rows."""

    spec: DatasetSpec
    train: IO[bytes]
    held: IO[bytes]  # every held-out row as "<key> <json>\n", filtered to the scored ones at the end
    train_refs: IO[bytes]  # each train row's origin ("file:row") and answers, JSON per line, for the leak check
    val: IO[bytes] | None  # the validation side's rows as "<key> <json>\n" (None without one)
    train_digest: Any = field(default_factory=hashlib.sha256)
    rows: int = 0
    train_rows: int = 0
    held_out_rows: int = 0
    val_rows: int = 0
    # The smallest held-out keys seen (at most 2 x the cap) -> where the first row with that key came from.
    candidates: dict[str, str] = field(default_factory=dict)
    val_candidates: dict[str, str] = field(default_factory=dict)  # the same for the validation side


def _json_line(value: Any) -> bytes:
    """The row as one line of canonical JSON.

    Raises:
        ValueError: the row holds NaN or Infinity.
    """
    try:
        text = _CANONICAL_STRICT.encode(value)
    except TypeError:
        # Parquet types JSON lacks (timestamps, bytes, decimals) become their text; the row is what that reads back.
        text = _CANONICAL_STRICT.encode(json.loads(json.dumps(value, default=str)))
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, legal as a JSON escape: keep it escaped
        data = json.dumps(json.loads(text), sort_keys=True, separators=(",", ":")).encode("ascii")
    return data + b"\n"


class SplitWriter:
    """The ``row_sink`` of :func:`components.data.validation.validate_datasets` that streams each row to its side.

    The snapshot directory is opened (``open_directory``) only when the first row arrives, so input that
    fails before any row is read leaves nothing behind.
    """

    def __init__(self, open_directory: Callable[[], Path], *, test_fraction: float, min_test_rows: int,
                 max_test_rows: int, val_fraction: float = 0.0, min_val_rows: int = 1, max_val_rows: int = 1):
        self._open_directory = open_directory
        self._directory: Path | None = None
        self.test_fraction, self.min_test_rows, self.max_test_rows = test_fraction, min_test_rows, max_test_rows
        self.val_fraction, self.min_val_rows, self.max_val_rows = val_fraction, min_val_rows, max_val_rows
        self._datasets: dict[str, _Dataset] = {}
        self._current: _Dataset | None = None

    def __call__(self, spec: DatasetSpec, display: str, row: int, value: Any) -> str | None:
        """Put one validated row on its side; returns a problem message when the row cannot be written as JSON."""
        try:
            data = _json_line(value)
        except ValueError:
            return "holds NaN or Infinity, which JSON Lines cannot carry; use null or a string"
        seen = conversation(value, spec)
        key = key_of(seen)
        state = self._dataset(spec)
        state.rows += 1
        side = row_side(key, self.test_fraction, self.val_fraction)
        if side == "test":
            state.held_out_rows += 1
            self._write(state.held, key.encode() + b" " + data)
            state.candidates = _keep_smallest(state.candidates, key, f"{display}:{row}", self.max_test_rows)
        elif side == "val":
            state.val_rows += 1
            self._write(state.val, key.encode() + b" " + data)
            state.val_candidates = _keep_smallest(state.val_candidates, key, f"{display}:{row}", self.max_val_rows)
        else:
            state.train_rows += 1
            state.train_digest.update(data)
            self._write(state.train, data)
            self._write(state.train_refs, json.dumps([f"{display}:{row}", answers_of(seen)]).encode() + b"\n")
        return None

    def check_sizes(self, result: ValidationResult) -> None:
        """Add a problem for each fully read dataset with too few held-out rows, or none left to train on."""
        for version in result.datasets:
            state = self._datasets.get(version.name)
            if state is None or version.invalid_rows or state.rows != version.rows:
                continue  # its rows have problems already; the split of what is left would mislead
            held = len(_smallest(state.candidates, self.max_test_rows))
            where = f"dataset '{version.name}' ({version.rows} rows, dataset.test_fraction {self.test_fraction})"
            if held < self.min_test_rows:
                result.add_problem(Problem(version.file_name, None, None, (
                    f"{where} holds out only {held} distinct row(s) for testing; at least {self.min_test_rows} "
                    "are needed (dataset.min_test_rows): raise dataset.test_fraction or add rows")))
            held = len(_smallest(state.val_candidates, self.max_val_rows))
            if self.val_fraction > 0 and held < self.min_val_rows:
                result.add_problem(Problem(version.file_name, None, None, (
                    f"dataset '{version.name}' ({version.rows} rows, dataset.val_fraction {self.val_fraction}) holds "
                    f"out only {held} distinct row(s) for validation; at least {self.min_val_rows} are needed "
                    "(dataset.min_val_rows): raise dataset.val_fraction or add rows")))
            if state.train_rows == 0:
                result.add_problem(Problem(version.file_name, None, None, (
                    f"{where} leaves no row for training: lower dataset.test_fraction or add rows")))

    def check_leaks(self, result: ValidationResult, manifest: SplitManifest, *, ngram: int, max_leaked: int) -> None:
        """Record the scored held-out rows (test and validation) with a near-duplicate answer on the train side
        (:func:`find_leaks`): a
        problem each when there are more than ``max_leaked`` (-1: never), else a warning each. Call after
        :meth:`finish`; removes the files of train-row origins either way.

        Raises:
            StorageError: the snapshot's files cannot be read back.
        """
        directory = self._open()
        try:
            report = find_leaks(self._scored_rows(directory, manifest), self._train_rows(), ngram=ngram,
                                listed=result.max_errors)
        except OSError as exc:
            raise StorageError(describe_os_error(exc, directory)) from exc
        finally:
            for state in self._datasets.values():
                Path(state.train_refs.name).unlink(missing_ok=True)
        result.leak_checked_rows, result.leaked_rows, result.max_leaked = (report.held_out_rows, report.leaked_rows,
                                                                           max_leaked)
        result.leaks = [Problem(leak.held_out, None, None, f"held out, but its answer {leak.answer!r} has a "
                                f"near-duplicate on the train side: {leak.trained}") for leak in report.leaks]
        result.settle(result.leaks, result.leaked_rows, max_leaked, (
            f"{result.leaked_rows} held-out row(s) have a near-duplicate answer on the train side (a run of "
            f"{ngram} words, or the whole answer); at most {max_leaked} allowed (dataset.max_leaked_rows): remove or "
            "rewrite the copies, or raise dataset.max_leaked_rows"))

    def _scored_rows(self, directory: Path, manifest: SplitManifest) -> Iterator[SideRow]:
        for split in manifest.datasets:
            state = self._datasets[split.name]
            sides = [(split.test_file, split.test_keys, state.candidates)]
            if split.val_file:
                sides.append((split.val_file, split.val_keys, state.val_candidates))
            for file_name, keys, origins in sides:
                with open(directory / file_name, encoding="utf-8") as handle:
                    for key, line in zip(keys, handle, strict=True):
                        yield origins[key], answers(json.loads(line), state.spec)

    def _train_rows(self) -> Iterator[SideRow]:
        for state in self._datasets.values():
            with open(state.train_refs.name, encoding="utf-8") as refs:
                for line in refs:
                    ref, texts = json.loads(line)
                    yield ref, texts

    def finish(self, result: ValidationResult) -> SplitManifest:
        """Write the test files, dataset_info.json and split.json for a result that passed; returns the manifest.

        Raises:
            StorageError: the volume refused a write.
        """
        directory = self._open()
        self.close()
        splits, info = [], {}
        for version in result.datasets:
            state = self._datasets[version.name]
            train_file, test_file = f"train/{version.name}.jsonl", f"test/{version.name}.jsonl"
            keys, test_sha256 = self._write_scored(state.held, _smallest(state.candidates, self.max_test_rows),
                                                   directory / test_file)
            validation: dict[str, Any] = {}
            if state.val is not None:
                val_file = f"val/{version.name}.jsonl"
                val_keys, val_sha256 = self._write_scored(
                    state.val, _smallest(state.val_candidates, self.max_val_rows), directory / val_file)
                validation = dict(scored_val_rows=len(val_keys), val_file=val_file, val_sha256=val_sha256,
                                  val_split_hash=split_hash(val_keys), val_keys=val_keys)
            splits.append(DatasetSplit(
                name=version.name, source_sha256=version.sha256, rows=state.rows, train_rows=state.train_rows,
                held_out_rows=state.held_out_rows, scored_rows=len(keys), train_file=train_file,
                train_sha256=state.train_digest.hexdigest(), test_file=test_file, test_sha256=test_sha256,
                test_split_hash=split_hash(keys), test_keys=keys, val_rows=state.val_rows, **validation))
            kept = {key: value for key, value in state.spec.entry.items() if key not in SOURCE_ONLY_KEYS}
            info[version.name] = {"file_name": train_file, **kept}
            kept.pop("num_samples", None)  # a sample size for training; every scored row is evaluated
            info[heldout_entry_name(version.name)] = {"file_name": test_file, **kept}
            if validation:
                info[validation_entry_name(version.name)] = {"file_name": validation["val_file"], **kept}
        info_bytes = (json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode()
        manifest = SplitManifest(
            test_fraction=self.test_fraction, min_test_rows=self.min_test_rows, max_test_rows=self.max_test_rows,
            val_fraction=self.val_fraction, min_val_rows=self.min_val_rows if self.val_fraction else 0,
            max_val_rows=self.max_val_rows if self.val_fraction else 0,
            dataset_hash=result.combined_sha256, dataset_info_sha256=hashlib.sha256(info_bytes).hexdigest(),
            test_split_hash=combined_test_hash(splits), val_split_hash=combined_val_hash(splits), datasets=splits)
        self._write_file(directory / DATA_CONFIG, info_bytes)
        self._write_file(directory / MANIFEST_FILE, (manifest.model_dump_json(indent=2) + "\n").encode())
        return manifest

    def close(self) -> None:
        """Close the open files (idempotent).

        Raises:
            StorageError: the volume refused the last buffered write.
        """
        for state in self._datasets.values():
            self._close(state)

    def _open(self) -> Path:
        if self._directory is None:
            self._directory = self._open_directory()
            for side in ("train", "test", "val") if self.val_fraction else ("train", "test"):
                (self._directory / side).mkdir()
        return self._directory

    def _dataset(self, spec: DatasetSpec) -> _Dataset:
        current = self._current
        if current is not None and current.spec.name == spec.name:
            return current
        if current is not None:  # datasets are read one after the other: one pair of files open at a time
            self._close(current)
        directory = self._open()
        try:
            train = open(directory / "train" / f"{spec.name}.jsonl", "wb")  # noqa: SIM115 - closed in close()
            held = open(directory / "test" / f".{spec.name}.held", "wb")  # noqa: SIM115 - closed in close()
            refs = open(directory / "train" / f".{spec.name}.refs", "wb")  # noqa: SIM115 - closed in close()
            val = open(directory / "val" / f".{spec.name}.held", "wb") if self.val_fraction else None  # noqa: SIM115
        except OSError as exc:
            raise StorageError(describe_os_error(exc, directory)) from exc
        self._current = self._datasets[spec.name] = _Dataset(spec, train, held, refs, val)
        return self._current

    @staticmethod
    def _close(state: _Dataset) -> None:
        for handle in (state.train, state.held, state.train_refs, state.val):
            if handle is None:
                continue
            try:
                handle.close()  # flushes the buffer: the last write can fail here
            except OSError as exc:
                raise StorageError(describe_os_error(exc, Path(handle.name))) from exc

    @staticmethod
    def _write(handle: IO[bytes], data: bytes) -> None:
        # Not an OSError: validation would report it as the *source* file being unreadable.
        try:
            handle.write(data)
        except OSError as exc:
            raise StorageError(describe_os_error(exc, Path(handle.name))) from exc

    @staticmethod
    def _write_file(path: Path, data: bytes) -> None:
        try:
            path.write_bytes(data)
        except OSError as exc:
            raise StorageError(describe_os_error(exc, path)) from exc

    @staticmethod
    def _write_scored(candidates: IO[bytes], chosen: list[str], path: Path) -> tuple[list[str], str]:
        """Keep the ``chosen`` held-out rows of a candidates file, first copy of each, in source order; returns
        their keys and the file's hash."""
        scored = set(chosen)
        keys: list[str] = []
        digest = hashlib.sha256()
        held = Path(candidates.name)
        try:
            with open(held, "rb") as source, open(path, "wb") as target:
                for line in source:
                    key = line[:KEY_HEX_CHARS].decode()
                    if key in scored:
                        scored.discard(key)
                        keys.append(key)
                        digest.update(line[KEY_HEX_CHARS + 1:])
                        target.write(line[KEY_HEX_CHARS + 1:])
            held.unlink()
        except OSError as exc:
            raise StorageError(describe_os_error(exc, path)) from exc
        return keys, digest.hexdigest()


def _keep_smallest(candidates: dict[str, str], key: str, origin: str, cap: int) -> dict[str, str]:
    """``candidates`` with ``key`` (first seen at ``origin``) added, trimmed to the ``cap`` smallest keys once it holds
    more than twice the cap."""
    candidates.setdefault(key, origin)
    if len(candidates) <= 2 * cap:
        return candidates
    return {kept: candidates[kept] for kept in sorted(candidates)[:cap]}


def _smallest(candidates: dict[str, str], cap: int) -> list[str]:
    """The keys that are scored: the ``cap`` smallest (stable when rows are appended)."""
    return sorted(candidates)[:cap]


class _Invalid(Exception):
    """Validation found problems: unwinds the snapshot directory before anything is published."""


def validate_and_split(dataset_dir: str | Path, names: list[str], destination: str | Path, *, test_fraction: float,
                       min_test_rows: int, max_test_rows: int, val_fraction: float = 0.0, min_val_rows: int = 1,
                       max_val_rows: int = 1000, max_leaked: int = 0, replace: bool = False,
                       **checks: Any) -> tuple[ValidationResult, SplitManifest | None]:
    """Validate the named datasets and, when they pass, publish their split snapshot at ``destination``.

    One streaming pass: each row is checked, keyed and written to its side as it is read. The snapshot is
    built in a temporary sibling and renamed into place only when validation passed and every file is
    written (:func:`components.common.storage.atomic_directory`); otherwise nothing is left behind.

    Args:
        dataset_dir: The directory with dataset_info.json and the data files.
        names: Entries of dataset_info.json, in training order.
        destination: The snapshot directory to create (usually :func:`.split.snapshot_dir`).
        test_fraction: Share of rows held out (``dataset.test_fraction``).
        min_test_rows: Fewer distinct held-out rows in a dataset is a problem (``dataset.min_test_rows``).
        max_test_rows: Held-out rows scored per dataset, the smallest keys (``dataset.max_test_rows``).
        val_fraction: Share of rows in the validation band after the test band (``dataset.val_fraction``; 0: no
            validation side).
        min_val_rows: Fewer distinct validation rows in a dataset is a problem (``dataset.min_val_rows``).
        max_val_rows: Validation rows scored per dataset, the smallest keys (``dataset.max_val_rows``).
        max_leaked: More scored held-out rows with a near-duplicate answer on the train side is a problem
            (``dataset.max_leaked_rows``; -1: warn only). The n-gram is ``checks["ngram"]``.
        replace: Replace an existing snapshot (a retried validate step) instead of failing.
        **checks: The keyword arguments of :func:`components.data.validation.validate_datasets`
            (``cutoff_len`` is required).

    Returns:
        The validation result (with a problem for each dataset too small to split, and the leak check's
        findings) and the manifest, or None when validation failed.

    Raises:
        StorageError: the volume refused a write, or ``destination`` exists and ``replace`` is False.
    """
    try:
        with contextlib.ExitStack() as stack:
            writer = SplitWriter(lambda: stack.enter_context(atomic_directory(destination, replace=replace)),
                                 test_fraction=test_fraction, min_test_rows=min_test_rows,
                                 max_test_rows=max_test_rows, val_fraction=val_fraction, min_val_rows=min_val_rows,
                                 max_val_rows=max_val_rows)
            try:
                result = validate_datasets(dataset_dir, names, row_sink=writer, **checks)
                writer.check_sizes(result)
                if not result.ok:
                    raise _Invalid(result)
                manifest = writer.finish(result)
                writer.check_leaks(result, manifest, ngram=checks.get("ngram", 13), max_leaked=max_leaked)
                if not result.ok:
                    raise _Invalid(result)
            finally:
                writer.close()
    except _Invalid as invalid:
        return invalid.args[0], None
    return result, manifest
