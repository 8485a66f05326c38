"""The dataset validation step: a corpus of bad datasets each named by file, row and field; good
alpaca/sharegpt sets accepted; LLaMA-Factory's own reader and converter as the reference; stable
content hashes; streaming reads across chunk boundaries; the step with a real MLflow (SQLite) store
and real KFP artifacts; the CLI."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from builders import REPO_ROOT, write_dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import components.data.reader as dataset_reader
from components.data.checks import describe_entry, make_row_checker
from components.data.result import render_report
from components.data.validate_dataset import DatasetValidationError, main
from components.data.validation import DUPLICATE_BATCH, validate_datasets
from components.demo.samples import SAMPLES
from configs.loading import load_config
from configs.schema import ConfigError
from pipelines.steps import validate_dataset

SAMPLE_DATA = SAMPLES / "sample_data"
SAMPLE_MMLU = SAMPLES / "sample_mmlu"
GOOD = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
CONVERSATION = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]


def _good(index: int) -> dict:
    return {"instruction": f"Say the number {index}.", "input": "", "output": str(index)}


def _alpaca(file_name: str = "data.json", **extra: Any) -> dict:
    return {"ds": {"file_name": file_name, **extra}}


def _sharegpt(file_name: str = "chat.json", **extra: Any) -> dict:
    return {"ds": {"file_name": file_name, "formatting": "sharegpt", **extra}}


# Each case: dataset_info.json, files, then every expected problem as (file, row, field, words in the message).
BAD_DATASETS = {
    "malformed JSON line": (_alpaca("data.jsonl"), {"data.jsonl": '{"instruction": "a", "output": "b"}\n'
                                                                   '{"instruction": "a", "output": "b"}\n'
                                                                   '{"instruction": "a" "output": "b"}\n'},
                            [("data.jsonl", 3, None, "invalid JSON: Expecting ',' delimiter")]),
    "missing comma in JSON array": (_alpaca(), {"data.json": '[{"instruction": "a", "output": "b"}\n'
                                                             '{"instruction": "c", "output": "d"}]'},
                                    [("data.json", 2, None, "expected ',' or ']' after row 1 (line 2)")]),
    "truncated JSON array": (_alpaca(), {"data.json": '[{"instruction": "a", "output": "b"}, {"instruction": "c'},
                             [("data.json", 2, None, "invalid JSON: Unterminated string")]),
    "trailing comma": (_alpaca(), {"data.json": '[{"instruction": "a", "output": "b"},\n]'},
                       [("data.json", 2, None, "invalid JSON: Expecting value (line 2)")]),
    "text after the array": (_alpaca(), {"data.json": '[{"instruction": "a", "output": "b"}]\n{"x": 1}'},
                             [("data.json", None, None, "text after the closing ']'")]),
    "output is a number": (_alpaca(), {"data.json": [GOOD, {**GOOD, "output": 42}]},
                           [("data.json", 2, "output", "must be a non-empty string, got number")]),
    "instruction missing": (_alpaca(), {"data.json": [GOOD, GOOD, {"output": "x", "prompt": "y"}]},
                            [("data.json", 3, "instruction", "is missing; must be a non-empty string (row has "
                                                             "unmapped keys 'prompt'")]),
    "empty output": (_alpaca(), {"data.json": [{**GOOD, "output": ""}]}, [("data.json", 1, "output", "is empty")]),
    "blank instruction": (_alpaca(), {"data.json": [{**GOOD, "instruction": " \n"}]},
                          [("data.json", 1, "instruction", "is blank")]),
    "input is a list": (_alpaca(), {"data.json": [GOOD, {**GOOD, "input": ["a"]}]},
                        [("data.json", 2, "input", "must be a string, got array")]),
    "history not pairs": (_alpaca(columns={"prompt": "instruction", "query": "input", "response": "output",
                                           "history": "history"}),
                          {"data.json": [{**GOOD, "history": [["q", "a"], ["only one"]]}]},
                          [("data.json", 1, "history[1]", "must be an [instruction, response] pair, got 1 items")]),
    "system is not a string": (_alpaca(columns={"prompt": "instruction", "response": "output", "system": "system"}),
                               {"data.json": [{**GOOD, "system": {"role": "x"}}]},
                               [("data.json", 1, "system", "must be a string, got object")]),
    "row is not an object": (_alpaca("data.jsonl"), {"data.jsonl": [GOOD, ["Name a colour.", "Blue."]]},
                             [("data.jsonl", 2, None, "row must be a JSON object, got array")]),
    "column changes type": (_alpaca("data.jsonl"), {"data.jsonl": [{**GOOD, "id": 1}, {**GOOD, "id": "two"}]},
                            [("data.jsonl", 2, "id", "is a string here but a number in row 1")]),
    "columns given without response": (_alpaca(columns={"prompt": "instruction"}), {"data.json": [GOOD]},
                                       [("dataset_info.json", None, "ds.columns.response", "is not set")]),
    "unknown column name": (_alpaca(columns={"prompt": "instruction", "promt": "x", "response": "output"}),
                            {"data.json": [GOOD]},
                            [("dataset_info.json", None, "ds.columns.promt", "unknown column name")]),
    "typo in an entry key": (_alpaca(formating="sharegpt"), {"data.json": [GOOD]},
                             [("dataset_info.json", None, "ds.formating", "unknown key")]),
    "unsupported formatting": (_alpaca(formatting="openai"), {"data.json": [GOOD]},
                               [("dataset_info.json", None, "ds.formatting", "must be one of alpaca, sharegpt")]),
    "remote dataset": ({"ds": {"hf_hub_url": "tatsu-lab/alpaca"}}, {},
                       [("dataset_info.json", None, "ds.hf_hub_url", "cannot be validated")]),
    "sharegpt two human turns": (_sharegpt(), {"chat.json": [
        {"conversations": CONVERSATION},
        {"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"},
                           {"from": "gpt", "value": "c"}]}]},
        [("chat.json", 2, "conversations[1].from", "role 'human' out of order: turn 2 must be 'gpt' or "
                                                   "'function_call'")]),
    "sharegpt ends with human": (_sharegpt(), {"chat.json": [{"conversations": [*CONVERSATION,
                                                                                {"from": "human", "value": "?"}]}]},
                                 [("chat.json", 1, "conversations", "has 3 turns after the system prompt; it must "
                                                                    "end with a 'gpt' turn")]),
    "sharegpt unknown role": (_sharegpt(), {"chat.json": [{"conversations": [{"from": "user", "value": "a"},
                                                                             {"from": "gpt", "value": "b"}]}]},
                              [("chat.json", 1, "conversations[0].from", "unknown role 'user'")]),
    "sharegpt system in the middle": (_sharegpt(), {"chat.json": [{"conversations": [
        *CONVERSATION, {"from": "system", "value": "be brief"}, {"from": "gpt", "value": "ok"}]}]},
        [("chat.json", 1, "conversations[2].from", "only allowed as the first message")]),
    "sharegpt custom tags not used": (
        _sharegpt("chat.jsonl", columns={"messages": "messages"}, tags={"role_tag": "role", "content_tag": "content",
                                                                        "user_tag": "user",
                                                                        "assistant_tag": "assistant"}),
        {"chat.jsonl": [{"messages": [{"from": "user", "value": "a"}, {"from": "assistant", "value": "b"}]}]},
        [("chat.jsonl", 1, "messages[0].role", "is missing; turn 1 must be 'user'")]),
    "sharegpt content missing": (_sharegpt(), {"chat.json": [{"conversations": [{"from": "human", "value": "a"},
                                                                                {"from": "gpt"}]}]},
                                 [("chat.json", 1, "conversations[1].value", "is missing")]),
    "sharegpt empty conversation": (_sharegpt(), {"chat.json": [{"conversations": []}]},
                                    [("chat.json", 1, "conversations", "is an empty list")]),
    "sharegpt only a system message": (_sharegpt(), {"chat.json": [{"conversations": [{"from": "system",
                                                                                       "value": "x"}]}]},
                                       [("chat.json", 1, "conversations", "has only a system message")]),
    "sharegpt tags without assistant": (_sharegpt(tags={"role_tag": "from", "content_tag": "value",
                                                        "user_tag": "human"}), {"chat.json": [{"conversations":
                                                                                              CONVERSATION}]},
                                        [("dataset_info.json", None, "ds.tags.assistant_tag", "is not set")]),
    "ranking without rejected": (_alpaca(ranking=True, columns={"prompt": "instruction", "chosen": "chosen",
                                                                "rejected": "rejected"}),
                                 {"data.json": [{"instruction": "a", "chosen": "good"}]},
                                 [("data.json", 1, "rejected", "is missing")]),
    "sharegpt ranking answered by a human": (
        _sharegpt(ranking=True, columns={"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}),
        {"chat.json": [{"conversations": [{"from": "human", "value": "a"}], "chosen": {"from": "gpt", "value": "b"},
                        "rejected": {"from": "human", "value": "c"}}]},
        [("chat.json", 1, "rejected.from", "must be 'gpt' or 'function_call', got 'human'")]),
    "missing file": (_alpaca("nowhere.json"), {}, [("dataset_info.json", None, "ds.file_name", "file not found")]),
    "path escape": (_alpaca("../outside.json"), {}, [("dataset_info.json", None, "ds.file_name",
                                                      "must be a path inside the dataset directory")]),
    "absolute path": (_alpaca("/etc/passwd"), {}, [("dataset_info.json", None, "ds.file_name",
                                                    "must be a path inside the dataset directory")]),
    "invalid UTF-8 in JSON Lines": (_alpaca("data.jsonl"), {"data.jsonl": b'{"instruction": "a", "output": "b"}\n'
                                                                          b'{"instruction": "caf\xe9", "output": "b"}'},
                                    [("data.jsonl", 2, None, "invalid UTF-8 (byte 0xe9 at file offset 56)")]),
    "invalid UTF-8 in a JSON array": (_alpaca(), {"data.json": b'[{"instruction": "a", "output": "b"},\n'
                                                               b'{"instruction": "\xff", "output": "b"}]'},
                                      [("data.json", 2, None, "invalid UTF-8 (byte 0xff")]),
    "byte-order mark": (_alpaca(), {"data.json": b"\xef\xbb\xbf" + json.dumps([GOOD]).encode()},
                        [("data.json", None, None, "byte-order mark")]),
    "empty file": (_alpaca(), {"data.json": b""}, [("data.json", None, None, "the file is empty")]),
    "empty array": (_alpaca(), {"data.json": b"[]"}, [("data.json", None, None, "the JSON array is empty")]),
    "not an array or lines": (_alpaca(), {"data.json": b'"just a string"'},
                              [("data.json", None, None, "expected a JSON array of objects or JSON Lines")]),
    "undefined dataset name": ({"other": {"file_name": "data.json"}}, {"data.json": [GOOD]},
                               [("dataset_info.json", None, "ds", "undefined dataset (defined: other)")]),
    "unsupported file type": (_alpaca("data.txt"), {"data.txt": "Name a colour. Blue."},
                              [("data.txt", None, None, "unsupported file type '.txt'")]),
    "dataset_info.json not JSON": (b'{"ds": {"file_name": "data.json",}}', {"data.json": [GOOD]},
                                   [("dataset_info.json", 1, None, "invalid JSON: Expecting property name")]),
    "CSV row without output": (_alpaca("data.csv"), {"data.csv": "instruction,input,output\nName a colour.,,Blue.\n"
                                                                 "\"Two\nlines\",,Yes\nName a fruit.,,\n"},
                               [("data.csv", 5, "output", "is empty")]),
    "CSV with a short record": (_alpaca("data.csv"), {"data.csv": "instruction,input,output\na,b\n"},
                                [("data.csv", 2, None, "has 2 fields, the header has 3")]),
}


@pytest.mark.parametrize("case", sorted(BAD_DATASETS))
def test_each_bad_dataset_is_rejected_with_file_row_and_field(tmp_path, case):
    info, files, expected = BAD_DATASETS[case]
    root = write_dataset(tmp_path / "data", info, files)
    result = validate_datasets(root, ["ds"], cutoff_len=1024, stage=None)  # ranking formats too (SFT refuses them)
    assert not result.ok
    found = [(p.file, p.row, p.field) for p in result.problems]
    assert found == [(file, row, name) for file, row, name, _ in expected], [str(p) for p in result.problems]
    for problem, (_, _, _, words) in zip(result.problems, expected, strict=True):
        assert words in problem.message
        location = problem.file if problem.row is None else f"{problem.file}:{problem.row}"
        assert str(problem).startswith(f"{location}: field '{problem.field}': " if problem.field else location)


def test_the_corpus_has_at_least_twenty_distinct_bad_datasets():
    assert len(BAD_DATASETS) >= 20
    assert len({json.dumps([info, sorted(files)], sort_keys=True, default=str) + str(expected)
                for info, files, expected in BAD_DATASETS.values()}) == len(BAD_DATASETS)


def test_symlink_out_of_the_dataset_directory_is_refused(tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps([GOOD]))
    root = write_dataset(tmp_path / "data", _alpaca("link.json"), {})
    (root / "link.json").symlink_to(secret)
    result = validate_datasets(root, ["ds"], cutoff_len=1024)
    assert [(p.file, p.row) for p in result.problems] == [("link.json", None)]
    assert "outside the dataset directory" in result.problems[0].message
    assert result.rows == 0


def test_the_shipped_samples_are_valid_and_clean(tmp_path):
    result = validate_datasets(SAMPLE_DATA, ["alpaca_sample", "sharegpt_sample"], cutoff_len=256,
                               eval_data_dir=SAMPLE_MMLU, max_contaminated=0)
    assert result.ok, result.failure_message()
    assert [(v.name, v.rows) for v in result.datasets] == [("alpaca_sample", 120), ("sharegpt_sample", 60)]
    assert result.warning_count == 0 and result.contamination_checked and result.mmlu_questions > 40
    assert result.datasets[0].sha256 == hashlib.sha256((SAMPLE_DATA / "alpaca_sample.json").read_bytes()).hexdigest()


def test_good_datasets_in_every_supported_shape_are_accepted(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    alpaca_rows = [{**_good(i), "system": "You are terse.", "history": [["Hi", "Hello"]]} for i in range(5)]
    chat = {"messages": [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather?"},
                         {"role": "tool_call", "content": '{"name": "weather", "arguments": {}}'},
                         {"role": "tool", "content": '{"temp": 20}'}, {"role": "assistant", "content": "20 °C."}],
            "tools": "[]"}
    openai_tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                   "observation_tag": "tool", "function_tag": "tool_call", "system_tag": "system"}
    info = {
        "alpaca_jsonl": {"file_name": "a.jsonl", "columns": {"prompt": "instruction", "query": "input",
                                                             "response": "output", "system": "system",
                                                             "history": "history"}},
        "sharegpt_tags": {"file_name": "chat.json", "formatting": "sharegpt", "tags": openai_tags,
                          "columns": {"messages": "messages", "tools": "tools"}},
        "sharegpt_ranking": {"file_name": "pairs.json", "formatting": "sharegpt", "ranking": True,
                             "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
        "alpaca_csv": {"file_name": "a.csv"},
        "alpaca_parquet": {"file_name": "a.parquet"},
        "alpaca_folder": {"file_name": "folder"},
    }
    pairs = [{"conversations": [{"from": "human", "value": "Pick one."}], "chosen": {"from": "gpt", "value": "A"},
              "rejected": {"from": "gpt", "value": "B"}}]
    root = write_dataset(tmp_path / "data", info, {
        "a.jsonl": alpaca_rows, "chat.json": [chat, chat | {"tools": None}], "pairs.json": pairs,
        "a.csv": "instruction,input,output\n\"Say \"\"hi\"\"\",,\"hi,\nthere\"\nCount.,1 2,3\n",
        "folder/part-1.json": [_good(1)], "folder/part-2.json": [_good(2), _good(3)],
    })
    pq.write_table(pa.Table.from_pylist([_good(i) for i in range(7)]), root / "a.parquet")
    names = ["alpaca_jsonl", "sharegpt_tags", "alpaca_csv", "alpaca_parquet", "alpaca_folder"]
    result = validate_datasets(root, names, cutoff_len=1024)
    assert result.ok, result.failure_message()
    assert [v.rows for v in result.datasets] == [5, 2, 2, 7, 3]
    assert [f.path for f in result.datasets[-1].files] == ["folder/part-1.json", "folder/part-2.json"]
    assert result.duplicate_rows == 0 and result.warning_count == 0
    ranking = validate_datasets(root, ["sharegpt_ranking"], cutoff_len=1024, stage=None)  # SFT refuses ranking
    assert ranking.ok, ranking.failure_message()
    mixed = validate_datasets(root, ["sharegpt_ranking", "alpaca_csv"], cutoff_len=1024, stage=None)
    assert [p.message for p in mixed.problems] == [
        "ranking and non-ranking datasets cannot be trained together (LLaMA-Factory trains one stage)"]


def test_warnings_duplicates_long_rows_and_empty_system_prompts_do_not_fail(tmp_path):
    rows = [_good(i) for i in range(DUPLICATE_BATCH + 600)]
    rows[20] = rows[3]  # a duplicate inside the first batch
    rows[DUPLICATE_BATCH + 100] = rows[7]  # one across the batch boundary
    rows[DUPLICATE_BATCH + 101] = rows[DUPLICATE_BATCH + 100]  # and one inside the second batch
    rows[50] = {**_good(50), "output": "word " * 40}
    info = {"ds": {"file_name": "data.jsonl", "columns": {"prompt": "instruction", "query": "input",
                                                          "response": "output", "system": "system"}},
            "chat": {"file_name": "chat.json", "formatting": "sharegpt"}}
    rows[60] = {**_good(60), "system": ""}
    chats = [{"conversations": [{"from": "system", "value": ""}, *CONVERSATION]}]
    root = write_dataset(tmp_path / "data", info, {"data.jsonl": rows, "chat.json": chats})
    result = validate_datasets(root, ["ds", "chat"], cutoff_len=32)
    assert result.ok
    warned = {(w.file, w.row, w.field, w.message.split(" (")[0].split(";")[0]) for w in result.warnings}
    assert warned == {
        ("data.jsonl", 21, None, "exact duplicate of an earlier row"),
        ("data.jsonl", DUPLICATE_BATCH + 101, None, "exact duplicate of an earlier row"),
        ("data.jsonl", DUPLICATE_BATCH + 102, None, "exact duplicate of an earlier row"),
        ("data.jsonl", 51, None, f"about {(len('Say the number 50.') + 200) // 4} tokens"),
        ("data.jsonl", 61, "system", "empty system prompt"),
        ("chat.json", 1, "conversations[0].value", "empty system prompt"),
    }
    assert (result.duplicate_rows, result.long_rows, result.empty_system_prompts) == (3, 1, 2)


def test_problems_are_capped_and_the_rest_counted(tmp_path):
    rows = [{**_good(i), "output": i} for i in range(120)]
    root = write_dataset(tmp_path / "data", _alpaca("data.jsonl"), {"data.jsonl": rows})
    result = validate_datasets(root, ["ds"], cutoff_len=1024, max_errors=10)
    assert (len(result.problems), result.problem_count, result.invalid_rows, result.rows) == (10, 120, 120, 120)
    message = result.failure_message()
    assert "data.jsonl:1: field 'output': must be a non-empty string, got number" in message
    assert message.endswith("... and 110 more")
    assert "... and 110 more" in render_report(result)


def test_the_hash_is_stable_and_changes_with_one_byte_or_the_entry(tmp_path):
    root = write_dataset(tmp_path / "data", _alpaca(), {"data.json": [_good(i) for i in range(30)]})
    first = validate_datasets(root, ["ds"], cutoff_len=1024)
    again = validate_datasets(root, ["ds"], cutoff_len=1024)
    copy = write_dataset(tmp_path / "copy", _alpaca(), {"data.json": (root / "data.json").read_bytes()})
    elsewhere = validate_datasets(copy, ["ds"], cutoff_len=1024)
    assert first.combined_sha256 == again.combined_sha256 == elsewhere.combined_sha256
    data = bytearray((root / "data.json").read_bytes())
    assert first.datasets[0].sha256 == hashlib.sha256(data).hexdigest()
    data[data.index(b"number 17")] = ord("N")  # one byte
    (root / "data.json").write_bytes(bytes(data))
    changed = validate_datasets(root, ["ds"], cutoff_len=1024)
    assert changed.ok and changed.datasets[0].sha256 == hashlib.sha256(data).hexdigest()
    assert changed.datasets[0].sha256 != first.datasets[0].sha256
    assert changed.combined_sha256 != first.combined_sha256
    remapped = write_dataset(copy, _alpaca(columns={"prompt": "instruction", "response": "output"}), {})
    entry_changed = validate_datasets(remapped, ["ds"], cutoff_len=1024)
    assert entry_changed.datasets[0].sha256 == first.datasets[0].sha256
    assert entry_changed.combined_sha256 != first.combined_sha256
    twice = validate_datasets(remapped, ["ds", "ds"], cutoff_len=1024)
    assert twice.ok and twice.combined_sha256 != entry_changed.combined_sha256
    assert [w.message for w in twice.warnings] == ["a dataset is listed twice in ['ds', 'ds']"]


def _mmlu(root: Path, questions: list[str]) -> Path:
    (root / "test").mkdir(parents=True)
    lines = [f'"{question}",a,b,c,d,A' for question in questions]
    (root / "test" / "science_test.csv").write_text("\n".join(lines) + "\n")
    return root


def test_contamination_names_the_row_field_and_question(tmp_path):
    long_question = ("A cyclist rides twelve kilometres north then five kilometres east before stopping "
                     "at a cafe; how far is she from her starting point in a straight line?")
    mmlu = _mmlu(tmp_path / "mmlu", ["What is 2 + 2?", "Which gas do plants absorb from the air?", long_question])
    words = long_question.split()
    rows = [
        _good(0),
        {**_good(1), "input": "Quiz: WHICH gas do plants   absorb from the air ?!"},  # normalised whole question
        {**_good(2), "output": "Here: " + " ".join(words[3:16]) + " ..."},  # a 13-word n-gram
        {**_good(3), "output": " ".join(words[3:15])},  # only 12 words: not evidence
        {**_good(4), "instruction": "What is 2 + 2? Answer in words."},  # too short a question to count
    ]
    root = write_dataset(tmp_path / "data", _alpaca("data.jsonl"), {"data.jsonl": rows})
    warned = validate_datasets(root, ["ds"], cutoff_len=1024, eval_data_dir=mmlu)
    assert warned.ok and warned.contaminated_rows == 2
    assert [(w.row, w.field) for w in warned.warnings] == [(2, "input"), (3, "output")]
    assert "MMLU test question science_test.csv:2 ('Which gas do plants absorb" in warned.warnings[0].message
    failed = validate_datasets(root, ["ds"], cutoff_len=1024, eval_data_dir=mmlu, max_contaminated=1)
    assert not failed.ok
    assert str(failed.problems[0]).startswith("dataset_info.json: 2 training row(s) contain MMLU")
    assert [(p.row, p.field) for p in failed.problems[1:]] == [(2, "input"), (3, "output")]
    assert validate_datasets(root, ["ds"], cutoff_len=1024, eval_data_dir=mmlu, max_contaminated=2).ok
    missing = validate_datasets(root, ["ds"], cutoff_len=1024, eval_data_dir=tmp_path / "nothing")
    assert "contamination check impossible" in str(missing.problems[0])


def test_describe_entry_reads_dataset_info_exactly_like_llamafactory(tmp_path):
    """LLaMA-Factory's own parser is the reference (imported here: it pulls in torch)."""
    from llamafactory.data.parser import get_dataset_list

    info = json.loads((SAMPLE_DATA / "dataset_info.json").read_text())
    info["bare"] = {"file_name": "x.json"}
    info["partial"] = {"file_name": "x.json", "formatting": "sharegpt", "ranking": True,
                       "columns": {"messages": "msgs", "chosen": "c"}, "tags": {"role_tag": "r", "user_tag": "u"}}
    attrs = get_dataset_list(list(info), info)
    for name, attr in zip(info, attrs, strict=True):
        spec, _ = describe_entry(name, info)
        assert (spec.file_name, spec.formatting, spec.ranking) == (attr.dataset_name, attr.formatting, attr.ranking)
        for key, value in {**spec.columns, **spec.tags}.items():
            assert getattr(attr, key) == value, (name, key)


