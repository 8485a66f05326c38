"""What validating the datasets found, and the report people read: counts, versions, problems, the split.

:class:`ValidationResult` is filled by :func:`components.data.validation.validate_datasets` in its single pass;
:func:`render_report` turns it (and the split's manifest, when one was written) into the Markdown the Kubeflow
UI, MLflow and ``validate_dataset --report`` show.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from components.data.checks import DATA_CONFIG, Problem

if TYPE_CHECKING:
    from components.data.split import SplitManifest

CHARS_PER_TOKEN = 4  # rule of thumb for English BPE vocabularies; the estimate needs no tokenizer


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
    leaks: list[Problem] = field(default_factory=list)
    rows: int = 0
    invalid_rows: int = 0
    duplicate_rows: int = 0
    long_rows: int = 0
    empty_system_prompts: int = 0
    contaminated_rows: int = 0
    mmlu_questions: int = 0
    contamination_checked: bool = False
    max_contaminated: int = -1
    leak_checked_rows: int = 0  # scored held-out rows checked for a near-duplicate on the train side
    leaked_rows: int = 0
    max_leaked: int = -1
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

    def settle(self, findings: list[Problem], count: int, maximum: int, summary: str) -> None:
        """Record ``count`` findings of one check (``findings``: the first few): warnings, or problems under
        ``summary`` when there are more than ``maximum`` (-1: warn only)."""
        failing = 0 <= maximum < count
        if failing:
            self.add_problem(Problem(DATA_CONFIG, None, None, summary))
        for finding in findings:
            (self.add_problem if failing else self.add_warning)(finding)
        extra = count - len(findings)
        if extra > 0:
            if failing:
                self.problem_count += extra
            else:
                self.warning_count += extra

    def metrics(self) -> dict[str, float]:
        """The headline numbers (KFP Metrics and MLflow metrics)."""
        return {
            "rows": self.rows, "invalid_rows": self.invalid_rows, "duplicate_rows": self.duplicate_rows,
            "contaminated_rows": self.contaminated_rows, "leaked_rows": self.leaked_rows, "long_rows": self.long_rows,
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
                if key not in ("problems", "warnings", "contamination", "leaks")}
        data.update(ok=self.ok, problems=[str(p) for p in self.problems], warnings=[str(w) for w in self.warnings])
        return data


def render_report(result: ValidationResult, split: SplitManifest | None = None) -> str:
    """The Markdown report (Kubeflow UI, MLflow artifact, ``--report``), with the split when one was written."""
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
    if split is not None:
        lines += ["", "## Held-out test and validation split", "",
                  f"Rows go to the test side by a hash of their example (first user turn and its answer; "
                  f"dataset.test_fraction "
                  f"{split.test_fraction}); at most {split.max_test_rows} are scored per dataset. "
                  f"Test split hash `{split.test_split_hash}`."]
        if split.val_split_hash:
            lines += ["", f"The next band of the same hash is the validation side (dataset.val_fraction "
                          f"{split.val_fraction}), which picks the best checkpoint and the sweep's winner; at most "
                          f"{split.max_val_rows} are scored per dataset. Validation split hash "
                          f"`{split.val_split_hash}`."]
        lines.append("")
        for item in split.datasets:
            validation = (f"; {item.val_rows} for validation, {item.scored_val_rows} scored (validation split "
                          f"`{item.val_split_hash[:16]}`)" if item.val_split_hash else "")
            lines.append(f"- {item.name}: {item.train_rows} train rows; {item.held_out_rows} held out, "
                         f"{item.scored_rows} scored (test split `{item.test_split_hash[:16]}`){validation}")
        allowed = "warn only" if result.max_leaked < 0 else f"allowed: {result.max_leaked}"
        lines += [f"- near-duplicates across the split: {result.leaked_rows} of {result.leak_checked_rows} scored "
                  f"held-out rows have an answer that a train row shares ({allowed})"]
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
