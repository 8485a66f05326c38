"""The held-out rows of a task evaluation, encoded exactly as LLaMA-Factory's SFT training encodes them.

Input: a LLaMA-Factory data directory (``dataset_info.json`` plus data files) and entry names, e.g. the
test sides ``alpaca_sample@test`` that the split writes. Each entry is an ordinary file entry (alpaca,
sharegpt or openai formatting with its columns and tags) whose file (or directory of files) holds JSON
Lines or a JSON array of the original row objects. A row's identity is :func:`components.data.row_keys.row_key`
of the parsed object under its entry's column mapping.

Encoding reuses LLaMA-Factory 0.9.5's own pieces, nothing re-implemented: the entry's ``DatasetAttr``
(``get_dataset_list``), its dataset converter (``get_dataset_converter``), the template with the tokenizer
fixed as training fixes it (``get_template_and_fix_tokenizer``, on a copy: the caller's tokenizer is left
as it was) and the supervised processor (``SupervisedDatasetProcessor``: truncation to ``cutoff_len``,
prompt tokens labelled ``IGNORE_INDEX``, every assistant turn of a conversation trained on). Data
arguments other than template and cutoff keep LLaMA-Factory's defaults, as the training step leaves them.

Ranking (preference) and KTO entries are refused: they have no single answer to score. So are entries with
media columns (the scorer is text-only) and hub or script entries (nothing is downloaded).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.data.row_keys import entry_spec, row_key
from components.data.validation import MAX_DATASET_INFO_BYTES
from configs.errors import StepError
from configs.safe_json import DocumentError, read_json

IGNORE_INDEX = -100  # llamafactory.extras.constants.IGNORE_INDEX (and the Trainer's ignore index)
DATA_CONFIG = "dataset_info.json"
MAX_LISTED_ERRORS = 20
_ROW_FILE_TYPES = (".json", ".jsonl")
_UNSCORABLE_COLUMNS = {"chosen": "a ranking", "rejected": "a ranking", "kto_tag": "a KTO",
                       "images": "a multimodal", "videos": "a multimodal", "audios": "a multimodal"}


class TaskDataError(StepError, ValueError):
    """The held-out data cannot be scored; the message names each entry, file and row."""


@dataclass(frozen=True)
class TestRow:
    """One row as read: its entry (dataset) name, content key, file and 1-based line (or array index)."""

    dataset: str
    key: str
    file: str
    line: int
    row: Any


@dataclass(frozen=True)
class EncodedExample:
    """One row as the trainer sees it: ``input_ids`` after truncation and ``labels`` (prompt = IGNORE_INDEX)."""

    dataset: str
    key: str
    input_ids: list[int]
    labels: list[int]

    @property
    def answer_tokens(self) -> int:
        """Tokens the loss counts: labelled positions after the first (a causal LM never predicts token 0)."""
        return sum(label != IGNORE_INDEX for label in self.labels[1:])


def raise_if_errors(errors: list[str], what: str) -> None:
    """Raise one TaskDataError listing the first errors (and how many more), when there are any."""
    if errors:
        listed = errors[:MAX_LISTED_ERRORS]
        more = f"\n  ... and {len(errors) - len(listed)} more" if len(errors) > len(listed) else ""
        raise TaskDataError(f"{what}:\n  " + "\n  ".join(listed) + more)


def read_dataset_info(data_dir: str | Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """The ``dataset_info.json`` entries of ``names``, checked to be scoreable file entries.

    Raises:
        TaskDataError: no names, the file is missing or not a JSON object, or an entry is missing, not a
            local file entry, a ranking/KTO/multimodal entry, or names an unknown formatting.
    """
    path = Path(data_dir) / DATA_CONFIG
    if not names:
        raise TaskDataError("no dataset entry to score: name at least one entry of dataset_info.json")
    try:
        info = read_json(path, max_bytes=MAX_DATASET_INFO_BYTES)
    except FileNotFoundError:
        raise TaskDataError(f"{path} does not exist: expected a LLaMA-Factory data directory") from None
    except DocumentError as exc:
        raise TaskDataError(f"{path} cannot be read as JSON: {exc.reason}") from None
    if not isinstance(info, dict):
        raise TaskDataError(f"{path} must hold a JSON object of dataset entries")
    errors, entries = [], {}
    for name in names:
        entry = info.get(name)
        problem = _entry_problem(entry) if name in info else f"no entry {name!r} (entries: {', '.join(sorted(info))})"
        if problem:
            errors.append(f"{path}: dataset {name!r}: {problem}")
        else:
            entries[name] = entry
    raise_if_errors(errors, "the held-out data cannot be scored")
    return entries


def _entry_problem(entry: Any) -> str:
    if not isinstance(entry, dict):
        return "the entry must be a JSON object"
    if "file_name" not in entry or not isinstance(entry["file_name"], str):
        remote = [key for key in ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
                  if key in entry]
        return (f"only local files are scored, this entry uses {remote[0]!r}" if remote
                else "'file_name' (a string) is required")
    if entry.get("ranking"):
        return "a ranking (preference) entry has no single answer to score; name its SFT entries instead"
    if entry.get("formatting", "alpaca") not in ("alpaca", "sharegpt", "openai"):
        return f"formatting {entry.get('formatting')!r} is not one of alpaca, sharegpt, openai"
    columns = entry.get("columns") or {}
    if not isinstance(columns, dict):
        return "'columns' must be a JSON object"
    for column, kind in _UNSCORABLE_COLUMNS.items():
        if columns.get(column):
            return f"column {column!r} makes it {kind} entry, which the text task evaluation does not score"
    return ""


def entries_digest(entries: dict[str, dict[str, Any]]) -> str:
    """sha256 hex over how the entries are read (formatting, columns, tags...), file names left out.

    Part of the eval key: the same rows read with another column mapping encode differently.
    """
    described = {name: {key: value for key, value in entry.items() if key != "file_name"}
                 for name, entry in sorted(entries.items())}
    return hashlib.sha256(json.dumps(described, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _entry_files(data_dir: Path, name: str, file_name: str) -> list[Path]:
    """The entry's data file, or the files of its directory (as LLaMA-Factory lists them), checked to be JSON."""
    path = data_dir / file_name
    if path.is_dir():
        files = sorted(child for child in path.iterdir() if child.is_file())
    elif path.is_file():
        files = [path]
    else:
        raise TaskDataError(f"dataset {name!r}: {path} does not exist")
    wrong = [str(file) for file in files if file.suffix.lower() not in _ROW_FILE_TYPES]
    if not files or wrong:
        raise TaskDataError(f"dataset {name!r}: expected JSON Lines or JSON files (.jsonl, .json), "
                            f"got {', '.join(wrong) or f'an empty directory {path}'}")
    return files


