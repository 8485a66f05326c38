"""The MMLU results file (``results.json``) the evaluate step writes and the gate reads, as one pydantic model.

The per-question records are the truth: every summary number in the file (per-subject and per-category
counts and accuracies, micro and macro) must equal what the records give, and each record's ``correct``
must equal ``pred == gold``. A file whose numbers disagree with its own records, that holds NaN or an
accuracy outside [0, 1], or that lacks the fields saying how it was evaluated is refused with the field
named, so a tampered or truncated file can never decide a promotion.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components.common.typed_files import describe_validation_error
from configs.errors import StepError
from configs.safe_json import DocumentError, parse_json

Letter = Literal["A", "B", "C", "D"]
# Summary numbers are written rounded to 6 digits; anything further off was not computed from the records.
TOLERANCE = 1e-6
RESULTS_FILE = "results.json"
# Fields that say how a score was obtained: two results are comparable only when all of them agree.
EVAL_SETTING_FIELDS = ("data_hash", "n_shot", "prompt_version", "subjects_requested", "limit")


class ResultsFileError(StepError, ValueError):
    """A results file is missing, unreadable or inconsistent; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class QuestionRecord(_Strict):
    """One scored question: the gold and predicted letters and the four answer log-probabilities."""

    subject: str = Field(min_length=1)
    index: int = Field(ge=0)
    gold: Letter
    pred: Letter
    correct: bool
    logprobs: list[float] = Field(min_length=4, max_length=4)

    @model_validator(mode="after")
    def _correct_matches_letters(self) -> QuestionRecord:
        if self.correct != (self.pred == self.gold):
            raise ValueError(f"correct is {self.correct} but pred {self.pred!r} vs gold {self.gold!r} says "
                             f"{self.pred == self.gold}")
        return self


class Tally(_Strict):
    """Correct answers out of a total, and their ratio."""

    correct: int = Field(ge=0)
    total: int = Field(ge=1)
    accuracy: float = Field(ge=0, le=1)


class SubjectTally(Tally):
    """A subject's tally and its MMLU category."""

    category: str = Field(min_length=1)


class MmluResults(_Strict):
    """A model's MMLU results: how they were obtained, per-question records, and the summaries they give."""

    eval_key: str = Field(min_length=1)
    prompt_version: str = Field(min_length=1)
    n_shot: int = Field(ge=0)
    limit: int = Field(ge=0)
    subjects_requested: list[str]
    model: str
    adapter: str
    model_id: str = Field(min_length=1)
    data_hash: str = Field(min_length=1)
    backend: Literal["hf", "openai"]
    micro: float = Field(ge=0, le=1)
    macro: float = Field(ge=0, le=1)
    correct: int = Field(ge=0)
    total: int = Field(ge=1)
    subjects: dict[str, SubjectTally] = Field(min_length=1)
    categories: dict[str, Tally] = Field(min_length=1)
    questions: list[QuestionRecord] = Field(min_length=1)

    @model_validator(mode="after")
    def _summaries_match_records(self) -> MmluResults:
        seen: set[tuple[str, int]] = set()
        for position, question in enumerate(self.questions):
            if question.subject not in self.subjects:
                raise ValueError(f"questions[{position}].subject: {question.subject!r} is not in subjects")
            if (question.subject, question.index) in seen:
                raise ValueError(f"questions[{position}]: {question.subject}#{question.index} is listed twice")
            seen.add((question.subject, question.index))
        category_of = {name: row.category for name, row in self.subjects.items()}
        subjects, categories = tallies(self.questions, category_of)
        for table, stored, computed in (("subjects", self.subjects, subjects), ("categories", self.categories,
                                                                                 categories)):
            if set(stored) != set(computed):
                raise ValueError(f"{table} lists {sorted(stored)} but the questions give {sorted(computed)}")
            for name, (correct, total) in computed.items():
                _check(f"{table}.{name}", stored[name], correct, total)
        correct = sum(question.correct for question in self.questions)
        _check("correct, total and micro", self, correct, len(self.questions), accuracy_field="micro")
        macro = sum(c / t for c, t in subjects.values()) / len(subjects)
        if not math.isclose(self.macro, macro, abs_tol=TOLERANCE):
            raise ValueError(f"macro is {self.macro} but the question records give {macro:.6f}")
        return self

    def eval_settings(self) -> dict[str, Any]:
        """The fields that must agree for two results to be comparable (:data:`EVAL_SETTING_FIELDS`)."""
        return {field: getattr(self, field) for field in EVAL_SETTING_FIELDS}


