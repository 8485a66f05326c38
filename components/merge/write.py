"""Write the merged model tensor by tensor: the arithmetic peft does, in a few reused buffers.

For each planned tensor :func:`merged_tensor` reads the base tensor (or its replacement), casts it and adds its
LoRA delta exactly as peft's ``merge_and_unload`` does (delta in fp32, added to the weight in the output dtype;
DoRA rows rescaled); :func:`write_shard` streams the tensors into one safetensors file, writing and hashing on a
helper thread while the next tensor is computed. Peak memory is the adapter plus a few tensor-sized buffers
(:func:`write_weights` allocates them once), not the model. Side files (generation config, tokenizer, chat
template: the adapter's when it carries a tokenizer) are copied by :func:`copy_side_files`.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.merge.adapter import Adapter
from components.merge.inputs import MergeError, read_config_json, read_header, read_tensor
from components.merge.plan import PlannedTensor
from components.merge.safetensors import TORCH_DTYPES, SafetensorsHeader
from components.merge.verify import MANIFEST_NAME, MERGE_INFO

if TYPE_CHECKING:
    import torch


# Files of a training output that a served model does not need.
_SKIPPED_FILES = re.compile(
    r"(.*\.(safetensors|bin|pt|pth|gguf|h5|msgpack|ckpt)|.*\.index\.json|adapter_config\.json|trainer_state\.json|"
    r"(all|train|eval)_results\.json|trainer_log\.jsonl|training_.*\.png|" + re.escape(MANIFEST_NAME) + "|"
    + re.escape(MERGE_INFO) + r")$")


_TOKENIZER_FILES = re.compile(r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|chat_template\.(jinja|json)|"
                              r"vocab\.(json|txt)|merges\.txt|spiece\.model|.*\.tiktoken)$")


def merged_tensor(tensor: PlannedTensor, handle, header: SafetensorsHeader, adapter: Adapter | None,
                  dtype: str, buffer: torch.Tensor | None = None,
                  scratch: list[torch.Tensor] | None = None, converted: torch.Tensor | None = None
                  ) -> torch.Tensor:
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
    wanted = getattr(torch, TORCH_DTYPES[tensor.dtype])
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
                produce: Callable[[PlannedTensor, int], torch.Tensor]) -> str:
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
            if tuple(value.shape) != tensor.shape or value.dtype != getattr(torch, TORCH_DTYPES[tensor.dtype]):
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


def copy_side_files(source: Path, adapter_dir: Path | None, output_dir: Path) -> list[str]:
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


def return_freed_memory_to_the_os() -> None:
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


def has_chat_template(output_dir: Path, side_files: list[str]) -> bool:
    """Whether vLLM will find a chat template (a separate file, or inside tokenizer_config.json)."""
    if any(name.startswith("chat_template") for name in side_files):
        return True
    tokenizer_config = output_dir / "tokenizer_config.json"
    return tokenizer_config.exists() and "chat_template" in read_config_json(tokenizer_config, "tokenizer config")


def check_against_plan(output_dir: Path, groups: list[list[PlannedTensor]]) -> None:
    """Re-read the written headers: every planned tensor is there with the base's shape."""
    for number, group in enumerate(groups, start=1):
        path = output_dir / f"model-{number:05d}-of-{len(groups):05d}.safetensors"
        written = read_header(path).tensors
        for tensor in group:
            entry = written.get(tensor.name)
            if entry is None or entry.shape != tensor.shape or entry.dtype != tensor.dtype:
                raise MergeError(f"{path}: tensor {tensor.name!r} was not written as planned")
