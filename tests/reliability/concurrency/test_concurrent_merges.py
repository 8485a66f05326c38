"""Two merges publishing the same version name at the same moment: it is published once, whole.

Real processes (``python -m components.merge.merge_lora``) on a tiny multi-shard Llama and two real peft adapters;
no mock and no lock file: the publication itself must decide.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from builders import REPO_ROOT as REPO
from lora import make_adapter

from components.merge.publish import current_version, published_versions
from components.merge.safetensors import read_safetensors_header
from components.merge.verify import verify_model_dir

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny Llama in several safetensors shards."""
    from components.demo.tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("merge-base") / "base", shard_size="100KB")


def test_two_merges_publishing_one_version_at_once_publish_it_once(base, tmp_path):
    """Two real processes publish version v1 to one models directory at the same time (no mock, no lock
    file): exactly one publishes, the other exits 1 naming the version, and v1 is complete and verified."""
    adapters = [make_adapter(base, tmp_path / f"adapter{seed}", seed=seed, target_modules=["q_proj"])
                for seed in (1, 2)]
    models = tmp_path / "models"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-m", "components.merge.merge_lora", "--base", str(base), "--adapter",
                               str(adapter), "--publish-to", str(models), "--version", "v1", "--dtype", "fp32"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
             for adapter in adapters]
    results = [(proc.wait(timeout=300), *proc.communicate()) for proc in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    for code, _out, err in results:
        assert "Traceback" not in err, err
        if code == 1:
            assert "v1 already exists" in err and "published versions are immutable" in err, err
    winner = next(json.loads(out) for code, out, _ in results if code == 0)
    verify_model_dir(models / "v1")
    assert published_versions(models) == ["v1"] and current_version(models) == "v1"
    assert sorted(path.name for path in models.iterdir()) == ["CURRENT", "current", "v1"]  # no staging left
    merged_from = json.loads((models / "v1" / "merge_info.json").read_text())["adapter"]
    assert winner["published"] == str(models / "v1") and merged_from in {str(adapter) for adapter in adapters}
    assert read_safetensors_header(next((models / "v1").glob("*.safetensors"))).tensors
