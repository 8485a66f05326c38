"""Describe a dataset the way LLaMA-Factory does, then check its rows one by one.

First :func:`describe_entry` reads one entry of ``dataset_info.json`` exactly as LLaMA-Factory's
``DatasetAttr.join`` does (``file_name``, ``formatting``, ``ranking``, ``columns``, ``tags``),
including its surprises: once ``columns`` (or ``tags``) is given, every column (tag) it does not
list is *unset*, not defaulted. Then :func:`make_row_checker` returns the per-row checker for that
format (alpaca or sharegpt), which reports each problem of one row as ``(field, message)``.

The checkers enforce what LLaMA-Factory's converters need (``data/converter.py``): a non-empty
instruction and output for alpaca; for sharegpt an optional leading system message, then
human/observation on odd turns and gpt/function_call on even turns, an even number of turns
(odd for ranking), and chosen/rejected answers for ranking datasets. LLaMA-Factory itself only
logs "Skipping this abnormal example" for such rows and trains on what is left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DATA_CONFIG = "dataset_info.json"  # where LLaMA-Factory reads what each dataset is
SUPPORTED_FORMATS = ("alpaca", "sharegpt")
# LLaMA-Factory's DatasetAttr defaults, used only when the entry has no "columns" ("tags") key at all.
COLUMN_DEFAULTS: dict[str, str | None] = {
    "prompt": "instruction", "query": "input", "response": "output", "history": None,
    "messages": "conversations", "system": None, "tools": None, "images": None, "videos": None,
    "audios": None, "chosen": None, "rejected": None, "kto_tag": None,
}
TAG_DEFAULTS: dict[str, str | None] = {
    "role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
    "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system",
}
ENTRY_KEYS = {"file_name", "formatting", "ranking", "columns", "tags", "subset", "split", "folder", "num_samples",
              "file_sha1"}
REMOTE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
MEDIA_COLUMNS = ("images", "videos", "audios")

# (field, message): one problem of one row; field None means the row as a whole.
RowIssue = tuple[str | None, str]
# What a checker returns for a row: problems, the (field, text) pieces the model reads, the system prompt.
RowReport = tuple[list[RowIssue], list[tuple[str, str]], str | None]


@dataclass(frozen=True)
class Problem:
    """One finding, printed as ``FILE:ROW: field 'NAME': what is wrong`` (ROW and field when known)."""

    file: str
    row: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if not self.row else f"{self.file}:{self.row}"
        return f"{where}: field '{self.field}': {self.message}" if self.field else f"{where}: {self.message}"


@dataclass
class DatasetSpec:
    """What one dataset_info.json entry says: where the data is and how LLaMA-Factory reads it."""

    name: str
    file_name: str
    formatting: str
    ranking: bool
    columns: dict[str, str | None]
    tags: dict[str, str | None]
    entry: dict[str, Any] = field(default_factory=dict)


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (for messages)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _string_map(entry: dict, key: str, known: dict[str, str | None], source: str, name: str,
                problems: list[Problem]) -> dict[str, str | None]:
    """LLaMA-Factory's set_attr over a "columns"/"tags" object: listed names set, the rest unset."""
    if key not in entry:
        return dict(known)
    value = entry[key]
    if not isinstance(value, dict):
        problems.append(Problem(source, None, f"{name}.{key}", f"must be an object, got {json_type(value)}"))
        return dict(known)
    for item, target in value.items():
        if item not in known:
            problems.append(Problem(source, None, f"{name}.{key}.{item}",
                                    f"unknown {key[:-1]} name; LLaMA-Factory reads only {', '.join(known)}"))
        elif not isinstance(target, str) or not target:
            problems.append(Problem(source, None, f"{name}.{key}.{item}",
                                    f"must be a non-empty string, got {json_type(target)}"))
    return {item: value.get(item) if isinstance(value.get(item), str) else None for item in known}


