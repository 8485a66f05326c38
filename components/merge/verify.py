"""Check that a model directory is exactly what was written: a checksum manifest, complete shards.

Every merged or published model directory holds ``checksums.sha256`` (``sha256sum -c`` format) over every other
file. :func:`verify_model_dir` checks the file list against it (nothing missing, nothing extra), that
``config.json`` parses, that every safetensors shard is complete and holds the tensors the weight index assigns
to it, and every file's SHA-256. Check a version by hand with
``cd /storage/models/<name>/<version> && sha256sum -c checksums.sha256``.
"""

from __future__ import annotations

import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from components.common.storage import MODEL_MANIFEST, StorageError, atomic_write_text
from components.merge.safetensors import SafetensorsFormatError, read_safetensors_header
from configs.safe_json import DocumentError, read_json

# The two records every merged model directory holds: the checksums, and what it was merged from
# (components.merge.merge_lora.MergeInfo).
MANIFEST_NAME = MODEL_MANIFEST  # checksums.sha256; the output-path guard looks for it too
MERGE_INFO = "merge_info.json"


WEIGHT_INDEX = "model.safetensors.index.json"


_HASH_CHUNK = 1024 * 1024


class PublishError(StorageError):
    """A model directory failed verification or cannot be published; the message names the file."""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in large chunks (hashlib releases the GIL, so threads overlap)."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        buffer = bytearray(_HASH_CHUNK)
        view = memoryview(buffer)
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def hash_files(root: Path, names: list[str]) -> dict[str, str]:
    """SHA-256 of each named file under ``root`` (relative names), up to four read at once."""
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
    digests = {**hash_files(directory, [name for name in names if name not in known]), **known}
    text = "".join(f"{digests[name]}  {name}\n" for name in names)
    atomic_write_text(directory / MANIFEST_NAME, text)
    return hashlib.sha256(text.encode()).hexdigest()


def manifest_checksum(path: Path) -> str:
    """SHA-256 of a model directory's manifest (what the Model artifact and MLflow record)."""
    return sha256_file(Path(path) / MANIFEST_NAME)


def read_checksums(path: Path) -> dict[str, str]:
    """``{relative path: SHA-256}`` from the directory's ``checksums.sha256``.

    Raises:
        PublishError: the manifest is missing, unreadable or malformed (the line named).
    """
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
    entries = read_checksums(path)
    present = set(_files_under(path))
    missing = sorted(set(entries) - present)
    if missing:
        raise PublishError(f"{path / missing[0]} is listed in {MANIFEST_NAME} but missing")
    extra = sorted(present - set(entries))
    if extra:
        raise PublishError(f"{path / extra[0]} is not listed in {MANIFEST_NAME}")
    _check_weights(path)
    if checksums:
        actual = hash_files(path, sorted(entries))
        for name in sorted(entries):
            if actual[name] != entries[name]:
                raise PublishError(f"{path / name}: checksum mismatch (the file changed or is corrupt)")
