"""Merge a LoRA adapter into its base model shard by shard, and publish the result for vLLM.

The merge streams: it reads the base model's safetensors shards one tensor at a time (plain file
reads, no mmap, no model object), adds ``scale * B @ A`` to every LoRA-targeted weight, writes the
tensor straight into the output shard and frees it. Peak memory is the adapter plus a few
tensor-sized working buffers (two reads, two casts, two fp32 deltas), not the model, so a 70B
merge fits on an ordinary node. The arithmetic is the one peft's
``merge_and_unload`` does (delta in fp32, added to the weight in the output dtype), so the result
is the same to the last bit.

Supported: LoRA and rsLoRA on linear and embedding layers (``lora_alpha``, ``r``, ``rank_pattern``,
``alpha_pattern``, ``use_rslora``, ``modules_to_save`` and saved embedding layers), DoRA on linear
layers, tied input/output embeddings (untied in the output when the adapter changes one side).
Whether an update is transposed is decided as peft decides it, by the layer type and not by
``fan_in_fan_out``: transformers ``Conv1D`` layers (GPT-2, stored in x out) always, ``nn.Linear`` never
(peft overrides the flag for both, with a warning). A NaN or infinite factor, or a merge whose result is
not finite (``lora_alpha: 1e308``), is refused: nothing non-finite is ever published.
Refused with a clear error: DoRA on embeddings, LoRA biases, trainable
tokens, QA-LoRA, aLoRA, layer replication, PiSSA/OLoRA/CorDA/LoftQ initialisations that changed the
base, convolution LoRA, quantized bases (merge a QLoRA adapter into the full-precision base, as
LLaMA-Factory requires) and non-safetensors bases.

The output directory is complete for serving: shards plus ``model.safetensors.index.json``,
``config.json`` (dtype set), generation config, tokenizer files and chat template (the adapter's
when it carries a tokenizer, as LLaMA-Factory saves one, else the base's), ``merge_info.json`` and
``checksums.sha256``. It loads with ``AutoModelForCausalLM.from_pretrained`` and ``vllm serve DIR``.

Usage::

    # plain output directory, written atomically (replace an existing one with --force)
    python -m components.merge.merge_lora --base /storage/models/base-model \\
        --adapter /storage/output/RUN/adapter --output /tmp/merged --dtype bf16
    # versioned layout (models/<name>/<version> + current pointer, see components.merge.publish)
    python -m components.merge.merge_lora --base /storage/models/base-model \\
        --adapter /storage/output/RUN/adapter --publish-to /storage/models/my-model [--version V] [--no-set-current]
    # full fine-tune: publish its weights (streamed copy, same checks): leave out --adapter
    python -m components.merge.merge_lora --base /storage/output/RUN/full --publish-to /storage/models/my-model
"""

import argparse
import contextlib
import json
import math
import re
import shutil
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from components.common.safe_json import DocumentError, read_json
from components.common.storage import StorageError, atomic_directory, atomic_write_text, describe_os_error, guard_output
from components.merge.publish import (
    MANIFEST_NAME,
    SAFETENSORS_ITEMSIZE,
    STAGING_PREFIX,
    WEIGHT_INDEX,
    PublishError,
    SafetensorsFormatError,
    SafetensorsHeader,
    check_version_name,
    manifest_checksum,
    publish_model,
    published_versions,
    read_safetensors_header,
    staging_dir_for,
    verify_model_dir,
    write_manifest,
)

if TYPE_CHECKING:
    import torch

STEP_NAME = "merge-lora"
MERGE_INFO = "merge_info.json"
MAX_CONFIG_BYTES = 16 << 20  # config.json, adapter_config.json, the weight index: a few KB to a few MB
ADAPTER_PREFIX = "base_model.model."
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_FLOAT_CODES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64"}
_TORCH_NAMES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "F16": "float16",
                "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32", "I64": "int64",
                "U64": "uint64", "F64": "float64"}
# Files of a training output that a served model does not need.
_SKIPPED_FILES = re.compile(
    r"(.*\.(safetensors|bin|pt|pth|gguf|h5|msgpack|ckpt)|.*\.index\.json|adapter_config\.json|trainer_state\.json|"
    r"(all|train|eval)_results\.json|trainer_log\.jsonl|training_.*\.png|" + re.escape(MANIFEST_NAME) + "|"
    + re.escape(MERGE_INFO) + r")$")
_FACTOR_KEY = re.compile(r"(?P<module>.+)\.(?:lora_(?P<linear>[AB])\.weight|lora_embedding_(?P<embedding>[AB])|"
                         r"lora_magnitude_vector(?:\.weight)?)")
