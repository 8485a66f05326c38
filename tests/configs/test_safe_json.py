"""The one reader for untrusted JSON and YAML (configs.safe_json), and every parser that must use it.

Each hostile document (deep nesting, a 5,000-digit integer, NaN, a duplicate key, a lone surrogate, an alias
bomb, an over-long file name) is fed to the reader itself, then to each real entry point that parses such
files: dataset_info.json, adapter configs, safetensors headers, checkpoints, results files, split manifests,
configs and ``--set`` overrides. Each must answer with its own error type and a message naming the file,
never a RecursionError, a bare ValueError or a hang.
"""

from __future__ import annotations

import json
import shutil
import struct
import time
from pathlib import Path

import pytest

from components.demo.samples import SAMPLE_DATA, SAMPLE_MMLU
from configs.safe_json import (
    MAX_DEPTH,
    DocumentError,
    JsonScanner,
    parse_json,
    parse_yaml,
    read_json,
    read_yaml,
)

DEEP = "[" * 100_000 + "]" * 100_000
JUST_TOO_DEEP = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
BIG_INT = "1" * 5000
ALIAS_BOMB = "l0: &l0 [a, a, a, a, a, a, a, a, a, a]\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9))  # 10^9 strings once expanded

HOSTILE_JSON = {
    "deep nesting": (DEEP, "nested deeper than 64 levels"),
    "one level too deep": (JUST_TOO_DEEP, "nested deeper than 64 levels"),
    "5,000-digit integer": (f'{{"a": {BIG_INT}}}', "an integer of 5000 digits"),
    "NaN": ('{"a": NaN}', "NaN is not a number JSON allows"),
    "-Infinity": ('{"a": -Infinity}', "-Infinity is not a number JSON allows"),
    "a float that overflows": ('{"a": 1e400}', "too large for a 64-bit float"),
    "duplicate key": ('{"a": 1, "b": 2, "a": 3}', "the key 'a' appears twice"),
    "lone high surrogate": ('{"a": "x\\ud800y"}', "lone surrogate"),
    "lone low surrogate": ('["\\udc00"]', "lone surrogate"),
    "surrogate in a key": ('{"\\ud800": 1}', "lone surrogate"),
    "text after the value": ('{"a": 1} {"b": 2}', "invalid JSON: Extra data (line 1, column 10)"),
    "empty": ("", "invalid JSON: Expecting value (line 1, column 1)"),
    "error on line 3": ('{\n"a": 1,\n"b": }', "(line 3, column 6)"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_JSON))
def test_hostile_json_is_refused_with_a_message(case):
    text, expected = HOSTILE_JSON[case]
    started = time.monotonic()
    with pytest.raises(DocumentError) as refused:
        parse_json(text, "doc.json")
    assert time.monotonic() - started < 2
    assert str(refused.value).startswith("doc.json") and expected in str(refused.value), str(refused.value)
    assert len(str(refused.value)) < 300  # never the document itself


def test_legal_json_reads_as_json_loads_reads_it():
    for text in ('{"a": [1, 2.5, "x", null, true]}', "[" * MAX_DEPTH + "]" * MAX_DEPTH, '"\\ud83d\\ude00"',
                 '  {"nested": {"list": [{"k": -12345678901234567890}]}}\n', "1" * 100, "-0.0"):
        assert parse_json(text, "doc") == json.loads(text)
    assert parse_json(b'{"caf\xc3\xa9": 1}', "doc") == {"café": 1}


def test_rules_can_be_relaxed_one_by_one():
    assert parse_json('{"a": NaN}', "doc", scanner=JsonScanner(allow_nan=True))["a"] != 0  # NaN != anything
    assert parse_json('{"a": 1, "a": 2}', "doc", scanner=JsonScanner(allow_duplicate_keys=True)) == {"a": 2}
    assert parse_json('"\\ud800"', "doc", scanner=JsonScanner(allow_lone_surrogates=True)) == "\ud800"
    with pytest.raises(DocumentError, match="nested deeper than 3 levels"):
        parse_json("[[[[]]]]", "doc", scanner=JsonScanner(max_depth=3))


