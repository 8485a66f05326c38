"""Hostile datasets for the validator: each one refused naming file, row and field, or read correctly when legal.

The reference for "legal" is what LLaMA-Factory's loader does with the same bytes: ``datasets.load_dataset``
(JSON Lines through pyarrow's JSON reader, JSON arrays through pandas, CSV through pandas) and pyarrow's
JSON reader itself for the type rules. What the loader reads, the validator accepts; what the loader
refuses (or what this SFT pipeline would silently drop), the validator refuses with the row named, before
any GPU time is spent. Nothing here writes outside the test's directory; the CLI cases run the real
``python -m components.data.validate_dataset`` and must exit 1 (or 2) without a traceback.

``CASES``: the command line fed hostile flags, dataset directories and dataset_info.json entries (non-UTF-8 and
empty files, paths out of the data directory through ``..``, an absolute path or a symlink), judged by
:func:`.refusals.assert_refused` against the shared workspace (``conftest.py``).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from builders import REPO_ROOT as REPO
from builders import SAMPLE_MMLU

from components.data.reader import MAX_ROW_BYTES
from components.data.validation import validate_datasets

from .refusals import assert_refused, case_ids

GOOD = {"instruction": "Name a colour.", "input": "", "output": "Blue."}


def _row(index: int, **extra: Any) -> dict:
    return {"instruction": f"Say the number {index}.", "output": f"It is {index}.", **extra}


def _jsonl(rows: list) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def _dataset(root: Path, files: dict[str, bytes], **entry: Any) -> Path:
    """A dataset directory with one entry ``ds``; ``file_name`` defaults to the first file."""
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    info = {"ds": {"file_name": next(iter(files), "data.jsonl"), **entry}}
    (root / "dataset_info.json").write_text(json.dumps(info))
    return root


def _problems(result) -> list[tuple[str, int | None, str | None]]:
    return [(problem.file, problem.row, problem.field) for problem in result.problems]


def _loader_reads(path: Path, cache: Path) -> list[dict] | None:
    """The rows ``datasets.load_dataset`` (LLaMA-Factory's loader) reads from ``path``, or None when it fails."""
    from datasets import load_dataset

    kind = "csv" if path.suffix == ".csv" else "json"
    try:
        return load_dataset(kind, data_files=str(path), split="train", cache_dir=str(cache)).to_list()
    except Exception:  # any failure of the loader is the answer
        return None


# --- encodings and line ends: legal where the loader reads them --------------------------------------------------


def test_bom_and_crlf_are_read_where_the_loader_reads_them(tmp_path):
    rows = [_row(i) for i in range(3)]
    variants = {
        "bom.jsonl": b"\xef\xbb\xbf" + _jsonl(rows),
        "bom.csv": b"\xef\xbb\xbfinstruction,output\n" + b"".join(f"{r['instruction']},{r['output']}\n".encode()
                                                                   for r in rows),
        "crlf.jsonl": _jsonl(rows).replace(b"\n", b"\r\n"),
        "crlf.json": json.dumps(rows, indent=1).replace("\n", "\r\n").encode(),
        "crlf.csv": b"instruction,output\r\n" + b"".join(f"{r['instruction']},{r['output']}\r\n".encode()
                                                           for r in rows),
    }
    for name, data in variants.items():
        root = _dataset(tmp_path / name, {name: data})
        result = validate_datasets(root, ["ds"], cutoff_len=64)
        assert result.ok and result.rows == 3, (name, result.failure_message())
        assert _loader_reads(root / name, tmp_path / "cache") == rows, name
    root = _dataset(tmp_path / "bom-array", {"bom.json": b"\xef\xbb\xbf" + json.dumps(rows).encode()})
    result = validate_datasets(root, ["ds"], cutoff_len=64)
    assert _problems(result) == [("bom.json", None, None)] and "byte-order mark" in result.problems[0].message
    assert _loader_reads(root / "bom.json", tmp_path / "cache") is None  # the loader fails on it too


# --- rows that break the reader --------------------------------------------------------------------------------


def test_a_50_mb_line_is_refused_in_bounded_memory_and_the_rest_is_read(tmp_path):
    huge = json.dumps({"instruction": "x" * (50 << 20), "output": "y"}).encode()
    root = _dataset(tmp_path / "data", {"big.jsonl": _jsonl([_row(1)]) + huge + b"\n" + _jsonl([_row(3), _row(4)])})
    del huge
    tracemalloc.start()
    started = time.monotonic()
    result = validate_datasets(root, ["ds"], cutoff_len=64)
    seconds = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert _problems(result) == [("big.jsonl", 2, None)]
    assert f"longer than {MAX_ROW_BYTES >> 20} MiB" in result.problems[0].message
    assert (result.rows, result.invalid_rows) == (4, 1)  # the rows after it are still read and checked
    assert peak < 4 * MAX_ROW_BYTES, f"peak {peak / 2**20:.0f} MiB: the line was held"  # 50 MB would need 100+
    assert seconds < 30
    digest = __import__("hashlib").sha256((root / "big.jsonl").read_bytes()).hexdigest()
    assert result.datasets[0].sha256 == digest  # every byte hashed, the skipped ones too


def test_a_50_mb_row_in_a_json_array_is_refused(tmp_path):
    text = json.dumps([_row(1), {"instruction": "x" * (50 << 20), "output": "y"}, _row(3)])
    root = _dataset(tmp_path / "data", {"big.json": text.encode()})
    del text
    result = validate_datasets(root, ["ds"], cutoff_len=64)
    assert _problems(result) == [("big.json", 2, None)]
    assert f"longer than {MAX_ROW_BYTES >> 20} MiB" in result.problems[0].message



def test_a_csv_field_as_large_as_the_loader_reads_is_accepted(tmp_path):
    """The datasets CSV loader (pandas' C parser) has no field limit; Python's csv module stops at 128 KiB by default.
    A 200 KB answer is legal; a field over MAX_ROW_BYTES (no example is that long) is refused with its row."""
    answer = "y" * 200_000
    text = f"instruction,output\nName a colour.,{answer}\nSay hi.,Hi.\n"
    root = _dataset(tmp_path / "data", {"long.csv": text.encode()})
    result = validate_datasets(root, ["ds"], cutoff_len=64)
    assert result.ok and result.rows == 2, result.failure_message()
    assert _loader_reads(root / "long.csv", tmp_path / "cache")[0]["output"] == answer
    over = b"instruction,output\nSay hi.,Hi.\nName a colour.," + b"y" * (MAX_ROW_BYTES + 1) + b"\n"
    root = _dataset(tmp_path / "over", {"over.csv": over})
    result = validate_datasets(root, ["ds"], cutoff_len=64)
    assert _problems(result) == [("over.csv", 3, None)]
    assert f"longer than {MAX_ROW_BYTES >> 20} MiB" in result.problems[0].message


ROW_CASES = {
    # case: (line of the second row, words in the message); the first row is always good
    "deeply nested": ('{"instruction": "a", "output": "b", "x": ' + "[" * 50_000 + "]" * 50_000 + "}",
                      "nested deeper than 64 levels"),
    "duplicate key": ('{"instruction": "a", "output": "b", "output": "c"}', "the key 'output' appears twice"),
    "5,000-digit integer": ('{"instruction": "a", "output": "b", "n": ' + "7" * 5000 + "}",
                            "an integer of 5000 digits"),
    "lone surrogate": ('{"instruction": "a\\udfff", "output": "b"}', "lone surrogate"),
}


@pytest.mark.parametrize("layout", ["jsonl", "json"])
@pytest.mark.parametrize("case", sorted(ROW_CASES))
def test_rows_the_loader_cannot_take_are_named_by_row(tmp_path, case, layout):
    line, words = ROW_CASES[case]
    good = json.dumps(_row(1))
    data = f"{good}\n{line}\n" if layout == "jsonl" else f"[{good},\n{line}]"
    root = _dataset(tmp_path / "data", {f"rows.{layout}": data.encode()})
    started = time.monotonic()
    result = validate_datasets(root, ["ds"], cutoff_len=64)
    assert time.monotonic() - started < 5
    assert _problems(result) == [(f"rows.{layout}", 2, None)], result.failure_message()
    assert words in result.problems[0].message
    assert len(result.failure_message()) < 1000  # the row itself is never printed
    import pyarrow as pa
    import pyarrow.json as pa_json

    if case in ("duplicate key", "lone surrogate"):  # the loader's reader refuses the same line
        with pytest.raises(pa.ArrowInvalid):
            pa_json.read_json(io.BytesIO(line.encode() + b"\n"))
    elif case == "5,000-digit integer":  # the loader reads it as an infinite double: no number survives
        assert pa_json.read_json(io.BytesIO(line.encode() + b"\n")).to_pylist()[0]["n"] == float("inf")


@pytest.mark.parametrize(("literal", "reads_as"), [("NaN", "NaN"), ("Infinity", "Infinity"), ("-Infinity", "-Infinity"),
                                                 ("1e999", "Infinity"), ("[1, -1e400]", "-Infinity")])
def test_nan_and_infinity_are_named_by_row_and_field(tmp_path, literal, reads_as):
    lines = [json.dumps(_row(1)), '{"instruction": "a", "output": "b", "meta": {"score": ' + literal + "}}"]
    root = _dataset(tmp_path / "data", {"rows.jsonl": ("\n".join(lines) + "\n").encode()})
    result = validate_datasets(root, ["ds"], cutoff_len=64)
    field = "meta.score[]" if literal.startswith("[") else "meta.score"
    assert _problems(result) == [("rows.jsonl", 2, field)]
    assert f"is {reads_as}: JSON has no NaN or Infinity" in result.problems[0].message


# --- one type per field, as Arrow needs -------------------------------------------------------------------------

TYPE_CASES = {
    # case: (rows, the (row, field) refused, or None when the loader reads them)
    "top-level number then string": ([_row(1, id=1), _row(2, id="two")], (2, "id")),
    "nested field changes type": ([_row(1, meta={"k": 1}), _row(2, meta={"k": "x"})], (2, "meta.k")),
    "nested field appears later with another type": (
        [_row(1, meta={"a": 1}), _row(2, meta={"k": True}), _row(3, meta={"k": 2.5})], (3, "meta.k")),
    "array elements mixed in one row": ([_row(1, tags=[1, "x"])], (1, "tags[]")),
    "array elements change across rows": ([_row(1, tags=[1]), _row(2, tags=[]), _row(3, tags=["x"])],
                                          (3, "tags[]")),
    "object then array": ([_row(1, meta={"k": 1}), _row(2, meta=[1])], (2, "meta")),
    "boolean then number": ([_row(1, flag=True), _row(2, flag=0)], (2, "flag")),
    "integers and floats mix": ([_row(1, score=1), _row(2, score=2.5), _row(3, score=None)], None),
    "null fits anything": ([_row(1, meta=None), _row(2, meta={"k": None}), _row(3, meta={"k": "x"})], None),
    "fields missing from some rows": ([_row(1, meta={"a": 1}), _row(2, meta={"b": "x"}), _row(3)], None),
    "empty containers fit": ([_row(1, tags=[], meta={}), _row(2, tags=[1.5], meta={"k": [1]})], None),
}


@pytest.mark.parametrize("case", sorted(TYPE_CASES))
def test_a_field_that_changes_type_is_refused_exactly_when_arrow_refuses_it(tmp_path, case):
    import pyarrow as pa
    import pyarrow.json as pa_json

    rows, refused = TYPE_CASES[case]
    root = _dataset(tmp_path / "data", {"rows.jsonl": _jsonl(rows)})
    result = validate_datasets(root, ["ds"], cutoff_len=64)
    if refused is None:
        assert result.ok, result.failure_message()
        pa_json.read_json(io.BytesIO(_jsonl(rows)))  # the loader's reader takes them
    else:
        assert [(row, field) for _, row, field in _problems(result)] == [refused], result.failure_message()
        assert "the datasets JSON loader (Arrow) needs one type per field" in result.problems[0].message
        with pytest.raises(pa.ArrowInvalid):
            pa_json.read_json(io.BytesIO(_jsonl(rows)))


def test_a_sharegpt_message_field_that_changes_type_is_refused(tmp_path):
    def conversation(weight: Any) -> dict:
        return {"conversations": [{"from": "human", "value": "Hi", "weight": weight},
                                  {"from": "gpt", "value": "Hello", "weight": weight}]}

    root = _dataset(tmp_path / "data", {"chat.jsonl": _jsonl([conversation(1), conversation(0.5),
                                                               conversation("high")])}, formatting="sharegpt")
    result = validate_datasets(root, ["ds"], cutoff_len=64)
    assert _problems(result) == [("chat.jsonl", 3, "conversations[].weight")]
    assert "is a string here but a number in row 1" in result.problems[0].message


def test_a_directory_of_shards_is_one_table_for_types_and_one_kind_of_file(tmp_path):
    root = tmp_path / "data"
    _dataset(root, {"shards/part-0.jsonl": _jsonl([_row(1, id=1), _row(2, id=2)]),
                    "shards/part-1.jsonl": _jsonl([_row(3, id=3)])}, file_name="shards")
    result = validate_datasets(root, ["ds"], cutoff_len=64)
    assert result.ok and result.rows == 3 and [f.path for f in result.datasets[0].files] == [
        "shards/part-0.jsonl", "shards/part-1.jsonl"]
    (root / "shards" / "part-2.jsonl").write_bytes(_jsonl([_row(4, id="four")]))
    result = validate_datasets(root, ["ds"], cutoff_len=64)
    assert _problems(result) == [("shards/part-2.jsonl", 1, "id")]
    assert "is a string here but a number in row 1 of shards/part-0.jsonl" in result.problems[0].message
    (root / "shards" / "part-2.jsonl").unlink()
    (root / "shards" / "notes.txt").write_text("not data")
    result = validate_datasets(root, ["ds"], cutoff_len=64)
    assert _problems(result) == [("shards/notes.txt", None, None)]
    assert "unsupported file type" in result.problems[0].message


def test_paths_out_of_the_data_directory_are_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "rows.jsonl").write_bytes(_jsonl([_row(1)]))
    root = _dataset(tmp_path / "data", {"here.jsonl": _jsonl([_row(1)])})
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "one.jsonl").symlink_to(outside / "rows.jsonl")
    cases = {"linked": ("linked/rows.jsonl", None, None), "one.jsonl": ("one.jsonl", None, None),
             "../outside/rows.jsonl": ("dataset_info.json", None, "ds.file_name"),
             str(outside / "rows.jsonl"): ("dataset_info.json", None, "ds.file_name"),
             "x" * 5000: ("dataset_info.json", None, "ds.file_name")}
    for file_name, expected in cases.items():
        (root / "dataset_info.json").write_text(json.dumps({"ds": {"file_name": file_name}}))
        result = validate_datasets(root, ["ds"], cutoff_len=64)
        assert _problems(result) == [expected], (file_name[:40], result.failure_message())
    assert "File name too long" in result.problems[0].message and len(result.problems[0].message) < 200