_TOKENIZER_FILES = re.compile(r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|chat_template\.(jinja|json)|"
                              r"vocab\.(json|txt)|merges\.txt|spiece\.model|.*\.tiktoken)$")
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


class MergeError(ValueError):
    """An adapter or base model that cannot be merged; the message names the file and field."""


class LoraDelta(NamedTuple):
    """One LoRA update ``scaling * B @ A`` (transposed for embeddings and fan_in_fan_out); with a DoRA
    ``magnitude`` the updated weight's rows are rescaled to it."""

    a: "torch.Tensor"
    b: "torch.Tensor"
    scaling: float
    embedding: bool
    fan_in_fan_out: bool
    magnitude: "torch.Tensor | None" = None

    def shape(self) -> tuple[int, ...]:
        """Shape of the weight this delta is added to."""
        rows, cols = self.b.shape[0], self.a.shape[1]
        return (cols, rows) if self.embedding or self.fan_in_fan_out else (rows, cols)


class Adapter(NamedTuple):
    """A LoRA adapter as updates to base checkpoint keys."""

    deltas: dict[str, LoraDelta]
    replacements: dict[str, "torch.Tensor"]
    config: dict[str, Any]


class PlannedTensor(NamedTuple):
    """One output tensor: where it comes from and what it becomes."""

    name: str
    shard: Path
    source: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Bytes in the output shard."""
        return math.prod(self.shape) * SAFETENSORS_ITEMSIZE[self.dtype]


# --- reading the inputs -------------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict:
    try:
        data = read_json(path, max_bytes=MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise MergeError(f"{path} is missing ({what})") from None
    except DocumentError as exc:  # unreadable, not JSON, NaN, a duplicate key, too deep, an over-long number
        raise MergeError(f"{path} is not valid JSON ({exc.reason})") from None
    if not isinstance(data, dict):
        raise MergeError(f"{path} must hold a JSON object ({what})")
    return data


def _header(path: Path) -> SafetensorsHeader:
    try:
        return read_safetensors_header(path)
    except SafetensorsFormatError as exc:
        raise MergeError(str(exc)) from None


def read_tensor(handle, header: SafetensorsHeader, name: str, buffer: "torch.Tensor | None" = None) -> "torch.Tensor":
    """Read one tensor from an open safetensors file (plain reads, no mmap) into ``buffer`` (a uint8
    tensor at least that big, reused by the caller) or into fresh memory."""
    import torch

    entry = header.tensors[name]
    size = entry.end - entry.begin
    buffer = buffer[:size] if buffer is not None and buffer.numel() >= size else torch.empty(size, dtype=torch.uint8)
    view = memoryview(buffer.numpy())
    handle.seek(header.data_start + entry.begin)
    done = 0
    while done < size:
        count = handle.readinto(view[done:])
        if not count:
            raise MergeError(f"{handle.name}: truncated while reading tensor {name!r}")
        done += count
    return buffer.view(getattr(torch, _TORCH_NAMES[entry.dtype])).reshape(entry.shape)


def base_layout(model_dir: Path) -> tuple[dict, dict[Path, SafetensorsHeader]]:
    """The config and the checked safetensors shard headers of a full-weights model directory.

    Raises:
        MergeError: config missing or quantized, weights not safetensors, a shard truncated or
            disagreeing with ``model.safetensors.index.json``.
    """
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json", "the model config")
    quantization = config.get("quantization_config")
    if quantization:
        method = quantization.get("quant_method", "?") if isinstance(quantization, dict) else "?"
        raise MergeError(f"{model_dir / 'config.json'}: the base model is quantized (quantization_config."
                         f"quant_method={method}); merge the adapter into the full-precision base model, as "
                         "LLaMA-Factory requires for QLoRA adapters")
    index = model_dir / WEIGHT_INDEX
    if index.exists():
        weight_map = _read_json(index, "the weight index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise MergeError(f"{index}: 'weight_map' is missing or empty")
        odd = [name for name in weight_map.values()
               if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name]
        if odd:
            raise MergeError(f"{index}: 'weight_map' must name shard files in {model_dir}, got {odd[0]!r}")
        names = sorted(set(weight_map.values()))
    elif (model_dir / "model.safetensors").exists():
        weight_map, names = None, ["model.safetensors"]
    else:
        raise MergeError(f"{model_dir} has no safetensors weights ({WEIGHT_INDEX} or model.safetensors); "
                         "convert .bin checkpoints with save_pretrained(safe_serialization=True) first")
    shards: dict[Path, SafetensorsHeader] = {}
    for name in names:
        path = model_dir / name
        if not path.is_file():
            raise MergeError(f"{path} is named in {index} but missing")
        shards[path] = header = _header(path)
        if weight_map is not None:
            expected = {key for key, owner in weight_map.items() if owner == name}
            if set(header.tensors) != expected:
                raise MergeError(f"{path} does not hold the tensors {index} assigns to it "
                                 f"(e.g. {sorted(set(header.tensors) ^ expected)[:3]})")
        for key, entry in header.tensors.items():
            if entry.dtype.startswith("F8") or key.endswith((".absmax", ".qweight", ".SCB", ".weight_scale")):
                raise MergeError(f"{path}: tensor {key!r} ({entry.dtype}) is quantized; merge into the "
                                 "full-precision base model")
    return config, shards


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


def _adapter_tensors(adapter_dir: Path) -> dict[str, "torch.Tensor"]:
    import torch

    weights = adapter_dir / "adapter_model.safetensors"
    if weights.exists():
        header = _header(weights)
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
    config = _read_json(config_path, "the LoRA adapter config")
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


# --- planning -----------------------------------------------------------------------------------------------


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



def _tied_weights(config: dict) -> dict[str, str]:
    """Tied output key -> input embedding key of this architecture (transformers' own table)."""
    import transformers

    architectures = config.get("architectures") or []
    table = getattr(getattr(transformers, architectures[0], None), "_tied_weights_keys", None) if architectures \
        else None
    return table if isinstance(table, dict) else {"lm_head.weight": "model.embed_tokens.weight"}


def output_dtype(requested: str, config: dict, shards: dict[Path, SafetensorsHeader]) -> str:
    """torch dtype name of the output: ``auto`` keeps the base config's (or checkpoint's) dtype.

    Raises:
        MergeError: ``requested`` is not auto/bf16/fp16/fp32.
    """
    if requested != "auto":
        if requested not in DTYPE_NAMES:
            raise MergeError(f"dtype {requested!r} is not one of auto, bf16, fp16, fp32")
        return DTYPE_NAMES[requested]
    declared = config.get("dtype") or config.get("torch_dtype")
    if declared in _FLOAT_CODES:
        return declared
    for header in shards.values():
        for entry in header.tensors.values():
            if entry.dtype in ("F32", "BF16", "F16", "F64"):
                return _TORCH_NAMES[entry.dtype]
    return "float32"


def plan_tensors(shards: dict[Path, SafetensorsHeader], adapter: Adapter | None, config: dict,
                 dtype: str) -> tuple[list[PlannedTensor], list[str]]:
    """Every output tensor in shard order, plus the names of tied weights that must be untied.

    Raises:
        MergeError: the adapter targets a tensor the base does not have, or with another shape.
    """
    tensors, sources = [], {}
    for path, header in shards.items():
        for name, entry in sorted(header.tensors.items(), key=lambda item: item[1].begin):
            sources[name] = (path, entry)
    changed = set(adapter.deltas) | set(adapter.replacements) if adapter else set()
    untied = []
    # Only an adapter that touches embeddings (or a key the checkpoint lacks) can meet tied weights.
    if adapter and (changed - set(sources) or adapter.replacements
                    or any(delta.embedding for delta in adapter.deltas.values())):
        for tied, origin in _tied_weights(config).items():
            if tied not in sources and origin in sources and {tied, origin} & changed:
                if adapter.config.get("ensure_weight_tying"):
                    raise MergeError(f"the adapter sets ensure_weight_tying and changes the tied weight {tied!r}; "
                                     "merge it with peft instead")
                untied.append(tied)
                sources[tied] = sources[origin]
    missing = sorted(changed - set(sources))
    if missing:
        raise MergeError(f"the adapter changes {missing[0]!r}, which the base checkpoint does not have; is it the "
                         "adapter of this base model?")
    for path, header in shards.items():
        for name, entry in sorted(header.tensors.items(), key=lambda item: item[1].begin):
            tensors.append(_planned(name, name, path, entry, dtype))
            tensors.extend(_planned(tied, name, path, entry, dtype) for tied in untied if sources[tied][1] is entry)
    for tensor in tensors if adapter else []:
        _check_update_shapes(tensor, adapter)
    return tensors, untied


def _planned(name: str, source: str, path: Path, entry, dtype: str) -> PlannedTensor:
    floating = entry.dtype in ("F32", "BF16", "F16", "F64")
    return PlannedTensor(name, path, source, _FLOAT_CODES[dtype] if floating else entry.dtype, entry.shape)


def _check_update_shapes(tensor: PlannedTensor, adapter: Adapter) -> None:
    replacement = adapter.replacements.get(tensor.name)
    if replacement is not None and tuple(replacement.shape) != tensor.shape:
        raise MergeError(f"the adapter's {tensor.name!r} has shape {list(replacement.shape)} but the base has "
                         f"{list(tensor.shape)} (a resized vocabulary cannot be merged into this base)")
    delta = adapter.deltas.get(tensor.name)
    if delta is None:
        return
    if delta.shape() != tensor.shape:
        raise MergeError(f"the LoRA update of {tensor.name!r} has shape {list(delta.shape())} but the base weight "
                         f"has {list(tensor.shape)}; is it the adapter of this base model?")
    if tensor.dtype not in ("F32", "BF16", "F16", "F64"):
        raise MergeError(f"the adapter targets {tensor.name!r}, which is not a floating-point weight")


def group_shards(tensors: list[PlannedTensor], max_shard_bytes: int) -> list[list[PlannedTensor]]:
    """Split the plan into output shards: never mixing input shards, at most ``max_shard_bytes`` each
    (a bigger single tensor gets a shard of its own). Larger element sizes first keeps data aligned."""
    groups: list[list[PlannedTensor]] = []
    current: list[PlannedTensor] = []
    size = 0
    for tensor in tensors:
        if current and (tensor.shard != current[-1].shard or size + tensor.nbytes > max_shard_bytes):
            groups.append(current)
            current, size = [], 0
        current.append(tensor)
        size += tensor.nbytes
    if current:
        groups.append(current)
    return [sorted(group, key=lambda tensor: -SAFETENSORS_ITEMSIZE[tensor.dtype]) for group in groups]


# --- writing ------------------------------------------------------------------------------------------------


def merged_tensor(tensor: PlannedTensor, handle, header: SafetensorsHeader, adapter: Adapter | None,
                  dtype: str, buffer: "torch.Tensor | None" = None,
                  scratch: "list[torch.Tensor] | None" = None, converted: "torch.Tensor | None" = None
                  ) -> "torch.Tensor":
    """The output value of one planned tensor: base (or replacement), cast, plus its LoRA delta.

    The base tensor is read into ``buffer`` when given and cast into ``converted`` (the result may
    live in either); ``scratch`` (two fp32 buffers as large as the largest LoRA-targeted weight)
    holds the delta arithmetic. Without them the function allocates.
    Mirrors peft: linear layers add the fp32 delta to the weight and round once, embeddings add the
    delta cast to the weight dtype first, as ``merge_and_unload`` does.
    """
    import torch

    replacement = adapter.replacements.get(tensor.name) if adapter else None
    value = replacement if replacement is not None else read_tensor(handle, header, tensor.source, buffer)
    wanted = getattr(torch, _TORCH_NAMES[tensor.dtype])
    if replacement is not None:
        value = value.to(wanted, copy=True)
    elif value.dtype != wanted and converted is not None and converted.numel() >= tensor.nbytes:
        value = converted[:tensor.nbytes].view(wanted).view(value.shape).copy_(value)  # rounds as .to() does
    elif value.dtype != wanted:
        value = value.to(wanted)
    delta = adapter.deltas.get(tensor.name) if adapter else None
    if delta is not None:
        rows, cols = delta.b.shape[0], delta.a.shape[1]
        if scratch is None or scratch[0].numel() < rows * cols:
            scratch = [torch.empty(rows * cols, dtype=torch.float32) for _ in range(2)]
        update = torch.matmul(delta.b, delta.a, out=scratch[0][:rows * cols].view(rows, cols))
        update.mul_(delta.scaling)  # the same float32 products as peft's (B @ A) * scaling
        update = update.T if delta.embedding or delta.fan_in_fan_out else update
        if delta.embedding:
            value += update.to(value.dtype)
        elif value.dtype == torch.float32 and delta.magnitude is None:
            value += update
        else:  # float32 sum rounded once, as torch's mixed in-place add does (that one is ~20x slower)
            wide = scratch[1][:rows * cols].view(value.shape).to(torch.promote_types(value.dtype, torch.float32))
            wide.copy_(value).add_(update)
            if delta.magnitude is not None:  # DoRA, as peft merges it: rows rescaled to magnitude / row norm
                wide.mul_((delta.magnitude / torch.linalg.norm(wide, dim=1)).view(-1, 1))
            value.copy_(wide)
    if (delta is not None or replacement is not None) and not bool(value.isfinite().all()):
        scaling = f" (LoRA scaling {delta.scaling:g} = lora_alpha / r)" if delta is not None else ""
        raise MergeError(f"merging {tensor.name!r} gives NaN or infinite weights{scaling}; nothing was published")
    return value


def write_shard(path: Path, tensors: list[PlannedTensor],
                produce: Callable[[PlannedTensor, int], "torch.Tensor"]) -> str:
    """Write one safetensors file tensor by tensor (header first, from the plan); return its SHA-256.

    Writing and hashing run on a helper thread while the next tensor is computed (file writes,
    hashlib and torch all release the GIL); at most two finished tensors are held at once.
    ``produce(tensor, slot)`` gets slots 0, 1, 0, 1, ...: a result may live in a buffer owned by its
    slot, because the tensor written from a slot is on disk before that slot is handed out again.

    Raises:
        MergeError: a produced tensor differs from the plan in shape or dtype.
    """
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    import torch

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for tensor in tensors:
        header[tensor.name] = {"dtype": tensor.dtype, "shape": list(tensor.shape),
                               "data_offsets": [offset, offset + tensor.nbytes]}
        offset += tensor.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    digest = hashlib.sha256()

    def emit(data) -> None:
        out.write(data)
        digest.update(data)

    with open(path, "wb") as out, ThreadPoolExecutor(max_workers=1) as writer:
        emit(struct.pack("<Q", len(encoded)) + encoded)
        pending = None
        for number, tensor in enumerate(tensors):
            value = produce(tensor, number % 2)
            if tuple(value.shape) != tensor.shape or value.dtype != getattr(torch, _TORCH_NAMES[tensor.dtype]):
                raise MergeError(f"internal error: {tensor.name} came out {value.dtype} {list(value.shape)}, "
                                 f"planned {tensor.dtype} {list(tensor.shape)}")
            data = memoryview(value.contiguous().reshape(-1).view(torch.uint8).numpy())
            if pending is not None:
                pending.result()  # keeps the file in plan order and memory at two tensors
            pending = writer.submit(emit, data)
            del value, data  # the helper's reference keeps the buffer alive until it is written
        if pending is not None:
            pending.result()
    return digest.hexdigest()


def _copy_side_files(source: Path, adapter_dir: Path | None, output_dir: Path) -> list[str]:
    """Copy config-side files (generation config, tokenizer, chat template, licence) into the output."""
    tokenizer_from = adapter_dir if adapter_dir and (adapter_dir / "tokenizer_config.json").exists() else source
    copied = []
    for directory, keep in ((source, lambda name: not _TOKENIZER_FILES.match(name) or tokenizer_from == source),
                            (tokenizer_from, _TOKENIZER_FILES.match)):
        for path in sorted(directory.iterdir()):
            name = path.name
            if (path.is_file() and not name.startswith(".") and name != "config.json"
                    and not _SKIPPED_FILES.match(name) and keep(name) and name not in copied):
                shutil.copyfile(path, output_dir / name)
                copied.append(name)
    return copied


def _return_freed_tensors_to_the_os() -> None:
    """Pin glibc's mmap threshold at 1 MiB so every freed tensor's memory goes straight back to the OS.

    glibc raises the threshold after the first large free and then keeps later tensors in its heap
    arenas (one per thread), which roughly doubles the merge's peak RSS. Other C libraries: no-op.
    """
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1024 * 1024)  # M_MMAP_THRESHOLD