def test_size_and_encoding_are_checked_before_parsing(tmp_path):
    with pytest.raises(DocumentError, match="more than the 10 allowed"):
        parse_json('{"a": "0123456789"}', "doc", max_bytes=10)
    (tmp_path / "big.json").write_text('{"a": "' + "x" * 2000 + '"}')
    with pytest.raises(DocumentError, match=r"big\.json is larger than the 1,000 bytes allowed"):
        read_json(tmp_path / "big.json", max_bytes=1000)
    (tmp_path / "latin1.json").write_bytes('{"a": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(DocumentError, match=r"latin1\.json is not UTF-8 text \(byte 0xe9 at offset 10\)"):
        read_json(tmp_path / "latin1.json")
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json")
    with pytest.raises(DocumentError, match="cannot be read: Is a directory"):
        read_json(tmp_path)


def test_an_over_long_file_name_is_a_message_not_a_crash(tmp_path):
    path = tmp_path / ("x" * 5000 + ".json")
    with pytest.raises(DocumentError, match="cannot be read: File name too long") as refused:
        read_json(path)
    assert "(5" in str(refused.value) and len(str(refused.value)) < 400  # the name is shortened, its length kept
    with pytest.raises(DocumentError, match="File name too long"):
        read_yaml(path)


HOSTILE_YAML = {
    "deep nesting": ("[" * 1000 + "]" * 1000, "nested deeper than 64 levels"),
    "alias bomb": (ALIAS_BOMB, "more than 100,000 values once its aliases are expanded"),
    "5,000-digit integer": (f"a: {BIG_INT}\n", "an integer of 5000 digits"),
    "duplicate key": ("training:\n  a: 1\ntraining:\n  b: 2\n", "the key 'training' appears twice"),
    "python tag": ("x: !!python/object/apply:os.system ['true']\n", "could not determine a constructor"),
    "control character": ("a: \x1b\n", "special characters are not allowed"),
    "tab indentation": ("a:\n\tb: 1\n", "at line 2, column 1"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_YAML))
def test_hostile_yaml_is_refused_with_a_message(case):
    text, expected = HOSTILE_YAML[case]
    started = time.monotonic()
    with pytest.raises(DocumentError) as refused:
        parse_yaml(text, "cfg.yaml")
    assert time.monotonic() - started < 2
    assert str(refused.value).startswith("cfg.yaml is not valid YAML") and expected in str(refused.value), \
        str(refused.value)


def test_legal_yaml_keeps_anchors_merge_keys_and_json():
    assert parse_yaml("a: &x [1, 2]\nb: *x\n", "cfg") == {"a": [1, 2], "b": [1, 2]}
    assert parse_yaml("base: &b {x: 1, y: 2}\nd: {<<: *b, x: 3}\n", "cfg")["d"] == {"x": 3, "y": 2}
    assert parse_yaml('{"training": {"lora_rank": 8}}', "cfg") == {"training": {"lora_rank": 8}}
    assert parse_yaml("a: 99999999999999999999999\n", "cfg") == {"a": 99999999999999999999999}


# --- every parser of untrusted files uses the reader -----------------------------------------------------------


def _safetensors_with_header(path: Path, header: bytes) -> Path:
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


PAYLOADS = {"deep": DEEP, "big-int": f'{{"a": {BIG_INT}}}', "nan": '{"a": NaN}', "dup": '{"a": 1, "a": 2}'}


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_every_json_file_parser_refuses_hostile_input_with_its_own_error(tmp_path, payload, tiny_model_dir):
    from components.data.split import SplitError, read_manifest
    from components.data.validation import validate_datasets
    from components.evaluate.mmlu.results import ResultsFileError, read_mmlu_results
    from components.evaluate.task.data import TaskDataError, read_dataset_info
    from components.evaluate.task.results import TaskResultsError, load_task_results
    from components.merge.adapter import load_adapter
    from components.merge.inputs import MergeError
    from components.merge.plan import base_layout
    from components.merge.safetensors import SafetensorsFormatError, read_safetensors_header
    from components.merge.verify import verify_model_dir
    from components.train.checkpoints import checkpoint_problem, safetensors_problem

    text = PAYLOADS[payload]
    (tmp_path / "dataset_info.json").write_text(text)
    result = validate_datasets(tmp_path, ["x"], cutoff_len=64)
    assert [(p.file, p.field) for p in result.problems] == [("dataset_info.json", None)]
    with pytest.raises(TaskDataError, match="dataset_info.json cannot be read as JSON"):
        read_dataset_info(tmp_path, ["x"])
    (tmp_path / "results.json").write_text(text)
    with pytest.raises(ResultsFileError, match="results.json is not valid JSON"):
        read_mmlu_results(tmp_path / "results.json")
    (tmp_path / "task.json").write_text(text)
    with pytest.raises(TaskResultsError, match="task.json is not a JSON task results file"):
        load_task_results(tmp_path / "task.json")
    (tmp_path / "split.json").write_text(text)
    with pytest.raises(SplitError, match="split.json is not a valid split manifest"):
        read_manifest(tmp_path)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(text)
    with pytest.raises(MergeError, match="adapter_config.json is not valid JSON"):
        load_adapter(adapter)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "config.json").write_text(text)
    with pytest.raises(MergeError, match="config.json is not valid JSON"):
        base_layout(model)
    header = _safetensors_with_header(tmp_path / "model.safetensors", text.encode())
    with pytest.raises(SafetensorsFormatError, match="the safetensors header is not valid JSON"):
        read_safetensors_header(header)
    assert "unreadable header" in safetensors_problem(header)
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text(text)
    assert "trainer_state.json is unreadable" in checkpoint_problem(checkpoint)
    published = tmp_path / "published"
    shutil.copytree(tiny_model_dir, published)
    from components.merge.verify import write_manifest

    write_manifest(published)
    (published / "config.json").write_text(text)
    from components.merge.verify import PublishError

    with pytest.raises(PublishError, match="config.json is not valid JSON"):
        verify_model_dir(published, checksums=False)


