"""The run form: typed pipeline parameters generated from the schema, and the one resolver that applies them.

The IR is compiled for real and parsed with the KFP protos; the resolver is the function the resolve-config
task runs; the trainer command is the train step's own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from builders import REPO_ROOT
from google.protobuf import json_format
from kfp import compiler
from kfp.pipeline_spec import pipeline_spec_pb2

from components.run.resolve_config import form_from_overrides, resolve
from configs.form import CONFIG_PARAM, OVERRIDES_PARAM, canonical, field_value, form_fields, form_values
from configs.loading import load_config
from configs.schema import ConfigError
from pipelines.finetune import build_pipeline, pipeline_name

KFP_TYPES = {str: "STRING", int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", bool: "BOOLEAN", list: "LIST",
             dict: "STRUCT"}


@pytest.fixture(scope="module")
def lora_ir(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("ir") / "lora.yaml"
    compiler.Compiler().compile(build_pipeline(load_config("lora")), package_path=str(path))
    pipeline_doc = next(yaml.safe_load_all(path.read_text()))
    json_format.ParseDict(pipeline_doc, pipeline_spec_pb2.PipelineSpec())  # strict: the IR is valid
    return pipeline_doc


def test_the_ir_root_parameters_are_the_schema_marked_fields(lora_ir):
    cfg = load_config("lora")
    params = lora_ir["root"]["inputDefinitions"]["parameters"]
    fields = {field.name: field for field in form_fields()}
    assert set(params) == set(fields) | {CONFIG_PARAM, OVERRIDES_PARAM}
    assert len(fields) >= 20
    for name, field in fields.items():
        assert params[name]["parameterType"] == KFP_TYPES[field.kind], name
        assert canonical(params[name]["defaultValue"]) == canonical(field_value(cfg, field.path)), name
        assert params[name]["description"].startswith(field.description), name
        assert field.path in params[name]["description"], name
    assert json.loads(params[CONFIG_PARAM]["defaultValue"]) == cfg.model_dump(mode="json")


def test_the_alphabetical_form_reads_in_pipeline_order_most_changed_first():
    names = sorted(field.name for field in form_fields())
    assert names[:6] == ["a_base_model", "a_chat_template", "a_datasets", "b_learning_rate", "b_learning_rate_sweep",
                         "b_method"]  # a sweep's list sits right below its field
    assert names[-1].startswith("h_") and sorted([*names, CONFIG_PARAM, OVERRIDES_PARAM])[-2:] == [
        CONFIG_PARAM, OVERRIDES_PARAM]
    wanted = {"storage.base_model", "training.template", "dataset.names", "training.method",
              "training.learning_rate", "training.num_train_epochs", "training.max_steps",
              "training.per_device_train_batch_size", "training.gradient_accumulation_steps", "training.cutoff_len",
              "training.lora_rank", "training.lora_alpha", "training.lora_dropout", "training.lora_target",
              "training.seed", "evaluation.n_shot", "evaluation.subjects", "gate.min_task_improvement",
              "gate.mmlu_max_drop", "gate.max_regression", "mlflow.registered_model_name", "mlflow.experiment"}
    assert wanted <= {field.path for field in form_fields()}


def test_the_resolver_is_the_first_task_and_takes_every_form_field(lora_ir):
    tasks = lora_ir["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    resolver = tasks["resolve-config"]
    assert set(resolver["inputs"]["parameters"]) >= {field.name for field in form_fields()}
    assert not resolver.get("dependentTasks")
    for name, task in tasks.items():
        if name != "resolve-config":
            assert "resolve-config" in json.dumps(task) or task.get("dependentTasks"), name


def test_the_resolve_config_wrapper_takes_one_typed_parameter_per_form_field():
    """The wrapper is written out, so this holds it to the schema's marks: its parameters after the fixed five are
    the form fields (names, KFP types, order), each described as the pipeline's parameter is, and each handed to
    the resolver's form under its own name."""
    import ast
    import inspect

    from pipelines import steps
    from pipelines.run_form import parameter_docs

    fixed = ["kfp_run_id", "kfp_run_name", "compiled_config", CONFIG_PARAM, OVERRIDES_PARAM]
    signature = inspect.signature(steps.resolve_config.python_func).parameters
    assert list(signature)[:5] == fixed
    assert [(name, parameter.annotation) for name, parameter in signature.items()][5:] == [
        (field.name, field.kind) for field in form_fields()]
    inputs = steps.resolve_config.component_spec.inputs
    docs = parameter_docs()
    assert {name: inputs[name].description for name in docs} == docs  # as the UI's form describes them
    tree = ast.parse((REPO_ROOT / "pipelines" / "steps.py").read_text())
    (wrapper,) = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "resolve_config"]
    (call,) = [node for node in ast.walk(wrapper) if isinstance(node, ast.Call) and ast.unparse(node.func) ==
               "run_step"]
    (form,) = [keyword.value for keyword in call.keywords if keyword.arg == "form"]
    assert [(key.value, value.id) for key, value in zip(form.keys, form.values, strict=True)] == [
        (field.name, field.name) for field in form_fields()]


