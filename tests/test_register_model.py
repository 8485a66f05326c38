"""Model Registry: registration with lineage, idempotent retries, the champion/previous/challenger aliases.

Runs against a real MLflow server on loopback. Published models are directories with a config.json
and a small weight file (the registry never reads the weights); MMLU results are synthetic, with the
expected decisions computed from the counts each test constructs.
"""

import json
import shutil
import uuid
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from components.compare_baseline import compare_with_baseline, resolve_baseline
from components.register_model import (
    RegistryError,
    main,
    mark_challenger,
    path_from_pvc_uri,
    promote_model,
    pvc_uri,
    register_model,
    registered_aliases,
)
from components.storage import run_dir
from configs.schema import load_config

ASSETS = Path(__file__).resolve().parents[1] / "components" / "assets"
CATEGORY = {"astronomy": "STEM", "world_religions": "humanities", "high_school_geography": "social sciences",
            "nutrition": "other"}


def make_results(gained: dict[str, int] | None = None, lost: dict[str, int] | None = None) -> dict:
    """Results of 4 subjects x 20 questions; the baseline gets questions 0-7 right, and a candidate
    additionally ``gained[subject]`` of questions 8.. and loses ``lost[subject]`` of 0.. (evaluate_mmlu schema)."""
    gained, lost = gained or {}, lost or {}
    questions, subjects, categories = [], {}, {}
    for subject, category in CATEGORY.items():
        flags = [lost.get(subject, 0) <= i < 8 + gained.get(subject, 0) for i in range(20)]
        questions += [{"subject": subject, "index": i, "gold": "A", "pred": "A" if ok else "B", "correct": ok,
                       "logprobs": [-1.0, -2.0, -3.0, -4.0]} for i, ok in enumerate(flags)]
        subjects[subject] = {"category": category, "correct": sum(flags), "total": 20, "accuracy": sum(flags) / 20}
        categories[category] = {"correct": sum(flags), "total": 20, "accuracy": sum(flags) / 20}
    return {"eval_key": "k", "prompt_version": "v1", "n_shot": 5, "model": "m", "adapter": "", "data_hash": "d",
            "micro": sum(q["correct"] for q in questions) / 80,
            "macro": sum(s["accuracy"] for s in subjects.values()) / 4, "subjects": subjects,
            "categories": categories, "questions": questions}


@pytest.fixture
def cfg(tmp_path, mlflow_server):
    """The local preset on a fresh storage root, with its own experiment and registered model name."""
    root = tmp_path / "storage"
    base = root / "models" / "base-model"
    base.mkdir(parents=True)
    (base / "config.json").write_text('{"model_type": "llama"}')
    (base / "model.safetensors").write_bytes(b"base weights")
    shutil.copytree(ASSETS / "sample_mmlu", root / "eval" / "mmlu")
    tag = uuid.uuid4().hex[:8]
    return load_config("local", overrides=[
        f"storage.mount_path={root}", f"mlflow.tracking_uri={mlflow_server.uri}",
        f"mlflow.experiment=registry-{tag}", f"mlflow.registered_model_name=model-{tag}",
        "gate.bootstrap_samples=200", "gate.max_regression=0.1",
    ])


def _client(cfg):
    from components.tracking import make_client

    return make_client(cfg)


def models_dir(cfg) -> Path:
    return cfg.storage.resolve(cfg.storage.models_root) / cfg.mlflow.registered_model_name


def publish(cfg, version: str) -> Path:
    """What merge-lora leaves: a verified models/<name>/<version> (one tiny tensor; ``current`` not moved)."""
    import numpy as np
    from safetensors.numpy import save_file

    from components.publish import publish_model, staging_dir_for, write_manifest

    staging = staging_dir_for(models_dir(cfg), version)
    staging.mkdir(parents=True)
    (staging / "config.json").write_text('{"model_type": "llama"}')
    save_file({"weight": np.full(4, len(version), dtype=np.float32)}, str(staging / "model.safetensors"))
    write_manifest(staging)
    return publish_model(staging, models_dir(cfg), version, set_current=False)


def current_version(cfg) -> str | None:
    from components.publish import current_version as published_current

    return published_current(models_dir(cfg))


def train_run(cfg, kfp_run_id: str, train_loss: float) -> str:
    """A finished training run with its final loss (what the train step logs)."""
    from components.tracking import experiment_id

    client = _client(cfg)
    run_id = client.create_run(experiment_id(client, cfg.mlflow.experiment),
                               tags={"kfp.run_id": kfp_run_id, "llmft.step": "train"}).info.run_id
    client.log_metric(run_id, "train_loss", train_loss)
    client.set_terminated(run_id)
    return run_id