def test_sharegpt_role_rules_agree_with_llamafactory_on_every_short_conversation():
    """Every role sequence up to 5 messages: our checker rejects exactly the conversations that
    LLaMA-Factory's converter and supervised processor would silently drop."""
    from types import SimpleNamespace

    from llamafactory.data.converter import SharegptDatasetConverter
    from llamafactory.data.parser import DatasetAttr

    spec, _ = describe_entry("chat", {"chat": {"file_name": "c.json", "formatting": "sharegpt"}})
    check = make_row_checker(spec)
    attr = DatasetAttr("file", dataset_name="c.json", formatting="sharegpt")
    convert = SharegptDatasetConverter(attr, SimpleNamespace(media_dir=""))
    roles = ["system", "human", "gpt", "observation", "function_call"]
    compared = 0
    for size in range(6):
        for sequence in itertools.product(roles, repeat=size):
            row = {"conversations": [{"from": role, "value": f"text {i}"} for i, role in enumerate(sequence)]}
            aligned = convert(row)
            trains = len(aligned["_prompt"]) % 2 == 1 and len(aligned["_response"]) == 1
            problems, _, _ = check(row)
            assert trains == (not problems), (sequence, problems)
            compared += 1
    assert compared == sum(5**n for n in range(6))


def test_llamafactory_loads_the_samples_without_dropping_a_row():
    from types import SimpleNamespace

    from llamafactory.data.converter import AlpacaDatasetConverter, SharegptDatasetConverter
    from llamafactory.data.parser import get_dataset_list

    for attr in get_dataset_list(["alpaca_sample", "sharegpt_sample"], str(SAMPLE_DATA)):
        convert = {"alpaca": AlpacaDatasetConverter, "sharegpt": SharegptDatasetConverter}[attr.formatting](
            attr, SimpleNamespace(media_dir=""))
        for row in json.loads((SAMPLE_DATA / attr.dataset_name).read_text()):
            aligned = convert(row)
            assert len(aligned["_prompt"]) % 2 == 1 and len(aligned["_response"]) == 1
            assert all(message["content"] for message in aligned["_prompt"] + aligned["_response"])