def test_the_compile_time_fields_are_the_schema_marked_ones_and_none_is_on_the_form():
    from configs.form import compile_time_paths

    paths = compile_time_paths()
    assert set(paths) == {  # what the compiled IR takes from the config (images, resources, timeouts, the mount)
        "cluster.image", "cluster.image_pull_secrets", "cluster.nodes", "cluster.cpu_request", "cluster.memory_request",
        "cluster.memory_limit", "cluster.light_cpu_request", "cluster.light_memory_request", "cluster.shm_size",
        "cluster.train_timeout_s", "cluster.eval_timeout_s", "cluster.merge_timeout_s", "cluster.light_timeout_s",
        "cluster.train_retries", "training.deepspeed_stage", "storage.mount_path", "storage.output_root",
        "mlflow.credentials_secret", "evaluation.judge_secret", "sweep.parallelism"}
    assert not set(paths) & {field.path for field in form_fields()}  # a run parameter is never fixed at compile


def _resolve(form: dict | None = None, overrides: list[str] | None = None, config: dict | None = None,
             preset: str = "lora"):
    compiled = load_config(preset)
    defaults = form_values(compiled)
    text = json.dumps(config) if config is not None else compiled.model_dump_json()
    return resolve(text, overrides or [], {**defaults, **(form or {})}, compiled)


def test_a_typed_parameter_beats_overrides_which_beat_the_config():
    config = load_config("lora").model_dump(mode="json")
    config["training"]["learning_rate"] = 3e-4
    assert _resolve(config=config).training.learning_rate == 3e-4
    assert _resolve(config=config, overrides=["training.learning_rate=2e-4"]).training.learning_rate == 2e-4
    cfg = _resolve({"b_learning_rate": 5e-5}, ["training.learning_rate=2e-4"], config)
    assert cfg.training.learning_rate == 5e-5


def test_ints_handed_back_as_floats_mean_the_same_value():
    cfg = _resolve({"d_lora_rank": 32.0, "c_max_steps": -1.0})  # kfp.local hands integers back as floats
    assert cfg.training.lora_rank == 32 and isinstance(cfg.training.lora_rank, int)


def test_a_bad_typed_value_names_the_field():
    with pytest.raises(ConfigError, match=r"training\.learning_rate: Input should be greater than 0"):
        _resolve({"b_learning_rate": -1.0})


def test_the_accelerator_count_of_the_form_reaches_the_trainer_launch(tmp_path):
    from components.train.launch import trainer_command

    cfg = _resolve({"h_accelerator_count": 4})
    assert cfg.cluster.accelerator_count == 4
    command = trainer_command(cfg, True, tmp_path / "train.yaml")
    assert command[command.index("--nproc-per-node") + 1] == "4"


