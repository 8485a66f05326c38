"""The fine-tuning pipeline: validate -> train -> evaluate -> merge -> compare -> register/promote.

:func:`build_pipeline` turns a validated :class:`~configs.schema.PipelineConfig` into one KFP
pipeline. The same function is compiled for the cluster (``python -m pipelines.compile``) and run
locally through ``kfp.local`` (``python -m pipelines.run_local``).

What is decided when, and why:
- Run-time pipeline parameters: the whole ``config`` (JSON), ``overrides`` (``section.field=value``),
  and the Kubernetes settings kfp-kubernetes accepts as parameters (PVC name, GPU node selector,
  tolerations, accelerator type and count). Their defaults come from the config.
- Compile-time (from the config): the image, resource requests, timeouts, retries, the credentials
  Secret name and the caching policy. Change them by compiling another config.

DAG::

    exit handler: finalize-runs (marks MLflow runs of a failed run FAILED)
    └── validate-dataset ─> train ─> evaluate-candidate ──────────────┐
        └> resolve-baseline ─> if needs_eval: evaluate-baseline        ├─> compare-with-baseline
                               else:           fetch-baseline-results ─┘         │
        train ─> merge-lora ────────────────────────────────────> register-model ─> if promote: promote-model
                                                                                      else:       mark-challenger
"""

# No `from __future__ import annotations`: KFP reads the pipeline function's annotations as types.
import copy
from typing import Any

from kfp import dsl, kubernetes
from kfp.dsl import PipelineTask

from components.compare_baseline import compare_with_baseline, fetch_baseline_results, resolve_baseline
from components.evaluate_mmlu import evaluate_mmlu
from components.finalize import finalize_runs
from components.merge_lora import merge_lora
from components.register_model import mark_challenger, promote_model, register_model
from components.tracking import MLFLOW_SECRET_KEYS
from components.train import train
from components.validate_dataset import validate_dataset
from configs.schema import PipelineConfig

# Caching, decided per task at compile time. Tasks that read state that can change under the same
# inputs (the dataset files on the PVC, the model registry) never come from the cache; train,
# evaluate and merge do, and their cache keys include the dataset hash and the resolved config.
CACHING = {
    "validate-dataset": False,
    "train": True,
    "evaluate-candidate": True,
    "resolve-baseline": False,
    "evaluate-baseline": True,
    "fetch-baseline-results": False,
    "merge-lora": True,
    "compare-with-baseline": False,
    "register-model": False,
    "promote-model": False,
    "mark-challenger": False,
    "finalize-runs": False,
}
GPU_TASKS = ("train", "evaluate-candidate", "evaluate-baseline", "merge-lora")


def gpu_tasks(cfg: PipelineConfig) -> tuple[str, ...]:
    """Tasks that need a GPU node. With ``cluster.nodes > 1`` the train task only submits and follows a
    multi-node job (a TrainJob or PyTorchJob, whose pods get the GPUs), so it runs as a light CPU task."""
    return tuple(name for name in GPU_TASKS if not (name == "train" and cfg.cluster.nodes > 1))


def _with_image(component: Any, image: str) -> Any:
    """A copy of a lightweight component that runs in ``image`` (the config's build of our image)."""
    clone = copy.deepcopy(component)
    clone.component_spec.implementation.container.image = image
    return clone


def _common(task: PipelineTask, cfg: PipelineConfig, name: str, display: str, pvc_name: Any) -> PipelineTask:
    """Settings every task gets: name, caching, the PVC, MLflow credentials, pull secrets."""
    task.set_display_name(display)
    task.set_caching_options(enable_caching=CACHING[name])
    kubernetes.mount_pvc(task, pvc_name=pvc_name, mount_path=cfg.storage.mount_path)
    task.set_env_variable("MLFLOW_TRACKING_URI", cfg.mlflow.tracking_uri)
    task.set_env_variable("HF_HUB_OFFLINE", "1")
    if cfg.mlflow.credentials_secret:
        kubernetes.use_secret_as_env(
            task,
            secret_name=cfg.mlflow.credentials_secret,
            secret_key_to_env={key: key for key in MLFLOW_SECRET_KEYS},
            optional=True,
        )
    if cfg.cluster.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, cfg.cluster.image_pull_secrets)
    if name in gpu_tasks(cfg):
        task.set_cpu_request(cfg.cluster.cpu_request)
        task.set_memory_request(cfg.cluster.memory_request)
        task.set_memory_limit(cfg.cluster.memory_limit)
    else:
        task.set_cpu_request(cfg.cluster.light_cpu_request)
        task.set_memory_request(cfg.cluster.light_memory_request)
    # By what the task waits for, not where it runs: a light train task follows the multi-node job to its end.
    timeouts = {"train": cfg.cluster.train_timeout_s, "merge-lora": cfg.cluster.merge_timeout_s,
                "evaluate-candidate": cfg.cluster.eval_timeout_s, "evaluate-baseline": cfg.cluster.eval_timeout_s}
    kubernetes.set_timeout(task, timeouts.get(name, cfg.cluster.light_timeout_s))
    return task


