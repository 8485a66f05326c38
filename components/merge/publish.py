"""Publish a model directory atomically, verify it, and move the ``current`` pointer vLLM serves.

Layout on the shared volume (one directory per registered model name)::

    models/<name>/
        20261127-010203-<run id>/    an immutable, verified version (weights, config, tokenizer,
                                     checksums.sha256, merge_info.json)
        current -> 20261127-010203-<run id>     relative symlink: the version being served
        CURRENT                      the same version name as text, for NFS clients that do not follow symlinks
        .incoming-<version>-<id>/    a version being written (hidden; never read by anyone)

How a version appears: the writer fills a hidden staging directory next to the versions,
:func:`publish_model` verifies it (file list, safetensors headers against the weight index, every
file's SHA-256 against ``checksums.sha256``) and renames it to ``<version>`` in one ``rename``. A
crash before the rename leaves only the hidden staging directory; after it, a complete version.

How ``current`` moves: :func:`set_current` creates a temporary relative symlink and ``os.replace``-s
it over ``current`` (atomic on POSIX and NFS), then rewrites ``CURRENT``. The symlink is the
source of truth; a crash between the two steps leaves ``CURRENT`` one version behind until the
next :func:`set_current`. Old versions are never modified, so a server still reading one is safe.

Serving with vLLM (a fixed path; restart or roll the deployment after moving ``current``)::

    vllm serve /storage/models/<name>/current --served-model-name <name>

vLLM resolves the symlink when it starts. A client that cannot follow symlinks reads
``/storage/models/<name>/CURRENT`` and uses ``/storage/models/<name>/<that version>``. Check a
version by hand with ``cd /storage/models/<name>/<version> && sha256sum -c checksums.sha256``.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import re
import struct
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from components.common.safe_json import DocumentError, parse_json, read_json
from components.common.storage import MODEL_MANIFEST, StorageError, atomic_write_text, describe_os_error

MANIFEST_NAME = MODEL_MANIFEST  # checksums.sha256; the output-path guard looks for it too
CURRENT_LINK = "current"
CURRENT_FILE = "CURRENT"
WEIGHT_INDEX = "model.safetensors.index.json"
STAGING_PREFIX = ".incoming-"
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_RESERVED = {CURRENT_LINK, CURRENT_FILE}
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_HASH_CHUNK = 1024 * 1024

# safetensors dtype code -> bytes per element
SAFETENSORS_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}


class PublishError(StorageError):
    """A model directory failed verification or cannot be published; the message names the file."""


class SafetensorsFormatError(ValueError):
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


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in large chunks (hashlib releases the GIL, so threads overlap)."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        buffer = bytearray(_HASH_CHUNK)
        view = memoryview(buffer)
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def _hash_files(root: Path, names: list[str]) -> dict[str, str]:
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        return dict(zip(names, pool.map(lambda name: sha256_file(root / name), names), strict=True))


def _files_under(root: Path) -> list[str]:
    """Relative POSIX paths of every file under ``root`` except the manifest (symlinks count as files)."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() or path.is_symlink():
            relative = path.relative_to(root).as_posix()
            if relative != MANIFEST_NAME:
                found.append(relative)
    return sorted(found)


def write_manifest(directory: Path, known: dict[str, str] | None = None) -> str:
    """Write ``checksums.sha256`` (``sha256sum -c`` format) for every file in ``directory``.

    ``known`` holds digests the writer already computed while writing (relative path -> hex); the
    other files are hashed here. Returns the SHA-256 of the manifest itself (the model checksum).
    """
    directory = Path(directory)
    names = _files_under(directory)
    known = {name: digest for name, digest in (known or {}).items() if name in names}
    digests = {**_hash_files(directory, [name for name in names if name not in known]), **known}
    text = "".join(f"{digests[name]}  {name}\n" for name in names)
    atomic_write_text(directory / MANIFEST_NAME, text)
    return hashlib.sha256(text.encode()).hexdigest()


def manifest_checksum(path: Path) -> str:
    """SHA-256 of a model directory's manifest (what the Model artifact and MLflow record)."""
    return sha256_file(Path(path) / MANIFEST_NAME)


