"""``generations.jsonl``: one model's greedy answers on held-out rows, each scored against its reference.

JSON Lines, one typed record per line: the first line a :class:`GenerationsHeader` (eval key, eval settings, totals,
the rows skipped and why), then one :class:`GeneratedAnswer` per row, sorted by (dataset, key). Every score is on
a 0-100 scale and rounded to :data:`DIGITS` decimals, so equal answers give byte-identical files and the gate can
compare sums of them exactly (:func:`score_units`). :func:`load_generations` checks the header's totals against
the answers and refuses NaN or infinity with the row named.

The eval key (:func:`generation_eval_key`) extends the task score's key (model content, held-out split,
template, cutoff, entries) with what decides the answers and their scores: ``evaluation.generate_rows``,
``evaluation.max_new_tokens``, :data:`GENERATION_VERSION` and the versions of the scoring libraries. The batch
size is left out: it changes how rows are padded, not what greedy decoding picks (see the package docstring).
"""

from __future__ import annotations

import hashlib
import json
import math
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components.common.typed_files import describe_validation_error
from configs.errors import StepError
from configs.safe_json import DocumentError, parse_json

GENERATION_VERSION = "generate-v1"  # prompt building, decoding and scoring: bump when any of them changes
RESULTS_FILE = "generations.jsonl"
DIGITS = 4  # decimals of every stored score (points of 100)
METRICS = ("exact_match", "token_f1", "rouge_l", "chrf")
MAX_FILE_BYTES = 256 << 20

Hex32 = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Points = Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False)]


class GenerationResultsError(StepError, ValueError):
    """A generations.jsonl that cannot be used; the message names the file, the line and the field."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class AnswerScores(_Record):
    """One answer's scores against its reference, each 0-100 (see :mod:`.metrics`)."""

    exact_match: Points = Field(description="100 when answer and reference are equal once normalised, else 0.")
    token_f1: Points = Field(description="F1 of the normalised words of answer and reference.")
    rouge_l: Points = Field(description="ROUGE-L F-measure (rouge-score) on the normalised words.")
    chrf: Points = Field(description="chrF (sacrebleu), character n-grams.")


class GeneratedAnswer(_Record):
    """One held-out row: what the model was asked, what it should say, what it said and how that scores."""

    kind: Literal["answer"] = "answer"
    dataset: str = Field(min_length=1, description="The dataset_info.json entry the row was read from.")
    key: Hex32 = Field(description="components.data.split.row_key of the original row.")
    prompt: str = Field(description="The last user turn (the prompt the answer replies to).")
    history_turns: int = Field(ge=0, description="Earlier user/assistant exchanges given as context.")
    reference: str = Field(min_length=1, description="The row's answer (the last assistant turn).")
    answer: str = Field(description="The generated answer, special tokens and surrounding whitespace left out.")
    prompt_tokens: int = Field(ge=1, description="Prompt tokens after truncation (template included).")
    truncated_tokens: int = Field(ge=0, description="Prompt tokens cut from the left to fit the context.")
    answer_tokens: int = Field(ge=0, description="Generated tokens before the stop token.")
    stopped: bool = Field(description="Whether the answer ended with a stop token before max_new_tokens.")
    scores: AnswerScores

    @property
    def row(self) -> str:
        """``dataset/key``: how a candidate's and a baseline's answers pair up."""
        return f"{self.dataset}/{self.key}"


class SkippedRow(_Record):
    """A held-out row that was not generated for, and why (e.g. an empty reference answer)."""

    dataset: str = Field(min_length=1)
    key: Hex32
    reason: str = Field(min_length=1)