def pipeline_run(cfg, kfp_run_id: str, version: str, candidate: dict, train_loss: float, tmp_path: Path) -> dict:
    """resolve-baseline -> compare-with-baseline -> register-model -> (promote-model) as the DAG calls them."""
    from kfp.dsl import Markdown, Metrics

    config = cfg.model_dump_json()
    _, baseline_dir, baseline_name, _ = resolve_baseline.python_func(config=config, kfp_run_id=kfp_run_id)
    out = run_dir(cfg, kfp_run_id) / "eval"
    for role, results in (("candidate", candidate), ("baseline", make_results())):
        (out / role).mkdir(parents=True)
        (out / role / "results.json").write_text(json.dumps(results))
    model_dir = publish(cfg, version)
    (tmp_path / kfp_run_id).mkdir()
    report = Markdown(uri=str(tmp_path / kfp_run_id / "report.md"))
    decision, reasons, comparison_path = compare_with_baseline.python_func(
        config=config, kfp_run_id=kfp_run_id, candidate_results=str(out / "candidate" / "results.json"),
        baseline_results=str(out / "baseline" / "results.json"), baseline_name=baseline_name,
        train_run_id=train_run(cfg, kfp_run_id, train_loss), report=report,
        metrics=Metrics(uri=str(tmp_path / kfp_run_id / "metrics")))
    model_version, status = register_model.python_func(
        config=config, kfp_run_id=kfp_run_id, model_dir=str(model_dir), version=version, decision=decision,
        reasons=reasons, comparison_path=comparison_path, dataset_hash=f"hash-{kfp_run_id}")
    assert status == "registered"
    promoted = None
    if decision == "promote":  # the pipeline's if/else after register-model
        promoted = promote_model.python_func(config=config, kfp_run_id=kfp_run_id, model_version=model_version,
                                             version=version)
    else:
        assert mark_challenger.python_func(config=config, kfp_run_id=kfp_run_id, model_version=model_version,
                                           reasons=reasons) == ("challenger",)
    return {"baseline_dir": baseline_dir, "baseline_name": baseline_name, "decision": decision, "reasons": reasons,
            "model_version": model_version, "promoted": promoted, "report": Path(report.path).read_text()}


def test_champion_lifecycle_first_better_and_not_significantly_better(cfg, tmp_path):
    client, name = _client(cfg), cfg.mlflow.registered_model_name

    # 1. No champion: the base model is the baseline; a candidate exactly as good is promoted.
    first = pipeline_run(cfg, "run-1", "v1", make_results(), 0.9, tmp_path)
    assert (first["baseline_name"], first["decision"]) == ("base model", "promote")
    assert first["baseline_dir"] == str(cfg.storage.resolve(cfg.storage.base_model))
    assert first["promoted"] == ("champion", "")
    assert registered_aliases(client, name) == {"champion": first["model_version"]}
    assert current_version(cfg) == "v1"

    # 2. +8 right answers, none lost: promoted; the alias moves and the old champion becomes previous.
    second = pipeline_run(cfg, "run-2", "v2", make_results(gained=dict.fromkeys(CATEGORY, 2)), 0.6, tmp_path)
    assert second["baseline_name"] == f"champion v{first['model_version']}"
    assert second["baseline_dir"] == str(models_dir(cfg) / "v1")
    assert second["decision"] == "promote"
    assert second["promoted"] == ("champion", first["model_version"])
    assert registered_aliases(client, name) == {"champion": second["model_version"],
                                                "previous": first["model_version"]}
    assert current_version(cfg) == "v2"
    assert "| train loss | 0.6000 | 0.9000 |" in second["report"]  # candidate vs the champion's training run

    # 3. Significance required; 3 gained and 1 lost (McNemar p = 0.625): rejected, the alias stays.
    strict = cfg.model_copy(update={"gate": cfg.gate.model_copy(update={"require_significance": True})})
    third = pipeline_run(strict, "run-3", "v3", make_results(gained={"astronomy": 3}, lost={"nutrition": 1}), 0.5,
                         tmp_path)
    assert third["decision"] == "reject" and third["promoted"] is None
    assert "McNemar p=0.625" in third["reasons"]
    assert registered_aliases(client, name) == {"champion": second["model_version"],
                                                "previous": first["model_version"],
                                                "challenger": third["model_version"]}
    rejected = client.get_model_version(name, third["model_version"])
    assert rejected.tags["llmft.rejected_reason"] == third["reasons"]
    assert current_version(cfg) == "v2"

    # 4. A worse candidate is rejected too, and the challenger alias moves to it.
    fourth = pipeline_run(cfg, "run-4", "v4", make_results(lost={"astronomy": 1}), 0.5, tmp_path)
    assert fourth["decision"] == "reject"
    assert registered_aliases(client, name)["champion"] == second["model_version"]
    assert registered_aliases(client, name)["challenger"] == fourth["model_version"]
    assert len(client.search_model_versions(f"name = '{name}'")) == 4


