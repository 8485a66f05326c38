"""Paths on the shared volume and writes that never leave half-written output behind.

Every step writes its output directory through :func:`atomic_directory`: the files go to a hidden
temporary sibling, and only a complete directory is renamed into place. A crash, a full disk or a
read-only volume leaves either the old directory or nothing at the final path, never a partial one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from configs.schema import PipelineConfig


class StorageError(RuntimeError):
    """A path escapes the storage root, or the volume refused a write; the message names the path."""


def inside(root: str | Path, relative: str | Path) -> Path:
    """Resolve ``relative`` under ``root`` and refuse results outside it (``..``, absolute, symlinks)."""
    base = Path(root).resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise StorageError(f"{relative} resolves to {target}, outside {base}")
    return target


def storage_root(cfg: PipelineConfig) -> Path:
    """The storage root (PVC mount path) of this config, resolved."""
    return Path(cfg.storage.mount_path).resolve()


def on_volume(cfg: PipelineConfig, path: str | Path) -> Path:
    """A step's input path: absolute paths as given, relative ones under the storage root (never outside it).

    Raises:
        StorageError: a relative path leaves the storage root (``..``, a symlink out).
    """
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate
    return inside(storage_root(cfg), candidate)


def run_dir(cfg: PipelineConfig, kfp_run_id: str) -> Path:
    """The run-scoped output directory ``<output_root>/<kfp run id>`` (concurrent runs never share it)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in kfp_run_id).strip(".") or "run"
    return inside(storage_root(cfg), Path(cfg.storage.output_root) / safe)


def describe_os_error(exc: OSError, path: Path) -> str:
    """One line that says what the volume refused and where."""
    reasons = {
        errno.ENOSPC: "no space left on the storage volume",
        errno.EROFS: "the storage volume is mounted read-only",
        errno.EACCES: "permission denied",
        errno.EDQUOT: "disk quota exceeded",
    }
    return f"cannot write {path}: {reasons.get(exc.errno, exc.strerror or str(exc))}"


@contextlib.contextmanager
def atomic_directory(final: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``final`` to fill; rename it to ``final`` only on success.

    On any exception the temporary directory is removed and ``final`` is untouched. With
    ``replace=True`` an existing ``final`` is swapped out (old copy removed after the rename);
    otherwise an existing ``final`` is an error.

    Raises:
        StorageError: the volume refused the write (full, read-only) or ``final`` already exists.
    """
    final = Path(final)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as exc:
        raise StorageError(describe_os_error(exc, tmp)) from exc
    try:
        yield tmp
        _fsync_tree(tmp)
        if final.exists():
            if not replace:
                raise StorageError(f"{final} already exists; refusing to overwrite it")
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StorageError(describe_os_error(exc, final)) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a small text file atomically (temp file + fsync + rename)."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError(describe_os_error(exc, path)) from exc
    return path


def _fsync_tree(directory: Path) -> None:
    """Flush every file so that a rename never publishes data still in the page cache (NFS)."""
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
