"""A peft LoRA adapter as updates to base checkpoint keys, checked for everything the streaming merge cannot do.

:func:`load_adapter` reads ``adapter_config.json`` and the weights into one :class:`LoraDelta` per targeted
weight (``scaling * B @ A``, with rank and alpha from ``rank_pattern``/``alpha_pattern`` as peft matches them,
rsLoRA's scaling, DoRA's magnitude) and the tensors that replace base tensors (``modules_to_save`` copies, saved
embedding layers). Factors are upcast to fp32, as peft does on a half-precision base. A NaN or infinite factor,
an unsupported variant (LoRA biases, QA-LoRA, aLoRA, trainable tokens, PiSSA/OLoRA/CorDA/LoftQ initialisations
that changed the base...) or a config that disagrees with the weights is refused with the file and field named.
:func:`orient_deltas` then decides, as peft does, which updates are transposed (transformers ``Conv1D`` layers).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from components.merge.inputs import MergeError, read_config_json, read_header, read_tensor
from components.merge.safetensors import SafetensorsHeader

if TYPE_CHECKING:
    import torch


ADAPTER_PREFIX = "base_model.model."


_FACTOR_KEY = re.compile(r"(?P<module>.+)\.(?:lora_(?P<linear>[AB])\.weight|lora_embedding_(?P<embedding>[AB])|"
                         r"lora_magnitude_vector(?:\.weight)?)")


# Adapter features the streaming merge refuses: config key -> why.
_UNSUPPORTED = {
    "lora_bias": "LoRA biases (lora_bias) are not supported by the streaming merge",
    "use_qalora": "QA-LoRA adapters (use_qalora) are not supported by the streaming merge",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens) only applies after its invocation "
                               "tokens and cannot be merged into the weights",
    "layer_replication": "layer_replication changes the model's layers; it cannot be merged shard by shard",
    "trainable_token_indices": "trainable tokens (trainable_token_indices) are not supported by the streaming merge",
    "target_parameters": "parameter-targeted LoRA (target_parameters) is not supported by the streaming merge",
    "arrow_config": "Arrow routing (arrow_config) cannot be merged into the weights",
}


class LoraDelta(NamedTuple):
    """One LoRA update ``scaling * B @ A`` (transposed for embeddings and fan_in_fan_out); with a DoRA
    ``magnitude`` the updated weight's rows are rescaled to it."""

    a: torch.Tensor
    b: torch.Tensor
    scaling: float
    embedding: bool
    fan_in_fan_out: bool
    magnitude: torch.Tensor | None = None

    def shape(self) -> tuple[int, ...]:
        """Shape of the weight this delta is added to."""
        rows, cols = self.b.shape[0], self.a.shape[1]
        return (cols, rows) if self.embedding or self.fan_in_fan_out else (rows, cols)


class Adapter(NamedTuple):
    """A LoRA adapter as updates to base checkpoint keys."""

    deltas: dict[str, LoraDelta]
    replacements: dict[str, torch.Tensor]
    config: dict[str, Any]


def _pattern_value(patterns: dict, module: str, default: float) -> float:
    """The rank/alpha for ``module`` from peft's rank_pattern/alpha_pattern (same matching as peft)."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _check_adapter_config(config: dict, path: Path) -> None:
    if config.get("peft_type", "LORA") != "LORA":
        raise MergeError(f"{path}: peft_type is {config.get('peft_type')!r}; only LoRA adapters can be merged")
    for key, reason in _UNSUPPORTED.items():
        if config.get(key):
            raise MergeError(f"{path}: {key}={config[key]!r}: {reason}")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(("pissa", "olora", "corda", "loftq")):
        raise MergeError(f"{path}: init_lora_weights={init!r} changed the base weights during training; convert "
                         "the adapter to plain LoRA first (peft save_pretrained with "
                         "path_initial_model_for_weight_conversion)")
    if config.get("loftq_config"):
        raise MergeError(f"{path}: loftq_config is set; LoftQ adapters belong to a modified base, not this one")
    _check_number(config.get("r", 8), f"{path}: r", rank=True)
    _check_number(config.get("lora_alpha", 8), f"{path}: lora_alpha")
    for key, rank in (("rank_pattern", True), ("alpha_pattern", False)):
        patterns = config.get(key) or {}
        if not isinstance(patterns, dict):
            raise MergeError(f"{path}: {key} must be an object of module pattern -> value, got {patterns!r:.60}")
        for pattern, value in patterns.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise MergeError(f"{path}: {key} has the pattern {pattern!r:.60}, which is no regular expression "
                                 f"({exc})") from None
            _check_number(value, f"{path}: {key}[{pattern!r:.60}]", rank=rank)


def _check_number(value: Any, where: str, *, rank: bool = False) -> None:
    """A LoRA rank (a positive integer) or alpha (a finite number); JSON's true/false are neither."""
    if rank and (type(value) is not int or value < 1):
        raise MergeError(f"{where} must be a positive integer (the LoRA rank), got {value!r:.60}")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MergeError(f"{where} must be a finite number, got {value!r:.60}")