def _comparison_file(cfg, kfp_run_id: str, decision: str = "promote") -> Path:
    path = run_dir(cfg, kfp_run_id) / "compare" / "comparison.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({
        "decision": decision, "reasons": ["mmlu_micro +0.0500"], "baseline_name": "base model",
        "candidate": {"micro": 0.55, "macro": 0.5}, "mcnemar": {"p_value": 0.03}, "train_run_id": "abc",
        "categories": {"STEM": {"candidate": 0.6}, "social sciences": {"candidate": 0.4}},
        "losses": {"candidate": {"train_loss": 0.31, "eval_loss": 0.42}},
    }))
    return path


def _register(cfg, kfp_run_id: str, model_dir: Path, decision: str = "promote", comparison: Path | None = None):
    """register-model, then (for a rejected candidate) the pipeline's else-branch mark-challenger."""
    registered = register_model.python_func(
        config=cfg.model_dump_json(), kfp_run_id=kfp_run_id, model_dir=str(model_dir), version=model_dir.name,
        decision=decision, reasons="mmlu_micro +0.0500", dataset_hash="ds-123",
        comparison_path=str(comparison or _comparison_file(cfg, kfp_run_id, decision)))
    if decision == "reject":
        mark_challenger.python_func(config=cfg.model_dump_json(), kfp_run_id=kfp_run_id,
                                    model_version=registered[0], reasons="mmlu_micro +0.0500")
    return registered


def test_version_carries_source_parent_run_and_every_lineage_tag(cfg):
    from components.tracking import parent_run_id

    client, name = _client(cfg), cfg.mlflow.registered_model_name
    model_dir = publish(cfg, "v1")
    version, _ = _register(cfg, "run-a", model_dir)
    registered = client.get_model_version(name, version)
    assert registered.source == f"pvc://{cfg.storage.pvc_name}/models/{name}/v1"
    assert registered.run_id == parent_run_id(client, cfg, "run-a")
    expected = {
        "kfp.run_id": "run-a", "llmft.dataset_hash": "ds-123", "llmft.config_hash": cfg.config_hash(),
        "llmft.seed": str(cfg.training.seed), "llmft.image": cfg.cluster.image, "llmft.published_version": "v1",
        "llmft.local_path": str(model_dir), "llmft.decision": "promote", "llmft.reasons": "mmlu_micro +0.0500",
        "llmft.mmlu_micro": "0.55", "llmft.mmlu_macro": "0.5", "llmft.mmlu.STEM": "0.6",
        "llmft.mmlu.social_sciences": "0.4", "llmft.train_run_id": "abc", "llmft.train_loss": "0.31",
        "llmft.eval_loss": "0.42", "llmft.mcnemar_p": "0.03", "llmft.baseline": "base model",
    }
    for package in ("llamafactory", "transformers", "peft", "torch"):
        expected[f"llmft.version.{package}"] = metadata.version(package)
    assert {key: registered.tags.get(key) for key in expected} == expected
    assert registered_aliases(client, name) == {}  # promotion is the promote step's job


def test_retried_register_finds_its_version_instead_of_adding_one(cfg):
    client, name = _client(cfg), cfg.mlflow.registered_model_name
    model_dir = publish(cfg, "v1")
    comparison = _comparison_file(cfg, "run-b", "reject")
    first = _register(cfg, "run-b", model_dir, "reject", comparison)
    again = _register(cfg, "run-b", model_dir, "reject", comparison)
    assert first == again
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    assert registered_aliases(client, name) == {"challenger": first[0]}

    # An attempt killed right after create_model_version left a version with only its run tag.
    other = publish(cfg, "v2")
    bare = client.create_model_version(name, source=pvc_uri(cfg, other), tags={"kfp.run_id": "run-c"})
    version, _ = _register(cfg, "run-c", other)
    assert version == bare.version
    assert client.get_model_version(name, version).tags["llmft.dataset_hash"] == "ds-123"
    assert len(client.search_model_versions(f"name = '{name}'")) == 2


