"""The compiled IR: parsed strictly with the KFP protos, scheduled as a GPU cluster needs, secret-free,
deterministic, torch-free to produce, and current in compiled/."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

from configs.loading import config_from_json, load_config
from pipelines.compile import COMPILED_DIR, REPO_ROOT, presets, stale_files

GPU_EXECUTORS = {"exec-train", "exec-train-2", "exec-train-3", "exec-evaluate-candidate", "exec-evaluate-baseline",
                 "exec-merge-lora"}
HEAVY_MODULES = ("torch", "transformers", "llamafactory", "peft", "datasets", "mlflow")
PLANTED_SECRET = "planted-Secret-5f1c9e-do-not-leak"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, Path]:
    """Every preset compiled in a subprocess that has a recognisable secret in its environment (hash seed 1)."""
    out = tmp_path_factory.mktemp("compiled")
    env = dict(os.environ, MLFLOW_TRACKING_PASSWORD=PLANTED_SECRET, MLFLOW_TRACKING_TOKEN=PLANTED_SECRET,
               KFP_TOKEN=PLANTED_SECRET, PYTHONHASHSEED="1")
    subprocess.run([sys.executable, "-m", "pipelines.compile", "--output", str(out)], check=True, env=env,
                   cwd=REPO_ROOT, capture_output=True)
    return {path.stem: path for path in sorted(out.glob("*.yaml"))}


@pytest.fixture(scope="module")
def compiled_again(tmp_path_factory) -> tuple[dict[str, Path], list[str]]:
    """Every preset compiled again by the same entry point in another interpreter (hash seed 2), and the heavy
    frameworks that interpreter had imported by the end."""
    out = tmp_path_factory.mktemp("compiled-again")
    code = ("import sys, pipelines.compile as c; assert c.main(['--output', sys.argv[1]]) == 0;"
            f"print([m for m in {HEAVY_MODULES!r} if m in sys.modules])")
    heavy = subprocess.run([sys.executable, "-c", code, str(out)], check=True, cwd=REPO_ROOT, capture_output=True,
                           text=True, env=dict(os.environ, PYTHONHASHSEED="2")).stdout
    return {path.stem: path for path in sorted(out.glob("*.yaml"))}, ast.literal_eval(heavy.splitlines()[-1])


def _documents(path: Path) -> tuple[pipeline_spec_pb2.PipelineSpec, dict, pipeline_spec_pb2.PlatformSpec]:
    pipeline_doc, platform_doc = yaml.safe_load_all(path.read_text())
    spec = json_format.ParseDict(pipeline_doc, pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    platform = json_format.ParseDict(platform_doc, pipeline_spec_pb2.PlatformSpec(), ignore_unknown_fields=False)
    return spec, pipeline_doc, platform


def _k8s_executors(platform: pipeline_spec_pb2.PlatformSpec) -> dict[str, k8s_pb2.KubernetesExecutorConfig]:
    executors = json_format.MessageToDict(platform.platforms["kubernetes"].deployment_spec)["executors"]
    return {
        name: json_format.ParseDict(config, k8s_pb2.KubernetesExecutorConfig(), ignore_unknown_fields=False)
        for name, config in executors.items()
    }


def test_every_preset_is_compiled(compiled):
    assert set(compiled) == set(presets())


@pytest.mark.parametrize("preset", ["lora", "qlora", "full"])
def test_gpu_tasks_carry_every_scheduling_setting(compiled, preset):
    cfg = load_config(preset)
    spec, pipeline_doc, platform = _documents(compiled[preset])
    containers = pipeline_doc["deploymentSpec"]["executors"]
    executors = _k8s_executors(platform)
    assert set(executors) >= GPU_EXECUTORS
    for name in GPU_EXECUTORS:
        resources = containers[name]["container"]["resources"]
        assert resources["accelerator"]["resourceType"] or resources["accelerator"].get("resourceTypeParameter")
        assert "resourceCountParameter" in resources["accelerator"] or resources["accelerator"].get("resourceCount")
        assert resources["resourceCpuRequest"] == cfg.cluster.cpu_request
        assert resources["resourceMemoryRequest"] == cfg.cluster.memory_request
        config = executors[name]
        assert config.node_selector.node_selector_json.component_input_parameter
        assert config.tolerations and config.tolerations[0].toleration_json.component_input_parameter
        assert [m.mount_path for m in config.empty_dir_mounts] == ["/dev/shm"]
        assert config.empty_dir_mounts[0].medium == "Memory"
        assert config.active_deadline_seconds > 0
    assert containers["exec-train"]["container"]["image"] == cfg.cluster.image
    assert "exit-handler-1" in spec.root.dag.tasks


@pytest.mark.parametrize("preset", sorted(presets()))
def test_every_task_mounts_the_pvc_and_reads_credentials_from_the_secret(compiled, preset):
    cfg = load_config(preset)
    _, pipeline_doc, platform = _documents(compiled[preset])
    executors = _k8s_executors(platform)
    assert set(executors) == set(pipeline_doc["deploymentSpec"]["executors"])
    for name, config in executors.items():
        assert [m.mount_path for m in config.pvc_mount] == [cfg.storage.mount_path], name
        assert config.pvc_mount[0].pvc_name_parameter.component_input_parameter, name
        assert config.active_deadline_seconds > 0, name
        if cfg.mlflow.credentials_secret:
            assert config.secret_as_env[0].secret_name == cfg.mlflow.credentials_secret
            assert config.secret_as_env[0].optional


def test_no_credential_value_anywhere(compiled):
    for path in compiled.values():
        text = path.read_text()
        assert PLANTED_SECRET not in text
        assert "password:" not in text.lower()


def _all_tasks(spec: pipeline_spec_pb2.PipelineSpec) -> dict[str, pipeline_spec_pb2.PipelineTaskSpec]:
    """Every task of the pipeline, branches included, by task name."""
    tasks = dict(spec.root.dag.tasks)
    for component in spec.components.values():
        tasks.update(component.dag.tasks)
    return tasks


def test_the_training_task_retries_and_every_task_follows_the_task_table(compiled):
    from pipelines.finetune import TASKS, display_name

    spec, _, _ = _documents(compiled["lora"])
    tasks = _all_tasks(spec)
    for name in ("train", "train-2", "train-3"):  # one train task per method branch
        assert tasks[name].retry_policy.max_retry_count == load_config("lora").cluster.train_retries
    for name, settings in TASKS.items():
        assert tasks[name].caching_options.enable_cache is settings.cache, name
        assert tasks[name].task_info.name == display_name(name, "LoRA" if name == "train" else ""), name


def test_pipeline_inputs_come_from_the_config(compiled):
    """Every run parameter defaults to the compiled preset's value (the run form: tests/pipelines/test_run_form.py)."""
    from configs.form import canonical, field_value, form_fields

    for preset, path in compiled.items():
        cfg = load_config(preset)
        spec, _, _ = _documents(path)
        params = spec.root.input_definitions.parameters
        for name, param in params.items():
            assert param.description, f"{preset}: input {name} has no description"
        assert config_from_json(params["z_config"].default_value.string_value) == cfg
        for field in form_fields():
            default = json_format.MessageToDict(params[field.name].default_value)
            assert canonical(default) == canonical(field_value(cfg, field.path)), (preset, field.name)