def write_weights(output_dir: Path, groups: list[list[PlannedTensor]], shards: dict[Path, SafetensorsHeader],
                  adapter: Adapter | None, dtype: str) -> tuple[dict[str, str], dict[str, str]]:
    """Write every output shard; return ``(SHA-256 per shard file, weight map)``.

    Working memory is allocated once and reused for every tensor (fresh pages cost a page fault
    each): per writer slot a read buffer and a cast buffer, plus two fp32 buffers for the LoRA delta.
    """
    import torch

    def largest(sizes) -> int:
        return max(sizes, default=0)

    plan = [tensor for group in groups for tensor in group]
    source_bytes = largest(entry.end - entry.begin for header in shards.values() for entry in header.tensors.values())
    cast_bytes = largest(tensor.nbytes for tensor in plan
                         if tensor.dtype != shards[tensor.shard].tensors[tensor.source].dtype)
    delta_size = largest(math.prod(delta.shape()) for delta in adapter.deltas.values()) if adapter else 0
    reads = [torch.empty(source_bytes, dtype=torch.uint8) for _ in range(2)]
    casts = [torch.empty(cast_bytes, dtype=torch.uint8) for _ in range(2)]
    scratch = [torch.empty(delta_size, dtype=torch.float32) for _ in range(2)]
    digests, weight_map = {}, {}
    for number, group in enumerate(groups, start=1):
        name = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
        header = shards[group[0].shard]
        with open(group[0].shard, "rb", buffering=0) as handle:
            digests[name] = write_shard(
                output_dir / name, group,
                lambda tensor, slot, handle=handle, header=header: merged_tensor(
                    tensor, handle, header, adapter, dtype, reads[slot], scratch, casts[slot]))
        weight_map.update({tensor.name: name for tensor in group})
    return digests, weight_map