@pytest.mark.parametrize(("text", "expected"), [
    (DEEP, "nested deeper than 64 levels"),
    (ALIAS_BOMB, "once its aliases are expanded"),
    (f"training:\n  max_steps: {BIG_INT}\n", "an integer of 5000 digits"),
    ("training:\n  max_steps: 5\ntraining:\n  seed: 1\n", "the key 'training' appears twice"),
])
def test_configs_and_overrides_refuse_hostile_yaml(tmp_path, text, expected):
    from configs.loading import config_from_json, load_config
    from configs.schema import ConfigError

    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="hostile.yaml is not valid YAML") as refused:
        load_config(path)
    assert expected in str(refused.value)
    with pytest.raises(ConfigError, match="the config parameter is not valid YAML"):
        config_from_json(text)
    with pytest.raises(ConfigError, match=f"training.max_steps.*value is not valid YAML.*{expected[:20]}"):
        load_config("local", overrides=[f"training.max_steps={text}"])


def test_an_over_long_config_name_is_a_message(tmp_path):
    from configs.loading import load_config
    from configs.schema import ConfigError

    with pytest.raises(ConfigError, match="File name too long"):
        load_config(tmp_path / ("c" * 5000))
    with pytest.raises(ConfigError, match="File name too long"):
        load_config(tmp_path / ("c" * 5000 + ".yaml"))


def test_the_resolve_config_step_refuses_a_hostile_config_parameter():
    from components.run.resolve_config import resolve
    from configs.loading import load_config
    from configs.schema import ConfigError

    compiled = load_config("local")
    for text, words in ((DEEP, "nested deeper"), (f'{{"training": {{"max_steps": {BIG_INT}}}}}', "5000 digits"),
                        ('{"training": {}, "training": {}}', "appears twice")):
        with pytest.raises(ConfigError, match=f"z_config is not valid JSON: .*{words}"):
            resolve(text, [], {}, compiled)


LONG = "/tmp/" + "n" * 5000  # one path component far beyond the filesystem's 255-byte limit
DATA, MMLU = str(SAMPLE_DATA), str(SAMPLE_MMLU)
LONG_PATH_CASES = [  # (entry module under components/, argv, exit code)
    ("data.validate_dataset", ["--dataset-dir", LONG, "--dataset", "x"], 2),
    ("data.validate_dataset", ["--dataset-dir", DATA, "--dataset", "alpaca_sample", "--eval-data-dir", LONG], 1),
    ("data.validate_dataset", ["--dataset-dir", DATA, "--dataset", "alpaca_sample", "--report", LONG], 1),
    ("merge.merge_lora", ["--base", LONG, "--output", "{tmp}/merged"], 1),
    ("evaluate.mmlu.evaluate_mmlu", ["--model", LONG, "--data-dir", MMLU, "--output", "{tmp}/eval"], 1),
    ("evaluate.mmlu.evaluate_mmlu", ["--model", "{tmp}", "--data-dir", MMLU, "--output", LONG], 1),
    ("evaluate.task.evaluate_task", ["--model", LONG, "--data-dir", DATA, "--dataset", "alpaca_sample",
                                     "--template", "llama3", "--cutoff-len", "64", "--output", "{tmp}/task"], 1),
    ("demo.tiny_model", ["--output", LONG], 1),
]


@pytest.mark.parametrize(("module", "argv", "code"), LONG_PATH_CASES)
def test_an_over_long_path_on_a_cli_is_a_message(tmp_path, capsys, module, argv, code):
    import importlib

    main = importlib.import_module(f"components.{module}").main
    assert main([arg.replace("{tmp}", str(tmp_path)) for arg in argv]) == code
    captured = capsys.readouterr()
    err = captured.out + captured.err  # validate_dataset prints its problems on stdout
    assert ("error" in err or "failed" in err) and any(reason in err for reason in (
        "File name too long", "is not a directory", "not a model directory", "contamination check impossible")), \
        err[-300:]
    assert sorted(path.name for path in tmp_path.iterdir()) == []
