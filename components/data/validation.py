"""Validate LLaMA-Factory datasets in one streaming pass per file: problems, warnings, versions.

:func:`validate_datasets` is the pure function the pipeline step and the CLI share
(:mod:`components.data.validate_dataset`). What it checks, in order: ``dataset_info.json`` is read as
LLaMA-Factory reads it (:mod:`components.data.checks`); each named dataset's file lies inside the
dataset directory (no ``..``, no absolute path, no symlink out) and has a supported type (json, jsonl,
csv, parquet); every row is read once (:mod:`components.data.reader`), which also computes the
file's sha256, and checked for its format. An entry with a problem is not read: its rows would only
repeat it.

Warnings, which do not fail: exact duplicate rows (same raw text; a fixed-size Bloom filter, so memory
stays constant: about one false report per 10^8 rows at a million rows), rows whose length estimate
(characters / 4) exceeds ``cutoff_len``, empty system prompts, and rows that contain MMLU test
questions (:mod:`components.data.contamination`), which become problems once there are more than
``max_contaminated`` of them.

The version of the data is the sha256 of each file, and a combined hash over every named dataset's
name, dataset_info.json entry and content, in training order.

A ``row_sink`` sees every row that passed its checks, in file order, during the same pass: the
held-out split (:mod:`components.data.split`) streams the rows to their side without reading the
files again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from components.data.checks import DATA_CONFIG, DatasetSpec, Problem, describe_entry, make_row_checker
from components.data.column_types import ColumnTypes
from components.data.contamination import ContaminationIndex, load_mmlu_questions
from components.data.reader import READERS_BY_EXTENSION, iter_rows
from components.data.result import CHARS_PER_TOKEN, DatasetVersion, FileVersion, ValidationResult
from configs.safe_json import DocumentError, read_json

DUPLICATE_FILTER_BITS = 1 << 27  # 16 MiB; at 10^6 rows and 6 hashes the false-duplicate rate is ~1e-8
DUPLICATE_FILTER_HASHES = 6
DUPLICATE_BATCH = 4096
MAX_DATASET_INFO_BYTES = 16 << 20

# Called with (dataset spec, file as displayed, row number, parsed row) for each row without a problem;
# a returned message is recorded as a problem of that row.
RowSink = Callable[[DatasetSpec, str, int, Any], "str | None"]


def validate_datasets(dataset_dir: str | Path, names: list[str], *, cutoff_len: int,
                      eval_data_dir: str | Path | None = None, ngram: int = 13, max_contaminated: int = -1,
                      max_errors: int = 50, row_sink: RowSink | None = None,
                      stage: str | None = "sft") -> ValidationResult:
    """Validate the named datasets of ``dataset_dir`` in one streaming pass per file.

    Args:
        dataset_dir: The directory with dataset_info.json and the data files.
        names: Entries of dataset_info.json, in training order.
        cutoff_len: Rows estimated longer than this many tokens get a warning.
        eval_data_dir: An MMLU directory (hendrycks layout; its test/ split is used) for the contamination
            check; None skips it.
        ngram: Word n-gram length of the contamination check.
        max_contaminated: More contaminated rows than this is a problem; -1 only warns.
        max_errors: Problems (and warnings) listed; the rest are counted.
        row_sink: Receives every row without a problem, in file order (see :data:`RowSink`); None: none.
        stage: The LLaMA-Factory stage the data is for. ``"sft"`` (the pipeline's) refuses ranking
            (preference) and KTO entries, whose rows SFT would drop; None checks the format only.

    Returns:
        The result; problems are data, not exceptions (``result.ok``).
    """
    directory = Path(dataset_dir)
    result = ValidationResult(str(directory), list(names), max_errors=max_errors, cutoff_len=cutoff_len,
                              max_contaminated=max_contaminated)
    index = _contamination_index(eval_data_dir, ngram, result)
    info = _read_dataset_info(directory, result)
    specs = []
    for name in dict.fromkeys(names):
        spec, problems = describe_entry(name, info, DATA_CONFIG) if info is not None else (None, [])
        if spec is not None and stage == "sft":
            problems += _not_sft(spec)
        for problem in problems:
            result.add_problem(problem)
        if spec is not None and not problems:  # rows are read only through an entry that is right
            specs.append(spec)
    if len(set(names)) != len(names):
        result.add_warning(Problem(DATA_CONFIG, None, None, f"a dataset is listed twice in {names}"))
    if len({spec.ranking for spec in specs}) > 1:
        result.add_problem(Problem(DATA_CONFIG, None, None, "ranking and non-ranking datasets cannot be trained "
                                   "together (LLaMA-Factory trains one stage)"))
    filter_bits = _new_duplicate_filter()
    for spec in specs:
        version = DatasetVersion(spec.name, spec.file_name, spec.formatting, spec.ranking)
        result.datasets.append(version)
        files = _dataset_files(directory, spec, result)
        if files:
            checker = make_row_checker(spec)
            types = ColumnTypes()  # one per dataset: the loader reads all its files as one table
            for path, display in files:
                version.files.append(_check_file(path, display, spec, checker, version, result, index, filter_bits,
                                                 row_sink, types))
            version.rows = sum(item.rows for item in version.files)
            version.sha256 = _dataset_hash(version.files)
    result.rows = sum(version.rows for version in result.datasets)
    _settle_contamination(result)
    result.combined_sha256 = combined_hash(names, result.datasets, specs)
    return result


def _not_sft(spec: DatasetSpec) -> list[Problem]:
    """Entries the SFT stage cannot train on: LLaMA-Factory's SFT processor drops every row of them."""
    if spec.ranking:
        return [Problem(DATA_CONFIG, None, f"{spec.name}.ranking", "a ranking (preference) dataset is for the rm/dpo "
                        "stages; this pipeline trains SFT, which would drop every row: use SFT data (one answer "
                        "per prompt)")]
    if spec.columns.get("kto_tag"):
        return [Problem(DATA_CONFIG, None, f"{spec.name}.columns.kto_tag", "a KTO dataset (kto_tag) is for the kto "
                        "stage; this pipeline trains SFT, which would drop every row: remove kto_tag and keep the "
                        "desirable answers")]
    return []


def combined_hash(names: list[str], versions: list[DatasetVersion], specs: list[DatasetSpec]) -> str:
    """sha256 over the names as listed (order and repeats change training) and every dataset's
    dataset_info.json entry and content hash."""
    canonical = {"names": list(names), "datasets": [
        {"name": version.name, "entry": spec.entry, "sha256": version.sha256}
        for version, spec in zip(versions, specs, strict=True)]}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _dataset_hash(files: list[FileVersion]) -> str:
    if len(files) == 1:
        return files[0].sha256
    manifest = "".join(f"{item.path}\0{item.sha256}\n" for item in sorted(files, key=lambda item: item.path))
    return hashlib.sha256(manifest.encode()).hexdigest()


def _read_dataset_info(directory: Path, result: ValidationResult) -> Any:
    """dataset_info.json parsed, or None after recording why it cannot be used."""
    path = directory / DATA_CONFIG
    try:
        return read_json(path, DATA_CONFIG, max_bytes=MAX_DATASET_INFO_BYTES)
    except FileNotFoundError:
        result.add_problem(Problem(DATA_CONFIG, None, None, f"not found in the dataset directory {directory}"))
    except DocumentError as exc:  # not UTF-8, not JSON, a duplicate entry, too deep or too large: the reason
        result.add_problem(Problem(DATA_CONFIG, exc.line, None, exc.reason))
    return None


def _dataset_files(directory: Path, spec: DatasetSpec, result: ValidationResult) -> list[tuple[Path, str]]:
    """The files of a dataset (its file_name, or every file in it when it is a directory), after the path
    checks; [] after recording a problem."""
    try:
        return _listed_files(directory, spec, result)
    except OSError as exc:  # a name too long for the filesystem, a directory we may not list
        name = spec.file_name if len(spec.file_name) <= 80 else f"{spec.file_name[:60]}... ({len(spec.file_name)} " \
            "characters)"
        result.add_problem(Problem(DATA_CONFIG, None, f"{spec.name}.file_name", f"{name!r} cannot be read: "
                                   f"{exc.strerror or exc}"))
        return []


def _listed_files(directory: Path, spec: DatasetSpec, result: ValidationResult) -> list[tuple[Path, str]]:
    where = f"{spec.name}.file_name"
    relative = PurePosixPath(spec.file_name)
    if not spec.file_name:
        return []
    if relative.is_absolute() or ".." in relative.parts or spec.file_name.startswith("~"):
        result.add_problem(Problem(DATA_CONFIG, None, where, f"must be a path inside the dataset directory, "
                                   f"got {spec.file_name!r}"))
        return []
    root = directory.resolve()
    target = directory / spec.file_name
    if not target.exists():
        result.add_problem(Problem(DATA_CONFIG, None, where, f"file not found: {target}"))
        return []
    candidates = sorted(target.iterdir()) if target.is_dir() else [target]
    if not candidates:
        result.add_problem(Problem(DATA_CONFIG, None, where, f"the directory {target} has no data files"))
    files, kinds = [], set()
    for path in candidates:
        display = path.relative_to(directory).as_posix()
        resolved = path.resolve()
        if root not in resolved.parents:
            result.add_problem(Problem(display, None, None, f"resolves to {resolved}, outside the dataset directory "
                                       "(a symlink out of it?)"))
            continue
        extension = path.suffix[1:]
        if extension not in READERS_BY_EXTENSION or not resolved.is_file():
            result.add_problem(Problem(display, None, None, f"unsupported file type {path.suffix or '(none)'!r}; "
                                       f"use one of {', '.join(READERS_BY_EXTENSION)}"))
            continue
        kinds.add(READERS_BY_EXTENSION[extension])
        files.append((resolved, display))
    if len(kinds) > 1:
        result.add_problem(Problem(DATA_CONFIG, None, where, f"the files in {spec.file_name} must all have one type"))
        return []
    return files


def _contamination_index(eval_data_dir: str | Path | None, ngram: int,
                         result: ValidationResult) -> ContaminationIndex | None:
    if eval_data_dir is None:
        return None
    directory = Path(eval_data_dir)
    split = directory / "test" if os.path.isdir(directory / "test") else directory  # a too-long name: False
    try:
        index = load_mmlu_questions(split, ngram)
    except (FileNotFoundError, ValueError) as exc:
        result.add_problem(Problem(str(split), None, None, f"contamination check impossible: {exc}"))
        return None
    result.contamination_checked = True
    result.mmlu_questions = len(index.questions)
    return index


def _check_file(path: Path, display: str, spec: DatasetSpec, checker: Any, version: DatasetVersion,
                result: ValidationResult, index: ContaminationIndex | None, filter_bits: Any,
                row_sink: RowSink | None, types: ColumnTypes) -> FileVersion:
    """Read, hash and check one file; records findings in ``result``."""
    digest = hashlib.sha256()
    rows = 0
    try:
        rows = _check_rows(path, display, spec, checker, version, result, index, filter_bits, digest, row_sink,
                           types)
    except OSError as exc:
        result.add_problem(Problem(display, None, None, f"cannot be read: {exc.strerror or exc}"))
    return FileVersion(display, digest.hexdigest(), path.stat().st_size, rows)


def _check_rows(path: Path, display: str, spec: DatasetSpec, checker: Any, version: DatasetVersion,
                result: ValidationResult, index: ContaminationIndex | None, filter_bits: Any, digest: Any,
                row_sink: RowSink | None, types: ColumnTypes) -> int:
    """The per-row loop (the hot path: keep it lean); returns the number of rows read."""
    system_field = spec.columns["system"] or f"{spec.columns['messages']}[0].{spec.tags['content_tag']}"
    max_chars = result.cutoff_len * CHARS_PER_TOKEN
    pending: list[tuple[int, int]] = []
    rows = 0
    for row, text, value, error in iter_rows(path, READERS_BY_EXTENSION[path.suffix[1:]], digest):
        if error is not None:
            result.add_problem(Problem(display, row or None, None, error))
            if row:
                rows += 1
                version.invalid_rows += 1
                result.invalid_rows += 1
            continue
        rows += 1
        problems, texts, system = checker(value)
        if not problems:  # an invalid row fails validation anyway; its types would only blur later messages
            problems = types.check(value, display, row)
        if row_sink is not None and not problems:
            refused = row_sink(spec, display, row, value)
            if refused:
                problems.append((None, refused))
        if problems:
            version.invalid_rows += 1
            result.invalid_rows += 1
            for name, message in problems:
                result.add_problem(Problem(display, row, name, message))
        pending.append((row, hash(text)))
        if len(pending) >= DUPLICATE_BATCH:
            _flag_duplicates(filter_bits, pending, display, result)
        chars = sum([len(piece) for _, piece in texts])
        if chars > max_chars:
            result.long_rows += 1
            result.add_warning(Problem(display, row, None, f"about {chars // CHARS_PER_TOKEN} tokens ({chars} "
                                       f"characters / {CHARS_PER_TOKEN}) exceeds cutoff_len {result.cutoff_len}; "
                                       "LLaMA-Factory truncates it"))
        if system is not None and (not system or system.isspace()):
            result.empty_system_prompts += 1
            result.add_warning(Problem(display, row, system_field, "empty system prompt"))
        if index is not None:
            _check_contamination(index, texts, display, row, result)
    _flag_duplicates(filter_bits, pending, display, result)
    return rows


def _check_contamination(index: ContaminationIndex, texts: list[tuple[str, str]], display: str, row: int,
                         result: ValidationResult) -> None:
    for name, text in texts:
        hit = index.find(text)
        if hit is not None:
            result.contaminated_rows += 1
            ref, question = hit
            snippet = question if len(question) <= 80 else question[:77] + "..."
            if len(result.contamination) < result.max_errors:
                result.contamination.append(Problem(display, row, name, f"contains MMLU test question {ref} "
                                                    f"({snippet!r})"))
            return


def _settle_contamination(result: ValidationResult) -> None:
    """Contaminated rows are warnings, or problems when there are more than ``max_contaminated``."""
    result.settle(result.contamination, result.contaminated_rows, result.max_contaminated, (
        f"{result.contaminated_rows} training row(s) contain MMLU test questions; at most {result.max_contaminated} "
        "allowed (dataset.max_contaminated_rows)"))


def _new_duplicate_filter() -> Any:
    import numpy as np

    return np.zeros(DUPLICATE_FILTER_BITS // 8, dtype=np.uint8)


def _flag_duplicates(bits: Any, pending: list[tuple[int, int]], display: str, result: ValidationResult) -> None:
    """Test and add a batch of row hashes to the Bloom filter; warn for rows seen before. Empties ``pending``."""
    if not pending:
        return
    import numpy as np

    hashes = np.array([value for _, value in pending], dtype=np.int64).view(np.uint64)
    low, high = hashes & np.uint64(0xFFFFFFFF), (hashes >> np.uint64(32)) | np.uint64(1)
    steps = np.arange(DUPLICATE_FILTER_HASHES, dtype=np.uint64)
    positions = (low[:, None] + steps[None, :] * high[:, None]) & np.uint64(DUPLICATE_FILTER_BITS - 1)
    byte_index = (positions >> np.uint64(3)).astype(np.int64)
    masks = (np.uint8(1) << (positions & np.uint64(7)).astype(np.uint8)).astype(np.uint8)
    seen = ((bits[byte_index] & masks) != 0).all(axis=1)
    _, first = np.unique(hashes, return_index=True)
    repeated = np.ones(len(pending), dtype=bool)
    repeated[first] = False
    np.bitwise_or.at(bits, byte_index.ravel(), masks.ravel())
    for position in np.flatnonzero(seen | repeated):
        result.duplicate_rows += 1
        result.add_warning(Problem(display, pending[position][0], None, "exact duplicate of an earlier row"))
    pending.clear()
