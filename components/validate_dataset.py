"""Validate the training datasets before any GPU time is spent: fail fast, name the row, version the data.

    python -m components.validate_dataset --dataset-dir storage/data --dataset alpaca_sample
    python -m components.validate_dataset --dataset-dir storage/data --dataset alpaca_sample,sharegpt_sample \\
        --eval-data-dir storage/eval/mmlu --cutoff-len 256 --report /tmp/validation.md

Exit status: 0 valid, 1 invalid (every problem printed as ``FILE:ROW: field 'NAME': what is wrong``),
2 usage error.

What is checked, in order: ``dataset_info.json`` is read as LLaMA-Factory reads it
(:mod:`components.dataset_checks`); each named dataset's file lies inside the dataset directory (no
``..``, no absolute path, no symlink out) and has a supported type (json, jsonl, csv, parquet); every
row is read in one streaming pass (:mod:`components.dataset_reader`) that also computes the file's
sha256, and checked for its format. Warnings, which do not fail: exact duplicate rows (a fixed-size
Bloom filter over the rows' raw text, so memory stays constant; about one false report per 10^8 rows
at a million rows), rows whose length estimate (characters / 4) exceeds ``cutoff_len``, empty system
prompts, and rows that contain MMLU test questions (:mod:`components.contamination`), which fail the
step once there are more than ``max_contaminated`` of them.

The version of the data is the sha256 of each file plus a combined hash over every named dataset's
entry and content: a pipeline output, an MLflow dataset input, and part of the downstream cache key.
"""

# No `from __future__ import annotations`: KFP reads the component's annotations as types.
import argparse
import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from kfp import dsl
from kfp.dsl import Markdown, Metrics, Output

from components.contamination import ContaminationIndex, load_mmlu_questions
from components.dataset_checks import DatasetSpec, Problem, describe_entry, json_type, make_row_checker
from components.dataset_reader import READERS_BY_EXTENSION, iter_rows
from components.image import DEFAULT_IMAGE
from configs.schema import DatasetConfig, TrainingConfig

DATA_CONFIG = "dataset_info.json"
STEP_NAME = "validate-dataset"
CHARS_PER_TOKEN = 4  # rule of thumb for English BPE vocabularies; the estimate needs no tokenizer
DUPLICATE_FILTER_BITS = 1 << 27  # 16 MiB; at 10^6 rows and 6 hashes the false-duplicate rate is ~1e-8
DUPLICATE_FILTER_HASHES = 6
DUPLICATE_BATCH = 4096


class DatasetValidationError(ValueError):
    """The datasets are invalid; the message lists the problems (``FILE:ROW: field 'NAME': ...``)."""


@dataclass
class FileVersion:
    """One data file: its path inside the dataset directory, content hash, size and row count."""

    path: str
    sha256: str
    size_bytes: int
    rows: int


@dataclass
class DatasetVersion:
    """One named dataset: format, content hash (of its file, or of its files' hashes) and row counts."""

    name: str
    file_name: str
    formatting: str
    ranking: bool
    sha256: str = ""
    rows: int = 0
    invalid_rows: int = 0
    files: list[FileVersion] = field(default_factory=list)


