"""The safetensors format, read without loading tensors: headers checked against the file, dtypes and sizes.

A safetensors file is an 8-byte little-endian header length, a JSON header (each tensor's dtype, shape and byte
range in the data section, plus optional ``__metadata__``) and the data. :func:`read_safetensors_header` parses
the header through the safe JSON reader and checks it against the file (ranges tile the data section, the file
is exactly as long as the header says), so a truncated or padded shard is named before anything reads it.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import NamedTuple

from configs.errors import StepError
from configs.safe_json import DocumentError, parse_json

_MAX_HEADER_BYTES = 100 * 1024 * 1024


# safetensors dtype code -> bytes per element
SAFETENSORS_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}


class SafetensorsFormatError(StepError, ValueError):
    """A safetensors file is truncated or malformed; the message names the file and what is wrong."""


class TensorEntry(NamedTuple):
    """One tensor in a safetensors file: dtype code, shape and byte range in the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


class SafetensorsHeader(NamedTuple):
    """The parsed header of a safetensors file; ``data_start`` is the file offset of the data section."""

    tensors: dict[str, TensorEntry]
    data_start: int
    metadata: dict[str, str]


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Parse and check a safetensors header without reading the tensor data.

    Checks that every tensor's byte range matches its shape and dtype, that the ranges tile the
    data section without holes or overlaps, and that the file is exactly as long as the header says.

    Raises:
        SafetensorsFormatError: the file is truncated, padded, not safetensors, or inconsistent.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise SafetensorsFormatError(f"{path}: truncated ({size} bytes, no safetensors header)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(_MAX_HEADER_BYTES, size - 8):
                raise SafetensorsFormatError(
                    f"{path}: truncated or not safetensors (header claims {header_len} bytes, file has {size})")
            raw = handle.read(header_len)
    except OSError as exc:
        raise SafetensorsFormatError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        header = parse_json(raw, "the safetensors header", max_bytes=_MAX_HEADER_BYTES)
    except DocumentError as exc:  # not JSON, too deep, a tensor named twice, an over-long number
        raise SafetensorsFormatError(f"{path}: the safetensors header is not valid JSON ({exc.reason})") from None
    if not isinstance(header, dict):
        raise SafetensorsFormatError(f"{path}: the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    tensors: dict[str, TensorEntry] = {}
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
            if type(begin) is not int or type(end) is not int or min(shape, default=0) < 0:
                raise ValueError("offsets must be integers and dimensions >= 0")
        except (KeyError, TypeError, ValueError):
            raise SafetensorsFormatError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if dtype not in SAFETENSORS_ITEMSIZE:
            raise SafetensorsFormatError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
        if end - begin != math.prod(shape) * SAFETENSORS_ITEMSIZE[dtype] or begin < 0:
            raise SafetensorsFormatError(f"{path}: tensor {name!r} byte range {begin}..{end} does not match "
                                         f"shape {list(shape)} of {dtype}")
        tensors[name] = TensorEntry(dtype, shape, begin, end)
    position = 0
    for name, entry in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != position:
            raise SafetensorsFormatError(f"{path}: tensor {name!r} starts at byte {entry.begin}, expected {position}")
        position = entry.end
    data_start = 8 + header_len
    if data_start + position != size:
        state = "truncated" if data_start + position > size else "longer than its header says"
        raise SafetensorsFormatError(
            f"{path}: {state} (header needs {data_start + position} bytes, file has {size})")
    return SafetensorsHeader(tensors, data_start, metadata)


TORCH_DTYPES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "F16": "float16",
                "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32", "I64": "int64",
                "U64": "uint64", "F64": "float64"}