class GenerationsHeader(_Record):
    """The first line: how the answers were obtained, and totals that :func:`load_generations` re-checks."""

    kind: Literal["header"] = "header"
    eval_key: Hex64 = Field(description="generation_eval_key(): the task key plus the generation settings.")
    generation_version: str = Field(description="GENERATION_VERSION of the code that generated and scored.")
    task_eval_key: str = Field(min_length=1, description="The task score's eval key (model, split, template...).")
    model: str = Field(description="The model directory that answered.")
    model_id: str = Field(min_length=1, description="components.evaluate.mmlu.data.model_identity of the model.")
    template: str = Field(min_length=1, description="The LLaMA-Factory template (training.template).")
    cutoff_len: int = Field(ge=1, description="training.cutoff_len (part of the task key).")
    test_split_hash: Hex64 = Field(description="The held-out split the rows were drawn from.")
    generate_rows: int = Field(ge=1, description="evaluation.generate_rows: at most this many rows answered.")
    max_new_tokens: int = Field(ge=1, description="evaluation.max_new_tokens.")
    stop_token_ids: list[int] = Field(min_length=1, description="The template's stop tokens (eos included).")
    rows: int = Field(ge=1, description="Answers that follow (len of the answer lines).")
    skipped: list[SkippedRow] = Field(description="Selected rows that could not be answered and scored.")
    means: AnswerScores = Field(description="Mean of each score over the answers.")
    stopped: int = Field(ge=0, description="Answers that stopped before max_new_tokens.")
    stop_rate: float = Field(ge=0, le=1, description="stopped / rows.")
    mean_answer_tokens: float = Field(ge=0, description="Mean generated length, in tokens.")
    empty_answers: int = Field(ge=0, description="Answers that held only special tokens or whitespace (scored as '').")
    truncated_prompts: int = Field(ge=0, description="Prompts cut from the left to fit the context.")

    def eval_settings(self) -> dict[str, object]:
        """What must agree for two models' answers to be compared row by row."""
        return {"generation_version": self.generation_version, "template": self.template,
                "cutoff_len": self.cutoff_len, "test_split_hash": self.test_split_hash,
                "generate_rows": self.generate_rows, "max_new_tokens": self.max_new_tokens}


class Generations(BaseModel):
    """A whole generations.jsonl: the header and the answers, checked against each other."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    header: GenerationsHeader
    answers: list[GeneratedAnswer] = Field(min_length=1)

    @model_validator(mode="after")
    def _totals_agree(self) -> Generations:
        ids = [(answer.dataset, answer.key) for answer in self.answers]
        if ids != sorted(set(ids)):
            raise ValueError("answers must be sorted by (dataset, key), each (dataset, key) once")
        expected = generation_totals(self.answers)
        for name, value in expected.items():
            actual = getattr(self.header, name)
            if (actual.model_dump() if isinstance(actual, BaseModel) else actual) != value:
                raise ValueError(f"header {name} is {actual} but the answers give {value}")
        skipped = {(row.dataset, row.key) for row in self.header.skipped}
        if skipped & set(ids):
            raise ValueError("a row is both answered and skipped")
        return self

    def by_row(self) -> dict[str, GeneratedAnswer]:
        """The answers by ``dataset/key``."""
        return {answer.row: answer for answer in self.answers}


def rounded(value: float) -> float:
    """A score as stored: :data:`DIGITS` decimals."""
    return round(float(value), DIGITS)


def score_units(value: float) -> int:
    """A stored score as an exact integer number of 10^-DIGITS points (sums of these compare exactly)."""
    return int(Decimal(repr(float(value))).scaleb(DIGITS).to_integral_value())


def generation_totals(answers: list[GeneratedAnswer]) -> dict[str, object]:
    """The header's totals, computed from the answers (exact sums of the stored, rounded scores)."""
    count = len(answers)
    means = {name: rounded(sum(score_units(getattr(answer.scores, name)) for answer in answers)
                           / 10 ** DIGITS / count) if count else 0.0 for name in METRICS}
    stopped = sum(answer.stopped for answer in answers)
    return {"rows": count, "means": means, "stopped": stopped, "stop_rate": round(stopped / count, 6) if count else 0.0,
            "mean_answer_tokens": round(math.fsum(answer.answer_tokens for answer in answers) / count, 3)
            if count else 0.0,
            "empty_answers": sum(not answer.answer for answer in answers),
            "truncated_prompts": sum(answer.truncated_tokens > 0 for answer in answers)}


