"""Two pipeline runs at once on one storage root and one MLflow store (``make reliability``, ~3 min).

Both runs complete, their outputs are disjoint, each registered version points at its own published
weights (built from its own run's adapter), and no MLflow run is left RUNNING.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from components.register_model import path_from_pvc_uri
from pipelines import run_local


@pytest.mark.reliability_long
def test_two_concurrent_runs_on_one_storage_root(tmp_path, tiny_model_dir):
    from mlflow.tracking import MlflowClient

    storage = tmp_path / "storage"
    shutil.copytree(tiny_model_dir, storage / "models" / "base-model")
    cfg = run_local.localise(run_local.load_config("local"), storage)
    run_local.prepare_storage(cfg)  # once, as an operator would before scheduling runs
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    runs = [subprocess.Popen([sys.executable, "-m", "pipelines.run_local", "--storage", str(storage)], env=env,
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=1200)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output[-4000:]

    run_ids = sorted(path.name for path in (storage / "output").iterdir())
    assert len(run_ids) == 2
    client = MlflowClient(cfg.mlflow.tracking_uri)
    name = cfg.mlflow.registered_model_name
    versions = client.search_model_versions(f"name = '{name}'")
    assert len(versions) == 2
    published = set()
    for version in versions:
        kfp_run_id = version.tags["kfp.run_id"]
        assert kfp_run_id in run_ids
        model_dir = path_from_pvc_uri(cfg, version.source)
        published.add(model_dir)
        merge_info = json.loads((model_dir / "merge_info.json").read_text())
        assert kfp_run_id in json.dumps(merge_info), "the weights were merged from another run's adapter"
        assert (model_dir / "checksums.sha256").exists()
    assert len(published) == 2
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    statuses = {run.info.status for run in client.search_runs([experiment.experiment_id])}
    assert statuses == {"FINISHED"}
    aliases = client.get_registered_model(name).aliases
    assert "champion" in aliases
