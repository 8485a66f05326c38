"""How a row is keyed: what the trainer sees of it, which *example* it is a copy of, and its key.

Two rows are the same to the trainer when their contents agree after LLaMA-Factory's column mapping (the
entry's ``formatting``, ``columns`` and ``tags``) and normalisation (:func:`normalise`): text in Unicode NFC,
leading and trailing whitespace dropped, every run of whitespace read as one space, a missing field the same as
an empty one. Columns the entry does not map (an ``id``) are never seen.

- :func:`conversation`: the row as the trainer sees it: system prompt, tools and the turns as (role, text), an
  alpaca row's history first and its prompt and query joined, as LLaMA-Factory's converters build them.
- :func:`example_key`: the example a row is a copy of: its first user turn and that turn's answer. System-prompt
  variants, multi-turn extensions of an exchange, and copies in another dataset or format (alpaca and sharegpt)
  all share it.
- :func:`row_key`: 32 hex digits: the example key's 16, then 16 of the row's whole content. The split reads a
  row's side from the first 16 (:func:`components.data.split.key_position`), so every row of one example lands on
  one side; per-row scores pair up by the whole key.

Changing any of this changes every key: bump :data:`KEY_SCHEME`, which every key and split hash includes.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from typing import Any, NamedTuple

from components.data.checks import DatasetSpec, describe_entry

# Part of every key: changing how rows are keyed (or split) must change every key, never reuse one.
KEY_SCHEME = "llmft-split-v2"
EXAMPLE_HEX_CHARS = 16  # 64 bits: the example's position in [0, 1)
KEY_HEX_CHARS = 32  # the example's 16, then 16 of the row's content


class Conversation(NamedTuple):
    """A row as the trainer sees it, normalised."""

    system: str
    tools: str
    turns: tuple[tuple[str, str], ...]  # (LLaMA-Factory role, text), system prompt excluded


def entry_spec(name: str, entry: dict[str, Any]) -> DatasetSpec:
    """How LLaMA-Factory reads the dataset_info.json entry ``entry`` of dataset ``name`` (:func:`describe_entry`).

    Raises:
        ValueError: the entry is not a JSON object.
    """
    spec, _ = describe_entry(name, {name: entry})  # its problems are validation's to report
    if spec is None:
        raise ValueError(f"dataset {name!r}: the dataset_info.json entry must be a JSON object")
    return spec


def normalise(value: Any) -> str:
    """Text as the key reads it: NFC, whitespace runs as one space, stripped; None (a missing field) is ``""``."""
    if value is None:
        return ""
    if not isinstance(value, str):  # validation admits only strings here; anything else keys by its JSON
        value = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return " ".join(unicodedata.normalize("NFC", value).split())  # split(): every run of Unicode whitespace


def conversation(row: dict[str, Any], spec: DatasetSpec) -> Conversation:
    """What LLaMA-Factory's converter makes of ``row`` under ``spec`` (alpaca; sharegpt and openai), normalised."""
    columns = spec.columns
    system = normalise(row.get(columns["system"])) if columns["system"] else ""
    tools = normalise(row.get(columns["tools"])) if columns["tools"] else ""
    if spec.formatting == "alpaca":
        turns = _alpaca_turns(row, columns, spec.ranking)
    else:
        system, turns = _sharegpt_turns(row, spec, system)
    return Conversation(system, tools, tuple(turns))


def _alpaca_turns(row: dict[str, Any], columns: dict[str, str | None], ranking: bool) -> list[tuple[str, str]]:
    turns = []
    history = row.get(columns["history"]) if columns["history"] else None
    for pair in history if isinstance(history, list) else []:
        if isinstance(pair, list) and len(pair) == 2:
            turns += [("user", normalise(pair[0])), ("assistant", normalise(pair[1]))]
    # LLaMA-Factory joins prompt and query with a newline, which normalisation reads as a space.
    parts = [normalise(row.get(column)) for column in (columns["prompt"], columns["query"]) if column]
    turns.append(("user", " ".join(part for part in parts if part)))
    for column in (columns["chosen"], columns["rejected"]) if ranking else (columns["response"],):
        if column:
            turns.append(("assistant", normalise(row.get(column))))
    return turns


def _sharegpt_turns(row: dict[str, Any], spec: DatasetSpec, system: str) -> tuple[str, list[tuple[str, str]]]:
    tags = spec.tags
    role_tag, content_tag = tags["role_tag"], tags["content_tag"]
    roles = {tag: role for tag, role in ((tags["user_tag"], "user"), (tags["assistant_tag"], "assistant"),
                                         (tags["observation_tag"], "observation"), (tags["function_tag"], "function"))
             if tag}
    messages = row.get(spec.columns["messages"]) if spec.columns["messages"] else None
    messages = [message for message in messages if isinstance(message, dict)] if isinstance(messages, list) else []
    if messages and tags["system_tag"] and messages[0].get(role_tag) == tags["system_tag"]:
        system, messages = normalise(messages[0].get(content_tag)), messages[1:]
    turns = []
    for message in messages:
        role = message.get(role_tag)
        turns.append((roles.get(role, normalise(role)) if isinstance(role, str) else normalise(role),
                      normalise(message.get(content_tag))))
    for column in (spec.columns["chosen"], spec.columns["rejected"]) if spec.ranking else ():
        answer = row.get(column) if column else None
        turns.append(("assistant", normalise(answer.get(content_tag) if isinstance(answer, dict) else answer)))
    return system, turns


def example_of(row: dict[str, Any], spec: DatasetSpec) -> tuple[str, str]:
    """The row's example: its first user turn and that turn's answer, normalised (``""`` when missing)."""
    return _example(conversation(row, spec))


def _example(seen: Conversation) -> tuple[str, str]:
    return (seen.turns[0][1] if seen.turns else "", seen.turns[1][1] if len(seen.turns) > 1 else "")


def _digest(kind: str, texts: list[str]) -> str:
    """sha256 hex of normalised ``texts`` (no newline survives normalisation, so newline-joined lists differ)."""
    return hashlib.sha256("\n".join([KEY_SCHEME, kind, *texts]).encode("utf-8", "surrogatepass")).hexdigest()


def example_key(row: dict[str, Any], spec: DatasetSpec) -> str:
    """The example's key (16 hex digits): every copy of the example has it, whatever its system prompt,
    later turns, dataset or format."""
    return _digest("example", list(example_of(row, spec)))[:EXAMPLE_HEX_CHARS]


def row_key(row: dict[str, Any], spec: DatasetSpec) -> str:
    """The row's key (32 hex digits): :func:`example_key`, then 16 hex digits of everything the trainer sees.

    Rows the trainer cannot tell apart (an unmapped ``id``, a trailing space, a missing versus an empty
    ``input``) have one key.
    """
    return key_of(conversation(row, spec))


def key_of(seen: Conversation) -> str:
    """:func:`row_key` of a row whose :func:`conversation` is ``seen``."""
    content = [seen.system, seen.tools, *(part for turn in seen.turns for part in turn)]
    return (_digest("example", list(_example(seen)))[:EXAMPLE_HEX_CHARS]
            + _digest("row", content)[:KEY_HEX_CHARS - EXAMPLE_HEX_CHARS])
