"""MMLU data on the volume: reading the hendrycks CSV layout, subject categories, prompts and hashes.

Layout (as published by Hendrycks et al.): ``dev/<subject>_dev.csv`` (few-shot examples),
``test/<subject>_test.csv`` (scored questions) and an optional ``val/``, each row
``question,A,B,C,D,answer`` with no header. Every malformed row is reported with its file and line.

The prompt is the standard MMLU one, split into a prefix shared by every question of a subject
(header + few-shot examples) and a per-question suffix, so that the scorer can cache the prefix:

    prefix = "The following are multiple choice questions (with answers) about astronomy."
             + "\\n\\n<shot 1>\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer: B" + ... (one block per shot)
    suffix = "\\n\\n<question>\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:"

``prefix + suffix`` is exactly the usual MMLU prompt text; the cut sits between a letter and a
newline, which byte-level BPE tokenizers (GPT-2, Llama 3) never merge across.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from components.common.logs import step_logger
from components.common.storage import MODEL_MANIFEST
from configs.errors import StepError

LETTERS = ("A", "B", "C", "D")
CATEGORIES = ("STEM", "humanities", "social sciences", "other")
# Bump whenever prompt text, shot selection, tokenisation or scoring changes: stored scores then stop matching.
PROMPT_VERSION = "mmlu-hendrycks-v1"
MAX_LISTED_ERRORS = 20
# Bump whenever what the model identity covers changes: every eval key changes with it.
IDENTITY_VERSION = "model-sha256-v2"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_MODEL_TEXT_FILES = ("config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json",
                     "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

TOOL = "mmlu"  # the MMLU tool's lines: [mmlu] ...
log = step_logger(TOOL)

# The 57 standard subjects and their categories, from the benchmark's own categories.py
# (hendrycks/test). lm-eval-harness differs in one place: it files anatomy under STEM.
SUBJECT_CATEGORIES: dict[str, str] = {
    **dict.fromkeys([
        "abstract_algebra", "astronomy", "college_biology", "college_chemistry", "college_computer_science",
        "college_mathematics", "college_physics", "computer_security", "conceptual_physics",
        "electrical_engineering", "elementary_mathematics", "high_school_biology", "high_school_chemistry",
        "high_school_computer_science", "high_school_mathematics", "high_school_physics",
        "high_school_statistics", "machine_learning",
    ], "STEM"),
    **dict.fromkeys([
        "formal_logic", "high_school_european_history", "high_school_us_history", "high_school_world_history",
        "international_law", "jurisprudence", "logical_fallacies", "moral_disputes", "moral_scenarios",
        "philosophy", "prehistory", "professional_law", "world_religions",
    ], "humanities"),
    **dict.fromkeys([
        "econometrics", "high_school_geography", "high_school_government_and_politics",
        "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology", "human_sexuality",
        "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy",
    ], "social sciences"),
    **dict.fromkeys([
        "anatomy", "business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging",
        "management", "marketing", "medical_genetics", "miscellaneous", "nutrition", "professional_accounting",
        "professional_medicine", "virology",
    ], "other"),
}


class MmluDataError(StepError, ValueError):
    """MMLU files are missing or malformed; the message names each file and line."""


class ModelLoadError(StepError, OSError):
    """A model or adapter directory that is not one, or whose weights, tokenizer or settings cannot be loaded;
    the message names the directory."""


@dataclass(frozen=True)
class Question:
    """One CSV row: ``index`` is the 0-based row number in its file, ``line`` the 1-based text line."""

    subject: str
    index: int
    question: str
    choices: tuple[str, str, str, str]
    answer: str
    line: int


@dataclass(frozen=True)
class SubjectData:
    """The few-shot examples (first ``n_shot`` dev rows) and the scored test rows of one subject."""

    subject: str
    category: str
    shots: list[Question]
    questions: list[Question]


def category_of(subject: str) -> str:
    """The MMLU category of ``subject``; unknown subjects go to "other" with a warning."""
    category = SUBJECT_CATEGORIES.get(subject)
    if category is None:
        log.warning("MMLU subject %r is not one of the 57 standard subjects; counting it under 'other'", subject)
        return "other"
    return category


def discover_subjects(data_dir: str | Path) -> list[str]:
    """Sorted subject names found as ``test/<subject>_test.csv``.

    Raises:
        MmluDataError: ``data_dir/test`` is missing or holds no ``*_test.csv`` file.
    """
    test_dir = Path(data_dir) / "test"
    if not test_dir.is_dir():
        raise MmluDataError(f"{test_dir} does not exist: expected the hendrycks layout (dev/, test/) in {data_dir}")
    subjects = sorted(path.name.removesuffix("_test.csv") for path in test_dir.glob("*_test.csv"))
    if not subjects:
        raise MmluDataError(f"{test_dir} holds no <subject>_test.csv file")
    return subjects


def read_split(path: str | Path, subject: str) -> tuple[list[Question], list[str]]:
    """Read one CSV file; return its questions and one error line per malformed row (``file:line: why``)."""
    path = Path(path)
    questions: list[Question] = []
    errors: list[str] = []
    try:
        handle = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed below
    except OSError as exc:
        return [], [f"{path}: cannot be read ({exc.strerror})"]
    with handle:
        reader = csv.reader(handle)
        start = 1
        try:
            for row in reader:
                line, start = start, reader.line_num + 1
                if not row or all(not cell.strip() for cell in row):
                    continue
                problem = _row_problem(row)
                if problem:
                    errors.append(f"{path}:{line}: {problem}")
                    continue
                questions.append(Question(subject, len(questions), row[0].strip(), (row[1], row[2], row[3], row[4]),
                                          row[5].strip(), line))
        except UnicodeDecodeError as exc:
            errors.append(f"{path}: not UTF-8 text (byte {exc.start} after line {start - 1})")
        except csv.Error as exc:
            errors.append(f"{path}:{reader.line_num}: {exc}")
    return questions, errors


def _row_problem(row: list[str]) -> str:
    if len(row) != 6:
        return f"expected 6 columns (question,A,B,C,D,answer), got {len(row)}"
    if not row[0].strip():
        return "the question is empty"
    if row[5].strip() not in LETTERS:
        hint = " (upper case)" if row[5].strip().upper() in LETTERS else ""
        return f"the answer must be one of A, B, C, D{hint}, got {row[5]!r}"
    return ""


def load_subjects(data_dir: str | Path, subjects: list[str] | None = None, *, n_shot: int = 5,
                  limit: int = 0) -> list[SubjectData]:
    """Read every requested subject: the first ``n_shot`` dev rows and the first ``limit`` test rows (0: all).

    All files are checked in full before anything is returned, and every malformed row is listed.

    Raises:
        MmluDataError: a requested subject has no test file, a dev file is missing or holds fewer than
            ``n_shot`` rows, a file holds no rows, or rows are malformed (each named as ``file:line: reason``).
    """
    data_dir = Path(data_dir)
    names = sorted(set(subjects)) if subjects else discover_subjects(data_dir)
    errors: list[str] = []
    loaded = []
    for subject in names:
        test_path = data_dir / "test" / f"{subject}_test.csv"
        dev_path = data_dir / "dev" / f"{subject}_dev.csv"
        if not test_path.is_file():
            errors.append(f"{test_path}: missing (subject {subject!r} was requested)")
            continue
        questions, problems = read_split(test_path, subject)
        errors += problems
        if not questions and not problems:
            errors.append(f"{test_path}: holds no question")
        shots: list[Question] = []
        if n_shot > 0:
            if not dev_path.is_file():
                errors.append(f"{dev_path}: missing; it holds the few-shot examples (n_shot={n_shot})")
                continue
            shots, problems = read_split(dev_path, subject)
            errors += problems
            if not shots and not problems:  # zero-shot by accident would silently change what is measured
                errors.append(f"{dev_path}: holds no row; it holds the few-shot examples (n_shot={n_shot})")
            elif len(shots) < n_shot and not problems:  # the results would claim n_shot shots they never had
                errors.append(f"{dev_path}: has {len(shots)} row(s), fewer than n_shot={n_shot}: lower n_shot "
                              "(evaluation.n_shot, --n-shot) or add dev rows")
        loaded.append(SubjectData(subject, category_of(subject), shots[:n_shot], questions[:limit or None]))
    if errors:
        listed = errors[:MAX_LISTED_ERRORS]
        more = f"\n  ... and {len(errors) - len(listed)} more" if len(errors) > len(listed) else ""
        raise MmluDataError(f"MMLU data in {data_dir} is not usable:\n  " + "\n  ".join(listed) + more)
    return loaded


def format_subject(subject: str) -> str:
    """``high_school_physics`` -> ``high school physics``."""
    return subject.replace("_", " ")


def format_block(question: Question, with_answer: bool) -> str:
    """One question with its lettered choices, ending ``Answer: X`` (a shot) or ``Answer:`` (to score)."""
    choices = zip(LETTERS, question.choices, strict=True)
    text = question.question + "".join(f"\n{letter}. {choice}" for letter, choice in choices)
    return text + (f"\nAnswer: {question.answer}" if with_answer else "\nAnswer:")


def prompt_prefix(subject: str, shots: list[Question]) -> str:
    """The shared part of a subject's prompts: the header and the few-shot examples with their answers."""
    header = f"The following are multiple choice questions (with answers) about {format_subject(subject)}."
    return header + "".join("\n\n" + format_block(shot, with_answer=True) for shot in shots)


