"""Publish a model directory atomically, verify it, and move the ``current`` pointer vLLM serves.

Layout on the shared volume (one directory per registered model name)::

    models/<name>/
        20261127-010203-<run slug>/  an immutable, verified version (weights, config, tokenizer,
                                     checksums.sha256, merge_info.json); named by :func:`version_name`
        current -> 20261127-010203-<run slug>   relative symlink: the version being served
        CURRENT                      the same version name as text, for NFS clients that do not follow symlinks
        .incoming-<version>-<id>/    a version being written (hidden; never read by anyone)

How a version appears: the writer fills a hidden staging directory next to the versions,
:func:`publish_model` verifies it (:func:`components.merge.verify.verify_model_dir`: file list, safetensors
headers against the weight index, every file's SHA-256 against ``checksums.sha256``) and renames it to
``<version>`` in one ``rename``. A crash before the rename leaves only the hidden staging directory; after it,
a complete version.

How ``current`` moves: :func:`set_current` creates a temporary relative symlink and ``os.replace``-s
it over ``current`` (atomic on POSIX and NFS), then rewrites ``CURRENT``. The symlink is the
source of truth; a crash between the two steps leaves ``CURRENT`` one version behind until the
next :func:`set_current`. Old versions are never modified, so a server still reading one is safe.

Serving with vLLM (a fixed path; restart or roll the deployment after moving ``current``)::

    vllm serve /storage/models/<name>/current --served-model-name <name>

vLLM resolves the symlink when it starts. A client that cannot follow symlinks reads
``/storage/models/<name>/CURRENT`` and uses ``/storage/models/<name>/<that version>``.
"""

from __future__ import annotations

import errno
import os
import re
import time
import uuid
from pathlib import Path

from components.common.storage import StorageError, atomic_write_text, describe_os_error, run_slug
from components.merge.verify import PublishError, verify_model_dir

CURRENT_LINK = "current"
CURRENT_FILE = "CURRENT"
STAGING_PREFIX = ".incoming-"
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_RESERVED = {CURRENT_LINK, CURRENT_FILE}


def check_version_name(version: str) -> str:
    """Return ``version`` if it is a safe directory name for a published version.

    Raises:
        PublishError: empty, hidden, too long, a path, or a reserved name (current, CURRENT).
    """
    if not _VERSION.match(version or "") or version in _RESERVED:
        raise PublishError(f"invalid model version name {version!r}: use letters, digits, '.', '_' and '-' "
                           f"(not starting with '.', not {sorted(_RESERVED)})")
    return version


def version_name(kfp_run_id: str = "", now: float | None = None) -> str:
    """A sortable version name no other run shares: UTC time, then the run's slug (``20261127-010203-<slug>``)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return check_version_name(f"{stamp}-{run_slug(kfp_run_id)}" if kfp_run_id else stamp)


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