def test_promote_is_idempotent_and_clears_challenger(cfg):
    client, name = _client(cfg), cfg.mlflow.registered_model_name
    config = cfg.model_dump_json()
    v1, _ = _register(cfg, "run-1", publish(cfg, "v1"))
    assert promote_model.python_func(config=config, kfp_run_id="run-1", model_version=v1, version="v1") == (
        "champion", "")
    v2, _ = _register(cfg, "run-2", publish(cfg, "v2"), "reject")
    assert registered_aliases(client, name) == {"champion": v1, "challenger": v2}
    # A reviewer overrules the gate: promoting the rejected version moves champion and clears challenger.
    for _attempt in range(2):
        assert promote_model.python_func(config=config, kfp_run_id="run-2", model_version=v2, version="v2") == (
            "champion", v1)
    assert registered_aliases(client, name) == {"champion": v2, "previous": v1}
    assert "llmft.rejected_reason" not in client.get_model_version(name, v2).tags
    assert current_version(cfg) == "v2"

    with pytest.raises(RegistryError, match="was published as 'v2', not 'v1'"):
        promote_model.python_func(config=config, kfp_run_id="run-2", model_version=v2, version="v1")
    with pytest.raises(RegistryError, match="has no version '99'"):
        promote_model.python_func(config=config, kfp_run_id="run-2", model_version="99", version="v2")
    # A published directory that lost a file is refused before any alias moves.
    v3, _ = _register(cfg, "run-3", publish(cfg, "v3"))
    (models_dir(cfg) / "v3" / "model.safetensors").unlink()
    with pytest.raises(RegistryError, match=r"cannot promote .*model\.safetensors is listed"):
        promote_model.python_func(config=config, kfp_run_id="run-3", model_version=v3, version="v3")
    assert registered_aliases(client, name) == {"champion": v2, "previous": v1}
    assert current_version(cfg) == "v2"
    assert registered_aliases(client, name) == {"champion": v2, "previous": v1}


def test_bad_inputs_fail_before_anything_is_registered(cfg, tmp_path):
    client, name = _client(cfg), cfg.mlflow.registered_model_name
    model_dir = publish(cfg, "v1")
    with pytest.raises(RegistryError, match="decision must be one of"):
        _register(cfg, "run-x", model_dir, decision="maybe", comparison=_comparison_file(cfg, "run-x"))
    with pytest.raises(RegistryError, match="published model directory .*v9 does not exist"):
        _register(cfg, "run-y", model_dir.parent / "v9", comparison=_comparison_file(cfg, "run-y"))
    outside = tmp_path / "elsewhere" / "v1"
    shutil.copytree(model_dir, outside)
    with pytest.raises(RegistryError, match="outside the storage root"):
        _register(cfg, "run-z", outside, comparison=_comparison_file(cfg, "run-z"))
    with pytest.raises(RegistryError, match="comparison file .* does not exist"):
        _register(cfg, "run-w", model_dir, comparison=tmp_path / "missing.json")
    assert client.search_model_versions(f"name = '{name}'") == []


def test_pvc_uris_round_trip_and_refuse_foreign_sources(cfg):
    model_dir = publish(cfg, "v1")
    uri = pvc_uri(cfg, model_dir)
    assert uri == f"pvc://llama-storage/models/{cfg.mlflow.registered_model_name}/v1"
    assert pvc_uri(cfg, f"models/{cfg.mlflow.registered_model_name}/v1") == uri
    assert path_from_pvc_uri(cfg, uri) == model_dir
    with pytest.raises(RegistryError, match="lives on PVC 'other'"):
        path_from_pvc_uri(cfg, "pvc://other/models/x")
    with pytest.raises(RegistryError, match="not a pvc:// URI"):
        path_from_pvc_uri(cfg, "s3://bucket/model")
    with pytest.raises(RegistryError, match="outside"):
        path_from_pvc_uri(cfg, "pvc://llama-storage/../../etc")


def test_cli_register_promote_show(cfg, capsys, tmp_path):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg.dump_public()))
    model_dir = publish(cfg, "v1")
    comparison = _comparison_file(cfg, "run-cli")
    assert main(["register", "--config", str(config_file), "--kfp-run-id", "run-cli", "--model-dir",
                 f"models/{cfg.mlflow.registered_model_name}/v1", "--version", "v1", "--comparison",
                 str(comparison), "--dataset-hash", "ds"]) == 0
    version = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["promote", "--config", str(config_file), "--kfp-run-id", "run-cli", "--model-version", version,
                 "--version", "v1"]) == 0
    capsys.readouterr()
    assert main(["show", "--config", str(config_file)]) == 0
    assert json.loads(capsys.readouterr().out) == {"champion": version}
    assert model_dir.is_dir()
    assert main(["promote", "--config", str(config_file), "--kfp-run-id", "run-cli", "--model-version", "42",
                 "--version", "v1"]) == 1
    assert main(["show", "--config", str(tmp_path / "missing.yaml")]) == 2
    with pytest.raises(SystemExit) as usage:
        main(["register", "--config", str(config_file)])
    assert usage.value.code == 2