# --- entries this SFT pipeline cannot train on ------------------------------------------------------------------


def test_columns_mapped_to_missing_keys_name_the_column_and_the_keys_the_row_has(tmp_path):
    root = _dataset(tmp_path / "data", {"rows.jsonl": _jsonl([GOOD, GOOD])},
                    columns={"prompt": "question", "response": "answer"})
    result = validate_datasets(root, ["ds"], cutoff_len=64)
    assert _problems(result) == [("rows.jsonl", 1, "question"), ("rows.jsonl", 1, "answer"),
                                 ("rows.jsonl", 2, "question"), ("rows.jsonl", 2, "answer")]
    assert "row has unmapped keys 'instruction', 'input', 'output'" in result.problems[0].message


@pytest.mark.parametrize(("entry", "rows", "field", "words"), [
    ({"ranking": True, "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}},
     [{"instruction": "a", "chosen": "b", "rejected": "c"}], "ds.ranking", "this pipeline trains SFT"),
    ({"formatting": "sharegpt", "ranking": True,
      "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
     [{"conversations": [{"from": "human", "value": "a"}], "chosen": {"from": "gpt", "value": "b"},
       "rejected": {"from": "gpt", "value": "c"}}], "ds.ranking", "rm/dpo stages"),
    ({"columns": {"prompt": "instruction", "response": "output", "kto_tag": "label"}},
     [{**GOOD, "label": True}, {**GOOD, "label": False}], "ds.columns.kto_tag", "a KTO dataset"),
])
def test_ranking_and_kto_datasets_are_refused_for_sft(tmp_path, entry, rows, field, words):
    root = _dataset(tmp_path / "data", {"rows.jsonl": _jsonl(rows)}, **entry)
    result = validate_datasets(root, ["ds"], cutoff_len=64)
    assert _problems(result) == [("dataset_info.json", None, field)] and words in result.problems[0].message
    assert result.rows == 0  # an entry with a problem is not read
    assert validate_datasets(root, ["ds"], cutoff_len=64, stage=None).ok  # the format itself is fine


@pytest.mark.parametrize("key", ["hf_hub_url", "ms_hub_url", "om_hub_url", "script_url"])
def test_hub_entries_are_refused_offline(tmp_path, key):
    root = tmp_path / "data"
    root.mkdir()
    (root / "dataset_info.json").write_text(json.dumps({"ds": {key: "org/some-dataset"}}))
    result = validate_datasets(root, ["ds"], cutoff_len=64)
    assert _problems(result) == [("dataset_info.json", None, f"ds.{key}")]
    assert "cannot be validated or trained on offline; copy the files" in result.problems[0].message


@pytest.mark.parametrize(("name", "data"), [("empty.jsonl", b""), ("blank.jsonl", b"\n \n"), ("empty.json", b"[]"),
                                            ("header.csv", b"instruction,output\n"), ("bom.jsonl", b"\xef\xbb\xbf")])
def test_an_empty_dataset_is_refused(tmp_path, name, data):
    root = _dataset(tmp_path / "data", {name: data})
    result = validate_datasets(root, ["ds"], cutoff_len=64)
    assert not result.ok and result.problems[0].file == name and "no rows" in result.problems[0].message


def test_dataset_info_with_an_entry_twice_is_refused(tmp_path):
    root = _dataset(tmp_path / "data", {"rows.jsonl": _jsonl([GOOD])})
    (root / "dataset_info.json").write_text('{"ds": {"file_name": "rows.jsonl"},\n "ds": {"file_name": "x.jsonl"}}')
    result = validate_datasets(root, ["ds"], cutoff_len=64)
    assert _problems(result) == [("dataset_info.json", None, None)]
    assert "the key 'ds' appears twice" in result.problems[0].message


# --- contamination hidden in system prompts ---------------------------------------------------------------------

QUESTION = "Which planet is known as the Red Planet in the night sky of our solar system?"


def _mmlu(root: Path) -> Path:
    (root / "test").mkdir(parents=True)
    (root / "test" / "astronomy_test.csv").write_text(f'"{QUESTION}",Mars,Jupiter,Venus,Uranus,A\n')
    return root


@pytest.mark.parametrize(("entry", "row", "field"), [
    ({"columns": {"prompt": "instruction", "response": "output", "system": "system"}},
     {**GOOD, "system": f"Remember: {QUESTION} Answer: Mars."}, "system"),
    ({"formatting": "sharegpt"},
     {"conversations": [{"from": "system", "value": f"Quiz fact. {QUESTION} Mars."},
                        {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
     "conversations[0].value"),
    ({"formatting": "sharegpt", "columns": {"messages": "conversations", "system": "sys"}},
     {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}],
      "sys": f"{QUESTION} (it is Mars)"}, "sys"),
])
def test_mmlu_questions_hidden_in_a_system_prompt_are_found(tmp_path, entry, row, field):
    mmlu = _mmlu(tmp_path / "mmlu")
    root = _dataset(tmp_path / "data", {"rows.jsonl": _jsonl([row])}, **entry)
    result = validate_datasets(root, ["ds"], cutoff_len=256, eval_data_dir=mmlu, max_contaminated=0)
    assert result.contaminated_rows == 1, result.failure_message()
    assert [(p.file, p.row, p.field) for p in result.problems[1:]] == [("rows.jsonl", 1, field)]
    assert "contains MMLU test question astronomy_test.csv:1" in result.problems[1].message


# --- the CLI ------------------------------------------------------------------------------------------------------


def test_the_cli_reports_every_hostile_dataset_at_once_without_a_traceback(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    files = {
        "deep.jsonl": ('{"instruction": "a", "output": "b", "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n").encode(),
        "bigint.json": ('[{"instruction": "a", "output": "b", "n": ' + "9" * 5000 + "}]").encode(),
        "dup.jsonl": b'{"instruction": "a", "output": "b", "output": "c"}\n',
        "nan.jsonl": b'{"instruction": "a", "output": "b", "s": NaN}\n',
        "surrogate.jsonl": b'{"instruction": "a\\ud800", "output": "b"}\n',
        "types.jsonl": _jsonl([_row(1, m={"k": 1}), _row(2, m={"k": "x"})]),
    }
    info = {}
    for name, data in files.items():
        (root / name).write_bytes(data)
        info[name.split(".")[0]] = {"file_name": name}
    info["rank"] = {"file_name": "dup.jsonl", "ranking": True,
                    "columns": {"prompt": "instruction", "chosen": "c", "rejected": "r"}}
    info["hub"] = {"hf_hub_url": "org/data"}
    info["long"] = {"file_name": "n" * 5000}
    (root / "dataset_info.json").write_text(json.dumps(info))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "components.data.validate_dataset", "--dataset-dir", str(root),
                           "--dataset", ",".join(info)], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "Traceback" not in output
    for words in ("deep.jsonl:1: nested deeper than 64 levels", "bigint.json:1: an integer of 5000 digits",
                  "dup.jsonl:1: the key 'output' appears twice", "nan.jsonl:1: field 's': is NaN",
                  "surrogate.jsonl:1: the string", "types.jsonl:2: field 'm.k': is a string here",
                  "field 'rank.ranking'", "field 'hub.hf_hub_url'", "field 'long.file_name'"):
        assert words in output, words
    assert len(output) < 20_000
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data"]  # nothing written


def _validate(*args: str, data: str = "{ws}/data", dataset: str = "alpaca_sample") -> list[str]:
    return ["components.data.validate_dataset", "--dataset-dir", data, "--dataset", dataset, *args]


# (case id, argv after `python -m`, words the message must contain, extra environment)
CASES = [
    ("validate-undefined-name", _validate(dataset="nope"), ["nope"], {}),
    ("validate-dotdot-name", _validate(dataset="../etc"), ["../etc"], {}),
    ("validate-non-utf8-file", _validate(dataset="non_utf8"), ["latin1.json", "UTF-8"], {}),
    ("validate-empty-file", _validate(dataset="empty_file"), ["empty.json"], {}),
    ("validate-absolute-path", _validate(dataset="absolute"), ["/etc/passwd"], {}),
    ("validate-dotdot-path", _validate(dataset="dotdot"), ["../../etc/passwd"], {}),
    ("validate-symlink-escape", _validate(dataset="symlink_escape"), ["escape.json"], {}),
    ("validate-malformed-info", _validate(data="{ws}/broken_info"), ["dataset_info.json"], {}),
    ("validate-missing-dir", _validate(data="{ws}/nowhere", dataset="x"), ["nowhere"], {}),
    ("validate-empty-dataset-info", _validate(data="{ws}/info_empty", dataset="x"), ["dataset_info.json",
                                                                                   "invalid JSON"], {}),
    ("validate-non-utf8-dataset-info", _validate(data="{ws}/info_latin1", dataset="x"), ["dataset_info.json",
                                                                                        "UTF-8"], {}),
    ("validate-dataset-info-not-an-object", _validate(data="{ws}/info_list", dataset="x"), ["dataset_info.json",
                                                                                           "array"], {}),
    ("validate-dataset-dir-is-a-file", _validate(data="{ws}/afile", dataset="x"), ["afile"], {}),
    ("validate-zero-ngram", _validate("--eval-data-dir", str(SAMPLE_MMLU), "--ngram", "0"), ["--ngram"], {}),
    ("validate-negative-max-contaminated", _validate("--max-contaminated", "-7"), ["--max-contaminated"], {}),
    ("validate-zero-cutoff", _validate("--cutoff-len", "0"), ["--cutoff-len"], {}),
    ("validate-report-onto-a-directory", _validate("--report", "{ws}/adir"), ["{ws}/adir"], {}),
]


@pytest.mark.parametrize(("argv", "words", "extra_env"), [case[1:] for case in CASES], ids=case_ids(CASES))
def test_hostile_input_is_refused_clearly_and_writes_nothing(ws, argv, words, extra_env):
    assert_refused(ws, argv, words, extra_env)