def _adapter_tensors(adapter_dir: Path) -> dict[str, torch.Tensor]:
    import torch

    weights = adapter_dir / "adapter_model.safetensors"
    if weights.exists():
        header = read_header(weights)
        with open(weights, "rb", buffering=0) as handle:
            return {name: read_tensor(handle, header, name) for name in header.tensors}
    legacy = adapter_dir / "adapter_model.bin"
    if legacy.exists():
        try:
            return torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for truncated or foreign pickles
            raise MergeError(f"{legacy} cannot be loaded ({type(exc).__name__}: {exc})") from None
    raise MergeError(f"{adapter_dir} has no adapter_model.safetensors (or adapter_model.bin)")


def _check_dora(delta: LoraDelta, module: str, use_dora: bool, adapter_dir: Path) -> None:
    """DoRA is merged for linear layers only, and needs one magnitude per output row."""
    if delta.magnitude is None:
        if use_dora:
            raise MergeError(f"{adapter_dir}: use_dora is set but module {module!r} has no lora_magnitude_vector")
        return
    if not use_dora:
        raise MergeError(f"{adapter_dir}: module {module!r} has a DoRA magnitude but use_dora is not set")
    if delta.embedding:  # Conv1D layers are refused once the layout is known (orient_deltas)
        raise MergeError(f"{adapter_dir}: module {module!r}: DoRA is merged for linear layers only (not embeddings "
                         "or Conv1D layers); merge it with peft's merge_and_unload")
    if tuple(delta.magnitude.shape) != (delta.b.shape[0],):
        raise MergeError(f"{adapter_dir}: module {module!r} has a DoRA magnitude of shape "
                         f"{list(delta.magnitude.shape)}, expected [{delta.b.shape[0]}]")


def load_adapter(adapter_dir: Path) -> Adapter:
    """Read a peft LoRA adapter as deltas and replacements keyed by base checkpoint names.

    Reads ``adapter_config.json`` (r, lora_alpha, use_rslora, use_dora, rank_pattern, alpha_pattern,
    fan_in_fan_out) and ``adapter_model.safetensors``. LoRA factors are upcast to fp32, as peft
    does when it loads an adapter onto a half-precision base.

    Raises:
        MergeError: config or weights missing, truncated or inconsistent, or an unsupported feature.
    """
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.exists() and (adapter_dir / "config.json").exists():
        raise MergeError(f"{adapter_dir} holds full model weights, not a LoRA adapter; publish it without an "
                         "adapter (training.method=full, or the CLI without --adapter)")
    config = read_config_json(config_path, "the LoRA adapter config")
    _check_adapter_config(config, config_path)
    factors: dict[str, dict[str, Any]] = {}
    replacements: dict[str, Any] = {}
    for key, tensor in _adapter_tensors(adapter_dir).items():
        if not key.startswith(ADAPTER_PREFIX):
            raise MergeError(f"{adapter_dir}: unexpected tensor {key!r} (peft keys start with {ADAPTER_PREFIX!r})")
        name = key[len(ADAPTER_PREFIX):]
        match = _FACTOR_KEY.fullmatch(name)
        if match:
            parts = factors.setdefault(match["module"], {"embedding": False})
            parts[match["linear"] or match["embedding"] or "magnitude"] = tensor
            parts["embedding"] |= match["embedding"] is not None
        elif "lora_" in name or "trainable_tokens" in name:
            raise MergeError(f"{adapter_dir}: tensor {key!r} belongs to an unsupported LoRA variant")
        else:  # modules_to_save copies and saved embedding layers replace the base tensor
            if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
                raise MergeError(f"{adapter_dir}: tensor {key!r} holds NaN or infinite values; refusing to merge it")
            replacements[name.replace(".base_layer.", ".")] = tensor
    deltas = {}
    for module, parts in factors.items():
        if "A" not in parts or "B" not in parts:
            raise MergeError(f"{adapter_dir}: module {module!r} has lora_{'A' if 'A' not in parts else 'B'} missing")
        a, b = parts["A"].float(), parts["B"].float()
        for name, factor in (("A", a), ("B", b), ("magnitude", parts.get("magnitude"))):
            if factor is not None and not bool(factor.float().isfinite().all()):
                raise MergeError(f"{adapter_dir}: module {module!r}: its lora_{name} weights hold NaN or infinite "
                                 "values (did training diverge?); refusing to merge them")
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise MergeError(f"{adapter_dir}: module {module!r} has LoRA factors of shapes {list(a.shape)} and "
                             f"{list(b.shape)}; only linear and embedding layers can be merged")
        rank = _pattern_value(config.get("rank_pattern"), module, config.get("r", 8))
        alpha = _pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", 8))
        if rank != a.shape[0]:
            raise MergeError(f"{adapter_dir}: module {module!r} has rank {a.shape[0]} but adapter_config.json "
                             f"says r={rank}")
        scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        fan_in_fan_out = bool(config.get("fan_in_fan_out")) and not parts["embedding"]
        magnitude = parts["magnitude"].float() if "magnitude" in parts else None
        delta = LoraDelta(a, b, scaling, parts["embedding"], fan_in_fan_out, magnitude)
        _check_dora(delta, module, bool(config.get("use_dora")), adapter_dir)
        deltas[f"{module}.weight"] = delta
    if not deltas and not replacements:
        raise MergeError(f"{adapter_dir}: the adapter holds no LoRA weights")
    return Adapter(deltas, replacements, config)