def describe_entry(name: str, info: Any, source: str = "dataset_info.json") -> tuple[DatasetSpec | None, list[Problem]]:
    """Read the entry ``name`` of a parsed dataset_info.json as LLaMA-Factory does.

    Returns the spec (None when the entry cannot be used at all) and the problems found, each naming
    the field path inside dataset_info.json (e.g. ``alpaca_sample.columns.prompt``).
    """
    if not isinstance(info, dict):
        return None, [Problem(source, None, None, f"must be a JSON object of dataset entries, got {json_type(info)}")]
    if name not in info:
        defined = ", ".join(sorted(info)) or "none"
        return None, [Problem(source, None, name, f"undefined dataset (defined: {defined})")]
    entry = info[name]
    if not isinstance(entry, dict):
        return None, [Problem(source, None, name, f"must be an object, got {json_type(entry)}")]
    remote = [key for key in REMOTE_KEYS if key in entry]
    if remote:
        return None, [Problem(source, None, f"{name}.{remote[0]}", "remote datasets cannot be validated or trained "
                              "on offline; copy the files into the data directory and set file_name")]
    problems: list[Problem] = []
    for key in sorted(set(entry) - ENTRY_KEYS):
        expected = ", ".join(sorted(ENTRY_KEYS))
        problems.append(Problem(source, None, f"{name}.{key}", f"unknown key; expected one of {expected}"))
    file_name = entry.get("file_name")
    if not isinstance(file_name, str) or not file_name.strip():
        what = "is missing" if file_name is None else f"must be a non-empty string, got {json_type(file_name)}"
        problems.append(Problem(source, None, f"{name}.file_name", what))
        file_name = ""
    formatting = entry.get("formatting", "alpaca")
    if formatting not in SUPPORTED_FORMATS:
        problems.append(Problem(source, None, f"{name}.formatting",
                                f"must be one of {', '.join(SUPPORTED_FORMATS)}, got {formatting!r}"))
    ranking = entry.get("ranking", False)
    if not isinstance(ranking, bool):
        problems.append(Problem(source, None, f"{name}.ranking", f"must be true or false, got {json_type(ranking)}"))
        ranking = False
    if entry.get("split", "train") != "train":
        problems.append(Problem(source, None, f"{name}.split", "local files have only the 'train' split"))
    samples = entry.get("num_samples")
    if samples is not None and (not isinstance(samples, int) or isinstance(samples, bool) or samples < 1):
        problems.append(Problem(source, None, f"{name}.num_samples", f"must be a positive integer, got {samples!r}"))
    columns = _string_map(entry, "columns", COLUMN_DEFAULTS, source, name, problems)
    tags = _string_map(entry, "tags", TAG_DEFAULTS, source, name, problems)
    spec = DatasetSpec(name, file_name, str(formatting), ranking, columns, tags, entry)
    problems += _needed_columns(spec, source)
    return spec, problems


def _needed_columns(spec: DatasetSpec, source: str) -> list[Problem]:
    """Columns and tags the format needs but the entry leaves unset (an explicit "columns" unsets the rest)."""
    needed = {"alpaca": ["prompt"], "sharegpt": ["messages"]}.get(spec.formatting, [])
    needed += ["chosen", "rejected"] if spec.ranking else (["response"] if spec.formatting == "alpaca" else [])
    problems = [
        Problem(source, None, f"{spec.name}.columns.{column}",
                f"is not set: once 'columns' is given LLaMA-Factory reads only the columns it lists; add "
                f"\"{column}\": \"{COLUMN_DEFAULTS[column] or column}\"")
        for column in needed if not spec.columns.get(column)
    ]
    if spec.formatting == "sharegpt":
        problems += [
            Problem(source, None, f"{spec.name}.tags.{tag}",
                    f"is not set: once 'tags' is given LLaMA-Factory reads only the tags it lists; add "
                    f"\"{tag}\": \"{TAG_DEFAULTS[tag]}\"")
            for tag in ("role_tag", "content_tag", "user_tag", "assistant_tag") if not spec.tags.get(tag)
        ]
    problems += [
        Problem(source, None, f"{spec.name}.columns.{column}", "media datasets are not supported (text-only pipeline)")
        for column in MEDIA_COLUMNS if spec.columns.get(column)
    ]
    return problems


def _bad_value(value: Any, present: bool, what: str = "a non-empty string") -> str:
    if not present:
        return f"is missing; must be {what}"
    if isinstance(value, str):
        return "is empty" if not value else "is blank (only whitespace)"
    return f"must be {what}, got {json_type(value)}"


def _missing_hint(row: dict, column: str, mapped: set[str]) -> str:
    """For a missing column, name the keys the row has that no column maps (a typo or an unmapped name)."""
    unmapped = ", ".join(repr(key) for key in row if key not in mapped)
    return f" (row has unmapped keys {unmapped}; map them in dataset_info.json)" if unmapped else ""


def make_row_checker(spec: DatasetSpec) -> Callable[[Any], RowReport]:
    """The checker for one row of ``spec``'s format: returns (problems, texts, system prompt or None).

    Raises:
        ValueError: the spec's formatting is not alpaca or sharegpt (describe_entry reports that first).
    """
    if spec.formatting == "alpaca":
        return _objects_only(_alpaca_checker(spec))
    if spec.formatting == "sharegpt":
        return _objects_only(_sharegpt_checker(spec))
    raise ValueError(f"no row checker for formatting {spec.formatting!r}")