def read_test_rows(data_dir: str | Path, names: list[str]) -> tuple[dict[str, dict[str, Any]], list[TestRow]]:
    """Read every row of the named entries; return the entries and the rows in file order.

    Raises:
        TaskDataError: an entry cannot be scored (see :func:`read_dataset_info`), a file is missing or not
            JSON, a row is not a JSON object, or an entry holds no row (each named with file and line).
    """
    from components.data.reader import iter_rows

    data_dir = Path(data_dir)
    entries = read_dataset_info(data_dir, names)
    rows: list[TestRow] = []
    errors: list[str] = []
    for name, entry in entries.items():
        before = len(rows)
        spec = entry_spec(name, entry)
        for path in _entry_files(data_dir, name, entry["file_name"]):
            for line, _, value, error in iter_rows(path, "json", hashlib.sha256()):
                where = f"{path}:{line}" if line else str(path)
                if error:
                    errors.append(f"{where}: {error}")
                elif not isinstance(value, dict):
                    errors.append(f"{where}: a row must be a JSON object, got {type(value).__name__}")
                else:
                    rows.append(TestRow(name, row_key(value, spec), str(path), line, value))
        if len(rows) == before and not errors:
            errors.append(f"dataset {name!r}: {data_dir / entry['file_name']} holds no row")
    raise_if_errors(errors, "the held-out data cannot be read")
    return entries, rows