def merge_model(base_dir: Path, adapter_dir: Path | None, output_dir: Path, *, dtype: str = "auto",
                max_shard_size_mb: int = 4096, info: dict | None = None) -> dict[str, Any]:
    """Write the merged model (or, without an adapter, a streamed copy of the base) into ``output_dir``.

    ``output_dir`` must be empty or absent; write it through a staging directory (see
    :func:`merge_and_publish`) so that nobody reads it half-written. ``info`` is recorded in
    ``merge_info.json``. Returns a summary: dtype, shards, tensors, merged, replaced, untied, bytes,
    checksum (SHA-256 of ``checksums.sha256``).

    Raises:
        MergeError: the base or adapter cannot be merged (see :func:`base_layout`, :func:`load_adapter`).
        StorageError: the output directory is not empty.
    """
    base_dir, output_dir = Path(base_dir), Path(output_dir)
    adapter_dir = Path(adapter_dir) if adapter_dir else None
    _return_freed_tensors_to_the_os()
    config, shards = base_layout(base_dir)
    adapter = orient_deltas(load_adapter(adapter_dir), config, shards) if adapter_dir else None
    target = output_dtype(dtype, config, shards)
    plan, untied = plan_tensors(shards, adapter, config, target)
    groups = group_shards(plan, max_shard_size_mb * 1024 * 1024)
    output_dir.mkdir(parents=True, exist_ok=True)
    if any(output_dir.iterdir()):
        raise StorageError(f"{output_dir} is not empty; merge into a fresh directory")
    digests, weight_map = write_weights(output_dir, groups, shards, adapter, target)
    total = sum(tensor.nbytes for tensor in plan)
    _write_json(output_dir / WEIGHT_INDEX, {"metadata": {"total_size": total},
                                            "weight_map": dict(sorted(weight_map.items()))})
    config["dtype"] = target
    config["torch_dtype"] = target  # vLLM on transformers < 4.56 reads only torch_dtype
    if untied:
        config["tie_word_embeddings"] = False
    _write_json(output_dir / "config.json", config)
    side_files = _copy_side_files(base_dir, adapter_dir, output_dir)
    summary = {
        "dtype": target, "shards": len(groups), "tensors": len(plan), "bytes": total,
        "merged": len(adapter.deltas) if adapter else 0, "replaced": len(adapter.replacements) if adapter else 0,
        "untied": untied, "chat_template": _has_chat_template(output_dir, side_files),
    }
    _write_json(output_dir / MERGE_INFO, {"base": str(base_dir), "adapter": str(adapter_dir or ""),
                                          **summary, **(info or {})})
    _check_against_plan(output_dir, groups)
    summary["checksum"] = write_manifest(output_dir, digests)
    return summary


