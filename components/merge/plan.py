"""Plan the merged model before writing a byte: the base's layout, every output tensor, the output shards.

:func:`base_layout` checks the base model (config, safetensors shards against the weight index, no quantized
tensors); :func:`plan_tensors` lists every output tensor in shard order, with its source, dtype and shape, and
checks every LoRA update and replacement against the base weight it changes (and unties tied embeddings the
adapter changes on one side only); :func:`group_shards` cuts the plan into output shards.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

from components.merge.adapter import Adapter
from components.merge.inputs import MergeError, read_config_json, read_header
from components.merge.safetensors import SAFETENSORS_ITEMSIZE, TORCH_DTYPES, SafetensorsHeader
from components.merge.verify import WEIGHT_INDEX

DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


FLOAT_CODES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64"}


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


def base_layout(model_dir: Path) -> tuple[dict, dict[Path, SafetensorsHeader]]:
    """The config and the checked safetensors shard headers of a full-weights model directory.

    Raises:
        MergeError: config missing or quantized, weights not safetensors, a shard truncated or
            disagreeing with ``model.safetensors.index.json``.
    """
    model_dir = Path(model_dir)
    config = read_config_json(model_dir / "config.json", "the model config")
    quantization = config.get("quantization_config")
    if quantization:
        method = quantization.get("quant_method", "?") if isinstance(quantization, dict) else "?"
        raise MergeError(f"{model_dir / 'config.json'}: the base model is quantized (quantization_config."
                         f"quant_method={method}); merge the adapter into the full-precision base model, as "
                         "LLaMA-Factory requires for QLoRA adapters")
    index = model_dir / WEIGHT_INDEX
    if index.exists():
        weight_map = read_config_json(index, "the weight index").get("weight_map")
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
        shards[path] = header = read_header(path)
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
    if declared in FLOAT_CODES:
        return declared
    for header in shards.values():
        for entry in header.tensors.values():
            if entry.dtype in ("F32", "BF16", "F16", "F64"):
                return TORCH_DTYPES[entry.dtype]
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
    return PlannedTensor(name, path, source, FLOAT_CODES[dtype] if floating else entry.dtype, entry.shape)


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
