"""The fine-tuning pipeline, as :func:`build_pipeline` builds it from a validated config.

The same function is compiled for the cluster (``python -m pipelines.compile``) and run locally through
``kfp.local`` (``python -m pipelines.run_local``). The DAG::

    exit handler: finalize-runs (no MLflow run left RUNNING; a multi-node training job deleted)
    └── resolve-config ─> validate-dataset ─> for each trial, sweep.parallelism at once: train (LoRA | QLoRA | full)
                          │   └─> select-trial (lowest validation loss) ─> merge-lora ─> evaluate-candidate ─┐
                          └─> find-baseline ─> if needs evaluation: evaluate-baseline ──────────────────────┤
                                               else:                reuse-baseline-scores ──────────────────┤
                                                                                                            v
        register-model <─ compare ─> if promote: promote-model  else: mark-challenger   (after register-model)

A run without a sweep is the same loop with one trial (one DAG shape for both): select-trial passes it on.

What is decided when:
- At run time, through the run form (:mod:`pipelines.run_form`): the typed parameters marked in
  :mod:`configs.schema`, ``z_config`` and ``z_overrides``. resolve-config turns them into the one resolved
  config every later task reads (precedence: typed parameter > overrides > config).
- At compile time, from the config: the image, GPUs or not, resources, timeouts, retries, caching, the
  storage mount, the MLflow credentials Secret (:data:`TASKS` holds each task's settings) and how many trials
  train at once (``sweep.parallelism``, the loop's parallelism). resolve-config refuses a run that tries to
  change them; the trials themselves (``sweep.*`` lists, typed parameters ``*_sweep``) are decided at run time.
"""

# No `from __future__ import annotations`: KFP reads the pipeline function's annotations as types.
import hashlib
import inspect
from typing import Any, NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import PipelineTask

from components.common.mlflow_client import MLFLOW_SECRET_KEYS
from components.gate.judge import KEY_ENV as JUDGE_KEY_ENV
from components.gate.judge import SECRET_KEY as JUDGE_SECRET_KEY
from configs.form import CONFIG_PARAM, OVERRIDES_PARAM
from configs.schema import PipelineConfig
from pipelines import steps
from pipelines.run_form import google_args, parameter_docs, pipeline_parameters

METHOD_NAMES = {"lora": "LoRA", "qlora": "QLoRA", "full": "full"}
ACRONYMS = {"lora": "LoRA"}


class TaskSettings(NamedTuple):
    """How one task runs: whether KFP may serve it from its cache, whether it needs a GPU node, which ``cluster``
    field holds its timeout, and which run parameter holds its GPU count."""

    cache: bool
    gpu: bool
    timeout: str
    gpus: str = "h_accelerator_count"


# One name per step: the task (the key), its component in pipelines.steps and its entry module
# (components.<package>.<name with _>), its MLflow run and its display name (display_name()) all follow it.
# Tasks that read state that can change under the same inputs (the dataset files, the registry) are never
# cached; train, merge and evaluate are, and their inputs carry the resolved config and the data version.
TASKS = {
    "resolve-config": TaskSettings(cache=False, gpu=False, timeout="light_timeout_s"),
    "validate-dataset": TaskSettings(False, False, "light_timeout_s"),
    "train": TaskSettings(True, True, "train_timeout_s"),
    "select-trial": TaskSettings(False, False, "light_timeout_s"),
    "merge-lora": TaskSettings(True, True, "merge_timeout_s"),
    "evaluate-candidate": TaskSettings(True, True, "eval_timeout_s", "h_eval_accelerator_count"),
    "find-baseline": TaskSettings(False, False, "light_timeout_s"),
    "evaluate-baseline": TaskSettings(True, True, "eval_timeout_s", "h_eval_accelerator_count"),
    "reuse-baseline-scores": TaskSettings(False, False, "light_timeout_s"),
    "compare": TaskSettings(False, False, "light_timeout_s"),
    "register-model": TaskSettings(False, False, "light_timeout_s"),
    "promote-model": TaskSettings(False, False, "light_timeout_s"),
    "mark-challenger": TaskSettings(False, False, "light_timeout_s"),
    "finalize-runs": TaskSettings(False, False, "light_timeout_s"),
}


def display_name(task: str, method: str = "") -> str:
    """A task's name in the UI: its name in words (``merge-lora`` -> ``Merge LoRA``), the method after train."""
    words = " ".join(ACRONYMS.get(word, word) for word in task.split("-"))
    return words[:1].upper() + words[1:] + (f" ({method})" if method else "")


def gpu_tasks(cfg: PipelineConfig) -> tuple[str, ...]:
    """Tasks that run on a GPU node. With ``cluster.nodes > 1`` the train task only submits and follows a
    multi-node job (a TrainJob or PyTorchJob, whose pods get the GPUs), so it runs as a light CPU task; it keeps
    ``cluster.train_timeout_s``, the time it waits for the job."""
    return tuple(name for name, task in TASKS.items() if task.gpu and not (name == "train" and cfg.cluster.nodes > 1))