def test_compile_is_deterministic(compiled, compiled_again):
    again, _ = compiled_again
    assert set(again) == set(compiled)
    for name, path in compiled.items():
        assert path.read_bytes() == again[name].read_bytes(), name


def test_compile_imports_no_heavy_framework(compiled_again):
    _, heavy = compiled_again
    assert heavy == []


def test_checked_in_ir_is_current():
    assert stale_files(COMPILED_DIR) == [], "run: python -m pipelines.compile"


def _wrappers() -> list[tuple[str, ast.FunctionDef]]:
    """The component functions of pipelines/steps.py (every KFP wrapper lives there)."""
    tree = ast.parse((REPO_ROOT / "pipelines" / "steps.py").read_text())
    return [(node.name, node) for node in tree.body if isinstance(node, ast.FunctionDef)
            and any("component" in ast.unparse(decorator) for decorator in node.decorator_list)]


def test_wrappers_hold_no_logic():
    wrappers = _wrappers()
    assert len(wrappers) >= 14 and "resolve_config" in dict(wrappers)
    for name, node in wrappers:
        body = [stmt for stmt in node.body if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))]
        calls = [stmt for stmt in body if not isinstance(stmt, ast.Import | ast.ImportFrom)]
        assert len(calls) == 1, f"{name}: a wrapper makes exactly one call"
        imports = [stmt for stmt in body if isinstance(stmt, ast.ImportFrom)]
        assert [stmt.module.split(".")[0] for stmt in imports] == ["components"], f"{name}: imports its step only"
        for inner in ast.walk(node):
            assert not isinstance(inner, ast.If | ast.For | ast.While | ast.Try | ast.With | ast.IfExp), name
        assert ast.get_docstring(node), f"{name}: the docstring is the IR's description"


