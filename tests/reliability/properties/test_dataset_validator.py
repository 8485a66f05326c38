"""Property-based tests (hypothesis) of the dataset validator (``components.data.validation.validate_datasets``).

Whatever the file holds, ``validate_datasets`` returns a result and never raises (problems are data, its documented
contract); every problem names the file, a row inside the file and, unless the row as a whole is not an object, the
field; rows built valid get no problem; the row count is the number of rows written; and the file hash is the
sha256 of the bytes on disk. Generated: random alpaca rows, valid and not; sharegpt conversations; rows that are not
JSON objects; JSON Lines files with garbage lines between good ones; arbitrary bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.data.checks import Problem
from components.data.result import ValidationResult
from components.data.validation import validate_datasets

# --- random alpaca rows -----------------------------------------------------------------------------------------

PROBLEM_LINE = re.compile(r"^(?P<file>[^:]+):(?P<row>\d+): field '(?P<field>[^']+)': .+")
_row_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
_field_junk = st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.booleans(),
                        st.lists(st.integers(), max_size=2),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), _row_text)
_valid_row = st.fixed_dictionaries(
    {"instruction": _row_text.filter(lambda t: t.strip() != ""), "output": _row_text.filter(lambda t: t.strip() != "")},
    optional={"input": _row_text, "system": _row_text.filter(lambda t: t.strip() != "")},
)
_any_row = st.one_of(
    _valid_row,
    st.fixed_dictionaries({"instruction": _field_junk, "output": _field_junk},
                          optional={"input": _field_junk, "history": _field_junk}),
    st.dictionaries(st.sampled_from(["instruction", "input", "output", "system", "history"]), _field_junk, max_size=5),
)


def _write(directory: Path, rows: list, jsonl: bool) -> Path:
    name = "rows.jsonl" if jsonl else "rows.json"
    text = "".join(json.dumps(row) + "\n" for row in rows) if jsonl else json.dumps(rows, indent=1)
    (directory / name).write_text(text, encoding="utf-8")
    (directory / "dataset_info.json").write_text(json.dumps({"prop": {"file_name": name}}))
    return directory / name


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(_any_row, min_size=1, max_size=12), jsonl=st.booleans())
def test_every_problem_names_file_row_and_field(rows, jsonl):
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        path = _write(directory, rows, jsonl)
        result = validate_datasets(directory, ["prop"], cutoff_len=2048, max_errors=1000)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert result.rows == len(rows)
    assert result.datasets[0].files[0].sha256 == digest
    for problem in result.problems:
        match = PROBLEM_LINE.match(str(problem))
        assert match, str(problem)
        assert match["file"] == path.name
        assert 1 <= int(match["row"]) <= len(rows)
    assert result.invalid_rows <= len(rows)
    assert result.ok == (result.problem_count == 0)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(_valid_row, min_size=1, max_size=12), jsonl=st.booleans())
def test_valid_rows_give_no_problems_and_a_stable_hash(rows, jsonl):
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        path = _write(directory, rows, jsonl)
        first = validate_datasets(directory, ["prop"], cutoff_len=2048)
        again = validate_datasets(directory, ["prop"], cutoff_len=2048)
        path.write_bytes(path.read_bytes() + b" ")  # one more byte: a new version
        changed = validate_datasets(directory, ["prop"], cutoff_len=2048)
    assert first.ok, [str(problem) for problem in first.problems]
    assert (first.rows, first.invalid_rows) == (len(rows), 0)
    assert first.combined_sha256 == again.combined_sha256
    assert changed.combined_sha256 != first.combined_sha256


# --- sharegpt conversations, rows that are not objects, garbage lines, arbitrary bytes -----------------------

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)  # any unicode but surrogates
_content = _text.filter(lambda text: text.strip() != "")
_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), _text)
_junk = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.dictionaries(_text, inner, max_size=3)), max_leaves=6)
_not_object = st.one_of(_scalar, st.lists(_junk, max_size=3))

# sharegpt with LLaMA-Factory's default tags: optional system message, then human/gpt turns, gpt last.
_turn_pair = st.tuples(_content, _content).map(
    lambda pair: [{"from": "human", "value": pair[0]}, {"from": "gpt", "value": pair[1]}])
_valid_conversation = st.builds(
    lambda system, pairs: {"conversations": ([{"from": "system", "value": system}] if system else [])
                           + [turn for pair in pairs for turn in pair]},
    st.one_of(st.none(), _content), st.lists(_turn_pair, min_size=1, max_size=3))
_message = st.one_of(
    st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "system", "observation", "function_call",
                                                    "user", "assistant"]), "value": st.one_of(_text, _junk)}),
    st.dictionaries(st.sampled_from(["from", "value", "role", "content"]), _junk, max_size=3),
    _junk,
)
_bad_conversation = st.one_of(
    st.fixed_dictionaries({"conversations": st.lists(_message, max_size=5)}),
    st.fixed_dictionaries({"conversations": _junk}),
    st.dictionaries(st.sampled_from(["conversations", "messages", "system", "tools"]), _junk, max_size=3),
)
_valid_alpaca = st.fixed_dictionaries({"instruction": _content, "output": _content}, optional={"input": _text})


def _validate(directory: Path, name: str, data: bytes, entry: dict) -> tuple[ValidationResult, str]:
    """Write ``data`` as the dataset file ``name`` and validate it; the result and the file's sha256."""
    (directory / name).write_bytes(data)
    (directory / "dataset_info.json").write_text(json.dumps({"prop": {"file_name": name, **entry}}))
    result = validate_datasets(directory, ["prop"], cutoff_len=4096, max_errors=10_000)
    return result, hashlib.sha256(data).hexdigest()