def _objects_only(check: Callable[[dict[str, Any]], RowReport]) -> Callable[[Any], RowReport]:
    """``check``, for rows that are JSON objects; any other row is one problem, named by its JSON type."""
    def checked(row: Any) -> RowReport:
        if type(row) is not dict:
            return [(None, f"row must be a JSON object, got {json_type(row)}")], [], None
        return check(row)

    return checked


def _alpaca_checker(spec: DatasetSpec) -> Callable[[dict[str, Any]], RowReport]:
    columns = spec.columns
    prompt, query, history, system = columns["prompt"], columns["query"], columns["history"], columns["system"]
    answers = [columns["chosen"], columns["rejected"]] if spec.ranking else [columns["response"]]
    kto_tag, tools = columns["kto_tag"], columns["tools"]
    required = tuple(column for column in (prompt, *answers) if column)  # unset ones: an entry problem
    mapped = {name for name in columns.values() if name}

    def check(row: dict[str, Any]) -> RowReport:
        problems: list[RowIssue] = []
        texts: list[tuple[str, str]] = []
        for column in required:
            value = row.get(column)
            if type(value) is str and value and not value.isspace():
                texts.append((column, value))
            else:
                hint = "" if column in row else _missing_hint(row, column, mapped)
                problems.append((column, _bad_value(value, column in row) + hint))
        if query:
            value = row.get(query)
            if type(value) is str:
                if value:
                    texts.append((query, value))
            elif value is not None:
                problems.append((query, f"must be a string, got {json_type(value)}"))
        if history and row.get(history) is not None:
            _check_history(row[history], history, problems, texts)
        system_prompt = None
        if system and row.get(system) is not None:
            system_prompt = row[system]
            if type(system_prompt) is not str:
                problems.append((system, f"must be a string, got {json_type(system_prompt)}"))
                system_prompt = None
            elif system_prompt:
                texts.append((system, system_prompt))  # the model reads it: length and contamination count it
        if kto_tag and row.get(kto_tag) is not None and type(row[kto_tag]) is not bool:
            problems.append((kto_tag, f"must be true or false, got {json_type(row[kto_tag])}"))
        if tools and row.get(tools) is not None and type(row[tools]) is not str:
            problems.append((tools, f"must be a string (JSON of the tool list), got {json_type(row[tools])}"))
        return problems, texts, system_prompt

    return check


def _check_history(value: Any, column: str, problems: list[RowIssue], texts: list[tuple[str, str]]) -> None:
    """Alpaca history: a list of [instruction, response] string pairs."""
    if type(value) is not list:
        problems.append((column, f"must be a list of [instruction, response] pairs, got {json_type(value)}"))
        return
    for index, pair in enumerate(value):
        where = f"{column}[{index}]"
        if type(pair) is not list or len(pair) != 2:
            size = f"{len(pair)} items" if type(pair) is list else json_type(pair)
            problems.append((where, f"must be an [instruction, response] pair, got {size}"))
        elif not all(type(part) is str for part in pair):
            problems.append((where, f"both items must be strings, got {json_type(pair[0])}, {json_type(pair[1])}"))
        else:
            texts.append((where, pair[0]))
            texts.append((where, pair[1]))