class _Pipeline:
    """Applies :data:`TASKS` and the Kubernetes settings to each task of one pipeline being built."""

    def __init__(self, cfg: PipelineConfig, params: dict[str, Any]):
        self.cfg, self.params = cfg, params
        self.tolerations = params["h_gpu_tolerations"]

    def task(self, name: str, task: PipelineTask, method: str = "") -> PipelineTask:
        """Name, cache, image, the PVC, MLflow settings and resources of one task; GPU scheduling where needed."""
        cfg, settings = self.cfg, TASKS[name]
        task.set_display_name(display_name(name, method))
        task.set_caching_options(enable_caching=settings.cache)
        task.set_container_image(cfg.cluster.image)
        kubernetes.mount_pvc(task, pvc_name=self.params["h_pvc_name"], mount_path=cfg.storage.mount_path)
        task.set_env_variable("MLFLOW_TRACKING_URI", cfg.mlflow.tracking_uri)
        task.set_env_variable("HF_HUB_OFFLINE", "1")
        if cfg.mlflow.credentials_secret:
            kubernetes.use_secret_as_env(task, secret_name=cfg.mlflow.credentials_secret,
                                         secret_key_to_env={key: key for key in MLFLOW_SECRET_KEYS}, optional=True)
        if name == "compare" and cfg.evaluation.judge_secret:  # the judge's API key, never a value in the IR
            kubernetes.use_secret_as_env(task, secret_name=cfg.evaluation.judge_secret,
                                         secret_key_to_env={JUDGE_SECRET_KEY: JUDGE_KEY_ENV}, optional=True)
        if cfg.cluster.image_pull_secrets:
            kubernetes.set_image_pull_secrets(task, cfg.cluster.image_pull_secrets)
        kubernetes.set_timeout(task, getattr(cfg.cluster, settings.timeout))
        if name in gpu_tasks(cfg):
            task.set_cpu_request(cfg.cluster.cpu_request)
            task.set_memory_request(cfg.cluster.memory_request)
            task.set_memory_limit(cfg.cluster.memory_limit)
            self._gpu(task, settings.gpus)
        else:
            task.set_cpu_request(cfg.cluster.light_cpu_request)
            task.set_memory_request(cfg.cluster.light_memory_request)
        return task

    def _gpu(self, task: PipelineTask, gpus: str) -> None:
        """Accelerator limit (the run parameter ``gpus``), node selector, tolerations and an in-memory /dev/shm (NCCL
        needs a large one)."""
        if self.cfg.cluster.accelerator_count > 0:
            task.set_accelerator_type(self.params["h_accelerator_type"])
            task.set_accelerator_limit(self.params[gpus])
        kubernetes.add_node_selector_json(task, self.params["h_gpu_node_selector"])
        kubernetes.add_toleration_json(task, self.tolerations)
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit=self.cfg.cluster.shm_size)


