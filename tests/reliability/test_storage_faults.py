"""Disk full and read-only storage while a step writes its output: a clear error and no half-written
directory where a later step would read it (real tmpfs filesystems, no simulation)."""

from __future__ import annotations

import os

import pytest

from components.common.storage import StorageError, atomic_directory, atomic_write_text


def test_disk_full_leaves_nothing_behind(small_volume):
    final = small_volume / "models" / "v1"
    with pytest.raises(StorageError, match="no space left") as info, atomic_directory(final) as tmp:
        (tmp / "config.json").write_text("{}")
        with open(tmp / "model.safetensors", "wb") as handle:
            for _ in range(64):
                handle.write(os.urandom(16 * 1024))
    assert str(final) in str(info.value)
    assert not final.exists()
    assert os.listdir(small_volume / "models") == []


def test_disk_full_keeps_the_previous_version(small_volume):
    final = small_volume / "current-model"
    with atomic_directory(final) as tmp:
        (tmp / "weights").write_bytes(b"old" * 10)
    with pytest.raises(StorageError, match="no space left"), atomic_directory(final, replace=True) as tmp:
        (tmp / "weights").write_bytes(os.urandom(512 * 1024))
    assert (final / "weights").read_bytes() == b"old" * 10
    assert sorted(os.listdir(small_volume)) == ["current-model"]


def test_read_only_volume_is_named_in_the_error(readonly_volume):
    with pytest.raises(StorageError, match="read-only") as info, atomic_directory(readonly_volume / "out"):
        pass
    assert "out" in str(info.value)
    with pytest.raises(StorageError, match="read-only"):
        atomic_write_text(readonly_volume / "results.json", "{}")
    assert sorted(os.listdir(readonly_volume)) == ["existing.txt"]