def _check(where: str, stored: Any, correct: int, total: int, accuracy_field: str = "accuracy") -> None:
    """Refuse a tally whose stored counts or accuracy differ from the ones the records give."""
    accuracy = getattr(stored, accuracy_field)
    if (stored.correct, stored.total) != (correct, total) or not math.isclose(accuracy, correct / total,
                                                                              abs_tol=TOLERANCE):
        raise ValueError(f"{where}: stored {stored.correct}/{stored.total} correct, {accuracy_field} {accuracy}, "
                         f"but the question records give {correct}/{total} ({correct / total:.6f})")


def tallies(questions: list[QuestionRecord],
            category_of: dict[str, str]) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    """``(per subject, per category)`` tallies ``name -> (correct, total)`` computed from question records."""
    by_subject: dict[str, list[int]] = {}
    by_category: dict[str, list[int]] = {}
    for question in questions:
        for table, name in ((by_subject, question.subject), (by_category, category_of[question.subject])):
            tally = table.setdefault(name, [0, 0])
            tally[0] += question.correct
            tally[1] += 1
    return ({name: (c, t) for name, (c, t) in by_subject.items()},
            {name: (c, t) for name, (c, t) in by_category.items()})


def results_from_records(meta: dict[str, Any], questions: list[dict[str, Any]],
                         category_of: dict[str, str]) -> MmluResults:
    """Build a results document from its per-question records: every summary number is computed here.

    ``meta`` holds the evaluation settings (eval_key, prompt_version, n_shot, limit, subjects_requested, model,
    adapter, model_id, data_hash, backend); ``category_of`` maps each scored subject to its category.

    Raises:
        ValidationError: a record or a meta field is invalid (e.g. a non-finite log-probability).
    """
    records = sorted((QuestionRecord.model_validate(question) for question in questions),
                     key=lambda record: (record.subject, record.index))
    subjects, categories = tallies(records, category_of)
    correct = sum(record.correct for record in records)
    return MmluResults.model_validate({
        **meta,
        "micro": _rounded(correct, len(records)),
        "macro": round(sum(c / t for c, t in subjects.values()) / len(subjects), 6) if subjects else 0.0,
        "correct": correct, "total": len(records),
        "subjects": {name: {"category": category_of[name], "correct": c, "total": t, "accuracy": _rounded(c, t)}
                     for name, (c, t) in subjects.items()},
        "categories": {name: {"correct": c, "total": t, "accuracy": _rounded(c, t)}
                       for name, (c, t) in categories.items()},
        "questions": [record.model_dump() for record in records],
    })


def _rounded(correct: int, total: int) -> float:
    return round(correct / total, 6) if total else 0.0


def read_mmlu_results(path: str | Path, label: str = "results") -> MmluResults:
    """Read and validate an MMLU ``results.json``.

    Raises:
        ResultsFileError: the file is missing, not JSON, or fails validation; the message names the
            file and the first offending fields (e.g. ``questions.3.correct``).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsFileError(f"{label} file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsFileError(f"{label} file {path} is not readable: {exc}") from None
    return parse_mmlu_results(text, f"{label} file {path}")


def parse_mmlu_results(text: str, source: str) -> MmluResults:
    """Validate the JSON text of an MMLU results file; ``source`` names it in errors.

    Raises:
        ResultsFileError: not JSON (NaN and Infinity literals included), or fails validation.
    """
    try:
        data = parse_json(text, source)
    except DocumentError as exc:  # not JSON, NaN/Infinity, a duplicate key, too deep, an over-long number
        raise ResultsFileError(f"{source} is not valid JSON: {exc.reason}") from None
    try:
        return MmluResults.model_validate(data)
    except ValidationError as exc:
        raise ResultsFileError(f"{source}: {describe_validation_error(exc)}") from None