@dataclass(frozen=True)
class LlamaFactoryEncoding:
    """LLaMA-Factory's pieces that encode rows as SFT training does: the fixed tokenizer (a copy), the template,
    the data arguments (template and cutoff, the rest at LLaMA-Factory's defaults) and each entry's converter."""

    tokenizer: Any
    template: Any
    data_args: Any
    converters: dict[str, Any]


def llamafactory_encoding(tokenizer: Any, entries: dict[str, dict[str, Any]], *, template: str,
                          cutoff_len: int) -> LlamaFactoryEncoding:
    """The template, fixed tokenizer and converters with which training encodes the rows of ``entries``.

    Raises:
        TaskDataError: the template is unknown.
        ValueError: ``cutoff_len`` is below 1.
    """
    from llamafactory.data.converter import get_dataset_converter
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.data.template import TEMPLATES, get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments

    if cutoff_len < 1:
        raise ValueError(f"cutoff_len must be >= 1, got {cutoff_len}")
    if template not in TEMPLATES:
        raise TaskDataError(f"template {template!r} is not a LLaMA-Factory template")
    data_args = DataArguments(template=template, cutoff_len=cutoff_len)
    tokenizer = copy.deepcopy(tokenizer)  # fixing adds pad/eos/stop tokens; the caller's stays as loaded
    lf_template = get_template_and_fix_tokenizer(tokenizer, data_args)
    converters = {name: get_dataset_converter(attr.formatting, attr, data_args)
                  for name, attr in zip(entries, get_dataset_list(list(entries), entries), strict=True)}
    return LlamaFactoryEncoding(tokenizer, lf_template, data_args, converters)


class LlamaFactoryRow(dict):
    """A row whose missing columns read as None, as in the Arrow table LLaMA-Factory's loader builds."""

    def __missing__(self, key: str) -> None:
        return None


def encode_rows(tokenizer: Any, entries: dict[str, dict[str, Any]], rows: list[TestRow], *, template: str,
                cutoff_len: int) -> list[EncodedExample]:
    """Encode rows as LLaMA-Factory's SFT training does (converter, template, supervised processor).

    Raises:
        TaskDataError: the template is unknown, or rows the trainer would drop as invalid (named by
            file and line: e.g. a conversation that does not alternate user/assistant).
        ValueError: ``cutoff_len`` is below 1.
    """
    from llamafactory.data.processor import SupervisedDatasetProcessor

    encoding = llamafactory_encoding(tokenizer, entries, template=template, cutoff_len=cutoff_len)
    processor = SupervisedDatasetProcessor(template=encoding.template, tokenizer=encoding.tokenizer, processor=None,
                                           data_args=encoding.data_args)
    converters = encoding.converters
    examples, errors = [], []
    for row in rows:
        try:
            aligned = converters[row.dataset](LlamaFactoryRow(row.row))
            encoded = processor.preprocess_dataset({column: [value] for column, value in aligned.items()})
        except (KeyError, TypeError, AttributeError, ValueError, RuntimeError) as exc:  # what LF raises on bad rows
            errors.append(f"{row.file}:{row.line}: LLaMA-Factory cannot encode this row ({type(exc).__name__}: "
                          f"{exc})")
            continue
        if not encoded["input_ids"]:
            errors.append(f"{row.file}:{row.line}: LLaMA-Factory drops this row as invalid (it needs user/assistant "
                          f"turns in order ending with an answer); fix it or remove it")
            continue
        examples.append(EncodedExample(row.dataset, row.key, encoded["input_ids"][0], encoded["labels"][0]))
    raise_if_errors(errors, "held-out rows that training would not accept")
    return examples


def encode_examples(tokenizer: Any, data_dir: str | Path, names: list[str], template: str,
                    cutoff_len: int) -> list[EncodedExample]:
    """Read the named entries of ``data_dir`` and encode every row; see :func:`encode_rows`.

    Raises:
        TaskDataError: the data cannot be read or a row cannot be encoded (file and line named).
        ValueError: ``cutoff_len`` is below 1.
    """
    entries, rows = read_test_rows(data_dir, names)
    return encode_rows(tokenizer, entries, rows, template=template, cutoff_len=cutoff_len)