def _has_chat_template(output_dir: Path, side_files: list[str]) -> bool:
    """Whether vLLM will find a chat template (a separate file, or inside tokenizer_config.json)."""
    if any(name.startswith("chat_template") for name in side_files):
        return True
    tokenizer_config = output_dir / "tokenizer_config.json"
    return tokenizer_config.exists() and "chat_template" in _read_json(tokenizer_config, "tokenizer config")


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _check_against_plan(output_dir: Path, groups: list[list[PlannedTensor]]) -> None:
    """Re-read the written headers: every planned tensor is there with the base's shape."""
    for number, group in enumerate(groups, start=1):
        path = output_dir / f"model-{number:05d}-of-{len(groups):05d}.safetensors"
        written = _header(path).tensors
        for tensor in group:
            entry = written.get(tensor.name)
            if entry is None or entry.shape != tensor.shape or entry.dtype != tensor.dtype:
                raise MergeError(f"{path}: tensor {tensor.name!r} was not written as planned")


# --- publishing ---------------------------------------------------------------------------------------------


def safe_run_id(kfp_run_id: str) -> str:
    """The run id as a lowercase name fragment (letters, digits, '-'), at most 48 characters."""
    return re.sub(r"[^a-z0-9]+", "-", kfp_run_id.lower()).strip("-")[:48].strip("-") or "run"


