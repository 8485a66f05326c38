"""Property-based tests (hypothesis) of the dataset validator on random alpaca rows, valid and not.

Whatever the rows hold, the validator returns a result (it never crashes), every problem names the
file, a row inside the file and a field, valid files have no problems, row counts match what was
written, and the file hash is the sha256 of the bytes on disk.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.data.validation import validate_datasets

PROBLEM_LINE = re.compile(r"^(?P<file>[^:]+):(?P<row>\d+): field '(?P<field>[^']+)': .+")
_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
_junk = st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.booleans(),
                  st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                  _text)
_valid_row = st.fixed_dictionaries(
    {"instruction": _text.filter(lambda t: t.strip() != ""), "output": _text.filter(lambda t: t.strip() != "")},
    optional={"input": _text, "system": _text.filter(lambda t: t.strip() != "")},
)
_any_row = st.one_of(
    _valid_row,
    st.fixed_dictionaries({"instruction": _junk, "output": _junk}, optional={"input": _junk, "history": _junk}),
    st.dictionaries(st.sampled_from(["instruction", "input", "output", "system", "history"]), _junk, max_size=5),
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