def prompt_suffix(question: Question) -> str:
    """The per-question part, appended to :func:`prompt_prefix`; it ends with ``Answer:``."""
    return "\n\n" + format_block(question, with_answer=False)


def data_hash(data_dir: str | Path, subjects: list[str] | None = None) -> str:
    """sha256 hex over the dev and test CSV bytes of ``subjects`` (all found when empty), in name order.

    Raises:
        MmluDataError: ``data_dir`` holds no test split.
    """
    data_dir = Path(data_dir)
    digest = hashlib.sha256()
    for subject in sorted(set(subjects)) if subjects else discover_subjects(data_dir):
        for split in ("dev", "test"):
            path = data_dir / split / f"{subject}_{split}.csv"
            digest.update(f"{split}/{path.name}\0".encode())
            digest.update(path.read_bytes() if path.is_file() else b"<missing>")
            digest.update(b"\0")
    return digest.hexdigest()


def model_identity(model_dir: str | Path, adapter_dir: str | Path | None = None) -> str:
    """The identity (sha256 hex) of a model directory's content and an optional adapter's: every byte counts.

    Covers config.json, the tokenizer and index files and every weight file, each by its full SHA-256, plus the
    adapter's config and weights. A published model's ``checksums.sha256`` already holds those digests (the merge
    computed them as it wrote each byte), so they are read from it; a file the manifest does not list, or one
    changed after the manifest was written, and every file of a directory without one (a base model) are hashed
    in full (:func:`components.merge.verify.hash_files`; the README gives the cost). The paths themselves are
    not part of it: a copy of the same model has the same identity.

    Raises:
        ModelLoadError: ``model_dir`` (or ``adapter_dir``) has no config.json (adapter_config.json).
    """
    model_dir = Path(model_dir)
    if not os.path.isfile(model_dir / "config.json"):  # os.path: a name too long for the filesystem is False
        raise ModelLoadError(f"{model_dir} is not a model directory (no config.json)")
    digest = hashlib.sha256(f"{IDENTITY_VERSION}\0model\0".encode())
    names = [name for name in _MODEL_TEXT_FILES if (model_dir / name).is_file()]
    names += [path.name for path in sorted(model_dir.iterdir())
              if path.is_file() and path.name.endswith(_WEIGHT_SUFFIXES)]
    _feed(digest, model_dir, names)
    if adapter_dir:
        adapter_dir = Path(adapter_dir)
        if not os.path.isfile(adapter_dir / "adapter_config.json"):
            raise ModelLoadError(f"{adapter_dir} is not a PEFT adapter directory (no adapter_config.json)")
        digest.update(b"adapter\0")
        _feed(digest, adapter_dir, [path.name for path in sorted(adapter_dir.iterdir()) if path.is_file() and (
            path.name == "adapter_config.json" or path.name.startswith("adapter_model"))])
    return digest.hexdigest()