def _encode(rows: list, jsonl: bool) -> bytes:
    text = "".join(json.dumps(row) + "\n" for row in rows) if jsonl else json.dumps(rows, indent=1)
    return text.encode("utf-8")


def _check_problem_shape(problems: list[Problem], file_name: str, rows: list) -> None:
    """FILE:ROW: field 'NAME': ... for a row that is an object; FILE:ROW: ... when the row itself is wrong."""
    for problem in problems:
        text = str(problem)
        assert problem.file == file_name and text.startswith(f"{file_name}:{problem.row}: "), text
        assert 1 <= problem.row <= len(rows), text
        if isinstance(rows[problem.row - 1], dict):
            assert problem.field and f"field '{problem.field}': " in text, text


@SETTINGS
@given(rows=st.lists(st.one_of(_valid_conversation, _bad_conversation, _not_object), min_size=1, max_size=10),
       valid=st.lists(_valid_conversation, min_size=1, max_size=4), jsonl=st.booleans())
def test_sharegpt_rows_valid_and_not(rows, valid, jsonl):
    # Valid conversations go first so a JSON Lines file starts with an object (else the file is refused whole).
    rows = valid + rows
    with tempfile.TemporaryDirectory() as tmp:
        name = "conv.jsonl" if jsonl else "conv.json"
        result, digest = _validate(Path(tmp), name, _encode(rows, jsonl), {"formatting": "sharegpt"})
    assert result.rows == len(rows)
    assert result.datasets[0].files[0].sha256 == digest
    _check_problem_shape(result.problems, name, rows)
    assert not [problem for problem in result.problems if problem.row <= len(valid)], "a valid conversation failed"
    assert result.invalid_rows == len({problem.row for problem in result.problems})


@SETTINGS
@given(rows=st.lists(st.one_of(_valid_alpaca, _not_object), min_size=1, max_size=12))
def test_alpaca_array_with_rows_that_are_not_objects(rows):
    with tempfile.TemporaryDirectory() as tmp:
        result, digest = _validate(Path(tmp), "rows.json", _encode(rows, jsonl=False), {})
    assert result.rows == len(rows)
    assert result.datasets[0].files[0].sha256 == digest
    _check_problem_shape(result.problems, "rows.json", rows)
    not_objects = {number for number, row in enumerate(rows, 1) if not isinstance(row, dict)}
    assert {problem.row for problem in result.problems} == not_objects
    assert result.invalid_rows == len(not_objects)


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


_garbage_line = _text.filter(lambda text: text.strip() != "" and "\n" not in text and not _is_json_object(text))


@SETTINGS
@given(first=_valid_alpaca, rest=st.lists(st.one_of(_valid_alpaca.map(json.dumps), _garbage_line), max_size=12))
def test_jsonl_garbage_lines_are_named_by_line_number(first, rest):
    lines = [json.dumps(first), *rest]
    with tempfile.TemporaryDirectory() as tmp:
        result, digest = _validate(Path(tmp), "rows.jsonl", ("\n".join(lines) + "\n").encode("utf-8"), {})
    garbage = {number for number, line in enumerate(lines, 1) if not _is_json_object(line)}
    assert result.rows == len(lines)
    assert result.datasets[0].files[0].sha256 == digest
    assert {problem.row for problem in result.problems} == garbage  # exactly the bad lines, each by number
    assert result.invalid_rows == len(garbage)
    assert all(str(problem).startswith(f"rows.jsonl:{problem.row}: ") for problem in result.problems)
    assert result.ok == (not garbage)


@SETTINGS
@given(data=st.one_of(st.binary(max_size=300),
                      st.tuples(st.sampled_from([b"[", b"{", b'[{"instruction": "', b"\xef\xbb\xbf[", b" \n"]),
                                st.binary(max_size=200)).map(b"".join)),
       extension=st.sampled_from(["json", "jsonl", "csv"]))
def test_arbitrary_bytes_never_crash_and_hash_the_whole_file(data, extension):
    with tempfile.TemporaryDirectory() as tmp:
        result, digest = _validate(Path(tmp), f"blob.{extension}", data, {})
    assert result.datasets[0].files[0].sha256 == digest
    assert all(problem.file == f"blob.{extension}" for problem in result.problems)
    assert result.rows >= result.invalid_rows >= 0
    if not result.ok:
        assert result.failure_message().count("blob.") >= 1
