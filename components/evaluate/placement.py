"""Where an evaluated model's weights go: one GPU when they fit, else split across the pod's GPUs, else a clear error.

The evaluate tasks get ``evaluation.accelerator_count`` GPUs (the run form's ``h_eval_accelerator_count``). Each
GPU may hold ``evaluation.gpu_memory_fraction`` of its memory in weights (the rest is for activations and the KV
cache of generation). The plan is made on a meta-device copy of the model (no memory, no weights read):

1. the weights fit one GPU's budget: the whole model goes to ``cuda:0`` (no cross-device hops);
2. they fit the GPUs together: accelerate's ``infer_auto_device_map`` assigns whole decoder layers to GPUs in
   order (``no_split_module_classes``: a layer never straddles two), and transformers loads with that
   ``device_map``, moving activations between GPUs;
3. otherwise (or when the map would spill a layer to the CPU or disk) :class:`PlacementError` names the model's
   size, the budget per GPU and how many GPUs, and the fields to change.

Without a GPU the model is loaded on the CPU, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.common.logs import step_logger
from configs.errors import StepError
from configs.schema import EvaluationConfig

GIB = 1 << 30
log = step_logger("evaluate")  # the evaluate step loads the model


class PlacementError(StepError, RuntimeError):
    """The model fits neither one GPU nor the evaluation's GPUs together; names its size and the budget."""


@dataclass(frozen=True)
class Placement:
    """How to load the model: on ``device`` whole (``device_map`` None), or across GPUs by ``device_map``."""

    device: str
    device_map: dict[str, int] | None
    weights_bytes: int
    budgets: dict[int, int]

    @property
    def gpus_used(self) -> list[int]:
        """The GPUs that hold weights."""
        return sorted(set(self.device_map.values())) if self.device_map else [0]


def _gib(size: int) -> str:
    return f"{size / GIB:.2f} GiB"


def meta_model(model_dir: str | Path, dtype: Any) -> Any:
    """The model's architecture on the meta device: its modules and parameter shapes, no memory, no weights read."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_dir))
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def plan_placement(model: Any, budgets: dict[int, int], dtype: Any) -> Placement:
    """Place ``model`` (a meta-device model) on GPUs with the given per-GPU byte budgets.

    Raises:
        PlacementError: no budget, or the weights fit neither one GPU nor all of them together (the map would put
            a layer on the CPU or disk); the message names the size, the budgets and the remedy.
    """
    from accelerate.utils import compute_module_sizes, infer_auto_device_map

    size = int(compute_module_sizes(model, dtype=dtype)[""])
    if not budgets:
        raise PlacementError("no GPU budget to place the model on (evaluation.accelerator_count GPUs are needed)")
    first = min(budgets)
    if size <= budgets[first]:
        return Placement(f"cuda:{first}", None, size, dict(budgets))
    total = sum(budgets.values())
    described = (f"the model's weights take {_gib(size)}, but evaluation.gpu_memory_fraction leaves "
                 f"{', '.join(_gib(budget) for budget in budgets.values())} on {len(budgets)} GPU(s) "
                 f"({_gib(total)} in all)")
    remedy = ("raise evaluation.accelerator_count (run parameter h_eval_accelerator_count) or "
              "evaluation.gpu_memory_fraction, or use GPUs with more memory")
    if size > total:
        raise PlacementError(f"{described}: {remedy}")
    layers = sorted(getattr(model, "_no_split_modules", None) or [])
    device_map = dict(infer_auto_device_map(model, max_memory=dict(budgets), no_split_module_classes=layers,
                                            dtype=dtype))
    spilled = sorted(name for name, device in device_map.items() if not isinstance(device, int))
    if spilled:
        raise PlacementError(f"{described}, and split into whole layers they do not fit ({spilled[0]} would go to "
                             f"{device_map[spilled[0]]}): {remedy}")
    return Placement(f"cuda:{min(device_map.values())}", device_map, size, dict(budgets))


def gpu_budgets(count: int, fraction: float) -> dict[int, int]:
    """Per visible GPU (the first ``count``): ``fraction`` of its total memory, in bytes."""
    import torch

    visible = min(count, torch.cuda.device_count())
    return {index: int(torch.cuda.get_device_properties(index).total_memory * fraction) for index in range(visible)}


def load_placed(model_dir: str | Path, evaluation: EvaluationConfig) -> tuple[Any, Any]:
    """Load the model and tokenizer for evaluation: on the CPU without a GPU, else by :func:`plan_placement`.

    Raises:
        PlacementError: the model fits nowhere (see :func:`plan_placement`).
        ModelLoadError: the model or tokenizer cannot be loaded.
    """
    import torch

    from components.evaluate.mmlu.scoring import load_model

    if not torch.cuda.is_available():
        return load_model(model_dir)
    placement = plan_placement(meta_model(model_dir, torch.bfloat16),
                               gpu_budgets(evaluation.accelerator_count, evaluation.gpu_memory_fraction),
                               torch.bfloat16)
    if placement.device_map:
        log.info(f"{_gib(placement.weights_bytes)} of weights split across GPUs {placement.gpus_used}")
    return load_model(model_dir, device=placement.device, device_map=placement.device_map)
