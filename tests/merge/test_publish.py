"""Atomic publication of model versions and the ``current`` pointer (components.merge.publish).

Real files only: the model directories are small but genuine (config, safetensors shards written
with the safetensors library, a weight index). Crashes are real: a child process kills itself with
SIGKILL just before one of the rename/symlink calls that make a change visible.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from builders import REPO_ROOT

from components.merge.publish import (
    CURRENT_FILE,
    current_version,
    publish_model,
    published_versions,
    set_current,
    staging_dir_for,
)
from components.merge.safetensors import SafetensorsFormatError, read_safetensors_header
from components.merge.verify import MANIFEST_NAME, PublishError, manifest_checksum, verify_model_dir, write_manifest


def make_model_dir(path: Path, seed: int = 0) -> Path:
    """A small but complete model directory: two safetensors shards, index, config, tokenizer, manifest."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    shards = {
        "model-00001-of-00002.safetensors": {"a.weight": rng.standard_normal((8, 4), dtype=np.float32)},
        "model-00002-of-00002.safetensors": {"b.weight": rng.standard_normal((3,), dtype=np.float32),
                                             "b.bias": np.arange(5, dtype=np.int64)},
    }
    weight_map = {}
    for name, tensors in shards.items():
        save_file(tensors, str(path / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "seed": seed}))
    (path / "tokenizer.json").write_text("{}")
    write_manifest(path)
    return path


def stage(models_dir: Path, version: str, seed: int = 0) -> Path:
    return make_model_dir(staging_dir_for(models_dir, version), seed=seed)


def test_publish_sets_current_symlink_and_pointer_file(tmp_path):
    models = tmp_path / "models" / "demo"
    staging = stage(models, "v1")
    final = publish_model(staging, models, "v1", set_current=True)

    assert final == models / "v1" and not staging.exists()
    verify_model_dir(final)
    link = models / "current"
    assert link.is_symlink() and os.readlink(link) == "v1"  # relative: valid wherever the PVC is mounted
    assert (link / "config.json").read_text() == (final / "config.json").read_text()
    assert (models / CURRENT_FILE).read_text() == "v1\n"
    assert current_version(models) == "v1"
    assert published_versions(models) == ["v1"]