def test_an_override_that_disagrees_with_a_cluster_parameter_is_refused():
    with pytest.raises(ConfigError, match="h_accelerator_count"):
        _resolve(overrides=["cluster.accelerator_count=4"])
    with pytest.raises(ConfigError, match="h_pvc_name"):
        _resolve(overrides=["storage.pvc_name=other"])
    assert _resolve({"h_pvc_name": "other"}).storage.pvc_name == "other"


@pytest.mark.parametrize("override, field", [
    ("cluster.image=registry.example.com/other:1", "cluster.image"),
    ("training.deepspeed_stage=3", "training.deepspeed_stage"),
    ("cluster.train_timeout_s=600", "cluster.train_timeout_s"),
    ("cluster.memory_limit=1Ti", "cluster.memory_limit"),
])
def test_a_compile_time_field_changed_at_run_time_is_refused(override, field):
    with pytest.raises(ConfigError, match="compile another config") as error:
        _resolve(overrides=[override])
    assert field in str(error.value)


def test_gpus_or_not_is_fixed_when_compiling():
    with pytest.raises(ConfigError, match="compiled with GPUs"):
        _resolve({"h_accelerator_count": 0})
    with pytest.raises(ConfigError, match="compiled without GPUs"):
        _resolve({"h_accelerator_count": 2}, preset="local")


def test_unknown_form_parameters_are_refused():
    compiled = load_config("lora")
    with pytest.raises(ConfigError, match="unknown run parameters"):
        resolve(compiled.model_dump_json(), [], {"b_learnig_rate": 1e-4}, compiled)


def test_set_values_with_a_typed_parameter_become_that_parameter():
    typed, rest = form_from_overrides(["training.learning_rate=5e-5", "training.lora_rank=32",
                                       "training.warmup_ratio=0.1", "dataset.names=[a, b]"])
    assert typed == {"b_learning_rate": 5e-5, "d_lora_rank": 32, "a_datasets": ["a", "b"]}
    assert rest == ["training.warmup_ratio=0.1"]


def test_a_config_compiled_with_changes_gets_its_own_name():
    cfg = load_config("lora", overrides=["training.lora_rank=32"])
    assert pipeline_name(load_config("lora"), []) == ("llm-finetune-lora", "Fine-tune with LLaMA-Factory (LoRA)")
    name, display = pipeline_name(cfg, ["training.lora_rank=32"])
    assert name.startswith("llm-finetune-lora-") and name != "llm-finetune-lora"
    assert display == "Fine-tune with LLaMA-Factory (LoRA; training.lora_rank=32)"


def test_the_train_task_is_named_after_the_resolved_method(lora_ir):
    tasks = json.dumps(lora_ir["components"])
    for display in ("Train (LoRA)", "Train (QLoRA)", "Train (full)"):
        assert f'"name": "{display}"' in tasks


def test_the_local_preset_is_not_compiled_for_a_cluster(tmp_path):
    from pipelines.compile import compile_config, presets

    assert "local" not in presets()
    with pytest.raises(ConfigError, match="not absolute"):
        compile_config(load_config("local"), tmp_path / "local.yaml")
    assert not Path(tmp_path / "local.yaml").exists()


def test_the_readme_shows_the_form_as_the_schema_declares_it():
    from configs.form import README_BEGIN, README_END, markdown_table

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    shown = readme.split(README_BEGIN, 1)[1].split(README_END, 1)[0].strip()
    assert shown == markdown_table(load_config("lora")), "run: python -m configs.form, and paste it into the README"


# Installed in every Python process of the run below (kfp.local's tasks, the trainer) through PYTHONPATH: it records
# each file opened under the split snapshot's test/ and val/ folders, and by which task function or program.
AUDIT_HOOK = r"""
import os, sys
_ROOT, _LOG = os.environ.get("LLMFT_AUDIT_ROOT"), os.environ.get("LLMFT_AUDIT_LOG")

def _who():
    if "--function_to_execute" in sys.argv:
        return sys.argv[sys.argv.index("--function_to_execute") + 1]
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"

def _opened(event, args):
    if event != "open" or not _ROOT or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path = os.fsdecode(args[0])
    if path.startswith(_ROOT) and ("/data/test/" in path or "/data/val/" in path):
        with open(_LOG, "a") as log:
            log.write(f"{_who()}\t{path}\t{args[1]}\n")

sys.addaudithook(_opened)
"""


