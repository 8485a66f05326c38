"""components.common.storage: one path resolver that stays inside the root, one run slug, and directories that
appear whole or not at all."""

from __future__ import annotations

import re
import uuid

import pytest

from components.common.storage import StorageError, atomic_directory, atomic_write_text, on_volume, run_dir, run_slug
from configs.loading import config_from_dict

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def test_on_volume_resolves_under_the_root_and_refuses_escapes(tmp_path):
    cfg = config_from_dict({"storage": {"mount_path": str(tmp_path)}})
    (tmp_path / "ok").mkdir()
    assert on_volume(cfg, "ok") == (tmp_path / "ok").resolve()
    assert on_volume(cfg, cfg.storage.data_dir) == tmp_path.resolve() / "data"
    assert on_volume(cfg, "/somewhere/else") == on_volume(cfg, "/somewhere/else")  # absolute: as given
    (tmp_path / "escape").symlink_to("/")
    (tmp_path / "link").symlink_to("/etc")
    for bad in ("../x", "escape/etc", "link"):
        with pytest.raises(StorageError, match="outside"):
            on_volume(cfg, bad)
    with pytest.raises(StorageError, match="outside"):  # a path read from a task's input must stay on the volume
        on_volume(cfg, "/etc", absolute_ok=False)
    assert on_volume(cfg, tmp_path / "ok", absolute_ok=False) == (tmp_path / "ok").resolve()


def test_run_slug_is_the_id_when_it_can_be_and_never_shared(tmp_path):
    kfp_id = str(uuid.uuid4())
    assert run_slug(kfp_id) == kfp_id  # a KFP run id is its own slug
    hostile = ["Run_1", "run/1", "RUN-1", "../../etc", "x" * 80, "-", "", "éé"]
    slugs = [run_slug(value) for value in hostile]
    assert all(DNS_LABEL.match(slug) and len(slug) <= 48 for slug in slugs), slugs
    assert len(set(slugs)) == len(hostile)  # the hash suffix keeps them apart
    assert run_slug("x" * 80, 20) != run_slug("x" * 81, 20) and len(run_slug("x" * 80, 20)) <= 20



@pytest.mark.parametrize("raw", ["Nightly_Run", "run/1", "RUN-1", "x" * 80, "éé", "-"])
def test_an_id_that_spells_another_ids_slug_gets_its_own(raw):
    """``Nightly_Run`` is slugged ``nightly-run-48e013ed``; the run id ``nightly-run-48e013ed`` itself must not share
    that slug (the same output directory and job name): the hash always comes from the raw id."""
    from components.train.multinode.job_spec import job_name, run_label

    slug = run_slug(raw)
    assert slug != raw and run_slug(slug) != slug
    assert run_slug("68401760") == "68401760"  # a kfp.local run id (8 digits) is still its own slug
    assert job_name(slug) != job_name(raw)
    label = run_label(raw)
    assert label == raw or run_label(label) != label


def test_run_dir_is_scoped_and_sanitised(tmp_path):
    cfg = config_from_dict({"storage": {"mount_path": str(tmp_path)}})
    assert run_dir(cfg, "run-1") == tmp_path.resolve() / "output" / "run-1"
    assert run_dir(cfg, "../../etc").parent == tmp_path.resolve() / "output"
    assert run_dir(cfg, "../../etc").name == run_slug("../../etc")
    assert run_dir(cfg, "a") != run_dir(cfg, "b")
    assert run_dir(cfg, "A") != run_dir(cfg, "a")


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