def test_manifest_is_checkable_with_sha256sum(tmp_path):
    model = make_model_dir(tmp_path / "m")
    done = subprocess.run(["sha256sum", "--quiet", "-c", MANIFEST_NAME], cwd=model, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_publish_without_current_then_promote(tmp_path):
    models = tmp_path / "models"
    publish_model(stage(models, "v1", seed=1), models, "v1", set_current=True)
    v1_checksum = manifest_checksum(models / "v1")
    publish_model(stage(models, "v2", seed=2), models, "v2", set_current=False)
    assert current_version(models) == "v1"

    set_current(models, "v2")
    assert current_version(models) == "v2"
    assert (models / CURRENT_FILE).read_text().strip() == "v2"
    verify_model_dir(models / "v1")
    assert manifest_checksum(models / "v1") == v1_checksum
    assert published_versions(models) == ["v1", "v2"]
    assert [p.name for p in models.iterdir() if p.name.startswith(".")] == []


def test_current_file_is_the_fallback_without_symlink(tmp_path):
    models = tmp_path / "models"
    publish_model(stage(models, "v1"), models, "v1", set_current=True)
    (models / "current").unlink()  # e.g. a copy of the volume made without symlinks
    assert current_version(models) == "v1"
    assert current_version(tmp_path / "nothing-here") is None


@pytest.mark.parametrize("damage, expected", [
    (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json is listed in checksums.sha256 but missing"),
    (lambda d: (d / "notes.txt").write_text("x"), "notes.txt is not listed"),
    (lambda d: (d / "tokenizer.json").write_text("{ }"), "tokenizer.json: checksum mismatch"),
    (lambda d: _flip_last_byte(d / "model-00001-of-00002.safetensors"), "model-00001-of-00002.safetensors: checksum"),
    (lambda d: _truncate(d / "model-00002-of-00002.safetensors", 7), "model-00002-of-00002.safetensors: truncated"),
    (lambda d: (d / MANIFEST_NAME).unlink(), "checksums.sha256 is missing"),
    (lambda d: (d / MANIFEST_NAME).write_text("nonsense\n"), "line 1 is malformed"),
])
def test_verify_names_the_offending_file(tmp_path, damage, expected):
    model = make_model_dir(tmp_path / "m")
    verify_model_dir(model)
    damage(model)
    with pytest.raises(PublishError, match=expected.replace(".", r"\.")):
        verify_model_dir(model)


def test_quick_verification_still_catches_truncated_shards(tmp_path):
    model = make_model_dir(tmp_path / "m")
    _truncate(model / "model-00001-of-00002.safetensors", 4)
    with pytest.raises(PublishError, match="model-00001-of-00002.safetensors: truncated"):
        verify_model_dir(model, checksums=False)


def test_index_and_shards_must_agree(tmp_path):
    model = make_model_dir(tmp_path / "m")
    index = json.loads((model / "model.safetensors.index.json").read_text())
    index["weight_map"]["c.weight"] = "model-00002-of-00002.safetensors"
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    write_manifest(model)  # a consistent manifest over an inconsistent model
    with pytest.raises(PublishError, match="does not hold the tensors"):
        verify_model_dir(model)


def test_header_reader_rejects_garbage(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x05\x00")
    with pytest.raises(SafetensorsFormatError, match="junk.safetensors: truncated"):
        read_safetensors_header(junk)
    junk.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(SafetensorsFormatError, match="header claims"):
        read_safetensors_header(junk)


def test_publish_refuses_existing_version_and_bad_names(tmp_path):
    models = tmp_path / "models"
    publish_model(stage(models, "v1", seed=1), models, "v1", set_current=True)
    before = manifest_checksum(models / "v1")
    again = stage(models, "v1", seed=2)
    with pytest.raises(PublishError, match="immutable"):
        publish_model(again, models, "v1", set_current=True)
    assert manifest_checksum(models / "v1") == before
    for bad in ["current", "CURRENT", "../escape", ".hidden", "", "a/b"]:
        with pytest.raises(PublishError, match="invalid model version name"):
            publish_model(again, models, bad, set_current=False)


def test_publish_refuses_unverified_staging(tmp_path):
    models = tmp_path / "models"
    staging = stage(models, "v1")
    (staging / "extra.bin").write_bytes(b"\0")
    with pytest.raises(PublishError, match="extra.bin is not listed"):
        publish_model(staging, models, "v1", set_current=True)
    assert published_versions(models) == [] and current_version(models) is None


def test_set_current_refuses_missing_or_broken_versions(tmp_path):
    models = tmp_path / "models"
    publish_model(stage(models, "v1"), models, "v1", set_current=True)
    with pytest.raises(PublishError, match="no such published version"):
        set_current(models, "v9")
    publish_model(stage(models, "v2"), models, "v2", set_current=False)
    (models / "v2" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(PublishError, match="model-00002-of-00002.safetensors is listed"):
        set_current(models, "v2")
    assert current_version(models) == "v1"


def test_set_current_refuses_a_real_current_directory(tmp_path):
    models = tmp_path / "models"
    publish_model(stage(models, "v1"), models, "v1", set_current=False)
    (models / "current").mkdir()  # the old, unversioned layout
    with pytest.raises(PublishError, match="not the pointer symlink"):
        set_current(models, "v1")


_CRASHING_PUBLISH = """
import os, signal, sys
from pathlib import Path
import components.merge.publish as publish

calls = {"n": 0}
kill_at = int(sys.argv[1])

def crashing(function):
    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # a real crash: no cleanup, no finally blocks
        return function(*args, **kwargs)
    return wrapper

for name in ("rename", "replace", "symlink"):
    setattr(os, name, crashing(getattr(os, name)))
publish.publish_model(Path(sys.argv[2]), Path(sys.argv[3]), "v2", set_current=True)
"""


def test_a_crash_at_any_point_leaves_the_previous_version_served(tmp_path):
    """Kill the publisher before each visible change in turn; readers always find a complete version."""
    outcomes = []
    for kill_at in range(1, 20):
        models = tmp_path / f"run{kill_at}" / "models"
        publish_model(stage(models, "v1", seed=1), models, "v1", set_current=True)
        v1_checksum = manifest_checksum(models / "v1")
        staging = stage(models, "v2", seed=2)
        done = subprocess.run([sys.executable, "-c", _CRASHING_PUBLISH, str(kill_at), str(staging), str(models)],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        crashed = done.returncode == -9
        assert crashed or done.returncode == 0, done.stderr

        verify_model_dir(models / "v1")
        assert manifest_checksum(models / "v1") == v1_checksum
        for version in published_versions(models):
            verify_model_dir(models / version)  # never a partial version
        served = current_version(models)
        assert served in {"v1", "v2"}
        verify_model_dir(models / "current")
        assert (models / CURRENT_FILE).read_text().strip() in {"v1", "v2"}
        outcomes.append((crashed, served, "v2" in published_versions(models)))
        if not crashed:
            break
    assert outcomes[-1] == (False, "v2", True), "the publish never completed"
    assert (True, "v1", False) in outcomes  # crashed before the rename: v2 invisible
    assert (True, "v1", True) in outcomes  # crashed after the rename, before current moved
    assert len(outcomes) >= 4, outcomes


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path, count: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-count])
