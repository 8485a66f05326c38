"""Render LLaMA-Factory's training YAML from the typed config: the one place that knows its keys.

Method presets (``training.method``):

- ``lora``: ``finetuning_type: lora`` with rank, alpha, dropout, target modules and rsLoRA.
- ``qlora``: the LoRA keys plus ``quantization_bit`` (4 or 8) through bitsandbytes (``quantization_method: bnb``);
  needs a GPU (the schema refuses it on the CPU).
- ``full``: ``finetuning_type: full``; on GPUs with DeepSpeed ZeRO-3 (``components/train/deepspeed/ds_z3_config.json``)
  unless ``training.deepspeed_stage`` names another stage.

Precision: ``training.precision`` ``auto`` is bf16 on a GPU and fp32 on the CPU; a CPU run never gets a
bf16/fp16 key (the Trainer refuses them without a GPU).

The best checkpoint: with a validation side (``dataset.val_fraction`` > 0) the trainer evaluates the loss on the
snapshot's ``N@val`` entries at every save (``eval_dataset``, ``eval_strategy`` = the save strategy, ``eval_steps``
= ``save_steps``), keeps the best checkpoint out of the rotation and loads it at the end
(``load_best_model_at_end``, ``metric_for_best_model: eval_loss``), so the weights it saves last, which the step
publishes, are the best checkpoint's, not the last one's.

``report_to: none`` is always set: the trainer logs
to the step's MLflow run (``MLFLOW_RUN_ID``) through its own callback (:mod:`components.train.metrics`);
:func:`render_params` gives the same settings as the train run's params.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from components.common.logs import step_logger
from components.data.split import validation_entry_name
from configs.schema import PipelineConfig

DEEPSPEED_DIR = Path(__file__).resolve().parent / "deepspeed"
DEEPSPEED_CONFIGS = {2: DEEPSPEED_DIR / "ds_z2_config.json", 3: DEEPSPEED_DIR / "ds_z3_config.json"}
# Long tokenisation on rank 0 must not trip the NCCL watchdog of the other ranks (LLaMA-Factory's examples).
DDP_TIMEOUT_S = 180_000_000

log = step_logger("train")  # rendered by the train step


def resolve_precision(cfg: PipelineConfig, gpu: bool) -> str:
    """``bf16``, ``fp16`` or ``fp32`` for this run.

    Reads ``training.precision``: ``auto`` is bf16 on a GPU and fp32 on the CPU. Without a GPU every
    setting becomes fp32 (with a warning when bf16/fp16 was asked for): the CPU has no fast half precision
    and transformers refuses bf16 there.
    """
    wanted = cfg.training.precision
    if not gpu:
        if wanted in ("bf16", "fp16"):
            log.warning("training.precision=%s ignored: no GPU, training in fp32", wanted)
        return "fp32"
    return "bf16" if wanted == "auto" else wanted


def deepspeed_stage(cfg: PipelineConfig, gpu: bool) -> int:
    """The DeepSpeed ZeRO stage (0: off): ``training.deepspeed_stage``, or 3 for full fine-tuning on GPUs."""
    if cfg.training.deepspeed_stage:
        return cfg.training.deepspeed_stage
    return 3 if cfg.training.method == "full" and gpu else 0


def render_sections(cfg: PipelineConfig, *, model_dir: Path, dataset_dir: Path, output_dir: Path, run_name: str,
                    gpu: bool, resume_from: Path | None = None) -> dict[str, dict[str, Any]]:
    """LLaMA-Factory's training arguments, grouped as in its example YAMLs (model, method, dataset, ...).

    Reads ``training`` (every field), ``dataset.names``, ``dataset.val_fraction`` and ``cluster`` only through
    ``gpu``.

    Args:
        cfg: The resolved pipeline configuration.
        model_dir: The base model directory (absolute).
        dataset_dir: The directory with ``dataset_info.json`` (absolute).
        output_dir: Where the trainer writes checkpoints, logs and the final weights (run-scoped).
        run_name: The trainer's run name (shown in MLflow's params).
        gpu: Whether the trainer runs on GPUs (precision, DeepSpeed).
        resume_from: A complete checkpoint to resume from, or None to start fresh.

    Returns:
        Section name -> {LLaMA-Factory key: value}; the keys across sections are distinct.
    """
    t = cfg.training
    model: dict[str, Any] = {"model_name_or_path": str(model_dir), "trust_remote_code": t.trust_remote_code,
                             "flash_attn": t.flash_attn}
    if not t.gradient_checkpointing:
        model["disable_gradient_checkpointing"] = True
    if t.method == "qlora":
        model.update(quantization_bit=t.quantization_bit, quantization_method="bnb")

    method: dict[str, Any] = {"stage": "sft", "do_train": True,
                              "finetuning_type": "full" if t.method == "full" else "lora"}
    if t.method in ("lora", "qlora"):
        method.update(lora_rank=t.lora_rank, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
                      lora_target=t.lora_target, use_rslora=t.use_rslora)
    stage = deepspeed_stage(cfg, gpu)
    if stage:
        method["deepspeed"] = str(DEEPSPEED_CONFIGS[stage])

    dataset = {
        "dataset": ",".join(cfg.dataset.names),
        "dataset_dir": str(dataset_dir),
        "template": t.template,
        "cutoff_len": t.cutoff_len,
        # The data on the PVC can change under the same name; the validate step hashed what is there now.
        "overwrite_cache": True,
        "preprocessing_num_workers": t.preprocessing_num_workers,
    }

    output: dict[str, Any] = {
        "output_dir": str(output_dir),
        "logging_steps": t.logging_steps,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "save_total_limit": t.save_total_limit,
        "save_only_model": False,  # optimizer and scheduler state are what make a resume exact
        "plot_loss": False,  # the step draws its own plot from the whole log history (resumes included)
        # The trainer logs to MLflow through our own callback (components.train.metrics), not Hugging Face's.
        "report_to": "none",
        "run_name": run_name,
        "disable_tqdm": True,  # progress bars turn pod logs into noise; the Trainer prints each log dict
        "include_num_input_tokens_seen": "all",  # tokens/s for the Metrics artifact
    }
    if resume_from is not None:
        output["resume_from_checkpoint"] = str(resume_from)

    train: dict[str, Any] = {
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "learning_rate": t.learning_rate,
        "num_train_epochs": t.num_train_epochs,
        "lr_scheduler_type": t.lr_scheduler_type,
        "warmup_ratio": t.warmup_ratio,
        "weight_decay": t.weight_decay,
        "seed": t.seed,
        "ddp_timeout": DDP_TIMEOUT_S,
    }
    if t.max_steps > 0:
        train["max_steps"] = t.max_steps
    precision = resolve_precision(cfg, gpu)
    if precision != "fp32":
        train[precision] = True

    sections = {"model": model, "method": method, "dataset": dataset, "output": output, "train": train}
    if cfg.dataset.val_fraction > 0:
        # Evaluated at every save (the Trainer also evaluates and saves the last step), so each checkpoint has its
        # validation loss and the best one is known; rotation never deletes it (transformers protects it).
        sections["eval"] = {
            "eval_dataset": ",".join(validation_entry_name(name) for name in cfg.dataset.names),
            "per_device_eval_batch_size": t.per_device_train_batch_size,
            "eval_strategy": "steps", "eval_steps": t.save_steps,
            "load_best_model_at_end": True, "metric_for_best_model": "eval_loss", "greater_is_better": False,
        }
    return sections


def flatten_sections(sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One mapping of LLaMA-Factory arguments (what ``llamafactory-cli train`` reads from the YAML)."""
    return {key: value for section in sections.values() for key, value in section.items()}


def render_yaml(sections: dict[str, dict[str, Any]], header: str = "") -> str:
    """The YAML text, one commented block per section in LLaMA-Factory's example style."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for name, values in sections.items():
        lines.append(f"### {name}")
        lines.append(yaml.safe_dump(values, sort_keys=False, default_flow_style=False).rstrip())
        lines.append("")
    return "\n".join(lines)


def render_params(sections: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The LLaMA-Factory settings we rendered (:func:`render_sections`) as run params,
    under their LLaMA-Factory names (``learning_rate``, ``lora_rank``, ``cutoff_len``...)."""
    import json

    return {key: value if isinstance(value, str) else json.dumps(value)
            for section in sections.values() for key, value in section.items()}