def _dag(cfg: PipelineConfig, params: dict[str, Any]) -> None:
    """The pipeline's tasks, in the order of the module docstring's diagram."""
    p, run_id = _Pipeline(cfg, params), dsl.PIPELINE_JOB_ID_PLACEHOLDER
    compiled = cfg.model_dump_json()
    form = {name: value for name, value in params.items() if name not in (CONFIG_PARAM, OVERRIDES_PARAM)}

    finalize = p.task("finalize-runs", steps.finalize_runs(compiled_config=compiled, kfp_run_id=run_id))
    with dsl.ExitHandler(finalize, name="fine-tune"):
        resolved = p.task("resolve-config", steps.resolve_config(
            kfp_run_id=run_id, kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, compiled_config=compiled,
            z_config=params[CONFIG_PARAM], z_overrides=params[OVERRIDES_PARAM], **form))
        config = resolved.outputs["config"]
        validated = p.task("validate-dataset", steps.validate_dataset(config=config, kfp_run_id=run_id))

        chosen = []
        branches = ((dsl.If, "lora"), (dsl.Elif, "qlora"), (dsl.Else, "full"))
        for branch, method in branches:
            condition = () if branch is dsl.Else else (resolved.outputs["method"] == method,)
            with branch(*condition, name=f"method-{method}"):
                with dsl.ParallelFor(items=resolved.outputs["trials"], parallelism=cfg.sweep.parallelism,
                                     name=f"trials-{method}") as trial:
                    task = steps.train(config=config, kfp_run_id=run_id, dataset_hash=validated.outputs["dataset_hash"],
                                       trial=trial)
                    p.task("train", task, method=METHOD_NAMES[method])
                    task.set_retry(num_retries=cfg.cluster.train_retries, backoff_duration="60s", backoff_factor=2)
                chosen.append(p.task("select-trial", steps.select_trial(
                    config=config, kfp_run_id=run_id, model_dirs=dsl.Collected(task.outputs["model_dir"]))))
        model_dir = dsl.OneOf(*(selected.outputs["model_dir"] for selected in chosen))
        train_run_id = dsl.OneOf(*(selected.outputs["mlflow_run_id"] for selected in chosen))

        merged = p.task("merge-lora", steps.merge_lora(config=config, kfp_run_id=run_id, weights_dir=model_dir))
        candidate = p.task("evaluate-candidate", steps.evaluate_candidate(
            config=config, kfp_run_id=run_id, model_dir=merged.outputs["model_dir"]))

        baseline = p.task("find-baseline", steps.find_baseline(config=config, kfp_run_id=run_id))
        baseline.after(validated)  # the held-out rows decide the task score's key
        with dsl.If(baseline.outputs["needs_eval"] == True, name="baseline-needs-evaluation"):  # noqa: E712
            evaluated = p.task("evaluate-baseline", steps.evaluate_baseline(
                config=config, kfp_run_id=run_id, model_dir=baseline.outputs["model_dir"]))
        with dsl.Else(name="baseline-scores-stored"):
            stored = p.task("reuse-baseline-scores", steps.reuse_baseline_scores(
                config=config, kfp_run_id=run_id, mmlu_key=baseline.outputs["mmlu_key"],
                task_key=baseline.outputs["task_key"]))

        compared = p.task("compare", steps.compare(
            config=config, kfp_run_id=run_id, candidate_mmlu=candidate.outputs["mmlu_path"],
            candidate_task=candidate.outputs["task_path"],
            baseline_mmlu=dsl.OneOf(evaluated.outputs["mmlu_path"], stored.outputs["mmlu_path"]),
            baseline_task=dsl.OneOf(evaluated.outputs["task_path"], stored.outputs["task_path"]),
            baseline_version=baseline.outputs["baseline_version"], baseline_note=baseline.outputs["note"],
            held_out_below=baseline.outputs["held_out_below"], train_run_id=train_run_id))

        registered = p.task("register-model", steps.register_model(
            config=config, kfp_run_id=run_id, model_dir=merged.outputs["model_dir"], version=merged.outputs["version"],
            decision=compared.outputs["decision"], comparison_path=compared.outputs["comparison_path"],
            dataset_hash=validated.outputs["dataset_hash"]))
        with dsl.If(compared.outputs["decision"] == "promote", name="candidate-is-better"):
            p.task("promote-model", steps.promote_model(
                config=config, kfp_run_id=run_id, model_version=registered.outputs["model_version"],
                version=merged.outputs["version"], baseline_version=baseline.outputs["baseline_version"]))
        with dsl.Else(name="champion-stays"):
            p.task("mark-challenger", steps.mark_challenger(
                config=config, kfp_run_id=run_id, model_version=registered.outputs["model_version"],
                headline=compared.outputs["headline"]))


def pipeline_name(cfg: PipelineConfig, changes: list[str]) -> tuple[str, str]:
    """``(name, display name)`` of the pipeline compiled from ``cfg``: a config changed at compile time gets its
    own name (a short hash of the changes) and says what differs, so the two versions can be told apart."""
    method = METHOD_NAMES[cfg.training.method]
    if not changes:
        return cfg.name, f"Fine-tune with LLaMA-Factory ({method})"
    digest = hashlib.sha256("\n".join(sorted(changes)).encode()).hexdigest()[:8]
    shown = ", ".join(sorted(changes))
    return f"{cfg.name}-{digest}"[:63], f"Fine-tune with LLaMA-Factory ({method}; {shown})"[:200]


def build_pipeline(cfg: PipelineConfig, changes: list[str] | None = None) -> Any:
    """Build the fine-tuning pipeline for ``cfg``; returns a KFP pipeline (GraphComponent).

    ``changes`` are the ``section.field=value`` overrides ``cfg`` was compiled with (they name the pipeline).
    Reads every section: storage (mount path), cluster (image, scheduling, resources, timeouts, retries),
    mlflow (tracking URI, credentials Secret), training.method (the display names), and the run form's
    defaults from all of them.
    """
    parameters = pipeline_parameters(cfg)
    names = [parameter.name for parameter in parameters]

    def finetune_pipeline(*args: Any) -> None:
        _dag(cfg, dict(zip(names, args, strict=True)))

    finetune_pipeline.__signature__ = inspect.Signature(parameters)  # the run form (KFP reads the signature)
    finetune_pipeline.__doc__ = (
        "Fine-tune an LLM with LLaMA-Factory and promote it only when it beats the champion on its own task.\n\n"
        + google_args(parameter_docs()) + "\n")
    name, display = pipeline_name(cfg, changes or [])
    return dsl.pipeline(
        name=name, display_name=display,
        description=(f"Validate data and hold out test rows, fine-tune ({cfg.training.method}) with LLaMA-Factory, "
                     "merge, score on the held-out rows and MMLU, compare with the champion and promote only a "
                     "better model."),
    )(finetune_pipeline)


__all__ = ["TASKS", "TaskSettings", "build_pipeline", "display_name", "gpu_tasks", "pipeline_name"]
