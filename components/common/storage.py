"""Paths on the shared volume and writes that never leave half-written output behind.

Every path a step reads or writes on the volume comes from :func:`on_volume` (the one resolver: relative
paths under ``storage.mount_path``, never outside it) or :func:`run_dir` (``<output_root>/<run slug>``);
:func:`run_slug` is the one name a KFP run id gets wherever a name must be a DNS label or a path part
(the run directory, a published version, a multi-node job).

Every step writes its output directory through :func:`atomic_directory`: the files go to a hidden
temporary sibling, and only a complete directory is renamed into place. A crash, a full disk or a
read-only volume leaves either the old directory or nothing at the final path, never a partial one.

Before a CLI or step writes anywhere, :func:`guard_output` checks the path against its inputs and the
published models: an output equal to an input, inside one or above one (``--output`` the base model's
folder, or its parent with ``--force``), or inside a model directory with a ``checksums.sha256``
manifest (a published version), is refused before anything is touched.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from configs.errors import StepError

if TYPE_CHECKING:  # only for annotations: configs.schema imports configs.safe_json, never this module
    from configs.schema import PipelineConfig

# The manifest every merged or published model directory holds (components.merge.verify writes it).
MODEL_MANIFEST = "checksums.sha256"
# A name hashed_name made: something, '-' and 8 hex digits of a hash (a bare 8-digit id, as kfp.local makes, is not).
_HASHED_NAME = re.compile(r".+-[0-9a-f]{8}")
SLUG_MAX = 48  # a run's slug; "train-<slug>" stays a DNS-1035 label with room for a job's pod suffixes


class StorageError(StepError, RuntimeError):
    """A path escapes the storage root, or the volume refused a write; the message names the path."""


class OutputPathError(StorageError):
    """An output path that would overwrite, delete or change an input or a published model."""


def _resolved(path: str | Path) -> Path:
    """``path`` absolute with symlinks and ``..`` resolved (missing parts kept as written; never raises)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _shown(path: str | Path) -> str:
    text = os.fspath(path)
    return text if len(text) <= 200 else f"{text[:120]}...{text[-40:]} ({len(text)} characters)"


def model_directory_holding(path: str | Path) -> Path | None:
    """The nearest of ``path`` and its parents that holds a model manifest (``checksums.sha256``), else None."""
    resolved = _resolved(path)
    for candidate in (resolved, *resolved.parents):
        if os.path.isfile(candidate / MODEL_MANIFEST):  # os.path: a name too long for the filesystem is False
            return candidate
    return None


def guard_output(output: str | Path, inputs: Mapping[str, str | Path | None] | None = None, *,
                 flag: str = "--output", replace: bool = False) -> Path:
    """Refuse an output path that could damage an input or a published model; return it resolved.

    Call it before anything is written. Refused: ``output`` equal to an input, inside an input (a
    directory), or above one (the input lies inside ``output``: replacing it deletes the input); and
    ``output`` inside a model directory with a ``checksums.sha256`` manifest (a published version: one
    more file and it no longer verifies). With ``replace=True`` (``--force``) ``output`` itself may be
    such a model directory, the one being replaced; its parents still may not.

    Args:
        output: The path about to be written (a file or a directory).
        inputs: What the command reads, by the flag or field that names it (``{"--base": base_dir}``);
            None values are skipped.
        flag: How the output is named in messages.
        replace: The command replaces an existing ``output`` (see above).

    Raises:
        OutputPathError: the message names the flag, the output and the input or model at risk.
    """
    target = _resolved(output)
    for label, source in (inputs or {}).items():
        if source is None or os.fspath(source) == "":
            continue
        read = _resolved(source)
        if target == read:
            relation = "is"
        elif read in target.parents:
            relation = "is inside"
        elif target in read.parents:
            relation = "is a parent of"
        else:
            continue
        raise OutputPathError(f"{flag} {_shown(output)} {relation} {label} ({_shown(source)}): writing there could "
                              "overwrite or delete what the command reads; choose a path outside every input")
    holder = model_directory_holding(target.parent if replace else target)
    if holder is not None:
        where = "is" if holder == target else "is inside"
        raise OutputPathError(f"{flag} {_shown(output)} {where} the model directory {_shown(holder)} (it has "
                              f"{MODEL_MANIFEST}): another file there breaks its verification; choose a path "
                              "outside it")
    return target


