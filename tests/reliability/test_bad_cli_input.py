"""Every command-line entry point fed hostile input: each exits 1 or 2 with a message that names the
offending field or file, never with a Python traceback, and writes nothing where it was told to write.

One table, one subprocess per case (real CLIs, real files: malformed YAML/JSON, non-UTF-8, empty and
truncated files, path escapes through `..`, absolute paths and symlinks, nonsense hyper-parameters).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from builders import base_losses, flags_first_right, mmlu_results, task_results, write_results

from components.demo.samples import SAMPLES

ASSETS = SAMPLES
OPERATOR_ENV = {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PET_NNODES", "PET_NODE_RANK"}


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_model_dir) -> Path:
    """A workspace of good and hostile inputs shared by every case."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "out").mkdir()
    files = {
        "malformed.yaml": b"training: {learning_rate: 1e-4\n",
        "latin1.yaml": "name: caf\xe9\n".encode("latin-1"),
        "malformed.json": b'{"micro": 0.5, "questions": [',
        "latin1.json": '{"name": "caf\xe9"}'.encode("latin-1"),
        "empty.json": b"",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    # Datasets: a copy of the good sample plus hostile entries in dataset_info.json.
    data = root / "data"
    shutil.copytree(ASSETS / "sample_data", data)
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
    broken_info = root / "broken_info"
    broken_info.mkdir()
    (broken_info / "dataset_info.json").write_text('{"alpaca_sample": {"file_name": ')
    # MMLU data: one malformed row, one non-UTF-8 file, one empty layout.
    for name in ("mmlu_bad_row", "mmlu_latin1"):
        shutil.copytree(ASSETS / "sample_mmlu", root / name)
    with open(root / "mmlu_bad_row" / "test" / "astronomy_test.csv", "a") as handle:
        handle.write("A question with too few fields,A,B\n")
    (root / "mmlu_latin1" / "test" / "astronomy_test.csv").write_bytes("Caf\xe9?,a,b,c,d,A\n".encode("latin-1"))
    (root / "mmlu_empty").mkdir()
    # Adapters: truncated weights, malformed config, empty directory.
    for name in ("adapter_truncated", "adapter_bad_config", "adapter_empty"):
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
    os.symlink(tiny_model_dir, root / "model")
    # Results files: a good pair, each file tampered with once, and a task file from another template.
    mmlu, task = mmlu_results(flags_first_right({}, per_subject=10, default=4)), task_results(base_losses())
    write_results(root / "good", mmlu, task)
    (root / "mmlu_tampered.json").write_text(json.dumps({**mmlu.model_dump(), "micro": 0.9}))
    (root / "task_tampered.json").write_text(json.dumps({**task.model_dump(), "loss": 0.1}))
    write_results(root / "llama3", mmlu, task_results(base_losses(), template="llama3"))
    # A storage root for register: a published-looking version directory and comparison files.
    (root / "store" / "models" / "m" / "v1").mkdir(parents=True)
    from components.gate.compare import compare_files
    from configs.schema import config_from_dict

    good = [root / "good" / "results.json", root / "good" / "task.json"]
    comparison = compare_files(*good, *good, config_from_dict({}, "defaults"), baseline_name="base model")
    (root / "store" / "c.json").write_text(comparison.model_dump_json())
    (root / "store" / "bad_c.json").write_text(comparison.model_dump_json().replace('"keep-champion"', '"ship-it"'))
    return root


def _compare(candidate_mmlu: str, candidate_task: str, *args: str) -> list[str]:
    """The comparison CLI with the good baseline files."""
    return ["components.gate.compare", "--candidate-mmlu", candidate_mmlu, "--candidate-task", candidate_task,
            "--baseline-mmlu", "{ws}/good/results.json", "--baseline-task", "{ws}/good/task.json", *args]


def _task_eval(*args: str) -> list[str]:
    """The held-out loss CLI on the sample data; later flags override the defaults."""
    defaults = {"--model": "{ws}/model", "--data-dir": "{ws}/data", "--dataset": "alpaca_sample",
                "--template": "default", "--cutoff-len": "256"}
    given = dict(zip(args[::2], args[1::2], strict=True))
    return ["components.evaluate.task.evaluate_task", *[item for pair in {**defaults, **given}.items() for item in pair]]


def _register(*args: str) -> list[str]:
    return ["components.gate.register_model", "register", "--config", "local", "--set", "storage.mount_path={ws}/store",
            "--set", "mlflow.tracking_uri=sqlite:///{ws}/r.db", "--kfp-run-id", "r1", "--dataset-hash", "h", *args]


# (case id, argv after `python -m`, words the message must contain, paths (relative to ws) that must not exist)
CASES = [
    # validate_dataset
    ("validate-undefined-name", ["components.data.validate_dataset", "--dataset-dir", "{ws}/data", "--dataset", "nope"],
     ["nope"], []),
    ("validate-dotdot-name", ["components.data.validate_dataset", "--dataset-dir", "{ws}/data", "--dataset", "../etc"],
     ["../etc"], []),
    ("validate-non-utf8-file", ["components.data.validate_dataset", "--dataset-dir", "{ws}/data", "--dataset", "non_utf8"],
     ["latin1.json", "UTF-8"], []),
    ("validate-empty-file", ["components.data.validate_dataset", "--dataset-dir", "{ws}/data", "--dataset", "empty_file"],
     ["empty.json"], []),
    ("validate-absolute-path", ["components.data.validate_dataset", "--dataset-dir", "{ws}/data", "--dataset", "absolute"],
     ["/etc/passwd"], []),
    ("validate-dotdot-path", ["components.data.validate_dataset", "--dataset-dir", "{ws}/data", "--dataset", "dotdot"],
     ["../../etc/passwd"], []),
    ("validate-symlink-escape", ["components.data.validate_dataset", "--dataset-dir", "{ws}/data", "--dataset",
                                 "symlink_escape"], ["escape.json"], []),
    ("validate-malformed-info", ["components.data.validate_dataset", "--dataset-dir", "{ws}/broken_info", "--dataset",
                                 "alpaca_sample"], ["dataset_info.json"], []),
    ("validate-missing-dir", ["components.data.validate_dataset", "--dataset-dir", "{ws}/nowhere", "--dataset", "x"],
     ["nowhere"], []),
    # train (config errors only: nothing may start training)
    ("train-malformed-yaml", ["components.train.train", "--config", "{ws}/malformed.yaml"], ["malformed.yaml", "YAML"],
     ["output"]),
    ("train-non-utf8-yaml", ["components.train.train", "--config", "{ws}/latin1.yaml"], ["latin1.yaml", "UTF-8"], []),
    ("train-negative-lr", ["components.train.train", "--config", "local", "--set", "training.learning_rate=-1"],
     ["training.learning_rate"], []),
    ("train-zero-rank", ["components.train.train", "--config", "local", "--set", "training.lora_rank=0"],
     ["training.lora_rank"], []),
    ("train-huge-batch", ["components.train.train", "--config", "local", "--set",
                          "training.per_device_train_batch_size=1000000000000"],
     ["training.per_device_train_batch_size"], []),
    ("train-unknown-template", ["components.train.train", "--config", "local", "--set", "training.template=nope"],
     ["training.template"], []),
    ("train-dataset-dotdot", ["components.train.train", "--config", "local", "--set", "dataset.names=[../x]"],
     ["dataset.names"], []),
    ("train-absolute-model", ["components.train.train", "--config", "local", "--set", "storage.base_model=/etc"],
     ["storage.base_model"], []),
    ("train-unknown-key", ["components.train.train", "--config", "local", "--set", "training.lernin_rate=1"],
     ["training.lernin_rate"], []),
    # evaluate_mmlu
    ("eval-missing-model", ["components.evaluate.mmlu.evaluate_mmlu", "--model", "{ws}/nowhere", "--data-dir",
                            str(ASSETS / "sample_mmlu"), "--output", "{ws}/out/eval1"], ["nowhere"], ["out/eval1"]),
    ("eval-malformed-row", ["components.evaluate.mmlu.evaluate_mmlu", "--model", "{ws}/model", "--data-dir", "{ws}/mmlu_bad_row",
                            "--output", "{ws}/out/eval2"], ["astronomy_test.csv"], ["out/eval2"]),
    ("eval-non-utf8-csv", ["components.evaluate.mmlu.evaluate_mmlu", "--model", "{ws}/model", "--data-dir", "{ws}/mmlu_latin1",
                           "--output", "{ws}/out/eval3"], ["astronomy_test.csv"], ["out/eval3"]),
    ("eval-empty-data-dir", ["components.evaluate.mmlu.evaluate_mmlu", "--model", "{ws}/model", "--data-dir", "{ws}/mmlu_empty",
                             "--output", "{ws}/out/eval4"], ["mmlu_empty"], ["out/eval4"]),
    ("eval-negative-shots", ["components.evaluate.mmlu.evaluate_mmlu", "--model", "{ws}/model", "--data-dir",
                             str(ASSETS / "sample_mmlu"), "--n-shot", "-1", "--output", "{ws}/out/eval5"],
     ["n-shot"], ["out/eval5"]),
    ("eval-zero-batch", ["components.evaluate.mmlu.evaluate_mmlu", "--model", "{ws}/model", "--data-dir",
                         str(ASSETS / "sample_mmlu"), "--batch-size", "0", "--output", "{ws}/out/eval6"],
     ["batch"], ["out/eval6"]),
    # merge_lora
    ("merge-truncated-adapter", ["components.merge.merge_lora", "--base", "{ws}/model", "--adapter",
                                 "{ws}/adapter_truncated", "--output", "{ws}/out/merged1"],
     ["adapter_model.safetensors"], ["out/merged1"]),
    ("merge-malformed-adapter-config", ["components.merge.merge_lora", "--base", "{ws}/model", "--adapter",
                                        "{ws}/adapter_bad_config", "--output", "{ws}/out/merged2"],
     ["adapter_config.json"], ["out/merged2"]),
    ("merge-empty-adapter", ["components.merge.merge_lora", "--base", "{ws}/model", "--adapter", "{ws}/adapter_empty",
                             "--output", "{ws}/out/merged3"], ["adapter_empty"], ["out/merged3"]),
    ("merge-missing-base", ["components.merge.merge_lora", "--base", "{ws}/nowhere", "--output", "{ws}/out/merged4"],
     ["nowhere"], ["out/merged4"]),
    ("merge-version-escape", ["components.merge.merge_lora", "--base", "{ws}/model", "--publish-to", "{ws}/out/models",
                              "--version", "../../escaped"], ["../../escaped"], ["escaped", "out/models/current"]),
    ("merge-bad-dtype", ["components.merge.merge_lora", "--base", "{ws}/model", "--output", "{ws}/out/merged5",
                         "--dtype", "int3"], ["dtype"], ["out/merged5"]),
    # compare_baseline (candidate MMLU, candidate task, baseline MMLU, baseline task)
    ("compare-malformed-json", _compare("{ws}/malformed.json", "{ws}/good/task.json", "--report", "{ws}/out/r1.md",
                                        "--json", "{ws}/out/c1.json"),
     ["malformed.json"], ["out/r1.md", "out/c1.json"]),
    ("compare-non-utf8", _compare("{ws}/good/results.json", "{ws}/latin1.json", "--report", "{ws}/out/r2.md"),
     ["latin1.json"], ["out/r2.md"]),
    ("compare-empty-file", _compare("{ws}/empty.json", "{ws}/good/task.json", "--report", "{ws}/out/r3.md"),
     ["empty.json"], ["out/r3.md"]),
    ("compare-missing-file", _compare("{ws}/good/results.json", "{ws}/nowhere.json", "--report", "{ws}/out/r4.md"),
     ["nowhere.json"], ["out/r4.md"]),
    ("compare-bad-gate", [*_compare("{ws}/good/results.json", "{ws}/good/task.json"), "--config", "local", "--set",
                          "gate.alpha=7"], ["gate.alpha"], []),
    ("compare-tampered-mmlu", _compare("{ws}/mmlu_tampered.json", "{ws}/good/task.json", "--report",
                                       "{ws}/out/r5.md"), ["mmlu_tampered.json", "micro"], ["out/r5.md"]),
    ("compare-tampered-task", _compare("{ws}/good/results.json", "{ws}/task_tampered.json", "--report",
                                       "{ws}/out/r6.md"), ["task_tampered.json", "loss"], ["out/r6.md"]),
    ("compare-other-template", _compare("{ws}/good/results.json", "{ws}/llama3/task.json", "--json",
                                        "{ws}/out/c7.json"), ["template", "evaluate the baseline again"],
     ["out/c7.json"]),
    # task_eval (the held-out loss CLI)
    ("task-eval-missing-data-dir", _task_eval("--data-dir", "{ws}/nowhere", "--output", "{ws}/out/task1"),
     ["nowhere", "dataset_info.json"], ["out/task1"]),
    ("task-eval-unknown-entry", _task_eval("--dataset", "nope", "--output", "{ws}/out/task2"), ["'nope'"],
     ["out/task2"]),
    ("task-eval-unknown-template", _task_eval("--template", "nope", "--output", "{ws}/out/task3"),
     ["template 'nope'"], ["out/task3"]),
    ("task-eval-zero-cutoff", _task_eval("--cutoff-len", "0", "--output", "{ws}/out/task4"), ["--cutoff-len"],
     ["out/task4"]),
    ("task-eval-missing-model", _task_eval("--model", "{ws}/nowhere", "--output", "{ws}/out/task5"), ["nowhere"],
     ["out/task5"]),
    # register_model, finalize
    ("register-bad-uri", ["components.gate.register_model", "show", "--config", "local", "--set",
                          "mlflow.tracking_uri=ftp://x"], ["mlflow.tracking_uri"], []),
    ("register-model-dir-escape", _register("--model-dir", "../../etc", "--version", "v1", "--comparison", "c.json"),
     ["../../etc"], ["r.db"]),
    ("register-version-mismatch", _register("--model-dir", "models/m/v1", "--version", "v2", "--comparison",
                                            "c.json"), ["'v2'", "models/m/v1"], ["r.db"]),
    ("register-bad-comparison", _register("--model-dir", "models/m/v1", "--version", "v1", "--comparison",
                                          "bad_c.json"), ["bad_c.json", "decision"], ["r.db"]),
    ("register-missing-comparison", _register("--model-dir", "models/m/v1", "--version", "v1", "--comparison",
                                              "output/r1/compare/comparison.json"),
     ["comparison.json", "does not exist"], ["r.db"]),
    ("finalize-malformed-config", ["components.run.finalize_runs", "--config", "{ws}/malformed.yaml", "--kfp-run-id", "r"],
     ["malformed.yaml"], []),
    # multinode launcher, tiny model builder
    ("launch-without-operator-env", ["components.train.multinode.launch", "--gpus-per-node", "1", "{ws}/t.yaml",
                                     "--dry-run"], ["WORLD_SIZE"], []),
    ("tiny-model-negative-size", ["components.demo.tiny_model", "--output", "{ws}/out/tiny", "--hidden-size", "-8"],
     ["hidden"], ["out/tiny"]),
    # pipelines
    ("compile-malformed", ["pipelines.compile", "--config", "{ws}/malformed.yaml", "--output", "{ws}/out/ir.yaml"],
     ["malformed.yaml"], ["out/ir.yaml"]),
    ("compile-zero-epochs", ["pipelines.compile", "--config", "lora", "--set", "training.num_train_epochs=0",
                             "--output", "{ws}/out/ir2.yaml"], ["training.num_train_epochs"], ["out/ir2.yaml"]),
    ("submit-data-escape", ["pipelines.submit", "--config", "lora", "--dry-run", "--set", "storage.data_dir=/etc"],
     ["storage.data_dir"], []),
    ("submit-five-field-cron", ["pipelines.submit", "--config", "lora", "--dry-run", "--schedule", "0 2 * * *"],
     ["0 0 2 * * *"], []),
    ("run-local-malformed", ["pipelines.run_local", "--config", "{ws}/malformed.yaml", "--storage", "{ws}/out/st"],
     ["malformed.yaml"], ["out/st"]),
    ("run-local-zero-lr", ["pipelines.run_local", "--set", "training.learning_rate=0", "--storage",
                           "{ws}/out/st2"], ["training.learning_rate"], ["out/st2"]),
]


@pytest.mark.parametrize(("argv", "words", "absent"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_hostile_input_is_refused_clearly_and_writes_nothing(ws, argv, words, absent):
    argv = [arg.replace("{ws}", str(ws)) for arg in argv]
    env = {key: value for key, value in os.environ.items() if key not in OPERATOR_ENV}
    env.update(HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, cwd=ws, env=env, timeout=180)
    message = proc.stdout + proc.stderr
    assert proc.returncode in (1, 2), f"exit {proc.returncode}: {message[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for word in words:
        assert word in message, f"{word!r} not named in: {message[-1500:]}"
    for relative in absent:
        assert not (ws / relative).exists(), f"{relative} was written"


def test_the_table_is_big_enough_to_count():
    assert len(CASES) >= 40
    assert len({case[0] for case in CASES}) == len(CASES)