def _read_manifest(path: Path) -> dict[str, str]:
    manifest = path / MANIFEST_NAME
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise PublishError(f"{manifest} is missing: {path} was not written by a complete publish") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PublishError(f"{manifest} cannot be read ({exc})") from None
    entries: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        match = re.fullmatch(r"([0-9a-f]{64})  (.+)", line)
        name = match.group(2) if match else ""
        if not match or name.startswith("/") or ".." in name.split("/"):
            raise PublishError(f"{manifest} line {number} is malformed: {line[:120]!r}")
        entries[name] = match.group(1)
    return entries


def _check_weights(path: Path) -> None:
    """config.json parses; every shard is a sound safetensors file matching the weight index."""
    try:
        read_json(path / "config.json")
    except FileNotFoundError:
        raise PublishError(f"{path / 'config.json'} is missing") from None
    except DocumentError as exc:
        raise PublishError(f"{path / 'config.json'} is not valid JSON ({exc.reason})") from None
    index_file = path / WEIGHT_INDEX
    if index_file.exists():
        try:
            weight_map = read_json(index_file)["weight_map"]
            if not isinstance(weight_map, dict) or not all(_plain_file_name(shard) for shard in weight_map.values()):
                raise TypeError("weight_map must map tensor names to shard file names in the same directory")
        except (OSError, ValueError, KeyError, TypeError) as exc:  # DocumentError is a ValueError
            raise PublishError(f"{index_file} is not a valid weight index ({exc})") from None
    elif (path / "model.safetensors").exists():
        weight_map = None
    else:
        raise PublishError(f"{path} has no weights ({WEIGHT_INDEX} or model.safetensors)")
    shards = sorted(set(weight_map.values())) if weight_map is not None else ["model.safetensors"]
    for shard in shards:
        file = path / shard
        if not file.is_file():
            raise PublishError(f"{file} is named in {WEIGHT_INDEX} but missing")
        try:
            names = set(read_safetensors_header(file).tensors)
        except SafetensorsFormatError as exc:
            raise PublishError(str(exc)) from None
        if weight_map is not None:
            expected = {name for name, owner in weight_map.items() if owner == shard}
            if names != expected:
                odd = sorted(names ^ expected)[:5]
                raise PublishError(f"{file} does not hold the tensors {WEIGHT_INDEX} assigns to it (e.g. {odd})")


def _plain_file_name(name: object) -> bool:
    """A file name in the same directory: no path separator, not empty, not '.' or '..'."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name


def verify_model_dir(path: Path, *, checksums: bool = True) -> None:
    """Check that ``path`` is a complete model directory exactly as its manifest describes.

    Checks the file list against ``checksums.sha256`` (nothing missing, nothing extra), that
    ``config.json`` parses, that every safetensors shard is complete and matches the weight index,
    and (``checksums=True``, the default) every file's SHA-256.

    Raises:
        PublishError: names the first offending file (missing, unexpected, truncated, corrupt).
    """
    path = Path(path)
    if not path.is_dir():
        raise PublishError(f"{path} is not a directory")
    entries = _read_manifest(path)
    present = set(_files_under(path))
    missing = sorted(set(entries) - present)
    if missing:
        raise PublishError(f"{path / missing[0]} is listed in {MANIFEST_NAME} but missing")
    extra = sorted(present - set(entries))
    if extra:
        raise PublishError(f"{path / extra[0]} is not listed in {MANIFEST_NAME}")
    _check_weights(path)
    if checksums:
        actual = _hash_files(path, sorted(entries))
        for name in sorted(entries):
            if actual[name] != entries[name]:
                raise PublishError(f"{path / name}: checksum mismatch (the file changed or is corrupt)")


def check_version_name(version: str) -> str:
    """Return ``version`` if it is a safe directory name for a published version.

    Raises:
        PublishError: empty, hidden, too long, a path, or a reserved name (current, CURRENT).
    """
    if not _VERSION.match(version or "") or version in _RESERVED:
        raise PublishError(f"invalid model version name {version!r}: use letters, digits, '.', '_' and '-' "
                           f"(not starting with '.', not {sorted(_RESERVED)})")
    return version


def staging_dir_for(models_dir: Path, version: str) -> Path:
    """A fresh hidden staging directory next to the versions (same filesystem, so rename is atomic)."""
    return Path(models_dir) / f"{STAGING_PREFIX}{check_version_name(version)}-{uuid.uuid4().hex[:8]}"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush files and directories so the rename never publishes data still in the page cache (NFS)."""
    for path in sorted(root.rglob("*"), reverse=True):
        if not path.is_symlink():
            _fsync_path(path)
    _fsync_path(root)