def test_every_step_module_imports_in_a_running_task_without_kfp_or_heavy_frameworks():
    """A running task imports only its step's module (run-time code): no kfp, no torch on import."""
    modules = sorted({stmt.module for _, node in _wrappers() for stmt in node.body if isinstance(stmt, ast.ImportFrom)})
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            f"print([m for m in {(*HEAVY_MODULES, 'kfp')!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, capture_output=True, text=True,
                         env=dict(os.environ, _KFP_RUNTIME="true")).stdout
    assert out.strip() == "[]"


def test_compile_cli_reports_a_bad_override_with_the_field(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.compile", "--config", "lora", "--set", "training.lora_rank=-3",
         "--output", str(tmp_path / "x.yaml")], cwd=REPO_ROOT, capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "training.lora_rank" in proc.stderr
    assert not (tmp_path / "x.yaml").exists()


def test_ir_task_graph_matches_the_design(compiled):
    spec, _, _ = _documents(compiled["lora"])
    deps = {name: set(task.dependent_tasks) for name, task in _all_tasks(spec).items()}
    assert deps["validate-dataset"] == {"resolve-config"}
    assert {"resolve-config", "validate-dataset"} <= deps["condition-branches-2"]  # the method branches: train
    assert "condition-branches-2" in deps["merge-lora"]
    assert "merge-lora" in deps["evaluate-candidate"]
    baseline_branches = next(name for name, upstream in deps.items() if name.startswith("condition-branches")
                             and upstream == {"find-baseline", "resolve-config"})
    assert {"evaluate-candidate", baseline_branches, "find-baseline"} <= deps["compare"]
    assert {"compare", "merge-lora"} <= deps["register-model"]
    assert spec.root.dag.tasks["finalize-runs"].trigger_policy.strategy == (
        pipeline_spec_pb2.PipelineTaskSpec.TriggerPolicy.TriggerStrategy.ALL_UPSTREAM_TASKS_COMPLETED
    )


def test_each_method_trains_its_trials_in_a_parallel_for_and_select_trial_collects_them(compiled, tmp_path):
    """One DAG shape with or without a sweep: per method branch, a ParallelFor over resolve-config's ``trials``
    output, ``sweep.parallelism`` at a time, one train task per trial; select-trial fans the trials' model_dir in
    (``dsl.Collected``) and merge-lora takes the winner's."""
    spec, _, _ = _documents(compiled["lora"])
    tasks = _all_tasks(spec)
    loops = {task.task_info.name: task for task in tasks.values() if task.HasField("iterator_policy")}
    assert sorted(loops) == ["trials-full", "trials-lora", "trials-qlora"]
    names = {id(task): name for name, task in tasks.items()}
    for loop in loops.values():
        assert loop.iterator_policy.parallelism_limit == load_config("lora").sweep.parallelism == 2
        # The items: resolve-config's trials output, passed down through the method's branch.
        assert loop.parameter_iterator.items.input_parameter == "pipelinechannel--resolve-config-trials"
        body = spec.components[loop.component_ref.name].dag.tasks
        ((train_name, train),) = [(name, task) for name, task in body.items()
                                  if task.component_ref.name.startswith("comp-train")]
        assert train.task_info.name.startswith("Train (") and train.retry_policy.max_retry_count == 2
        assert train.inputs.parameters["trial"].component_input_parameter == loop.parameter_iterator.item_input
        (select,) = [task for task in tasks.values() if list(task.dependent_tasks) == [names[id(loop)]]]
        assert select.component_ref.name.startswith("comp-select-trial")
        collected = select.inputs.parameters["model_dirs"].task_output_parameter
        assert (collected.producer_task, collected.output_parameter_key) == (
            names[id(loop)], f"pipelinechannel--{train_name}-model_dir")
    deps = {name: set(task.dependent_tasks) for name, task in tasks.items()}
    assert "condition-branches-2" in deps["merge-lora"]  # the winner of whichever branch ran
    out = tmp_path / "wide.yaml"
    subprocess.run([sys.executable, "-m", "pipelines.compile", "--config", "lora", "--set", "sweep.parallelism=6",
                    "--output", str(out)], check=True, cwd=REPO_ROOT, capture_output=True)
    wide = [task.iterator_policy.parallelism_limit for task in _all_tasks(_documents(out)[0]).values()
            if task.HasField("iterator_policy")]
    assert wide == [6, 6, 6]