ROW = st.fixed_dictionaries({"instruction": st.text(min_size=1).filter(lambda s: s.strip()),
                             "output": st.text(min_size=1).filter(lambda s: s.strip()),
                             "n": st.floats(allow_nan=False) | st.integers() | st.none()})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, min_size=1, max_size=12), layout=st.sampled_from(["array", "indented", "lines"]),
       chunk=st.sampled_from([1, 2, 5, 64, 1 << 20]))
def test_streaming_reads_every_row_across_chunk_boundaries(tmp_path, monkeypatch, rows, layout, chunk):
    monkeypatch.setattr(dataset_reader, "CHUNK_BYTES", chunk)
    text = {"array": json.dumps(rows, ensure_ascii=False), "indented": json.dumps(rows, indent=1) + "\n\n",
            "lines": "\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n"}[layout]
    path = tmp_path / f"rows-{layout}-{chunk}.json"
    path.write_text(text, encoding="utf-8")
    digest = hashlib.sha256()
    read = list(dataset_reader.iter_rows(path, "json", digest))
    assert [value for _, _, value, _ in read] == rows
    assert [row for row, _, _, _ in read] == list(range(1, len(rows) + 1))
    assert all(json.loads(raw) == value for _, raw, value, _ in read)
    assert digest.hexdigest() == hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def step_config(tmp_path):
    """The CPU demo preset on a storage root with the sample data and MMLU, MLflow in SQLite (no model needed)."""
    root = tmp_path / "storage"
    shutil.copytree(SAMPLE_DATA, root / "data")
    shutil.copytree(SAMPLE_MMLU, root / "eval" / "mmlu")
    db = root / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True)
    cfg = load_config("local", overrides=[f"storage.mount_path={root}", f"mlflow.tracking_uri=sqlite:///{db}"])
    from mlflow.tracking import MlflowClient

    # SQLite stores put artifacts under ./mlruns by default; keep them inside the test's storage root.
    MlflowClient(cfg.mlflow.tracking_uri).create_experiment(cfg.mlflow.experiment,
                                                            artifact_location=(root / "artifacts").as_uri())
    return cfg


