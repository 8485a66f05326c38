"""Two local pipeline runs started at the same moment on one EMPTY storage root, same MLflow experiment
(``make reliability``, ~2-3 min on 2 cores).

Nobody prepares the root first: both processes race to build the base model, copy the sample data, create the SQLite
tracking store and the experiment, then train, merge, publish and register side by side. Both must complete; their
``output/<run id>/`` directories are disjoint; the two registered versions' ``pvc://`` sources map to two published
directories whose ``merge_info.json`` names its own run and that run's adapter, and whose checksum manifests verify;
``current`` points at one of them; no MLflow run is left RUNNING.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.common.tags import KFP_RUN_TAG, PARENT_ROLE, ROLE_TAG
from components.gate.registry import path_from_pvc_uri
from pipelines import run_local

EXPERIMENT = "concurrent-runs"


@pytest.mark.reliability_long
def test_two_runs_started_together_on_an_empty_storage_root(tmp_path):
    from mlflow.tracking import MlflowClient

    from components.merge.publish import current_version
    from components.merge.verify import verify_model_dir

    storage = tmp_path / "storage"
    argv = [sys.executable, "-m", "pipelines.run_local", "--storage", str(storage),
            "--set", f"mlflow.experiment={EXPERIMENT}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    logs = [tmp_path / f"run{index}.log" for index in range(2)]
    handles = [open(log, "w") for log in logs]  # noqa: SIM115 - closed below, after both processes end
    try:
        runs = [subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=handle, stderr=subprocess.STDOUT)
                for handle in handles]
        codes = [run.wait(timeout=1200) for run in runs]
    finally:
        for handle in handles:
            handle.close()
    for code, log in zip(codes, logs, strict=True):
        assert code == 0, log.read_text()[-5000:]

    cfg = run_local.localise(run_local.load_config("local", [f"mlflow.experiment={EXPERIMENT}"]), storage)
    run_ids = sorted(path.name for path in (storage / cfg.storage.output_root).iterdir())
    assert len(run_ids) == 2
    adapters = {run_id: (storage / cfg.storage.output_root / run_id / "adapter").resolve() for run_id in run_ids}
    for adapter in adapters.values():
        assert (adapter / "adapter_model.safetensors").is_file()

    client = MlflowClient(cfg.mlflow.tracking_uri)
    versions = client.search_model_versions(f"name = '{cfg.mlflow.registered_model_name}'")
    assert len(versions) == 2
    assert sorted(version.tags[KFP_RUN_TAG] for version in versions) == run_ids  # one version per run
    published = {}
    for version in versions:
        run_id = version.tags[KFP_RUN_TAG]
        model_dir = path_from_pvc_uri(cfg, version.source)
        verify_model_dir(model_dir)  # every file matches the checksum manifest
        merge_info = json.loads((model_dir / "merge_info.json").read_text())
        assert merge_info["kfp_run_id"] == run_id
        assert Path(merge_info["adapter"]).resolve() == adapters[run_id], "merged from another run's adapter"
        published[run_id] = model_dir
    assert len(set(published.values())) == 2
    models_dir = next(iter(published.values())).parent
    assert current_version(models_dir) in {path.name for path in published.values()}

    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert {run.info.status for run in runs} == {"FINISHED"}, [(r.info.run_name, r.info.status) for r in runs]
    parents = {run.data.tags.get(KFP_RUN_TAG) for run in runs if run.data.tags.get(ROLE_TAG) == PARENT_ROLE}
    assert parents == set(run_ids)