def generation_eval_key(task_eval_key: str, *, generate_rows: int, max_new_tokens: int) -> str:
    """The key under which one model's generations may be reused: sha256 hex of the task key and the settings.

    Covers ``task_eval_key`` (model content, held-out split, template, cutoff, entries), ``generate_rows``,
    ``max_new_tokens``, :data:`GENERATION_VERSION` and the installed sacrebleu and rouge-score versions.
    """
    payload = {"task_eval_key": task_eval_key, "generate_rows": int(generate_rows),
               "max_new_tokens": int(max_new_tokens), "generation_version": GENERATION_VERSION,
               "sacrebleu": metadata.version("sacrebleu"), "rouge_score": metadata.version("rouge-score")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _line(record: BaseModel) -> str:
    return json.dumps(record.model_dump(mode="json"), sort_keys=True, ensure_ascii=False, allow_nan=False)


def dump_generations(generations: Generations) -> str:
    """The canonical text of the file: equal generations give identical bytes."""
    return "".join(_line(record) + "\n" for record in (generations.header, *generations.answers))


def parse_generations(text: str, source: str) -> Generations:
    """Validate the text of a generations.jsonl.

    Raises:
        GenerationResultsError: not JSON Lines, NaN/Infinity, a record that does not validate (line and field
            named), or a header whose totals disagree with the answers.
    """
    lines = text.splitlines()
    if not lines:
        raise GenerationResultsError(f"{source} is empty: expected a header line and one line per answer")
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(parse_json(line, f"line {number}"))
        except DocumentError as exc:
            raise GenerationResultsError(f"{source}:{number} is not a JSON record ({exc.reason})") from None
    try:
        header = GenerationsHeader.model_validate(records[0])
    except ValidationError as exc:
        raise GenerationResultsError(f"{source}:1 is not a generations header: "
                                     f"{describe_validation_error(exc)}") from None
    answers = []
    for number, record in enumerate(records[1:], 2):
        try:
            answers.append(GeneratedAnswer.model_validate(record))
        except ValidationError as exc:
            raise GenerationResultsError(f"{source}:{number} is not a generated answer: "
                                         f"{describe_validation_error(exc)}") from None
    try:
        return Generations(header=header, answers=answers)
    except ValidationError as exc:
        raise GenerationResultsError(f"{source} is inconsistent: {describe_validation_error(exc)}") from None


def load_generations(path: str | Path) -> Generations:
    """Read and validate a generations.jsonl.

    Raises:
        FileNotFoundError: no such file.
        GenerationResultsError: see :func:`parse_generations`; also a file over :data:`MAX_FILE_BYTES`.
    """
    path = Path(path)
    if path.stat().st_size > MAX_FILE_BYTES:
        raise GenerationResultsError(f"{path} is larger than {MAX_FILE_BYTES:,} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise GenerationResultsError(f"{path} is not UTF-8 text: {exc}") from None
    return parse_generations(text, str(path))


def generation_metrics(generations: Generations) -> dict[str, float]:
    """One model's answer scores as metrics: the mean of each score, the stop rate, the mean length."""
    header = generations.header
    return {**{f"gen_{name}": value for name, value in header.means.model_dump().items()},
            "gen_stop_rate": header.stop_rate, "gen_answer_tokens": header.mean_answer_tokens,
            "gen_rows": float(header.rows)}


def generation_table(generations: Generations) -> dict[str, list]:
    """The answers as columns for ``log_table``: one row per held-out row."""
    answers = generations.answers
    columns: dict[str, list] = {"row": [answer.row for answer in answers],
                                "prompt": [answer.prompt for answer in answers],
                                "reference": [answer.reference for answer in answers],
                                "answer": [answer.answer for answer in answers]}
    for name in ("chrf", "rouge_l", "token_f1", "exact_match"):
        columns[name] = [getattr(answer.scores, name) for answer in answers]
    columns["answer_tokens"] = [answer.answer_tokens for answer in answers]
    columns["stopped"] = [answer.stopped for answer in answers]
    return columns
