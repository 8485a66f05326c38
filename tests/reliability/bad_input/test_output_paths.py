"""Output paths that would destroy or change what a command reads, or a published model: refused before any write.

One guard (``components.common.storage.guard_output``) is called by every CLI and step that writes. Each case runs
the real entry point against a real workspace (a tiny base model, an adapter, a dataset, results files and
a published model version) and asserts: exit 1 or 2 (or the step's error), no traceback, a message that
names the flag and what is at risk, and the whole workspace unchanged: every path, size and mtime.

The workspace is this module's own (``storage_ws``: a storage root holding a published version), not the shared one
of ``conftest.py``. Where a new case goes: a writer's flag pointed at something it must not touch is one row of
``CASES``; a step's configuration that does the same, a test function like the last ones here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from builders import REPO_ROOT as REPO

from components.common.storage import OutputPathError, guard_output
from components.demo.samples import SAMPLES

SAMPLE_DATA = SAMPLES / "sample_data"
SAMPLE_MMLU = SAMPLES / "sample_mmlu"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def storage_ws(tmp_path_factory, tiny_model_dir) -> Path:
    """storage/{models/base-model, output/run/adapter, data, eval/mmlu, models/chat/v1 (published), results}."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from components.merge.merge_lora import merge_and_publish

    root = tmp_path_factory.mktemp("output-paths") / "storage"
    base = Path(shutil.copytree(tiny_model_dir, root / "models" / "base-model"))
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules=["q_proj"]))
    model.save_pretrained(root / "output" / "run" / "adapter")
    shutil.copytree(SAMPLE_DATA, root / "data")
    shutil.copytree(SAMPLE_MMLU, root / "eval" / "mmlu")
    merge_and_publish(base, None, root / "models" / "chat", "v1", set_current=True)
    (root / "results").mkdir()
    for name in ("candidate-mmlu.json", "candidate-task.json", "baseline-mmlu.json", "baseline-task.json"):
        (root / "results" / name).write_text('{"written": "by evaluate"}')
    (root / "plain").mkdir()
    (root / "plain" / "notes.txt").write_text("not a model")
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime: any write, delete or rename changes it."""
    found = {}
    for path in [root, *root.rglob("*")]:
        stat = path.lstat()
        found[str(path.relative_to(root))] = (stat.st_size if path.is_file() else 0, stat.st_mtime_ns)
    return found


def _args(storage_ws: Path, argv: list[str]) -> list[str]:
    return [arg.replace("{ws}", str(storage_ws)) for arg in argv]


MERGE = ["--base", "{ws}/models/base-model", "--adapter", "{ws}/output/run/adapter"]
COMPARE = [item for role in ("candidate", "baseline") for kind in ("mmlu", "task")
           for item in (f"--{role}-{kind}", f"{{ws}}/results/{role}-{kind}.json")]
EVALUATE = ["--model", "{ws}/models/base-model", "--data-dir", "{ws}/eval/mmlu", "--limit", "1"]
TASK = ["--model", "{ws}/models/base-model", "--data-dir", "{ws}/data", "--dataset", "alpaca_sample", "--template",
        "llama3", "--cutoff-len", "64"]
VALIDATE = ["--dataset-dir", "{ws}/data", "--dataset", "alpaca_sample"]

ENTRY_POINTS = {"merge_lora": "components.merge.merge_lora", "validate_dataset": "components.data.validate_dataset",
                "compare": "components.gate.compare", "evaluate_mmlu": "components.evaluate.mmlu.evaluate_mmlu",
                "evaluate_task": "components.evaluate.task.evaluate_task", "tiny_model": "components.demo.tiny_model"}

# (case, entry point (a key of ENTRY_POINTS), argv, exit code, words the message must hold)
CASES = [
    ("merge --output the base --force", "merge_lora", [*MERGE, "--output", "{ws}/models/base-model", "--force"], 1,
     "--output {ws}/models/base-model is --base"),
    ("merge --output the parent of base and adapter --force", "merge_lora", [*MERGE, "--output", "{ws}", "--force"],
     1, "--output {ws} is a parent of --base"),
    ("merge --output inside the base", "merge_lora", [*MERGE, "--output", "{ws}/models/base-model/merged"], 1,
     "is inside --base"),
    ("merge --output the adapter --force", "merge_lora", [*MERGE, "--output", "{ws}/output/run/adapter", "--force"],
     1, "is --adapter"),
    ("merge --publish-to the base", "merge_lora", [*MERGE, "--publish-to", "{ws}/models/base-model"], 1,
     "--publish-to {ws}/models/base-model is --base"),
    ("merge --publish-to the parent of the base", "merge_lora", [*MERGE, "--publish-to", "{ws}/models"], 1,
     "--publish-to {ws}/models is a parent of --base"),
    ("merge --publish-to inside a published version", "merge_lora", [*MERGE, "--publish-to", "{ws}/models/chat/v1"],
     1, "is the model directory {ws}/models/chat/v1"),
    ("merge --output a published version --force", "merge_lora",
     [*MERGE, "--output", "{ws}/models/chat/v1", "--force"], 1, "is the published version 'v1'"),
    ("merge --output the versions folder --force", "merge_lora", [*MERGE, "--output", "{ws}/models/chat", "--force"],
     1, "merge_info.json is missing"),
    ("merge --output a folder that is no model --force", "merge_lora", [*MERGE, "--output", "{ws}/plain", "--force"],
     1, "--force replaces only a directory an earlier merge_lora --output wrote"),
    ("validate --report the dataset file", "validate_dataset",
     [*VALIDATE, "--report", "{ws}/data/alpaca_sample.json"], 2, "--report {ws}/data/alpaca_sample.json is inside "
                                                                  "--dataset-dir"),
    ("validate --report dataset_info.json", "validate_dataset", [*VALIDATE, "--report", "{ws}/data/dataset_info.json"],
     2, "is inside --dataset-dir"),
    ("validate --report the MMLU data", "validate_dataset",
     [*VALIDATE, "--eval-data-dir", "{ws}/eval/mmlu", "--report", "{ws}/eval/mmlu/test/astronomy_test.csv"], 2,
     "is inside --eval-data-dir"),
    ("compare --json its candidate results", "compare",
     [*COMPARE, "--json", "{ws}/results/candidate-mmlu.json"], 2, "--json {ws}/results/candidate-mmlu.json is "
                                                                  "--candidate-mmlu"),
    ("compare --report its baseline task results", "compare",
     [*COMPARE, "--report", "{ws}/results/baseline-task.json"], 2, "is --baseline-task"),
    ("evaluate --output inside a published version", "evaluate_mmlu", [*EVALUATE, "--output", "{ws}/models/chat/v1"],
     1, "is inside the model directory {ws}/models/chat/v1"),
    ("evaluate --output the model", "evaluate_mmlu", [*EVALUATE, "--output", "{ws}/models/base-model"], 1,
     "is inside --model"),
    ("evaluate --output the MMLU data", "evaluate_mmlu", [*EVALUATE, "--output", "{ws}/eval/mmlu/test"], 1,
     "is inside --data-dir"),
    ("task_eval --output inside a published version", "evaluate_task",
     [*TASK, "--output", "{ws}/models/chat/v1/eval"], 1, "is inside the model directory {ws}/models/chat/v1"),
    ("task_eval --output the data", "evaluate_task", [*TASK, "--output", "{ws}/data"], 1, "is inside --data-dir"),
    ("tiny_model --output inside a published version", "tiny_model", ["--output", "{ws}/models/chat/v1/tiny"], 1,
     "is inside the model directory"),
]


@pytest.mark.parametrize(("case", "module", "argv", "code", "words"), CASES, ids=[case[0] for case in CASES])
def test_an_output_that_would_damage_an_input_or_a_published_model_is_refused_first(storage_ws, capsys, case, module,
                                                                                     argv, code, words):
    import importlib

    main = importlib.import_module(ENTRY_POINTS[module]).main
    before = snapshot(storage_ws)
    assert main(_args(storage_ws, argv)) == code
    captured = capsys.readouterr()
    assert words.replace("{ws}", str(storage_ws)) in captured.err, captured.err
    assert snapshot(storage_ws) == before  # nothing written, renamed or deleted
    from components.merge.verify import verify_model_dir

    verify_model_dir(storage_ws / "models" / "chat" / "v1")


def test_the_refusal_is_a_message_in_a_real_process_too(storage_ws, tmp_path):
    before = snapshot(storage_ws)
    proc = subprocess.run([sys.executable, "-m", "components.merge.merge_lora", *_args(storage_ws, MERGE), "--output",
                           str(storage_ws), "--force"], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"--output {storage_ws} is a parent of --base" in proc.stderr
    assert snapshot(storage_ws) == before


def test_force_still_replaces_an_earlier_merge_output(storage_ws, tmp_path, capsys):
    from components.merge.merge_lora import main
    from components.merge.verify import verify_model_dir

    out = tmp_path / "merged"
    assert main([*_args(storage_ws, MERGE), "--output", str(out)]) == 0
    first = (out / "merge_info.json").stat().st_mtime_ns
    assert main([*_args(storage_ws, MERGE), "--output", str(out), "--force", "--dtype", "fp16"]) == 0
    verify_model_dir(out)
    assert (out / "merge_info.json").stat().st_mtime_ns != first
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    capsys.readouterr()


def test_a_registered_model_name_equal_to_the_base_folder_is_refused_by_the_step(storage_ws, tmp_path):
    """The merge step publishes to <models_root>/<registered_model_name>: with the base model's folder the versions
    would land inside the base. The config refuses the base's own name at load (``bad_input/test_config.py``); a
    name whose folder is a symlink to the base is refused by the step, before MLflow or the volume is touched."""
    from components.merge.merge_lora import run_step
    from configs.loading import load_config

    storage = Path(shutil.copytree(storage_ws, tmp_path / "storage", symlinks=True))
    (storage / "models" / "served").symlink_to("base-model")
    cfg = load_config("local", overrides=[f"storage.mount_path={storage}", "mlflow.registered_model_name=served",
                                          f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    before = snapshot(storage)
    with pytest.raises(OutputPathError, match="mlflow.registered_model_name .*models/base-model is storage.base_model"):
        run_step(cfg.model_dump_json(), "run-1", "output/run/adapter", merged=None)
    assert snapshot(storage) == before and not (tmp_path / "mlflow.db").exists()


def test_a_split_snapshot_inside_the_data_is_refused_by_the_step(storage_ws, tmp_path):
    from components.data.validate_dataset import validate_config_data
    from configs.loading import load_config

    storage = Path(shutil.copytree(storage_ws, tmp_path / "storage", symlinks=True))
    cfg = load_config("local", overrides=[f"storage.mount_path={storage}", "storage.output_root=data/runs"])
    before = snapshot(storage)
    with pytest.raises(OutputPathError, match=r"the split snapshot \(storage.output_root\) .* is inside "
                                              r"storage.data_dir"):
        validate_config_data(cfg, "run-1", replace=True)
    assert snapshot(storage) == before


def test_the_guard_on_its_own(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "in")
    inputs = {"--in": tmp_path / "in", "--none": None, "--empty": ""}
    assert guard_output(tmp_path / "out" / "x.txt", inputs) == (tmp_path / "out" / "x.txt").resolve()
    assert guard_output(tmp_path / "in2", inputs)  # a sibling whose name starts the same is no child
    for output, words in ((tmp_path / "in", "is --in"), (tmp_path / "link" / "b.txt", "is inside --in"),
                          (tmp_path / "in" / ".." / "in" / "a.txt", "is inside --in"), (tmp_path, "is a parent of")):
        with pytest.raises(OutputPathError, match=words):
            guard_output(output, inputs)
    with pytest.raises(OutputPathError, match=r"\(5"):  # an over-long name is shortened in the message
        guard_output(tmp_path / "in" / ("y" * 5000), inputs)
