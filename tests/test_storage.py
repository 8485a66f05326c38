"""components.common.storage: paths stay inside the root, and directories appear whole or not at all."""

from __future__ import annotations

import pytest

from components.common.storage import StorageError, atomic_directory, atomic_write_text, inside, run_dir
from configs.schema import config_from_dict


def test_inside_refuses_escapes(tmp_path):
    (tmp_path / "ok").mkdir()
    assert inside(tmp_path, "ok") == (tmp_path / "ok").resolve()
    (tmp_path / "escape").symlink_to("/")
    for bad in ("../x", "/etc", "escape/etc"):
        with pytest.raises(StorageError, match="outside"):
            inside(tmp_path, bad)


def test_run_dir_is_scoped_and_sanitised(tmp_path):
    cfg = config_from_dict({"storage": {"mount_path": str(tmp_path)}})
    assert run_dir(cfg, "run-1") == tmp_path.resolve() / "output" / "run-1"
    assert run_dir(cfg, "../../etc") == tmp_path.resolve() / "output" / "-..-etc"
    assert run_dir(cfg, "a") != run_dir(cfg, "b")


def test_atomic_directory_publishes_only_on_success(tmp_path):
    final = tmp_path / "model"
    with pytest.raises(RuntimeError, match="boom"), atomic_directory(final) as tmp:
        (tmp / "half.bin").write_bytes(b"x" * 10)
        raise RuntimeError("boom")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(final) as tmp:
        (tmp / "weights.bin").write_bytes(b"w")
    assert (final / "weights.bin").read_bytes() == b"w"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_directory_replace_keeps_old_until_success(tmp_path):
    final = tmp_path / "model"
    with atomic_directory(final) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(StorageError, match="already exists"), atomic_directory(final) as tmp:
        (tmp / "v").write_text("2")
    assert (final / "v").read_text() == "1"
    with pytest.raises(ValueError), atomic_directory(final, replace=True) as tmp:
        (tmp / "v").write_text("2")
        raise ValueError("crash before the swap")
    assert (final / "v").read_text() == "1"
    with atomic_directory(final, replace=True) as tmp:
        (tmp / "v").write_text("2")
    assert (final / "v").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_atomic_write_text(tmp_path):
    path = atomic_write_text(tmp_path / "sub" / "f.json", "{}")
    assert path.read_text() == "{}"
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]