def _conv1d_modules(config: dict) -> set[str] | None:
    """Names of the modules that are transformers ``Conv1D`` layers in this architecture; None when unknown.

    An architecture whose modeling code never imports ``Conv1D`` has none (no model is built); otherwise
    the model is built on the meta device (no memory, no weights) and its modules are looked at.
    """
    import sys

    import torch
    import transformers

    architectures = config.get("architectures") or []
    name = architectures[0] if isinstance(architectures, list) and architectures else None
    model_class = getattr(transformers, name, None) if isinstance(name, str) else None
    modeling = sys.modules.get(getattr(model_class, "__module__", ""))
    if modeling is not None and not hasattr(modeling, "Conv1D"):
        return set()
    from transformers.pytorch_utils import Conv1D

    try:
        settings = {key: value for key, value in config.items() if key != "model_type"}
        hf_config = transformers.AutoConfig.for_model(config["model_type"], **settings)
        with torch.device("meta"):
            model = model_class(hf_config) if model_class else transformers.AutoModelForCausalLM.from_config(hf_config)
    except Exception:  # an architecture transformers cannot build (custom code, a damaged config)
        return None
    return {module_name for module_name, module in model.named_modules() if isinstance(module, Conv1D)}


def orient_deltas(adapter: Adapter, config: dict, shards: dict[Path, SafetensorsHeader]) -> Adapter:
    """Decide for each linear update whether it is transposed, exactly as peft decides it.

    peft looks at the layer, not at ``fan_in_fan_out``: a transformers ``Conv1D`` (weight stored in x out)
    is always merged transposed, an ``nn.Linear`` never (peft warns and overrides the flag either way).
    When the architecture cannot be built, the base weight's shape decides; a square weight is then
    ambiguous, and an adapter that asks for ``fan_in_fan_out`` on one is refused.

    Raises:
        MergeError: the layout cannot be told, or DoRA on a Conv1D layer.
    """
    linear = {key: delta for key, delta in adapter.deltas.items() if not delta.embedding}
    if not linear:
        return adapter
    conv1d = _conv1d_modules(config)
    shapes = {name: entry.shape for header in shards.values() for name, entry in header.tensors.items()}
    deltas = dict(adapter.deltas)
    for key, delta in linear.items():
        module = key.removesuffix(".weight")
        if conv1d is not None:
            transposed = module in conv1d
        else:
            as_linear = (delta.b.shape[0], delta.a.shape[1])
            fits, fits_transposed = shapes.get(key) == as_linear, shapes.get(key) == as_linear[::-1]
            if fits and fits_transposed and delta.fan_in_fan_out:
                raise MergeError(f"cannot tell whether {module!r} is a Conv1D or a Linear layer (the architecture "
                                 f"{config.get('architectures')} cannot be built here and the weight is square); "
                                 "merge this fan_in_fan_out adapter with peft's merge_and_unload")
            transposed = fits_transposed and not fits
        if transposed and delta.magnitude is not None:
            raise MergeError(f"module {module!r}: DoRA is merged for linear layers only (not Conv1D layers); merge "
                             "it with peft's merge_and_unload")
        deltas[key] = delta._replace(fan_in_fan_out=transposed)
    return adapter._replace(deltas=deltas)