def _feed(digest, directory: Path, names: list[str]) -> None:
    """Add each file's name and full SHA-256 to ``digest``: from the directory's checksums when they still hold."""
    from components.merge.verify import PublishError, hash_files, read_checksums

    manifest = directory / MODEL_MANIFEST
    recorded: dict[str, str] = {}
    if manifest.is_file():
        written = manifest.stat().st_mtime_ns
        with contextlib.suppress(PublishError):
            recorded = {name: sha for name, sha in read_checksums(directory).items()
                        if name in names and (directory / name).stat().st_mtime_ns <= written}
    digests = {**hash_files(directory, [name for name in names if name not in recorded]), **recorded}
    for name in names:
        digest.update(f"{name}\0{digests[name]}\n".encode())


def eval_config_key(data_dir: str | Path, *, n_shot: int, subjects: list[str], limit: int, model_id: str) -> str:
    """The key under which a score may be reused: sha256 hex of everything that decides the number.

    Covers the data hash, ``n_shot``, the subject list (empty: all found), ``limit``, :data:`PROMPT_VERSION`
    and ``model_id`` (from :func:`model_identity`).

    Raises:
        MmluDataError: ``data_dir`` holds no test split.
    """
    payload = {
        "data_hash": data_hash(data_dir, subjects),
        "n_shot": n_shot,
        "subjects": sorted(set(subjects)),
        "limit": limit,
        "prompt_version": PROMPT_VERSION,
        "model_id": model_id,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