def test_multi_node_training_frees_the_train_task_from_the_gpu(tmp_path):
    """``compile --set cluster.nodes=4``: the train task only submits and follows a TrainJob (the default
    engine); the TrainJob's pods hold the GPUs, the task waits for it as long as training may take."""
    out = tmp_path / "multinode.yaml"
    subprocess.run([sys.executable, "-m", "pipelines.compile", "--config", "lora", "--set", "cluster.nodes=4",
                    "--output", str(out)], check=True, cwd=REPO_ROOT, capture_output=True)
    cfg = load_config("lora", overrides=["cluster.nodes=4"])
    spec, pipeline_doc, platform = _documents(out)
    executors = _k8s_executors(platform)
    train = pipeline_doc["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert "accelerator" not in train
    assert (train["resourceCpuRequest"], train["resourceMemoryRequest"]) == (
        cfg.cluster.light_cpu_request, cfg.cluster.light_memory_request)
    assert not executors["exec-train"].node_selector.node_selector_json.component_input_parameter
    assert not executors["exec-train"].empty_dir_mounts
    assert executors["exec-train"].active_deadline_seconds == cfg.cluster.train_timeout_s
    evaluate = pipeline_doc["deploymentSpec"]["executors"]["exec-evaluate-candidate"]["container"]["resources"]
    assert "accelerator" in evaluate
    assert executors["exec-evaluate-candidate"].active_deadline_seconds == cfg.cluster.eval_timeout_s
    resolved = config_from_json(spec.root.input_definitions.parameters["z_config"].default_value.string_value)
    assert (resolved.cluster.nodes, resolved.cluster.training_engine) == (4, "trainjob")
    assert resolved.cluster.training_runtime == "torch-distributed"


def test_the_judge_key_comes_from_its_secret_and_evaluation_takes_its_own_gpu_count(tmp_path):
    """``--set evaluation.judge_secret=...``: only the compare task (which asks the judge) gets the Secret's api_key
    as $JUDGE_API_KEY, by reference; the evaluate tasks reserve h_eval_accelerator_count GPUs, training its own."""
    out = tmp_path / "judge.yaml"
    subprocess.run([sys.executable, "-m", "pipelines.compile", "--config", "lora", "--set",
                    "evaluation.judge_secret=judge-key", "--set", "evaluation.judge_endpoint=http://judge:8000/v1",
                    "--output", str(out)], check=True, cwd=REPO_ROOT, capture_output=True)
    _, _, platform = _documents(out)
    executors = _k8s_executors(platform)
    judged = [name for name, config in executors.items()
              if any(secret.secret_name == "judge-key" for secret in config.secret_as_env)]
    assert judged == ["exec-compare"]
    (secret,) = [secret for secret in executors["exec-compare"].secret_as_env if secret.secret_name == "judge-key"]
    assert [(item.secret_key, item.env_var) for item in secret.key_to_env] == [("api_key", "JUDGE_API_KEY")]
    text = out.read_text()
    counts = re.findall(r"accelerator_count:\n\s+runtimeValue:\n\s+constant: '\{\{\$\.inputs\.parameters\[''"
                        r"pipelinechannel--(h_\w*accelerator_count)''\]\}\}'", text)
    assert sorted(counts) == ["h_accelerator_count"] * 4 + ["h_eval_accelerator_count"] * 2  # 3 train, merge; 2 eval
