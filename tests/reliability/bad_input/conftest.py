"""The workspace every bad-input case of an entry point's command line reads: good inputs and hostile ones.

Built once per session and only read by the cases (each case checks that it wrote nothing): malformed and
non-UTF-8 YAML and JSON, empty files, a dataset directory whose dataset_info.json points out of it, broken MMLU
layouts, truncated and malformed adapters and models, tampered results files, a storage root for the registry.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from builders import SAMPLE_DATA, SAMPLE_MMLU, base_losses, flags_first_right, mmlu_results, task_results, write_results

from components.gate.compare import compare_files
from configs.loading import config_from_dict


def _files(root: Path) -> None:
    for name, data in {
        "malformed.yaml": b"training: {learning_rate: 1e-4\n",
        "latin1.yaml": "name: caf\xe9\n".encode("latin-1"),
        "list.yaml": b"- training\n- mlflow\n",
        "huge.yaml": b"training:\n  learning_rate: 1e999\n",
        "malformed.json": b'{"micro": 0.5, "questions": [',
        "latin1.json": '{"name": "caf\xe9"}'.encode("latin-1"),
        "empty.json": b"",
        "list.json": b"[1, 2]",
        "nan.json": b'{"micro": NaN, "categories": {}}',
        "afile": b"x",
        "train.yaml": b"stage: sft\n",
    }.items():
        (root / name).write_bytes(data)
    (root / "adir").mkdir()
    (root / "out" / "existing").mkdir(parents=True)
    (root / "out" / "existing" / "keep.txt").write_text("kept")


def _datasets(root: Path) -> None:
    """The sample data with hostile entries added to its dataset_info.json, and broken dataset_info files."""
    data = root / "data"
    shutil.copytree(SAMPLE_DATA, data)
    info = json.loads((data / "dataset_info.json").read_text())
    (data / "latin1.json").write_bytes('[{"instruction": "caf\xe9", "output": "x"}]'.encode("latin-1"))
    (data / "empty.json").write_bytes(b"")
    (data / "escape.json").symlink_to("/etc/hostname")
    info.update({
        "non_utf8": {"file_name": "latin1.json"},
        "empty_file": {"file_name": "empty.json"},
        "absolute": {"file_name": "/etc/passwd"},
        "dotdot": {"file_name": "../../etc/passwd"},
        "symlink_escape": {"file_name": "escape.json"},
    })
    (data / "dataset_info.json").write_text(json.dumps(info))
    (root / "broken_info").mkdir()
    (root / "broken_info" / "dataset_info.json").write_text('{"alpaca_sample": {"file_name": ')
    for name, text in {"info_empty": b"", "info_latin1": '{"x": "caf\xe9"}'.encode("latin-1"),
                       "info_list": b"[1]"}.items():
        (root / name).mkdir()
        (root / name / "dataset_info.json").write_bytes(text)


def _mmlu(root: Path) -> None:
    """MMLU layouts: a malformed row, a non-UTF-8 file, nothing at all, an empty dev file, an answer no letter."""
    for name in ("mmlu_bad_row", "mmlu_latin1", "mmlu_empty_dev", "mmlu_bad_answer"):
        shutil.copytree(SAMPLE_MMLU, root / name)
    with open(root / "mmlu_bad_row" / "test" / "astronomy_test.csv", "a") as handle:
        handle.write("A question with too few fields,A,B\n")
    (root / "mmlu_latin1" / "test" / "astronomy_test.csv").write_bytes("Caf\xe9?,a,b,c,d,A\n".encode("latin-1"))
    (root / "mmlu_empty").mkdir()
    (root / "mmlu_empty_dev" / "dev" / "astronomy_dev.csv").write_bytes(b"")  # it would silently go zero-shot
    with open(root / "mmlu_bad_answer" / "test" / "astronomy_test.csv", "a") as handle:
        handle.write("Which planet?,Mars,Venus,Earth,Jupiter,Z\n")


def _models(root: Path, tiny_model_dir: Path) -> None:
    """A good model, models with an empty or non-UTF-8 config or weights cut in half, and broken adapters."""
    shutil.copytree(tiny_model_dir, root / "model")
    for name in ("model_empty_config", "model_latin1_config", "model_truncated"):
        shutil.copytree(tiny_model_dir, root / name)
    (root / "model_empty_config" / "config.json").write_bytes(b"")
    (root / "model_latin1_config" / "config.json").write_bytes('{"model_type": "caf\xe9"}'.encode("latin-1"))
    weights = root / "model_truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for name in ("adapter_truncated", "adapter_bad_config", "adapter_empty", "adapter_rank0"):
        (root / name).mkdir()
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
              "base_model_name_or_path": str(tiny_model_dir)}
    (root / "adapter_truncated" / "adapter_config.json").write_text(json.dumps(config))
    header = json.dumps({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
                         {"dtype": "F32", "shape": [4, 64], "data_offsets": [0, 1024]}}).encode()
    (root / "adapter_truncated" / "adapter_model.safetensors").write_bytes(
        len(header).to_bytes(8, "little") + header + b"\0" * 100)  # 100 of the 1024 bytes promised
    (root / "adapter_bad_config" / "adapter_config.json").write_text("{not json")
    (root / "adapter_bad_config" / "adapter_model.safetensors").write_bytes(b"")
    (root / "adapter_rank0" / "adapter_config.json").write_text(json.dumps({**config, "r": 0}))
    (root / "adapter_rank0" / "adapter_model.safetensors").write_bytes((2).to_bytes(8, "little") + b"{}")


def _results(root: Path) -> None:
    """A good pair of results files, each tampered with once, one from another template, one with a NaN loss,
    and a storage root with a published-looking version and comparison files for the registry."""
    mmlu, task = mmlu_results(flags_first_right({}, per_subject=10, default=4)), task_results(base_losses())
    write_results(root / "good", mmlu, task)
    (root / "mmlu_tampered.json").write_text(json.dumps({**mmlu.model_dump(), "micro": 0.9}))
    (root / "task_tampered.json").write_text(json.dumps({**task.model_dump(), "loss": 0.1}))
    write_results(root / "llama3", mmlu, task_results(base_losses(), template="llama3"))
    (root / "task_nan.json").write_text((root / "good" / "task.json").read_text().replace(
        '"loss": ', '"loss": NaN, "was": ', 1))
    (root / "store" / "models" / "m" / "v1").mkdir(parents=True)
    good = [root / "good" / "results.json", root / "good" / "task.json"]
    comparison = compare_files(*good, *good, config_from_dict({}, "defaults"), baseline_version="")
    (root / "store" / "c.json").write_text(comparison.model_dump_json())
    (root / "store" / "bad_c.json").write_text(comparison.model_dump_json().replace('"keep-champion"', '"ship-it"'))


@pytest.fixture(scope="session")
def ws(tmp_path_factory, tiny_model_dir) -> Path:
    """The workspace of good and hostile inputs (cases only read it; each checks it is left unchanged)."""
    root = tmp_path_factory.mktemp("bad-input")
    _files(root)
    _datasets(root)
    _mmlu(root)
    _models(root, tiny_model_dir)
    _results(root)
    os.sync()
    return root