@dataclass
class ValidationResult:
    """Everything validation found; ``ok`` when there is no problem (warnings do not count)."""

    dataset_dir: str
    names: list[str]
    max_errors: int = 50
    datasets: list[DatasetVersion] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    warnings: list[Problem] = field(default_factory=list)
    warning_count: int = 0
    contamination: list[Problem] = field(default_factory=list)
    rows: int = 0
    invalid_rows: int = 0
    duplicate_rows: int = 0
    long_rows: int = 0
    empty_system_prompts: int = 0
    contaminated_rows: int = 0
    mmlu_questions: int = 0
    contamination_checked: bool = False
    max_contaminated: int = -1
    cutoff_len: int = 2048
    combined_sha256: str = ""

    @property
    def ok(self) -> bool:
        """True when the datasets can be trained on."""
        return self.problem_count == 0

    def add_problem(self, problem: Problem) -> None:
        """Record a problem; only the first ``max_errors`` are kept, the rest are counted."""
        self.problem_count += 1
        if len(self.problems) < self.max_errors:
            self.problems.append(problem)

    def add_warning(self, warning: Problem) -> None:
        """Record a warning; only the first ``max_errors`` are kept, the rest are counted."""
        self.warning_count += 1
        if len(self.warnings) < self.max_errors:
            self.warnings.append(warning)

    def metrics(self) -> dict[str, float]:
        """The headline numbers (KFP Metrics and MLflow metrics)."""
        return {
            "rows": self.rows, "invalid_rows": self.invalid_rows, "duplicate_rows": self.duplicate_rows,
            "contaminated_rows": self.contaminated_rows, "long_rows": self.long_rows,
            "empty_system_prompts": self.empty_system_prompts, "problems": self.problem_count,
            "warnings": self.warning_count,
        }

    def failure_message(self) -> str:
        """The problems as one message (the exception that fails the pipeline task)."""
        lines = [f"dataset validation failed: {self.problem_count} problem(s), {self.invalid_rows} invalid row(s) "
                 f"in {', '.join(self.names)} ({self.dataset_dir})"]
        lines += [f"  {problem}" for problem in self.problems]
        if self.problem_count > len(self.problems):
            lines.append(f"  ... and {self.problem_count - len(self.problems)} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (versions, counts, the listed problems and warnings as text)."""
        data = {key: value for key, value in asdict(self).items()
                if key not in ("problems", "warnings", "contamination")}
        data.update(ok=self.ok, problems=[str(p) for p in self.problems], warnings=[str(w) for w in self.warnings])
        return data


def validate_datasets(dataset_dir: str | Path, names: list[str], *, cutoff_len: int,
                      eval_data_dir: str | Path | None = None, ngram: int = 13, max_contaminated: int = -1,
                      max_errors: int = 50) -> ValidationResult:
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
            for path, display in files:
                version.files.append(_check_file(path, display, spec, checker, version, result, index, filter_bits))
            version.rows = sum(item.rows for item in version.files)
            version.sha256 = _dataset_hash(version.files)
    result.rows = sum(version.rows for version in result.datasets)
    _settle_contamination(result)
    result.combined_sha256 = combined_hash(result.datasets, specs)
    return result


def combined_hash(versions: list[DatasetVersion], specs: list[DatasetSpec]) -> str:
    """sha256 over every dataset's name, dataset_info.json entry and content hash, in training order."""
    canonical = [{"name": version.name, "entry": spec.entry, "sha256": version.sha256}
                 for version, spec in zip(versions, specs, strict=False)]
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
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        result.add_problem(Problem(DATA_CONFIG, None, None, f"not found in the dataset directory {directory}"))
    except UnicodeDecodeError as exc:
        result.add_problem(Problem(DATA_CONFIG, None, None, f"is not UTF-8 (byte {exc.start})"))
    except json.JSONDecodeError as exc:
        result.add_problem(Problem(DATA_CONFIG, exc.lineno, None, f"invalid JSON: {exc.msg} (column {exc.colno})"))
    except OSError as exc:
        result.add_problem(Problem(DATA_CONFIG, None, None, f"cannot be read: {exc.strerror}"))
    return None


def _dataset_files(directory: Path, spec: DatasetSpec, result: ValidationResult) -> list[tuple[Path, str]]:
    """The files of a dataset (its file_name, or every file in it when it is a directory), after the path
    checks; [] after recording a problem."""
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
    split = directory / "test" if (directory / "test").is_dir() else directory
    try:
        index = load_mmlu_questions(split, ngram)
    except (FileNotFoundError, ValueError) as exc:
        result.add_problem(Problem(str(split), None, None, f"contamination check impossible: {exc}"))
        return None
    result.contamination_checked = True
    result.mmlu_questions = len(index.questions)
    return index


def _check_file(path: Path, display: str, spec: DatasetSpec, checker: Any, version: DatasetVersion,
                result: ValidationResult, index: ContaminationIndex | None, filter_bits: Any) -> FileVersion:
    """Read, hash and check one file; records findings in ``result``."""
    digest = hashlib.sha256()
    mapped = frozenset(name for name in spec.columns.values() if name)
    system_field = spec.columns["system"] or f"{spec.columns['messages']}[0].{spec.tags['content_tag']}"
    column_types: dict[str, tuple[str, int]] = {}
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
        if type(value) is dict and not mapped.issuperset(value):
            problems += _column_type_changes(value, mapped, column_types, row)
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
    return FileVersion(display, digest.hexdigest(), path.stat().st_size, rows)


def _column_type_changes(row: dict, mapped: frozenset[str], seen: dict[str, tuple[str, int]],
                         row_number: int) -> list[tuple[str, str]]:
    """Unmapped columns must keep one JSON type: the ``datasets`` JSON loader (Arrow) fails otherwise."""
    problems = []
    for key, value in row.items():
        if key in mapped or value is None:
            continue
        kind = json_type(value)
        first = seen.setdefault(key, (kind, row_number))
        if first[0] != kind:
            problems.append((key, f"is a {kind} here but a {first[0]} in row {first[1]}; the datasets JSON "
                                  "loader needs one type per column"))
    return problems


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
    failing = 0 <= result.max_contaminated < result.contaminated_rows
    if failing:
        result.add_problem(Problem(DATA_CONFIG, None, None, f"{result.contaminated_rows} training row(s) contain "
                                   f"MMLU test questions; at most {result.max_contaminated} allowed "
                                   "(dataset.max_contaminated_rows)"))
    for finding in result.contamination:
        (result.add_problem if failing else result.add_warning)(finding)
    extra = result.contaminated_rows - len(result.contamination)
    if extra > 0:
        if failing:
            result.problem_count += extra
        else:
            result.warning_count += extra


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


def render_report(result: ValidationResult) -> str:
    """The Markdown report (Kubeflow UI, MLflow artifact, ``--report``)."""
    status = "PASSED" if result.ok else "FAILED"
    lines = [f"# Dataset validation: {status}", "",
             f"Datasets `{', '.join(result.names)}` in `{result.dataset_dir}`; combined sha256 "
             f"`{result.combined_sha256}`.", "",
             "| dataset | format | rows | invalid rows | sha256 |", "|---|---|---:|---:|---|"]
    for version in result.datasets:
        kind = version.formatting + (" (ranking)" if version.ranking else "")
        lines.append(f"| {version.name} | {kind} | {version.rows} | {version.invalid_rows} | "
                     f"`{version.sha256[:16] or '-'}` |")
    contamination = (f"{result.contaminated_rows} row(s) contain one of {result.mmlu_questions} MMLU test questions"
                     + ("" if result.max_contaminated < 0 else f" (allowed: {result.max_contaminated})")
                     if result.contamination_checked else "not checked (no MMLU data)")
    lines += ["", f"- rows: {result.rows}, invalid: {result.invalid_rows}",
              f"- exact duplicates: {result.duplicate_rows}",
              f"- longer than cutoff_len {result.cutoff_len} (estimate, characters / {CHARS_PER_TOKEN}): "
              f"{result.long_rows}",
              f"- empty system prompts: {result.empty_system_prompts}",
              f"- MMLU contamination: {contamination}"]
    for title, items, count in (("Problems", result.problems, result.problem_count),
                                ("Warnings", result.warnings, result.warning_count)):
        if count:
            # A code block: file:row lines stay readable and row text cannot inject Markdown.
            lines += ["", f"## {title} ({count})", "", "```text"]
            lines += [str(item).replace("```", "'''") for item in items]
            if count > len(items):
                lines.append(f"... and {count - len(items)} more")
            lines.append("```")
    return "\n".join(lines) + "\n"


def run_step(config: str, overrides: list, pvc_name: str, kfp_run_id: str, metrics: Any,
             report: Any) -> tuple[str, str, int]:
    """The validate-dataset pipeline step: resolve the config, validate, log to MLflow, write the outputs.

    Reads ``storage`` (mount_path, data_dir, eval_data_dir), ``dataset`` (names, max_reported_errors,
    contamination_ngram, max_contaminated_rows), ``training.cutoff_len`` and ``mlflow``. The MMLU
    contamination check runs when ``<eval_data_dir>/test`` exists.

    Returns:
        (resolved config JSON, combined sha256 of the named datasets, total rows).

    Raises:
        ConfigError: the config or an override is invalid (the message names the field).
        DatasetValidationError: the data is invalid; the message lists the problems.
        TrackingUnavailable: the MLflow server does not answer.
    """
    from components.storage import atomic_write_text
    from components.tracking import step_run
    from configs.schema import config_from_json

    cfg = config_from_json(config, overrides=[*overrides, f"storage.pvc_name={pvc_name}"])
    mmlu = cfg.storage.resolve(cfg.storage.eval_data_dir)
    with step_run(cfg, kfp_run_id, STEP_NAME) as (client, run_id):
        result = validate_datasets(
            cfg.storage.resolve(cfg.storage.data_dir), cfg.dataset.names, cutoff_len=cfg.training.cutoff_len,
            eval_data_dir=mmlu if (mmlu / "test").is_dir() else None, ngram=cfg.dataset.contamination_ngram,
            max_contaminated=cfg.dataset.max_contaminated_rows, max_errors=cfg.dataset.max_reported_errors,
        )
        markdown = render_report(result)
        atomic_write_text(report.path, markdown)
        for key, value in result.metrics().items():
            metrics.log_metric(key, value)
        report.metadata.update({"dataset_hash": result.combined_sha256, "ok": result.ok})
        log_to_mlflow(client, run_id, cfg, kfp_run_id, result, markdown)
        if not result.ok:
            raise DatasetValidationError(result.failure_message())
    return cfg.model_dump_json(), result.combined_sha256, result.rows


def log_to_mlflow(client: Any, run_id: str, cfg: Any, kfp_run_id: str, result: ValidationResult,
                  markdown: str) -> None:
    """Log the datasets as MLflow dataset inputs (on the step's run and the pipeline's parent run), the
    counts as metrics, the hash as a tag and the report as an artifact."""
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

    from components.tracking import parent_run_id

    inputs = []
    for version in result.datasets:
        profile = {"num_rows": version.rows, "invalid_rows": version.invalid_rows, "files": len(version.files),
                   "formatting": version.formatting, "ranking": version.ranking}
        source = {"uri": str(Path(result.dataset_dir) / version.file_name)}
        dataset = Dataset(name=version.name, digest=version.sha256[:16] or "invalid", source_type="local",
                          source=json.dumps(source), profile=json.dumps(profile))
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training"),
                                                  InputTag("llmft.sha256", version.sha256)]))
    numbers = dict(result.metrics(), **{f"rows.{version.name}": version.rows for version in result.datasets})
    client.log_batch(
        run_id,
        metrics=[Metric(key, float(value), 0, 0) for key, value in numbers.items()],
        params=[Param("dataset.names", ",".join(result.names)), Param("dataset.dir", result.dataset_dir),
                Param("training.cutoff_len", str(result.cutoff_len))],
        tags=[RunTag("llmft.dataset_hash", result.combined_sha256), RunTag("llmft.dataset_ok", str(result.ok))],
    )
    if inputs:
        client.log_inputs(run_id, datasets=inputs)
        client.log_inputs(parent_run_id(client, cfg, kfp_run_id), datasets=inputs)
    client.log_text(run_id, markdown, "validation/report.md")
    client.log_text(run_id, json.dumps(result.to_dict(), indent=2), "validation/result.json")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (defaults come from configs.schema)."""
    dataset_fields, training_fields = DatasetConfig.model_fields, TrainingConfig.model_fields
    parser = argparse.ArgumentParser(prog="python -m components.validate_dataset",
                                     description="Validate LLaMA-Factory datasets before training.")
    parser.add_argument("--dataset-dir", required=True, type=Path, help="Directory with dataset_info.json.")
    parser.add_argument("--dataset", required=True, help="Dataset name(s) from dataset_info.json, comma-separated.")
    parser.add_argument("--eval-data-dir", type=Path, help="MMLU directory (hendrycks layout) for the "
                        "contamination check.")
    parser.add_argument("--report", type=Path, help="Write the Markdown report here.")
    parser.add_argument("--cutoff-len", type=int, default=training_fields["cutoff_len"].default,
                        help=training_fields["cutoff_len"].description)
    parser.add_argument("--ngram", type=int, default=dataset_fields["contamination_ngram"].default,
                        help=dataset_fields["contamination_ngram"].description)
    parser.add_argument("--max-contaminated", type=int, default=dataset_fields["max_contaminated_rows"].default,
                        help=dataset_fields["max_contaminated_rows"].description)
    parser.add_argument("--max-errors", type=int, default=dataset_fields["max_reported_errors"].default,
                        help=dataset_fields["max_reported_errors"].description)
    parser.add_argument("--json", action="store_true", help="Print the result as JSON instead of text.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns 0 when valid, 1 when not, 2 on a usage error."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    names = [name.strip() for name in args.dataset.split(",") if name.strip()]
    usage = ("--dataset needs at least one name" if not names
             else f"--dataset-dir {args.dataset_dir} is not a directory" if not args.dataset_dir.is_dir()
             else "--cutoff-len and --max-errors must be positive" if min(args.cutoff_len, args.max_errors) < 1
             else "")
    if usage:
        print(f"{parser.prog}: error: {usage}", file=sys.stderr)
        return 2
    result = validate_datasets(args.dataset_dir, names, cutoff_len=args.cutoff_len, eval_data_dir=args.eval_data_dir,
                               ngram=args.ngram, max_contaminated=args.max_contaminated, max_errors=args.max_errors)
    if args.report:
        from components.storage import atomic_write_text

        atomic_write_text(args.report, render_report(result))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        for item in result.warnings:
            print(f"warning: {item}")
        if result.warning_count > len(result.warnings):
            print(f"warning: ... and {result.warning_count - len(result.warnings)} more")
        for version in result.datasets:
            print(f"{version.name}: {version.rows} rows, sha256 {version.sha256 or '-'}")
        print(result.failure_message() if not result.ok else
              f"OK: {result.rows} rows valid; combined sha256 {result.combined_sha256}")
    return 0 if result.ok else 1


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def validate_dataset(config: str, overrides: list, pvc_name: str, kfp_run_id: str, metrics: Output[Metrics],
                     report: Output[Markdown]) -> NamedTuple("Outputs", [("resolved_config", str),
                                                                         ("dataset_hash", str),
                                                                         ("row_count", int)]):
    """Validate the training datasets (every bad row named, MMLU contamination) and version them by sha256.

    Args:
        config: The pipeline configuration (JSON) as submitted.
        overrides: section.field=value overrides applied on top of config.
        pvc_name: The PersistentVolumeClaim with the data (recorded in the resolved config).
        kfp_run_id: The KFP run id (for the MLflow child run).
        metrics: Rows, invalid rows, duplicate rows, contaminated rows, long rows, empty system prompts, warnings.
        report: The validation report shown in the Kubeflow UI (also logged to MLflow).

    Returns:
        resolved_config: The validated configuration with the overrides applied (JSON), for every later step.
        dataset_hash: sha256 over the named datasets' entries and file contents (the data version, a cache key).
        row_count: The number of training rows.
    """
    from components.validate_dataset import run_step

    return run_step(config=config, overrides=overrides, pvc_name=pvc_name, kfp_run_id=kfp_run_id, metrics=metrics,
                    report=report)


if __name__ == "__main__":
    raise SystemExit(main())
