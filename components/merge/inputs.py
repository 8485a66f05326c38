"""Reading what a merge is given, as :class:`MergeError` naming the file: JSON configs, headers, tensors.

Every file of the base model and the adapter is untrusted input: configs go through the safe JSON reader (size,
depth, NaN, duplicate keys), safetensors headers through :mod:`components.merge.safetensors`, and tensors are
read with plain file reads (no mmap, so a merge's memory is what it reads, not the file cache).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from components.merge.safetensors import (
    TORCH_DTYPES,
    SafetensorsFormatError,
    SafetensorsHeader,
    read_safetensors_header,
)
from configs.errors import StepError
from configs.safe_json import DocumentError, read_json

if TYPE_CHECKING:
    import torch


MAX_CONFIG_BYTES = 16 << 20  # config.json, adapter_config.json, the weight index: a few KB to a few MB


class MergeError(StepError, ValueError):
    """An adapter or base model that cannot be merged; the message names the file and field."""


def read_config_json(path: Path, what: str) -> dict:
    try:
        data = read_json(path, max_bytes=MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise MergeError(f"{path} is missing ({what})") from None
    except DocumentError as exc:  # unreadable, not JSON, NaN, a duplicate key, too deep, an over-long number
        raise MergeError(f"{path} is not valid JSON ({exc.reason})") from None
    if not isinstance(data, dict):
        raise MergeError(f"{path} must hold a JSON object ({what})")
    return data


def read_header(path: Path) -> SafetensorsHeader:
    try:
        return read_safetensors_header(path)
    except SafetensorsFormatError as exc:
        raise MergeError(str(exc)) from None


def read_tensor(handle, header: SafetensorsHeader, name: str, buffer: torch.Tensor | None = None) -> torch.Tensor:
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
    return buffer.view(getattr(torch, TORCH_DTYPES[entry.dtype])).reshape(entry.shape)