def _gpu(task: PipelineTask, cfg: PipelineConfig, node_selector: Any, tolerations: Any, accelerator_type: Any,
         accelerator_count: Any) -> PipelineTask:
    """GPU scheduling: accelerator limit, node selector, tolerations and an in-memory /dev/shm for NCCL."""
    if cfg.cluster.accelerator_count > 0:
        task.set_accelerator_type(accelerator_type)
        task.set_accelerator_limit(accelerator_count)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                               size_limit=cfg.cluster.shm_size)
    return task


def build_pipeline(cfg: PipelineConfig):
    """Build the fine-tuning pipeline for ``cfg``; returns a KFP pipeline (GraphComponent).

    Reads every section of the config: storage (mount path), cluster (image, scheduling,
    resources, timeouts, retries), mlflow (tracking URI, credentials Secret), and the rest
    through the ``config`` parameter the tasks receive.
    """
    image = cfg.cluster.image
    ops = {name: _with_image(op, image) for name, op in {
        "validate": validate_dataset, "train": train, "evaluate": evaluate_mmlu, "resolve": resolve_baseline,
        "fetch": fetch_baseline_results, "merge": merge_lora, "compare": compare_with_baseline,
        "register": register_model, "promote": promote_model, "challenger": mark_challenger,
        "finalize": finalize_runs,
    }.items()}
    tolerations = [t.model_dump(exclude_none=True) for t in cfg.cluster.gpu_tolerations]
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER

    @dsl.pipeline(
        name=cfg.name,
        display_name=f"Fine-tune with LLaMA-Factory ({cfg.training.method})",
        description=(f"Validate data, fine-tune ({cfg.training.method}) with LLaMA-Factory, evaluate on MMLU, "
                     "merge, compare with the champion and promote only a better model."),
    )
    def finetune_pipeline(
        config: str = cfg.model_dump_json(),
        overrides: list = [],  # noqa: B006 - KFP reads the literal default; it is never mutated
        pvc_name: str = cfg.storage.pvc_name,
        gpu_node_selector: dict = dict(cfg.cluster.gpu_node_selector),  # noqa: B006
        gpu_tolerations: list = tolerations,
        accelerator_type: str = cfg.cluster.accelerator_type,
        accelerator_count: int = cfg.cluster.accelerator_count,
    ):
        """Fine-tune an LLM with LLaMA-Factory and promote it only when it beats the champion on MMLU.

        Args:
            config: The whole pipeline configuration as JSON (a configs/*.yaml preset, validated at submit time).
            overrides: Changes to the config as "section.field=value" strings, e.g. "training.learning_rate=5e-5".
            pvc_name: The ReadWriteMany PVC with the base model, data and outputs (mounted in every task).
            gpu_node_selector: Node selector of GPU tasks, e.g. {"nvidia.com/gpu.present": "true"}.
            gpu_tolerations: Tolerations of GPU tasks (list of Kubernetes toleration objects).
            accelerator_type: Extended resource name of the GPU, e.g. nvidia.com/gpu.
            accelerator_count: GPUs per GPU task (>1 launches torchrun in the training pod).
        """
        finalize = ops["finalize"](config=config, overrides=overrides, pvc_name=pvc_name, kfp_run_id=run_id)
        _common(finalize, cfg, "finalize-runs", "Finalize MLflow runs", pvc_name)
        with dsl.ExitHandler(finalize, name="fine-tune"):
            validated = ops["validate"](config=config, overrides=overrides, pvc_name=pvc_name, kfp_run_id=run_id)
            _common(validated, cfg, "validate-dataset", "Validate dataset", pvc_name)
            resolved = validated.outputs["resolved_config"]

            trained = ops["train"](config=resolved, kfp_run_id=run_id,
                                   dataset_hash=validated.outputs["dataset_hash"])
            _common(trained, cfg, "train", f"Train ({cfg.training.method})", pvc_name)
            if "train" in gpu_tasks(cfg):
                _gpu(trained, cfg, gpu_node_selector, gpu_tolerations, accelerator_type, accelerator_count)
            trained.set_retry(num_retries=cfg.cluster.train_retries, backoff_duration="60s", backoff_factor=2)

            candidate = ops["evaluate"](config=resolved, kfp_run_id=run_id, role="candidate",
                                        model_dir=cfg.storage.base_model, adapter_dir=trained.outputs["model_dir"])
            _common(candidate, cfg, "evaluate-candidate", "Evaluate candidate (MMLU)", pvc_name)
            _gpu(candidate, cfg, gpu_node_selector, gpu_tolerations, accelerator_type, accelerator_count)

            baseline = ops["resolve"](config=resolved, kfp_run_id=run_id)
            _common(baseline, cfg, "resolve-baseline", "Find baseline", pvc_name)
            with dsl.If(baseline.outputs["needs_eval"] == True, name="baseline-needs-evaluation"):  # noqa: E712
                evaluated = ops["evaluate"](config=resolved, kfp_run_id=run_id, role="baseline",
                                            model_dir=baseline.outputs["model_dir"], adapter_dir="")
                _common(evaluated, cfg, "evaluate-baseline", "Evaluate baseline (MMLU)", pvc_name)
                _gpu(evaluated, cfg, gpu_node_selector, gpu_tolerations, accelerator_type, accelerator_count)
            with dsl.Else(name="baseline-score-stored"):
                stored = ops["fetch"](config=resolved, kfp_run_id=run_id, eval_key=baseline.outputs["eval_key"])
                _common(stored, cfg, "fetch-baseline-results", "Reuse stored baseline score", pvc_name)

            merged = ops["merge"](config=resolved, kfp_run_id=run_id, adapter_dir=trained.outputs["model_dir"])
            _common(merged, cfg, "merge-lora", "Merge and publish", pvc_name)
            _gpu(merged, cfg, gpu_node_selector, gpu_tolerations, accelerator_type, accelerator_count)

            compared = ops["compare"](
                config=resolved, kfp_run_id=run_id, candidate_results=candidate.outputs["results_path"],
                baseline_results=dsl.OneOf(evaluated.outputs["results_path"], stored.outputs["results_path"]),
                baseline_name=baseline.outputs["baseline_name"], train_run_id=trained.outputs["mlflow_run_id"],
            )
            _common(compared, cfg, "compare-with-baseline", "Compare with baseline", pvc_name)

            registered = ops["register"](
                config=resolved, kfp_run_id=run_id, model_dir=merged.outputs["model_dir"],
                version=merged.outputs["version"], decision=compared.outputs["decision"],
                reasons=compared.outputs["reasons"], comparison_path=compared.outputs["comparison_path"],
                dataset_hash=validated.outputs["dataset_hash"],
            )
            _common(registered, cfg, "register-model", "Register model version", pvc_name)
            with dsl.If(compared.outputs["decision"] == "promote", name="candidate-is-better"):
                promoted = ops["promote"](config=resolved, kfp_run_id=run_id,
                                          model_version=registered.outputs["model_version"],
                                          version=merged.outputs["version"])
                _common(promoted, cfg, "promote-model", "Promote to champion", pvc_name)
            with dsl.Else(name="champion-stays"):
                kept = ops["challenger"](config=resolved, kfp_run_id=run_id,
                                         model_version=registered.outputs["model_version"],
                                         reasons=compared.outputs["reasons"])
                _common(kept, cfg, "mark-challenger", "Keep champion, mark challenger", pvc_name)

    return finetune_pipeline