def version_name(kfp_run_id: str = "", now: float | None = None) -> str:
    """A sortable, unique version name: UTC time, then the run id (``20261127-010203-<run id>``)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return check_version_name(f"{stamp}-{safe_run_id(kfp_run_id)}" if kfp_run_id else stamp)


def find_published(models_dir: Path, kfp_run_id: str) -> Path | None:
    """The newest verified version this run already published (retry after a late failure), or None."""
    suffix = f"-{safe_run_id(kfp_run_id)}"
    for version in reversed(published_versions(models_dir)):
        path = Path(models_dir) / version
        if not version.endswith(suffix) or not (path / MERGE_INFO).is_file():
            continue
        with contextlib.suppress(ValueError, OSError, PublishError, AttributeError):  # DocumentError: a ValueError
            if read_json(path / MERGE_INFO).get("kfp_run_id") == kfp_run_id:
                verify_model_dir(path)
                return path
    return None


def remove_stale_staging(models_dir: Path, kfp_run_id: str) -> list[Path]:
    """Delete staging directories that earlier, killed attempts of this run left behind."""
    pattern = f"{STAGING_PREFIX}*-{safe_run_id(kfp_run_id)}-????????"
    stale = sorted(Path(models_dir).glob(pattern)) if Path(models_dir).is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def merge_and_publish(base_dir: Path, adapter_dir: Path | None, models_dir: Path, version: str, *,
                      dtype: str = "auto", max_shard_size_mb: int = 4096, set_current: bool = False,
                      info: dict | None = None) -> tuple[Path, dict[str, Any]]:
    """Merge into a hidden staging directory next to the versions, then publish it as ``version``.

    Returns ``(published dir, summary)``. A failure at any point removes the staging directory and
    leaves every published version and ``current`` as they were.

    Raises:
        MergeError: the inputs cannot be merged.
        PublishError: the result failed verification or the version exists.
        StorageError: the volume refused a write.
    """
    staging = staging_dir_for(models_dir, version)
    try:
        summary = merge_model(base_dir, adapter_dir, staging, dtype=dtype, max_shard_size_mb=max_shard_size_mb,
                              info={"version": version, **(info or {})})
        return publish_model(staging, models_dir, version, set_current=set_current), summary
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def run_step(config: str, kfp_run_id: str, adapter_dir: str, merged: Any) -> tuple[str, str]:
    """Merge the trained adapter (or copy full weights) and publish a new version without moving ``current``.

    Reads storage (mount_path, base_model, models_root), mlflow (registered_model_name and the
    tracking settings), training.method (``full``: ``adapter_dir`` holds full weights) and merge
    (dtype, max_shard_size_mb). Idempotent: a retry of a run that already published returns that
    version. Logs the MLflow child run ``merge-lora`` (params base, adapter, dtype, version, checksum).

    Returns:
        ``(model_dir, version)``: the published directory (absolute) and its version name.

    Raises:
        ConfigError: the config parameter is invalid.
        MergeError, PublishError, StorageError: see :func:`merge_and_publish`.
        TrackingUnavailable: the MLflow server does not answer.
    """
    from components.common.storage import inside, storage_root
    from components.common.tracking import step_run
    from configs.schema import config_from_json

    cfg = config_from_json(config)
    root = storage_root(cfg)
    base = cfg.storage.resolve(cfg.storage.base_model)
    trained = inside(root, adapter_dir)
    models_dir = inside(cfg.storage.resolve(cfg.storage.models_root), cfg.mlflow.registered_model_name)
    guard_output(models_dir, {"storage.base_model": base, "the trained adapter": trained},
                 flag="storage.models_root/mlflow.registered_model_name")
    full = cfg.training.method == "full"
    with step_run(cfg, kfp_run_id, STEP_NAME, system_metrics=True) as (client, run_id):
        started = time.monotonic()
        published = find_published(models_dir, kfp_run_id)
        reused = published is not None
        if published is None:
            remove_stale_staging(models_dir, kfp_run_id)
            published, _ = merge_and_publish(
                trained if full else base, None if full else trained, models_dir, version_name(kfp_run_id),
                dtype=cfg.merge.dtype, max_shard_size_mb=cfg.merge.max_shard_size_mb, set_current=False,
                info={"kfp_run_id": kfp_run_id, "method": cfg.training.method, "base_model": str(base)},
            )
        details = _read_json(published / MERGE_INFO, "the merge record")
        checksum = manifest_checksum(published)
        record = {"base": str(base), "adapter": str(trained), "dtype": details["dtype"], "version": published.name,
                  "checksum": checksum, "method": cfg.training.method, "model_dir": str(published)}
        for key in ("base", "adapter", "dtype", "version", "checksum"):
            client.log_param(run_id, key, record[key])
        client.set_tag(run_id, "llmft.model_dir", str(published))
        client.set_tag(run_id, "llmft.reused_version", str(reused).lower())
        client.log_metric(run_id, "merge_seconds", time.monotonic() - started)
        client.log_metric(run_id, "model_bytes", details["bytes"])
        client.log_metric(run_id, "merged_tensors", details["merged"])
    merged.metadata.update(record)
    Path(merged.path).parent.mkdir(parents=True, exist_ok=True)
    Path(merged.path).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"merge_lora": record, "reused": reused}))
    return str(published), published.name


# --- CLI ----------------------------------------------------------------------------------------------------


def _check_replaceable(output: Path) -> None:
    """``--output --force`` replaces only a model an earlier ``--output`` merge wrote, never anything else.

    Raises:
        StorageError: ``output`` exists and is not such a directory (no merge_info.json, a published version).
    """
    output = Path(output)
    if not output.exists() and not output.is_symlink():
        return
    info_file = output / MERGE_INFO
    if output.is_symlink() or not output.is_dir() or not info_file.is_file():
        raise StorageError(f"--output {output} exists and is not a merged model ({MERGE_INFO} is missing); --force "
                           "replaces only a directory an earlier merge_lora --output wrote")
    try:
        version = read_json(info_file, max_bytes=MAX_CONFIG_BYTES).get("version")
    except (DocumentError, AttributeError):
        version = None
    if version is not None:
        raise StorageError(f"--output {output} is the published version {version!r}; published versions are "
                           "immutable: publish a new one with --publish-to")


def build_parser() -> argparse.ArgumentParser:
    """The CLI: merge into a plain directory (--output) or publish a version (--publish-to)."""
    parser = argparse.ArgumentParser(
        prog="python -m components.merge.merge_lora",
        description="Merge a LoRA adapter into its base model shard by shard (or copy full weights without "
                    "--adapter) and write it atomically for vLLM.")
    parser.add_argument("--base", required=True, type=Path, help="Base model directory (safetensors).")
    parser.add_argument("--adapter", type=Path, help="peft LoRA adapter directory; leave out to copy --base.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--output", type=Path, help="Plain output directory, written atomically (no versions).")
    where.add_argument("--publish-to", type=Path, metavar="MODELS_DIR",
                       help="Versioned layout: MODELS_DIR/<version> plus the current pointer.")
    parser.add_argument("--version", help="Version name with --publish-to (default: UTC time YYYYmmdd-HHMMSS).")
    parser.add_argument("--no-set-current", action="store_true", help="With --publish-to: do not move current.")
    parser.add_argument("--force", action="store_true", help="With --output: replace an existing directory.")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPE_NAMES],
                        help="Output dtype (auto: the base config's).")
    parser.add_argument("--max-shard-size-mb", type=int, default=4096, help="Largest output shard (MB).")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit 0 on success, 1 when the merge or publish fails, 2 on usage errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.output and (args.version or args.no_set_current):
        parser.error("--version and --no-set-current go with --publish-to")
    if args.max_shard_size_mb < 1:
        parser.error("--max-shard-size-mb must be at least 1")
    inputs = {"--base": args.base, "--adapter": args.adapter}
    try:
        if args.output:
            guard_output(args.output, inputs, replace=True)  # never an input, inside one or above one
            if args.output.exists() and not args.force:
                raise StorageError(f"--output {args.output} already exists; pass --force to replace an earlier "
                                   "merge there")
            if args.force:
                _check_replaceable(args.output)
            with atomic_directory(args.output, replace=args.force) as staging:
                summary = merge_model(args.base, args.adapter, staging, dtype=args.dtype,
                                      max_shard_size_mb=args.max_shard_size_mb)
                verify_model_dir(staging)
            result = {"output": str(args.output), **summary}
        else:
            guard_output(args.publish_to, inputs, flag="--publish-to")
            version = args.version or version_name()
            path, summary = merge_and_publish(args.base, args.adapter, args.publish_to, version, dtype=args.dtype,
                                              max_shard_size_mb=args.max_shard_size_mb,
                                              set_current=not args.no_set_current)
            result = {"published": str(path), "version": version, "current": not args.no_set_current, **summary}
    except (MergeError, StorageError) as exc:
        print(f"merge_lora: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full or read-only volume mid-write: name where it happened
        print(f"merge_lora: error: {describe_os_error(exc, Path(args.output or args.publish_to))}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


# --- KFP component ------------------------------------------------------------------------------------------


if __name__ == "__main__":
    raise SystemExit(main())
