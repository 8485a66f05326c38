"""More hostile input for every command-line entry point, checked against the whole workspace tree.

`test_bad_cli_input.py` covers the first table of hostile inputs; this table adds the inputs that table
does not try (empty, non-UTF-8 and non-object dataset_info.json; NaN, infinite and non-numeric values;
config paths that are directories or missing presets; truncated and empty model files; a storage root
that is a file; out-of-range operator variables; bad shard sizes and devices...). Several of them
crashed with a traceback, ran on silently, or died in the allocator leaving a temporary directory
before the fixes that came with this file.

Each case runs the real CLI in a subprocess with the workspace as its working directory (so a default
``./storage`` would land in it too) and asserts: exit 1 or 2, no traceback, the offending field, flag or
file named, and the workspace tree (every path, size and mtime) unchanged.
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
MMLU = str(ASSETS / "sample_mmlu")
OPERATOR_ENV = {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PET_NNODES", "PET_NODE_RANK"}


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_model_dir) -> Path:
    """A workspace of good and hostile inputs shared by every case (cases only read it)."""
    root = tmp_path_factory.mktemp("hostile-cli")
    for name, data in {
        "list.yaml": b"- training\n- mlflow\n",
        "latin1.yaml": "name: caf\xe9\n".encode("latin-1"),
        "huge.yaml": b"training:\n  learning_rate: 1e999\n",
        "list.json": b"[1, 2]",
        "nan.json": b'{"micro": NaN, "categories": {}}',
        "afile": b"x",
        "train.yaml": b"stage: sft\n",
    }.items():
        (root / name).write_bytes(data)
    (root / "adir").mkdir()
    (root / "out" / "existing").mkdir(parents=True)
    (root / "out" / "existing" / "keep.txt").write_text("kept")
    for name, data in {"info_empty": b"", "info_latin1": '{"x": "caf\xe9"}'.encode("latin-1"),
                       "info_list": b"[1]"}.items():
        (root / name).mkdir()
        (root / name / "dataset_info.json").write_bytes(data)
    shutil.copytree(ASSETS / "sample_data", root / "data")
    # MMLU: an empty dev file (it would silently make the run zero-shot), an answer that is no letter.
    shutil.copytree(ASSETS / "sample_mmlu", root / "mmlu_empty_dev")
    (root / "mmlu_empty_dev" / "dev" / "astronomy_dev.csv").write_bytes(b"")
    shutil.copytree(ASSETS / "sample_mmlu", root / "mmlu_bad_answer")
    with open(root / "mmlu_bad_answer" / "test" / "astronomy_test.csv", "a") as handle:
        handle.write("Which planet?,Mars,Venus,Earth,Jupiter,Z\n")
    # Models: a good copy, then an empty config, a non-UTF-8 config and weights cut in half.
    shutil.copytree(tiny_model_dir, root / "model")
    for name in ("model_empty_config", "model_latin1_config", "model_truncated"):
        shutil.copytree(tiny_model_dir, root / name)
    (root / "model_empty_config" / "config.json").write_bytes(b"")
    (root / "model_latin1_config" / "config.json").write_bytes('{"model_type": "caf\xe9"}'.encode("latin-1"))
    weights = root / "model_truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    # An adapter with rank 0 and no tensors (an empty safetensors file: 8-byte header length + "{}").
    (root / "adapter_rank0").mkdir()
    (root / "adapter_rank0" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 0, "lora_alpha": 8, "target_modules": ["q_proj"]}))
    (root / "adapter_rank0" / "adapter_model.safetensors").write_bytes((2).to_bytes(8, "little") + b"{}")
    # Results files: a good pair, and a task file holding a NaN loss.
    write_results(root / "good", mmlu_results(flags_first_right({}, per_subject=10, default=4)),
                  task_results(base_losses()))
    (root / "task_nan.json").write_text((root / "good" / "task.json").read_text().replace(
        '"loss": ', '"loss": NaN, "was": ', 1))
    return root


def _validate(*args: str) -> list[str]:
    return ["components.data.validate_dataset", "--dataset-dir", "{ws}/data", "--dataset", "alpaca_sample", *args]


def _train(*sets: str, config: str = "local") -> list[str]:
    overrides = [item for value in sets for item in ("--set", value)]
    return ["components.train.train", "--config", config, *overrides, "--render-only"]


def _evaluate(*args: str, model: str = "{ws}/model", data: str = MMLU) -> list[str]:
    return ["components.evaluate.mmlu.evaluate_mmlu", "--model", model, "--data-dir", data, "--limit", "1", *args,
            "--output", "{ws}/out/eval"]


def _merge(*args: str, base: str = "{ws}/model") -> list[str]:
    return ["components.merge.merge_lora", "--base", base, *args]


def _compare(mmlu: str = "{ws}/good/results.json", task: str = "{ws}/good/task.json", *args: str) -> list[str]:
    return ["components.gate.compare", "--candidate-mmlu", mmlu, "--candidate-task", task,
            "--baseline-mmlu", "{ws}/good/results.json", "--baseline-task", "{ws}/good/task.json", *args,
            "--report", "{ws}/out/report.md", "--json", "{ws}/out/comparison.json"]


def _task_eval(*args: str, model: str = "{ws}/model", data: str = "{ws}/data") -> list[str]:
    return ["components.evaluate.task.evaluate_task", "--model", model, "--data-dir", data, "--dataset", "alpaca_sample",
            "--template", "default", "--cutoff-len", "256", *args, "--output", "{ws}/out/task"]


def _submit(*args: str) -> list[str]:
    return ["pipelines.submit", "--config", "lora", "--dry-run", *args]


def _run_local(*args: str) -> list[str]:
    return ["pipelines.run_local", "--storage", "{ws}/out/storage", *args]


OPERATOR = {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "trainer-0", "MASTER_PORT": "23456"}

# (case id, argv after `python -m`, words the message must contain, extra environment)
CASES = [
    # validate_dataset
    ("validate-empty-dataset-info", ["components.data.validate_dataset", "--dataset-dir", "{ws}/info_empty",
                                     "--dataset", "x"], ["dataset_info.json", "invalid JSON"], {}),
    ("validate-non-utf8-dataset-info", ["components.data.validate_dataset", "--dataset-dir", "{ws}/info_latin1",
                                        "--dataset", "x"], ["dataset_info.json", "UTF-8"], {}),
    ("validate-dataset-info-not-an-object", ["components.data.validate_dataset", "--dataset-dir", "{ws}/info_list",
                                             "--dataset", "x"], ["dataset_info.json", "array"], {}),
    ("validate-dataset-dir-is-a-file", ["components.data.validate_dataset", "--dataset-dir", "{ws}/afile",
                                        "--dataset", "x"], ["afile"], {}),
    ("validate-zero-ngram", _validate("--eval-data-dir", MMLU, "--ngram", "0"), ["--ngram"], {}),
    ("validate-negative-max-contaminated", _validate("--max-contaminated", "-7"), ["--max-contaminated"], {}),
    ("validate-zero-cutoff", _validate("--cutoff-len", "0"), ["--cutoff-len"], {}),
    ("validate-report-onto-a-directory", _validate("--report", "{ws}/adir"), ["{ws}/adir"], {}),
    # train (config errors only, with --render-only as a second guard: nothing may start training)
    ("train-config-is-a-list", _train(config="{ws}/list.yaml"), ["list.yaml", "mapping"], {}),
    ("train-config-is-a-directory", _train(config="{ws}/adir"), ["{ws}/adir"], {}),
    ("train-config-missing", _train(config="{ws}/nope.yaml"), ["nope.yaml"], {}),
    ("train-unknown-preset", _train(config="nopreset"), ["nopreset"], {}),
    ("train-infinite-lr-in-file", _train(config="{ws}/huge.yaml"), ["huge.yaml", "training.learning_rate"], {}),
    ("train-nan-lr", _train("training.learning_rate=nan"), ["training.learning_rate"], {}),
    ("train-non-numeric-lr", _train("training.learning_rate=abc"), ["training.learning_rate"], {}),
    ("train-infinite-epochs", _train("training.num_train_epochs=1e999"), ["training.num_train_epochs"], {}),
    ("train-zero-save-steps", _train("training.save_steps=0"), ["training.save_steps"], {}),
    ("train-override-without-value", _train("training.learning_rate"), ["training.learning_rate"], {}),
    ("train-data-dir-escape", _train("storage.data_dir=../../etc"), ["storage.data_dir"], {}),
    # evaluate_mmlu
    ("eval-truncated-weights", _evaluate(model="{ws}/model_truncated"), ["model_truncated"], {}),
    ("eval-unknown-device", _evaluate("--device", "tpu9"), ["tpu9"], {}),
    ("eval-openai-without-endpoint", _evaluate("--backend", "openai"), ["--endpoint"], {}),
    ("eval-empty-dev-file", _evaluate(data="{ws}/mmlu_empty_dev"), ["astronomy_dev.csv"], {}),
    ("eval-answer-not-a-letter", _evaluate(data="{ws}/mmlu_bad_answer"), ["astronomy_test.csv:", "'Z'"], {}),
    ("eval-subject-path-escape", _evaluate("--subjects", "../../etc/passwd"), ["../../etc/passwd"], {}),
    ("eval-negative-limit", _evaluate("--limit", "-1"), ["--limit"], {}),
    ("eval-adapter-rank-zero", _evaluate("--adapter", "{ws}/adapter_rank0"), ["`r`"], {}),
    # merge_lora
    ("merge-zero-shard-size", _merge("--output", "{ws}/out/merged", "--max-shard-size-mb", "0"),
     ["--max-shard-size-mb"], {}),
    ("merge-version-named-current", _merge("--publish-to", "{ws}/out/models", "--version", "current"),
     ["'current'"], {}),
    ("merge-version-absolute-path", _merge("--publish-to", "{ws}/out/models", "--version", "{ws}/abs-version"),
     ["{ws}/abs-version"], {}),
    ("merge-output-exists", _merge("--output", "{ws}/out/existing"), ["{ws}/out/existing", "already exists"], {}),
    ("merge-empty-base-config", _merge("--output", "{ws}/out/merged", base="{ws}/model_empty_config"),
     ["model_empty_config/config.json"], {}),
    ("merge-non-utf8-base-config", _merge("--output", "{ws}/out/merged", base="{ws}/model_latin1_config"),
     ["model_latin1_config/config.json"], {}),
    ("merge-truncated-base", _merge("--output", "{ws}/out/merged", base="{ws}/model_truncated"),
     ["model_truncated/model.safetensors", "truncated"], {}),
    ("merge-adapter-without-weights", _merge("--adapter", "{ws}/adapter_rank0", "--output", "{ws}/out/merged"),
     ["adapter_rank0"], {}),
    # compare_baseline
    ("compare-results-are-a-list", _compare("{ws}/list.json"), ["list.json", "valid dictionary"], {}),
    ("compare-nan-accuracy", _compare("{ws}/nan.json"), ["nan.json", "NaN"], {}),
    ("compare-results-are-a-directory", _compare("{ws}/adir"), ["{ws}/adir", "not readable"], {}),
    ("compare-task-is-a-list", _compare(task="{ws}/list.json"), ["list.json", "task results"], {}),
    ("compare-task-nan-loss", _compare(task="{ws}/task_nan.json"), ["task_nan.json", "NaN"], {}),
    ("compare-task-is-a-directory", _compare(task="{ws}/adir"), ["adir", "task results"], {}),
    ("compare-negative-bootstrap", _compare("{ws}/list.json", "{ws}/good/task.json", "--set",
                                            "gate.bootstrap_samples=-1"), ["gate.bootstrap_samples"], {}),
    # task_eval
    ("task-eval-truncated-weights", _task_eval(model="{ws}/model_truncated"), ["model_truncated", "weights"], {}),
    ("task-eval-data-dir-is-a-file", _task_eval(data="{ws}/afile"), ["afile/dataset_info.json"], {}),
    ("task-eval-entry-escape", _task_eval("--dataset", "../../etc/passwd"), ["'../../etc/passwd'"], {}),
    ("task-eval-unknown-device", _task_eval("--device", "tpu9"), ["tpu9"], {}),
    ("task-eval-zero-batch", _task_eval("--batch-size", "0"), ["--batch-size"], {}),
    # register_model, finalize
    ("register-comparison-escape", ["components.gate.register_model", "register", "--config", "local", "--set",
                                    "storage.mount_path={ws}", "--set", "mlflow.tracking_uri=sqlite:///{ws}/out/r.db",
                                    "--kfp-run-id", "r1", "--model-dir", "model", "--version", "v1",
                                    "--comparison", "../../../etc/passwd", "--dataset-hash", "h"],
     ["../../../etc/passwd"], {}),
    ("register-without-command", ["components.gate.register_model"], ["command"], {}),
    ("finalize-unknown-state", ["components.run.finalize_runs", "--config", "local", "--set",
                                "mlflow.tracking_uri=sqlite:///{ws}/out/f.db", "--kfp-run-id", "r", "--state", "BOGUS"],
     ["BOGUS"], {}),
    ("finalize-empty-run-id", ["components.run.finalize_runs", "--config", "local", "--set",
                               "mlflow.tracking_uri=sqlite:///{ws}/out/f.db", "--kfp-run-id", " "],
     ["--kfp-run-id"], {}),
    # multinode launcher: the Training Operator's variables, hostile
    ("launch-world-size-not-a-number", ["components.train.multinode.launch", "--gpus-per-node", "1", "{ws}/train.yaml",
                                        "--dry-run"], ["WORLD_SIZE", "abc"], {**OPERATOR, "WORLD_SIZE": "abc"}),
    ("launch-rank-beyond-world-size", ["components.train.multinode.launch", "--gpus-per-node", "1", "{ws}/train.yaml",
                                       "--dry-run"], ["RANK=5"], {**OPERATOR, "RANK": "5"}),
    # tiny model builder
    ("tiny-output-exists", ["components.demo.tiny_model", "--output", "{ws}/out/existing"], ["{ws}/out/existing"], {}),
    ("tiny-huge-vocab", ["components.demo.tiny_model", "--output", "{ws}/out/tiny", "--vocab-size", "100000000000"],
     ["--vocab-size"], {}),
    ("tiny-bad-shard-size", ["components.demo.tiny_model", "--output", "{ws}/out/tiny", "--shard-size", "abc"],
     ["--shard-size"], {}),
    ("tiny-zero-layers", ["components.demo.tiny_model", "--output", "{ws}/out/tiny", "--layers", "0"], ["--layers"], {}),
    # pipelines
    ("compile-output-not-yaml", ["pipelines.compile", "--config", "lora", "--output", "{ws}/adir"],
     ["{ws}/adir", ".yaml"], {}),
    ("compile-non-utf8", ["pipelines.compile", "--config", "{ws}/latin1.yaml", "--output", "{ws}/out/ir.yaml"],
     ["latin1.yaml", "UTF-8"], {}),
    ("compile-config-is-a-directory", ["pipelines.compile", "--config", "{ws}/adir", "--output", "{ws}/out/ir.yaml"],
     ["{ws}/adir"], {}),
    ("compile-override-without-config", ["pipelines.compile", "--set", "training.learning_rate=1", "--output",
                                         "{ws}/out/ir.yaml"], ["--config"], {}),
    ("submit-negative-timeout", _submit("--timeout", "-5"), ["--timeout"], {}),
    ("submit-cron-second-out-of-range", _submit("--schedule", "61 * * * * *"), ["61"], {}),
    ("submit-non-http-host", _submit("--host", "ftp://kfp.example"), ["--host"], {}),
    ("submit-non-utf8", ["pipelines.submit", "--config", "{ws}/latin1.yaml", "--dry-run"], ["latin1.yaml"], {}),
    ("submit-template-escape", _submit("--set", "training.template=../../x"), ["training.template"], {}),
    ("run-local-storage-is-a-file", ["pipelines.run_local", "--storage", "{ws}/afile"], ["{ws}/afile"], {}),
    ("run-local-unknown-preset", _run_local("--config", "nopreset"), ["nopreset"], {}),
    ("run-local-dataset-escape", _run_local("--set", "dataset.names=[../x]"), ["dataset.names"], {}),
    ("run-local-non-utf8", _run_local("--config", "{ws}/latin1.yaml"), ["latin1.yaml"], {}),
]


def _tree(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every path under ``root`` (hidden temporaries included; symlinks not followed) with kind, and a file's
    size and mtime. A directory's own mtime is left out: a temporary created and cleaned up moves it."""
    entries = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            info = path.lstat()
            kind = "link" if path.is_symlink() else "dir" if name in dirs else "file"
            entries[str(path.relative_to(root))] = (kind, info.st_size, info.st_mtime_ns) if kind == "file" \
                else (kind, 0, 0)
    return entries


@pytest.mark.parametrize(("argv", "words", "extra_env"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_hostile_input_is_refused_clearly_and_writes_nothing(ws, argv, words, extra_env):
    argv = [arg.replace("{ws}", str(ws)) for arg in argv]
    env = {key: value for key, value in os.environ.items() if key not in OPERATOR_ENV}
    env.update(HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", **extra_env)
    before = _tree(ws)
    proc = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, cwd=ws, env=env, timeout=180)
    after = _tree(ws)
    message = proc.stdout + proc.stderr
    assert proc.returncode in (1, 2), f"exit {proc.returncode}: {message[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for word in words:
        word = word.replace("{ws}", str(ws))
        assert word in message, f"{word!r} not named in: {message[-1500:]}"
    written = sorted(set(after) - set(before))
    changed = sorted(path for path in before if after.get(path) != before[path])
    assert not written and not changed, f"written: {written[:10]}, changed or removed: {changed[:10]}"


def test_the_table_is_big_enough_to_count():
    assert len(CASES) >= 40
    assert len({case[0] for case in CASES}) == len(CASES)
    cli_modules = {case[1][0] for case in CASES}
    assert len(cli_modules) == 13, sorted(cli_modules)  # every entry point of the project