def _inside(root: Path, relative: str | Path) -> Path:
    """Resolve ``relative`` under ``root`` and refuse results outside it (``..``, absolute, symlinks)."""
    base = root.resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise StorageError(f"{relative} resolves to {target}, outside {base}")
    return target


def storage_root(cfg: PipelineConfig) -> Path:
    """The storage root (PVC mount path) of this config, resolved."""
    return Path(cfg.storage.mount_path).resolve()


def on_volume(cfg: PipelineConfig, path: str | Path, *, absolute_ok: bool = True) -> Path:
    """The one path resolver: a path on the volume, absolute, with symlinks resolved.

    Relative paths (every ``storage.*`` field, a task's input from another task) resolve under
    ``storage.mount_path`` and never outside it; absolute paths are taken as given unless ``absolute_ok`` is
    False (a path read from a file or a URI, which must stay on the volume).

    Raises:
        StorageError: a relative path leaves the storage root (``..``, a symlink out), or an absolute path was
            given where ``absolute_ok`` is False.
    """
    candidate = Path(path)
    if candidate.is_absolute():
        if absolute_ok:
            return candidate
        return _inside(storage_root(cfg), candidate)  # refuses it unless it lies under the root
    return _inside(storage_root(cfg), candidate)


def hashed_name(raw: str, cleaned: str, max_chars: int, strip: str = "-") -> str:
    """``cleaned`` (``raw`` made fit for a name) when it is ``raw`` unchanged, fits ``max_chars`` and does not look
    like a hashed name; otherwise ``<cleaned, cut>-<8 hex digits of sha256(raw)>``.

    The hash always comes from the raw id, and an id shaped like a hashed name (ending in ``-`` and 8 hex digits)
    is hashed too: ``Nightly_Run`` (``nightly-run-48e013ed``) and the id ``nightly-run-48e013ed`` never share a
    name. Nothing left of the id (``éé``) gives ``id-<hash>``, so every hashed name has that shape. ``strip``:
    characters a name may not end with before the hash.
    """
    if cleaned and cleaned == raw and len(cleaned) <= max_chars and not _HASHED_NAME.fullmatch(cleaned):
        return cleaned
    digest = hashlib.sha256(raw.encode("utf-8", errors="surrogatepass")).hexdigest()[:8]
    head = cleaned[:max_chars - len(digest) - 1].rstrip(strip)
    return f"{head or 'id'}-{digest}"


def run_slug(kfp_run_id: str, max_chars: int = SLUG_MAX) -> str:
    """The run id as a name part: lowercase letters, digits and ``-``, at most ``max_chars``, never empty.

    A KFP run id (a UUID) is its own slug. Any other id (capitals, ``_``, ``/``, too long, or shaped like a
    hashed slug) gets a hash of the raw id as suffix (:func:`hashed_name`), so that two runs never share a slug:
    the run directory, a published version's suffix and a multi-node job's name all use it.
    """
    return hashed_name(kfp_run_id, re.sub(r"[^a-z0-9-]+", "-", kfp_run_id.lower()).strip("-"), max_chars)


def run_dir(cfg: PipelineConfig, kfp_run_id: str) -> Path:
    """The run-scoped output directory ``<output_root>/<run slug>`` (concurrent runs never share it)."""
    return on_volume(cfg, Path(cfg.storage.output_root) / run_slug(kfp_run_id))


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
        _fsync_files(tmp)
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


def _fsync_files(directory: Path) -> None:
    """Flush every file so that a rename never publishes data still in the page cache (NFS)."""
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
