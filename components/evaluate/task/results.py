"""The task evaluation's results file ``task.json``: per-example scores keyed by row content hash, and totals.

One :class:`ExampleScore` per distinct (dataset, row key): answer tokens, summed and mean NLL over them
(nats) and top-1 correct predictions. Totals are a pure function of the (rounded) records, so equal scores
give byte-identical files, and :func:`load_task_results` recomputes them to refuse a file whose totals
disagree with its records:

* ``loss``: token-weighted mean NLL, ``nll_sum / answer_tokens`` (what the trainer's loss means);
* ``mean_example_nll``: the mean of the per-example mean NLLs (each example weighs the same);
* ``perplexity``: ``exp(loss)``; ``token_accuracy``: ``correct_tokens / answer_tokens``.

Rows whose answer the cutoff truncated away entirely have no answer token: they are listed under
``truncated_away`` and are not part of any total. ``test_split_hash`` covers every distinct row read.
"""

from __future__ import annotations

import hashlib
import json
import math
from importlib import metadata
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components.common.typed_files import describe_validation_error
from components.data.split import split_hash
from configs.errors import StepError
from configs.safe_json import DocumentError, parse_json, read_json

# Bump whenever reading, encoding or scoring changes: stored scores then stop matching their eval key.
SCORING_VERSION = "task-nll-v1"
RESULTS_FILE = "task.json"
DIGITS = 6  # decimals kept in the file: far below any difference a paired test on real data could see

Hex32 = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Finite = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class TaskResultsError(StepError, ValueError):
    """A task.json that cannot be used; the message names the file and the field."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExampleScore(_Record):
    """One held-out example: its row key and dataset entry, and the model's loss on its answer tokens."""

    key: Hex32 = Field(description="components.data.row_keys.row_key of the original row.")
    dataset: str = Field(min_length=1, description="The dataset_info.json entry the row was read from.")
    tokens: int = Field(ge=1, description="Encoded length after truncation to cutoff_len (prompt + answer).")
    answer_tokens: int = Field(ge=1, description="Tokens the loss counts (labels not masked).")
    nll_sum: Finite = Field(description="Summed negative log-likelihood of the answer tokens (nats).")
    nll_mean: Finite = Field(description="nll_sum / answer_tokens.")
    correct_tokens: int = Field(ge=0, description="Answer tokens that are the model's top-1 prediction.")

    @model_validator(mode="after")
    def _consistent(self) -> ExampleScore:
        if self.correct_tokens > self.answer_tokens:
            raise ValueError(f"correct_tokens ({self.correct_tokens}) exceeds answer_tokens ({self.answer_tokens})")
        if not math.isclose(self.nll_mean, self.nll_sum / self.answer_tokens, rel_tol=1e-5, abs_tol=2 * 10 ** -DIGITS):
            raise ValueError(f"nll_mean ({self.nll_mean}) is not nll_sum / answer_tokens "
                             f"({self.nll_sum / self.answer_tokens:.6f})")
        return self


class SkippedExample(_Record):
    """A held-out row whose answer the cutoff truncated away entirely: nothing to score."""

    key: Hex32
    dataset: str = Field(min_length=1)
    tokens: int = Field(ge=0, description="Encoded length after truncation (all prompt).")