def _sharegpt_checker(spec: DatasetSpec) -> Callable[[dict[str, Any]], RowReport]:
    columns, tags = spec.columns, spec.tags
    messages_column, system_column, tools = columns["messages"], columns["system"], columns["tools"]
    role_tag, content_tag, system_tag = tags["role_tag"], tags["content_tag"], tags["system_tag"]
    user, assistant = tags["user_tag"], tags["assistant_tag"]
    odd_roles = tuple(tag for tag in (user, tags["observation_tag"]) if tag)
    even_roles = tuple(tag for tag in (assistant, tags["function_tag"]) if tag)
    accepted = (odd_roles, even_roles)
    known_roles = set(odd_roles + even_roles + ((system_tag,) if system_tag else ()))
    ranking, chosen, rejected = spec.ranking, columns["chosen"], columns["rejected"]
    mapped = {name for name in columns.values() if name}

    def check(row: dict[str, Any]) -> RowReport:
        problems: list[RowIssue] = []
        texts: list[tuple[str, str]] = []
        messages = row.get(messages_column)
        if type(messages) is not list or not messages:
            what = "a non-empty list of messages"
            hint = "" if messages_column in row else _missing_hint(row, messages_column, mapped)
            message = "is an empty list" if messages == [] else _bad_value(messages, messages_column in row, what)
            return [(messages_column, message + hint)], texts, None
        start, system_prompt = 0, None
        first = messages[0]
        if system_tag and type(first) is dict and first.get(role_tag) == system_tag:
            start, system_prompt = 1, first.get(content_tag)
            if type(system_prompt) is not str:
                problems.append((f"{messages_column}[0].{content_tag}",
                                 f"must be a string, got {json_type(system_prompt)}"))
                system_prompt = None
            elif system_prompt:
                texts.append((f"{messages_column}[0].{content_tag}", system_prompt))  # read by the model too
        elif system_column and row.get(system_column) is not None:
            system_prompt = row[system_column]
            if type(system_prompt) is not str:
                problems.append((system_column, f"must be a string, got {json_type(system_prompt)}"))
                system_prompt = None
            elif system_prompt:
                texts.append((system_column, system_prompt))
        for turn, message in enumerate(messages[start:]):
            where = f"{messages_column}[{start + turn}]"
            if type(message) is not dict:
                problems.append((where, f"must be an object with '{role_tag}' and '{content_tag}', "
                                        f"got {json_type(message)}"))
                return problems, texts, system_prompt
            role = message.get(role_tag)
            expected = accepted[turn % 2]
            if role not in expected:
                problems.append((f"{where}.{role_tag}", _role_problem(role, role_tag in message, turn, expected,
                                                                      known_roles, system_tag)))
                return problems, texts, system_prompt
            content = message.get(content_tag)
            if type(content) is not str:
                problems.append((f"{where}.{content_tag}", _bad_value(content, content_tag in message, "a string")))
            elif role in (user, assistant) and (not content or content.isspace()):
                problems.append((f"{where}.{content_tag}", f"is empty in a '{role}' turn"))
            else:
                texts.append((f"{where}.{content_tag}", content))
        turns = len(messages) - start
        if turns == 0:
            problems.append((messages_column, "has only a system message; it needs user and assistant turns"))
        elif not ranking and turns % 2:
            problems.append((messages_column, f"has {turns} turns after the system prompt; it must end with a "
                                              f"'{assistant}' turn (an even number of turns)"))
        elif ranking:
            if turns % 2 == 0:
                problems.append((messages_column, f"has {turns} turns; a ranking conversation ends with a "
                                                  f"'{user}' turn (an odd number), answered by chosen/rejected"))
            for column in (chosen, rejected):
                _check_ranked_answer(row, column, role_tag, content_tag, even_roles, problems, texts)
        if tools and row.get(tools) is not None and type(row[tools]) is not str:
            problems.append((tools, f"must be a string (JSON of the tool list), got {json_type(row[tools])}"))
        return problems, texts, system_prompt

    return check


def _role_problem(role: Any, present: bool, turn: int, expected: tuple[str, ...], known: set[str],
                  system_tag: str | None) -> str:
    names = " or ".join(repr(tag) for tag in expected)
    if not present:
        return f"is missing; turn {turn + 1} must be {names}"
    if role == system_tag:
        return "a system message is only allowed as the first message"
    if type(role) is str and role in known:  # a role may be any JSON value; a list or object is not hashable
        return (f"role {role!r} out of order: turn {turn + 1} must be {names} (user/observation on odd turns, "
                "assistant/function on even turns)")
    return f"unknown role {role!r}; turn {turn + 1} must be {names} (roles come from 'tags' in dataset_info.json)"


def _check_ranked_answer(row: dict, column: str, role_tag: str, content_tag: str, even_roles: tuple[str, ...],
                         problems: list[RowIssue], texts: list[tuple[str, str]]) -> None:
    """A sharegpt ranking answer: an object with an assistant/function role and non-empty content."""
    answer = row.get(column)
    if type(answer) is not dict:
        problems.append((column, _bad_value(answer, column in row, f"an object with '{role_tag}' and '{content_tag}'")))
        return
    if answer.get(role_tag) not in even_roles:
        names = " or ".join(map(repr, even_roles))
        problems.append((f"{column}.{role_tag}", f"must be {names}, got {answer.get(role_tag)!r}"))
    content = answer.get(content_tag)
    if type(content) is str and content and not content.isspace():
        texts.append((f"{column}.{content_tag}", content))
    else:
        problems.append((f"{column}.{content_tag}", _bad_value(content, content_tag in answer)))