@pytest.mark.slow
def test_a_two_trial_sweep_from_the_form_trains_both_picks_on_validation_and_gates_only_the_winner(tmp_path,
                                                                                                  tiny_model_dir):
    """The whole pipeline through kfp.local, started as the Kubeflow UI's form starts it: typed parameters changed
    (a learning-rate sweep of two values, a LoRA rank, a step limit), z_config left at the compiled preset.

    Each trial trains its own settings in its own directory and MLflow run; the data is tokenized once; select-trial
    picks the lower validation loss and frees the loser's optimizer states; only the winner is merged and gated, and
    the report lists both trials. Every file opened under the snapshot's test/ and val/ folders is recorded (a
    Python audit hook in every process of the run): the tasks that train and choose never open a test file, and
    the gate's tasks never open a validation file."""
    import os
    import shutil
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    from components.train.select_trial import Selection
    from pipelines import run_local

    storage = tmp_path / "storage"
    shutil.copytree(tiny_model_dir, storage / "models" / "base-model")
    hook = tmp_path / "audit"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(AUDIT_HOOK)
    audit = tmp_path / "opened.tsv"
    arguments = {"b_learning_rate_sweep": [0.002, 0.05], "d_lora_rank": 4, "c_max_steps": 4}
    code = ("import sys, json; from pipelines import run_local as r;"
            "cfg = r.localise(r.load_config('local'), __import__('pathlib').Path(sys.argv[1]));"
            "r.prepare_storage(cfg); r.run_pipeline(cfg, json.loads(sys.argv[2]))")
    env = dict(os.environ, PYTHONUNBUFFERED="1", LLMFT_AUDIT_ROOT=str(storage / "output"), LLMFT_AUDIT_LOG=str(audit),
               PYTHONPATH=os.pathsep.join(filter(None, [str(hook), str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", code, str(storage), json.dumps(arguments)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = (storage / "output").iterdir()
    resolved = json.loads((run / "resolved_config.json").read_text())
    assert resolved["sweep"]["learning_rate"] == [0.002, 0.05] and resolved["training"]["lora_rank"] == 4
    for trial, rate in enumerate((0.002, 0.05)):  # each trial its own settings and directory
        rendered = yaml.safe_load((run / "trials" / f"trial-{trial}" / "train.yaml").read_text())
        assert (rendered["learning_rate"], rendered["lora_rank"], rendered["max_steps"]) == (rate, 4, 4)
        assert rendered["eval_dataset"] == "alpaca_sample@val" and rendered["load_best_model_at_end"] is True
        assert rendered["tokenized_path"].startswith(str(run / "tokenized"))
    assert [path.name for path in (run / "tokenized").iterdir()] == [Path(rendered["tokenized_path"]).name]
    logs = ["".join(path.read_text() for path in (run / "trials" / f"trial-{n}" / "logs").glob("*.log"))
            for n in (0, 1)]
    assert "Tokenized dataset is saved" in logs[0] and "Loaded tokenized dataset from" in logs[1]  # tokenized once

    selection = Selection.model_validate_json((run / "selection.json").read_text())
    assert [trial.settings for trial in selection.trials] == [{"learning_rate": 0.002}, {"learning_rate": 0.05}]
    losses = [trial.val_loss for trial in selection.trials]
    assert selection.winner == min(range(2), key=lambda index: (losses[index], index))  # lowest, ties to the lower
    winner, loser = selection.winning(), selection.trials[1 - selection.winner]
    winner_dir, loser_dir = Path(winner.model_dir).parent, Path(loser.model_dir).parent
    assert list(winner_dir.glob("checkpoints/checkpoint-*/optimizer.pt"))  # the winner may still be retried
    assert not list(loser_dir.glob("checkpoints/checkpoint-*/optimizer.pt"))  # the loser's states are freed
    assert list(loser_dir.glob("checkpoints/checkpoint-*/adapter_model.safetensors"))  # its weights stay
    (merged,) = (storage / "models" / "tiny-llama-demo").glob("2*")
    assert json.loads((merged / "merge_info.json").read_text())["adapter"] == winner.model_dir  # only the winner

    cfg = run_local.localise(run_local.load_config("local"), storage)
    client = MlflowClient(cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("llmft.role") == "pipeline")
    trains = sorted((r for r in runs if r.data.tags.get("llmft.step") == "train"),
                    key=lambda r: r.data.tags["llmft.trial"])
    assert [r.info.run_name.split(" · ")[:2] for r in trains] == [["train", "trial-0"], ["train", "trial-1"]]
    assert [r.data.params["learning_rate"] for r in trains] == ["0.002", "0.05"]  # numbers MLflow can plot
    assert [r.data.params["sweep.learning_rate"] for r in trains] == ["0.002", "0.05"]
    assert [r.data.metrics["best_val_loss"] for r in trains] == pytest.approx(losses)
    assert parent.data.tags["llmft.winner_trial"] == f"trial-{selection.winner}"
    assert parent.data.params["sweep.learning_rate"] == "[0.002, 0.05]"
    assert parent.data.params["training.lora_rank"] == "4"
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "trials.json", str(tmp_path))).read_text())
    assert table["columns"][:2] == ["trial", "learning_rate"] and len(table["data"]) == 2
    compare = next(r for r in runs if r.data.tags.get("llmft.step") == "compare")
    report = Path(client.download_artifacts(compare.info.run_id, "report/report.md", str(tmp_path))).read_text()
    assert "## Trials: the candidate won on the validation rows" in report
    assert f"trial-{selection.winner} (winner)" in report

    # Honest statistics: which process opened which snapshot file.
    opened = [line.split("\t") for line in audit.read_text().splitlines()]
    readers = {side: {who for who, path, mode in opened if f"/data/{side}/" in path and "r" in mode}
               for side in ("test", "val")}
    choosers = {"train", "worker.py", "select_trial"}  # the train task, the trainer process, select-trial
    assert {"worker.py"} <= readers["val"] and "evaluate_candidate" in readers["test"]
    assert not readers["test"] & choosers, readers  # no test row before the gate: training and choosing never
    assert not readers["val"] & {"evaluate_candidate", "evaluate_baseline", "compare"}, readers  # nor validation
    assert readers["test"] <= {"validate_dataset", "find_baseline", "evaluate_baseline", "evaluate_candidate"}
    assert readers["val"] <= {"validate_dataset", "train", "worker.py"}  # train checks the hashes it trains on


@pytest.mark.parametrize(("preset", "form", "overrides", "method", "bits"), [
    ("lora", {"b_method": "qlora"}, [], "qlora", 4),  # QLoRA's 4 bits follow the method
    ("lora", {"b_method": "qlora"}, ["training.quantization_bit=8"], "qlora", 8),  # unless set explicitly
    ("qlora", {"b_method": "lora"}, [], "lora", None),  # and go with it
    ("qlora", {"b_method": "full"}, [], "full", None),
    ("qlora", {}, ["training.method=lora"], "lora", None),
])
def test_the_method_can_be_switched_from_the_run_form(preset, form, overrides, method, bits):
    """b_method=qlora on the lora pipeline failed with "needs quantization_bit", which the form cannot set;
    b_method=lora on the qlora pipeline failed the other way."""
    cfg = _resolve(form, overrides, preset=preset)
    assert (cfg.training.method, cfg.training.quantization_bit) == (method, bits)


def test_quantization_bits_without_qlora_say_what_to_set_where():
    with pytest.raises(ConfigError) as refused:
        _resolve(overrides=["training.quantization_bit=4"])
    assert "training.quantization_bit is only for method 'qlora'" in str(refused.value)
    assert "set training.method=qlora (run form: b_method)" in str(refused.value)


def test_a_huge_step_count_from_the_form_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"training\.max_steps: Input should be less than or equal to"):
        _resolve({"c_max_steps": 10**15})