class TaskResults(BaseModel):
    """The whole results file; totals are checked against the records on every load."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    eval_key: Hex64 = Field(description="task_eval_key(): model, split, template, cutoff, entries, version.")
    scoring_version: str = Field(description="SCORING_VERSION of the code that scored.")
    model: str = Field(description="The model directory scored.")
    adapter: str = Field(description="The adapter applied unmerged, '' for none.")
    model_id: Hex64 = Field(description="components.evaluate.mmlu.data.model_identity of model + adapter.")
    template: str = Field(min_length=1, description="The LLaMA-Factory template (training.template).")
    cutoff_len: int = Field(ge=1, description="Truncation length (training.cutoff_len).")
    datasets: list[str] = Field(min_length=1, description="The dataset_info.json entries scored.")
    entries_hash: Hex64 = Field(description="task_data.entries_digest of those entries.")
    test_split_hash: Hex64 = Field(description="data_split.split_hash over the keys of every row read.")
    rows: int = Field(ge=1, description="Rows read, duplicates included.")
    duplicate_rows: int = Field(ge=0, description="Rows identical to an earlier row of the same entry (not rescored).")
    examples: int = Field(ge=1, description="Examples scored (len(records)).")
    answer_tokens: int = Field(ge=1, description="Sum of the records' answer_tokens.")
    nll_sum: Finite = Field(description="Sum of the records' nll_sum.")
    loss: Finite = Field(description="Token-weighted mean NLL: nll_sum / answer_tokens.")
    mean_example_nll: Finite = Field(description="Mean of the records' nll_mean.")
    perplexity: Finite = Field(description="exp(loss).")
    correct_tokens: int = Field(ge=0, description="Sum of the records' correct_tokens.")
    token_accuracy: Finite = Field(le=1.0, description="correct_tokens / answer_tokens.")
    truncated_away: list[SkippedExample] = Field(description="Rows with no answer token left after truncation.")
    records: list[ExampleScore] = Field(min_length=1, description="One per (dataset, key), sorted.")

    @model_validator(mode="after")
    def _totals_agree(self) -> TaskResults:
        expected = totals(self.records)
        for name, value in expected.items():
            actual = getattr(self, name)
            if not math.isclose(actual, value, rel_tol=1e-9, abs_tol=2 * 10 ** -DIGITS):
                raise ValueError(f"{name} is {actual} but the records give {value}")
        ids = [(record.dataset, record.key) for record in self.records]
        if ids != sorted(set(ids)):
            raise ValueError("records must be sorted by (dataset, key), each (dataset, key) once")
        skipped = [(example.dataset, example.key) for example in self.truncated_away]
        if skipped != sorted(set(skipped)) or set(skipped) & set(ids):
            raise ValueError("truncated_away must be sorted by (dataset, key), each once and not among the records")
        unknown = sorted({dataset for dataset, _ in ids + skipped} - set(self.datasets))
        if unknown:
            raise ValueError(f"records name datasets not in datasets: {', '.join(unknown)}")
        keys = [record.key for record in self.records] + [skipped.key for skipped in self.truncated_away]
        if split_hash(keys) != self.test_split_hash:
            raise ValueError("test_split_hash does not match the keys of the records and truncated_away rows")
        if self.rows != len(self.records) + len(self.truncated_away) + self.duplicate_rows:
            raise ValueError(f"rows ({self.rows}) is not records + truncated_away + duplicate_rows")
        return self

    def by_example(self) -> dict[tuple[str, str], ExampleScore]:
        """The records by (dataset, key): how a candidate's and a baseline's scores pair up."""
        return {(record.dataset, record.key): record for record in self.records}


def totals(records: list[ExampleScore]) -> dict[str, float | int]:
    """The overall numbers of :class:`TaskResults`, computed from the records (in their order)."""
    tokens = sum(record.answer_tokens for record in records)
    nll = math.fsum(record.nll_sum for record in records)
    correct = sum(record.correct_tokens for record in records)
    loss = nll / tokens if tokens else 0.0
    mean_example = math.fsum(record.nll_mean for record in records) / len(records) if records else 0.0
    return {"examples": len(records), "answer_tokens": tokens, "nll_sum": round(nll, DIGITS),
            "loss": round(loss, DIGITS), "mean_example_nll": round(mean_example, DIGITS),
            "perplexity": round(math.exp(loss), DIGITS) if loss < 700 else math.inf,
            "correct_tokens": correct, "token_accuracy": round(correct / tokens, DIGITS) if tokens else 0.0}


def task_eval_key(model_id: str, test_split_hash: str, template: str, cutoff_len: int, entries_hash: str = "") -> str:
    """The key under which a task score may be reused: sha256 hex of everything that decides the numbers.

    Covers ``model_id`` (components.evaluate.mmlu.data.model_identity), ``test_split_hash`` (the rows), the template,
    ``cutoff_len``, ``entries_hash`` (how the entries are read; :func:`components.evaluate.task.data.entries_digest`),
    :data:`SCORING_VERSION` and the installed LLaMA-Factory version (its templates decide the tokens).
    """
    payload = {"model_id": model_id, "test_split_hash": test_split_hash, "template": template,
               "cutoff_len": int(cutoff_len), "entries_hash": entries_hash, "scoring_version": SCORING_VERSION,
               "llamafactory": metadata.version("llamafactory")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def dump_task_results(results: TaskResults) -> str:
    """The canonical text of a results file (sorted keys): equal results give identical bytes."""
    return json.dumps(results.model_dump(mode="json"), sort_keys=True, indent=1, allow_nan=False) + "\n"


def load_task_results(path: str | Path) -> TaskResults:
    """Read and validate a task.json.

    Raises:
        FileNotFoundError: no such file.
        TaskResultsError: not JSON, NaN/Infinity in it, or a field that does not validate (named, with the
            file), including totals that disagree with the records.
    """
    path = Path(path)
    try:
        data = read_json(path)
    except DocumentError as exc:  # not JSON, NaN/Infinity, a duplicate key, too deep, an over-long number
        raise TaskResultsError(f"{path} is not a JSON task results file ({exc.reason})") from None
    return _validated(data, str(path))


def parse_task_results(text: str | bytes, source: str) -> TaskResults:
    """Validate the text of a task.json (e.g. one stored in MLflow); ``source`` names it in errors.

    Raises:
        TaskResultsError: as :func:`load_task_results`, naming ``source``.
    """
    try:
        data = parse_json(text, source)
    except DocumentError as exc:
        raise TaskResultsError(f"{source} is not a JSON task results file ({exc.reason})") from None
    return _validated(data, source)


def _validated(data: object, source: str) -> TaskResults:
    try:
        return TaskResults.model_validate(data)
    except ValidationError as exc:
        problems = describe_validation_error(exc, limit=10)
        raise TaskResultsError(f"{source} is not a valid task results file: {problems}") from None