def publish_model(staging_dir: Path, models_dir: Path, version: str, *, set_current: bool) -> Path:
    """Verify ``staging_dir`` and rename it to ``models_dir/version``; optionally point ``current`` at it.

    ``staging_dir`` must be on the same filesystem as ``models_dir`` (best: from :func:`staging_dir_for`).
    The rename is the commit point: before it nothing is visible, after it the version is complete.
    ``set_current=False`` is what the pipeline uses: only the promotion step moves ``current``.

    Returns:
        The published directory ``models_dir/version``.

    Raises:
        PublishError: the staging directory fails verification, the version already exists
            (versions are immutable), or the version name is invalid.
        StorageError: the volume refused the rename (read-only, full, another filesystem).
    """
    staging_dir, models_dir = Path(staging_dir), Path(models_dir)
    final = models_dir / check_version_name(version)
    verify_model_dir(staging_dir)
    if final.exists() or final.is_symlink():
        raise PublishError(f"{final} already exists; published versions are immutable, choose another version")
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
        if staging_dir.stat().st_dev != models_dir.stat().st_dev:
            raise PublishError(f"{staging_dir} is on another filesystem than {models_dir}; stage next to it")
        _fsync_tree(staging_dir)
        os.rename(staging_dir, final)
        _fsync_path(models_dir)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):  # another publish of this version won the race
            raise PublishError(f"{final} already exists: another merge published this version at the same "
                               "time; published versions are immutable, choose another version") from None
        raise StorageError(describe_os_error(exc, final)) from exc
    if set_current:
        _point_current(models_dir, version)
    return final


def set_current(models_dir: Path, version: str) -> None:
    """Atomically point ``models_dir/current`` (relative symlink) and ``CURRENT`` at ``version``.

    The version must exist and pass a quick verification (manifest, file list, complete shards);
    its checksums were verified when it was published, and versions are never modified.

    Raises:
        PublishError: the version is missing or incomplete, or ``current`` is a real directory.
        StorageError: the volume refused the write.
    """
    _point_current(models_dir, version)


def _point_current(models_dir: Path, version: str) -> None:
    # A separate name because publish_model's keyword argument shadows set_current.
    models_dir = Path(models_dir)
    target = models_dir / check_version_name(version)
    if target.is_symlink() or not target.is_dir():
        raise PublishError(f"cannot point current at {target}: no such published version")
    verify_model_dir(target, checksums=False)
    link = models_dir / CURRENT_LINK
    if link.exists() and not link.is_symlink():
        raise PublishError(f"{link} is a real file or directory, not the pointer symlink; move it away first")
    temporary = models_dir / f".{CURRENT_LINK}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        os.symlink(version, temporary)
        os.replace(temporary, link)
        _fsync_path(models_dir)
    except OSError as exc:
        if temporary.is_symlink():
            temporary.unlink()
        raise StorageError(describe_os_error(exc, link)) from exc
    atomic_write_text(models_dir / CURRENT_FILE, version + "\n")


def current_version(models_dir: Path) -> str | None:
    """The version ``current`` points at (the symlink wins over ``CURRENT``); None when none is set."""
    models_dir = Path(models_dir)
    link = models_dir / CURRENT_LINK
    if link.is_symlink():
        return Path(os.readlink(link)).name
    pointer = models_dir / CURRENT_FILE
    if pointer.is_file():
        return pointer.read_text(encoding="utf-8").strip() or None
    return None


def published_versions(models_dir: Path) -> list[str]:
    """Names of the published version directories, sorted (hidden staging and the pointers excluded)."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    return sorted(entry.name for entry in models_dir.iterdir()
                  if entry.is_dir() and not entry.is_symlink() and _VERSION.match(entry.name)
                  and entry.name not in _RESERVED)


__all__ = [
    "CURRENT_FILE",
    "CURRENT_LINK",
    "MANIFEST_NAME",
    "PublishError",
    "SafetensorsFormatError",
    "current_version",
    "manifest_checksum",
    "publish_model",
    "published_versions",
    "read_safetensors_header",
    "set_current",
    "staging_dir_for",
    "verify_model_dir",
    "write_manifest",
]