def _artifacts(tmp_path: Path) -> tuple[Any, Any]:
    from kfp.dsl import Markdown, Metrics

    return Metrics(uri=str(tmp_path / "out" / "metrics")), Markdown(uri=str(tmp_path / "out" / "report.md"))


def test_step_versions_the_data_and_logs_it_to_mlflow(step_config, tmp_path):
    from mlflow.tracking import MlflowClient

    from components.data.split import read_manifest, snapshot_dir

    metrics, report = _artifacts(tmp_path)
    both = step_config.model_copy(update={"dataset": step_config.dataset.model_copy(
        update={"names": ["alpaca_sample", "sharegpt_sample"]})})
    dataset_hash, test_split_hash, rows = validate_dataset.python_func(
        config=both.model_dump_json(), kfp_run_id="run-1", metrics=metrics, report=report)
    assert rows == 180 and len(dataset_hash) == 64
    expected = validate_datasets(SAMPLE_DATA, ["alpaca_sample", "sharegpt_sample"], cutoff_len=256)
    assert dataset_hash == expected.combined_sha256
    assert metrics.metadata["rows"] == 180 and metrics.metadata["invalid_rows"] == 0
    # The split snapshot of this run, whose identity is the test_split_hash output.
    split = read_manifest(snapshot_dir(step_config, "run-1"))
    assert split.test_split_hash == test_split_hash and split.dataset_hash == dataset_hash
    assert [(s.name, s.rows, s.train_rows + s.held_out_rows + s.val_rows) for s in split.datasets] == [
        ("alpaca_sample", 120, 120), ("sharegpt_sample", 60, 60)]
    scored = sum(s.scored_rows for s in split.datasets)
    assert scored >= 20 and metrics.metadata["scored_test_rows"] == scored
    assert metrics.metadata["scored_val_rows"] == sum(s.scored_val_rows for s in split.datasets) >= 16
    assert metrics.metadata["train_rows"] + metrics.metadata["held_out_rows"] + metrics.metadata["val_rows"] == 180
    assert {"duplicate_rows", "contaminated_rows", "warnings"} <= set(metrics.metadata)
    markdown = Path(report.path).read_text()
    assert markdown.startswith("# Dataset validation: PASSED") and dataset_hash in markdown
    assert "0 row(s) contain one of" in markdown  # the sample MMLU was used
    alpaca = split.dataset("alpaca_sample")
    assert (f"- alpaca_sample: {alpaca.train_rows} train rows; {alpaca.held_out_rows} held out, "
            f"{alpaca.scored_rows} scored") in markdown and test_split_hash in markdown
    assert f"; {alpaca.val_rows} for validation, {alpaca.scored_val_rows} scored" in markdown
    assert split.val_split_hash in markdown

    client = MlflowClient(step_config.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(step_config.mlflow.experiment)
    (child,) = client.search_runs([experiment.experiment_id], "tags.`llmft.step` = 'validate-dataset'")
    assert child.info.status == "FINISHED"
    assert child.data.tags["llmft.dataset_hash"] == dataset_hash
    assert child.data.metrics["rows.alpaca_sample"] == 120 and child.data.metrics["rows"] == 180
    assert child.data.tags["llmft.test_split_hash"] == test_split_hash

    def by_context(run) -> dict[tuple[str, str], Any]:
        found = {}
        for item in run.inputs.dataset_inputs:
            tags = {tag.key: tag.value for tag in item.tags}
            found[(item.dataset.name, tags["mlflow.data.context"])] = (item.dataset, tags)
        return found

    inputs = by_context(child)
    assert set(inputs) == {(name, context) for name in ("alpaca_sample", "sharegpt_sample")
                           for context in ("training", "test", "validation")}
    dataset, tags = inputs["alpaca_sample", "validation"]
    assert tags["llmft.val_split_hash"] == alpaca.val_split_hash and dataset.digest == alpaca.val_split_hash[:16]
    assert json.loads(dataset.source)["uri"].endswith("/output/run-1/data/val/alpaca_sample.jsonl")
    dataset, tags = inputs["alpaca_sample", "training"]
    assert tags["llmft.sha256"] == expected.datasets[0].sha256
    assert dataset.digest == expected.datasets[0].sha256[:16]
    assert json.loads(dataset.profile)["num_rows"] == 120
    dataset, tags = inputs["alpaca_sample", "test"]
    assert tags["llmft.test_split_hash"] == alpaca.test_split_hash and dataset.digest == alpaca.test_split_hash[:16]
    assert json.loads(dataset.profile)["num_rows"] == alpaca.scored_rows
    assert json.loads(dataset.source)["uri"].endswith("/output/run-1/data/test/alpaca_sample.jsonl")
    parent = client.get_run(child.data.tags["mlflow.parentRunId"])
    assert set(by_context(parent)) == set(inputs)
    assert by_context(parent)["sharegpt_sample", "test"][1]["llmft.test_split_hash"] == split.dataset(
        "sharegpt_sample").test_split_hash
    logged = {item.path for item in client.list_artifacts(child.info.run_id, "validation")}
    assert logged == {"validation/report.md", "validation/result.json", "validation/split.json"}


def test_step_fails_on_invalid_data_with_the_problems_in_the_message(step_config, tmp_path):
    data = Path(step_config.storage.mount_path) / "data" / "alpaca_sample.json"
    rows = json.loads(data.read_text())
    rows[6]["output"] = None
    data.write_text(json.dumps(rows))
    metrics, report = _artifacts(tmp_path)
    with pytest.raises(DatasetValidationError) as failure:
        validate_dataset.python_func(config=step_config.model_dump_json(), kfp_run_id="run-2", metrics=metrics,
                                     report=report)
    assert "alpaca_sample.json:7: field 'output': must be a non-empty string, got null" in str(failure.value)
    from components.data.split import snapshot_dir

    run = snapshot_dir(step_config, "run-2").parent
    assert not run.exists() or not list(run.iterdir())  # rows were streamed, yet no snapshot (or its temp) is left
    assert Path(report.path).read_text().startswith("# Dataset validation: FAILED")
    assert metrics.metadata["invalid_rows"] == 1
    from mlflow.tracking import MlflowClient

    client = MlflowClient(step_config.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(step_config.mlflow.experiment)
    (child,) = client.search_runs([experiment.experiment_id], "tags.`llmft.step` = 'validate-dataset'")
    assert child.info.status == "FAILED" and "alpaca_sample.json:7" in child.data.tags["llmft.error"]


def test_step_rejects_a_bad_config_naming_the_field(step_config, tmp_path):
    """The config parameter comes from resolve-config; a value it could not have written is still refused."""
    metrics, report = _artifacts(tmp_path)
    data = step_config.model_dump(mode="json")
    data["dataset"]["max_reported_errors"] = 0
    with pytest.raises(ConfigError, match="dataset.max_reported_errors"):
        validate_dataset.python_func(config=json.dumps(data), kfp_run_id="run-3", metrics=metrics, report=report)
    assert not Path(report.path).exists()
    from components.data.split import snapshot_dir

    assert not snapshot_dir(step_config, "run-3").exists()


def test_cli_exit_codes_and_report(tmp_path, capsys):
    report = tmp_path / "reports" / "validation.md"
    assert main(["--dataset-dir", str(SAMPLE_DATA), "--dataset", "alpaca_sample,sharegpt_sample",
                 "--report", str(report)]) == 0
    assert "OK: 180 rows valid" in capsys.readouterr().out
    assert report.read_text().startswith("# Dataset validation: PASSED")
    root = write_dataset(tmp_path / "bad", *BAD_DATASETS["sharegpt two human turns"][:2])
    assert main(["--dataset-dir", str(root), "--dataset", "ds"]) == 1
    assert "chat.json:2: field 'conversations[1].from': role 'human' out of order" in capsys.readouterr().out
    assert main(["--dataset-dir", str(root), "--dataset", "ds", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False
    assert main(["--dataset-dir", str(tmp_path / "missing"), "--dataset", "ds"]) == 2
    assert main(["--dataset-dir", str(root), "--dataset", " , "]) == 2
    assert "dataset.names (--dataset)" in capsys.readouterr().err  # the schema's rule, named by field and flag
    # Without --dataset the config's dataset.names are validated (the schema's default here: alpaca_sample).
    assert main(["--dataset-dir", str(root)]) == 1
    assert "field 'alpaca_sample': undefined dataset" in capsys.readouterr().out
    assert main(["--dataset-dir", str(root), "--config", "local", "--set", "dataset.names=[ds]"]) == 1
    assert "role 'human' out of order" in capsys.readouterr().out
    assert main(["--dataset-dir", str(root), "--dataset", "ds", "--ngram", "2"]) == 2
    refusal = "dataset.contamination_ngram (--ngram): Input should be greater than or equal to 5"
    assert refusal in capsys.readouterr().err
    with pytest.raises(SystemExit) as shown:
        main(["--help"])
    assert shown.value.code == 0


def test_module_entry_point_validates_without_heavy_frameworks(tmp_path):
    """`python -m` exit status, and validation pulls in none of torch, transformers, datasets or mlflow."""
    code = ("import sys, runpy; sys.argv = ['validate_dataset', '--dataset-dir', sys.argv[1], '--dataset', "
            "'alpaca_sample,sharegpt_sample', '--eval-data-dir', sys.argv[2]]\n"
            "try:\n    runpy.run_module('components.data.validate_dataset', run_name='__main__')\n"
            "except SystemExit as exit:\n"
            "    heavy = [m for m in ('torch', 'transformers', 'datasets', 'mlflow', 'llamafactory')\n"
            "             if m in sys.modules]\n"
            "    print(exit.code, heavy)")
    done = subprocess.run([sys.executable, "-c", code, str(SAMPLE_DATA), str(SAMPLE_MMLU)], capture_output=True,
                          text=True, cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), check=True)
    assert done.stdout.strip().splitlines()[-1] == "0 []"
