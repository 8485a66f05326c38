"""Model Registry: versions that read at a glance (description, a few tags, lineage JSON, a linked LoggedModel),
idempotent retries, the champion/previous/challenger aliases, and promotion only while the champion is still
the baseline the candidate beat.

Runs against a real MLflow server on loopback. Published models are real published directories (one tiny
tensor, checksum manifest; the registry never reads the weights' values); results files come from
tests/builders.py and go through the real compare step, so every decision follows from the scores a test
constructs.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from builders import (
    CATEGORY,
    base_losses,
    flags_first_right,
    mmlu_results,
    moved,
    publish_version,
    stand_in_config,
    task_results,
    write_results,
)

from components.common.storage import on_volume, run_dir
from components.gate.compare import compare_files
from components.gate.compare import run_step as run_compare
from components.gate.find_baseline import run_step as run_resolve_baseline
from components.gate.mark_challenger import main as mark_main
from components.gate.mark_challenger import run_step as run_mark_challenger
from components.gate.promote_model import main as promote_main
from components.gate.promote_model import run_step as run_promote
from components.gate.register_model import main as register_main
from components.gate.register_model import run_step as run_register
from components.gate.registry import RegistryError, path_from_pvc_uri, pvc_uri, registered_aliases
from components.gate.registry import main as registry_main
from components.gate.rules import Comparison

PER_SUBJECT = 20
BASE_RIGHT = 8


@pytest.fixture
def cfg(tmp_path, mlflow_server):
    """The local preset on a fresh storage root with a stand-in base model and its own experiment and model."""
    # Generation off: the lifecycle is decided by the loss and MMLU files built here (tests/gate/test_compare.py and
    # test_generation_rule.py cover the generated answers).
    return stand_in_config(tmp_path / "storage", mlflow_server.uri, "registry", "gate.max_regression=0.1",
                           "evaluation.generate_rows=0")


def _client(cfg):
    from components.common.mlflow_client import make_client

    return make_client(cfg)


def models_dir(cfg) -> Path:
    return on_volume(cfg, cfg.storage.models_root) / cfg.mlflow.registered_model_name


def current_version(cfg) -> str | None:
    from components.merge.publish import current_version as published_current

    return published_current(models_dir(cfg))


def flags(gain: int = 0, lose: int = 0) -> dict[str, list[bool]]:
    """Baseline answers right on questions 0-7 of each subject; ``gain``/``lose`` per subject on top."""
    return moved(flags_first_right({}, per_subject=PER_SUBJECT, default=BASE_RIGHT),
                 **dict.fromkeys(CATEGORY, (gain, lose)))


def scores(folder: Path, role: str, answers: dict[str, list[bool]], losses: list[float]) -> tuple[Path, Path]:
    """A model's results.json and task.json (what evaluate-candidate / -baseline leave in eval/<role>/)."""
    return write_results(folder / role, mmlu_results(answers, model=role), task_results(losses, model=role))


def train_run(cfg, kfp_run_id: str, train_loss: float) -> str:
    """A finished training run with its mean loss (what the train step logs)."""
    from components.common.pipeline_runs import experiment_id

    client = _client(cfg)
    run_id = client.create_run(experiment_id(client, cfg.mlflow.experiment),
                               tags={"kfp.run_id": kfp_run_id, "llmft.step": "train"}).info.run_id
    client.log_metric(run_id, "train_loss", train_loss)
    client.set_terminated(run_id)
    return run_id


def pipeline_run(cfg, kfp_run_id: str, version: str, candidate: tuple, baseline: tuple, tmp_path: Path) -> dict:
    """find-baseline -> compare -> register-model -> promote-model | mark-challenger, as the DAG calls them.

    ``candidate`` and ``baseline`` are ``(MMLU answers, held-out losses)``.
    """
    from kfp.dsl import HTML, Markdown, Metrics

    from components.data.validate_dataset import validate_config_data

    config = cfg.model_dump_json()
    assert validate_config_data(cfg, kfp_run_id)[0].ok  # the held-out snapshot find-baseline keys scores by
    _, baseline_dir, baseline_name, note, _, _, below, baseline_version = run_resolve_baseline(
        config=config, kfp_run_id=kfp_run_id)
    eval_dir = run_dir(cfg, kfp_run_id) / "eval"
    candidate_files, baseline_files = scores(eval_dir, "candidate", *candidate), scores(eval_dir, "baseline", *baseline)
    model_dir = publish_version(cfg, version)
    out = tmp_path / kfp_run_id
    out.mkdir()
    report = Markdown(uri=str(out / "report.md"))
    decision, headline, comparison_path = run_compare(
        config=config, kfp_run_id=kfp_run_id, candidate_mmlu=str(candidate_files[0]),
        candidate_task=str(candidate_files[1]), baseline_mmlu=str(baseline_files[0]),
        baseline_task=str(baseline_files[1]), baseline_version=baseline_version, baseline_note=note,
        held_out_below=below, train_run_id=train_run(cfg, kfp_run_id, 0.5), report=report,
        report_html=HTML(uri=str(out / "report.html")), metrics=Metrics(uri=str(out / "metrics")))
    (model_version,) = run_register(config=config, kfp_run_id=kfp_run_id, model_dir=str(model_dir), version=version,
                                    decision=decision, comparison_path=comparison_path,
                                    dataset_hash=f"hash-{kfp_run_id}")
    promoted = None
    if decision == "promote":  # the pipeline's if/else after register-model
        promoted = run_promote(config=config, kfp_run_id=kfp_run_id, model_version=model_version, version=version,
                               baseline_version=baseline_version)
    else:
        assert run_mark_challenger(config=config, kfp_run_id=kfp_run_id, model_version=model_version,
                                   headline=headline) == ("challenger",)
    return {"baseline_dir": baseline_dir, "baseline_name": baseline_name, "baseline_version": baseline_version,
            "decision": decision, "headline": headline,
            "model_version": model_version, "promoted": promoted, "report": Path(report.path).read_text()}


def test_champion_lifecycle_first_better_tie_and_worse(cfg, tmp_path):
    client, name = _client(cfg), cfg.mlflow.registered_model_name
    losses = base_losses()
    tuned, retuned = [value * 0.9 for value in losses], [value * 0.8 for value in losses]

    # 1. No champion: the base model is the baseline; 10 % lower held-out loss, MMLU flat: promoted.
    first = pipeline_run(cfg, "run-1", "v1", (flags(), tuned), (flags(), losses), tmp_path)
    assert (first["baseline_name"], first["baseline_version"], first["decision"]) == ("base model", "", "promote")
    assert first["baseline_dir"] == str(on_volume(cfg, cfg.storage.base_model))
    assert first["promoted"] == ("champion", "")
    assert registered_aliases(client, name) == {"champion": first["model_version"]}
    assert current_version(cfg) == "v1"
    assert "Mean training loss of the candidate: 0.5000." in first["report"]

    # 2. Against champion v1 (its scores): lower loss again and +2 right answers per subject: promoted; the alias
    #    moves and the old champion becomes previous.
    second = pipeline_run(cfg, "run-2", "v2", (flags(gain=2), retuned), (flags(), tuned), tmp_path)
    assert second["baseline_name"] == f"champion v{first['model_version']}"
    assert second["baseline_version"] == first["model_version"]  # typed: what compare and promote-model read
    assert second["baseline_dir"] == str(models_dir(cfg) / "v1")
    assert second["decision"] == "promote" and second["promoted"] == ("champion", first["model_version"])
    assert registered_aliases(client, name) == {"champion": second["model_version"],
                                                "previous": first["model_version"]}
    assert current_version(cfg) == "v2"

    # 3. A tie with the champion never promotes: challenger, with the gate's line as the reason.
    third = pipeline_run(cfg, "run-3", "v3", (flags(gain=2), retuned), (flags(gain=2), retuned), tmp_path)
    assert third["decision"] == "keep-champion" and third["promoted"] is None
    assert third["headline"].startswith("keep-champion: held-out loss +0.0% vs champion v")
    assert registered_aliases(client, name) == {"champion": second["model_version"],
                                                "previous": first["model_version"],
                                                "challenger": third["model_version"]}
    assert client.get_model_version(name, third["model_version"]).tags["llmft.rejected_reason"] == third["headline"]
    assert current_version(cfg) == "v2"

    # 4. Lower loss, but 3 of 20 MMLU answers lost per subject (micro -0.15; the local preset allows -0.1): kept,
    #    and the challenger alias moves to it.
    fourth = pipeline_run(cfg, "run-4", "v4", (flags(gain=2, lose=3), [value * 0.7 for value in losses]),
                          (flags(gain=2), retuned), tmp_path)
    assert fourth["decision"] == "keep-champion" and "MMLU -0.150" in fourth["headline"]
    assert registered_aliases(client, name)["champion"] == second["model_version"]
    assert registered_aliases(client, name)["challenger"] == fourth["model_version"]
    assert len(client.search_model_versions(f"name = '{name}'")) == 4


def comparison_file(cfg, kfp_run_id: str, decision: str = "promote") -> Path:
    """comparison.json as the compare step writes it, for a candidate that the gate promotes or keeps out."""
    folder = run_dir(cfg, kfp_run_id) / "eval"
    losses = base_losses()
    candidate = scores(folder, "candidate", flags(gain=1), [value * (0.9 if decision == "promote" else 1.1)
                                                             for value in losses])
    comparison = compare_files(*candidate, *scores(folder, "baseline", flags(), losses), cfg, baseline_version="")
    assert comparison.decision == decision
    path = run_dir(cfg, kfp_run_id) / "compare" / "comparison.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(comparison.model_dump_json(indent=2))
    return path


def register(cfg, kfp_run_id: str, model_dir: Path, decision: str = "promote", comparison: Path | None = None,
             version: str | None = None) -> str:
    """register-model, then (for a candidate kept out) the pipeline's else-branch mark-challenger."""
    (registered,) = run_register(
        config=cfg.model_dump_json(), kfp_run_id=kfp_run_id, model_dir=str(model_dir),
        version=version or model_dir.name, decision=decision, dataset_hash="ds-123",
        comparison_path=str(comparison or comparison_file(cfg, kfp_run_id, decision)))
    if decision == "keep-champion":
        run_mark_challenger(config=cfg.model_dump_json(), kfp_run_id=kfp_run_id, model_version=registered,
                            headline="keep-champion: held-out loss +10.0%")
    return registered


def test_a_version_reads_at_a_glance_and_links_its_lineage_and_logged_model(cfg, tmp_path):
    from components.common.pipeline_runs import parent_run_id
    from components.data.validate_dataset import validate_config_data

    client, name = _client(cfg), cfg.mlflow.registered_model_name
    model_dir = publish_version(cfg, "v1")
    assert validate_config_data(cfg, "run-a")[0].ok  # the split the run trained with, recorded on the version
    comparison_path = comparison_file(cfg, "run-a")
    comparison = Comparison.model_validate_json(comparison_path.read_text())
    version = register(cfg, "run-a", model_dir, comparison=comparison_path)
    registered = client.get_model_version(name, version)
    source = f"pvc://{cfg.storage.pvc_name}/models/{name}/v1"
    parent = parent_run_id(client, cfg, "run-a")
    assert registered.source == source and registered.run_id == parent

    # A handful of tags, none empty; the rest of the lineage is one JSON artifact.
    model_id = registered.tags["llmft.logged_model_id"]
    assert registered.tags == {
        "kfp.run_id": "run-a", "llmft.decision": "promote", "llmft.dataset_hash": "ds-123",
        "llmft.mmlu_eval_key": comparison.mmlu.candidate_eval_key,
        "llmft.task_eval_key": comparison.task.candidate_eval_key,
        "llmft.published_version": "v1", "llmft.local_path": str(model_dir), "llmft.logged_model_id": model_id,
        "llmft.split_scheme": "llmft-split-v2", "llmft.test_fraction": repr(cfg.dataset.test_fraction)}
    assert len(registered.tags) <= 10 and all(value.strip() for value in registered.tags.values())

    # The description says what was trained on what and how it scored against the baseline.
    task, mmlu = comparison.task, comparison.mmlu
    description = registered.description
    for text in (f"**{cfg.training.method}** fine-tune of `{cfg.storage.base_model}` on alpaca\\_sample",
                 "(data `ds-123`)", "published as `v1` by KFP run `run-a`",
                 f"Held-out loss **{task.candidate_mean_nll:.4f}** vs {task.baseline_mean_nll:.4f} for the base model "
                 f"(-10.0%, 40 rows)",
                 f"MMLU **{mmlu.candidate_micro:.4f}** vs {mmlu.baseline_micro:.4f} (+0.0500)",
                 f"Decision: **{comparison.headline}**"):
        assert text in description, (text, description)

    lineage = json.loads(Path(client.download_artifacts(parent, "lineage/v1.json", str(tmp_path))).read_text())
    assert {key: lineage[key] for key in ("kfp_run_id", "version", "source", "dataset_hash", "config_hash",
                                          "image")} == {
        "kfp_run_id": "run-a", "version": "v1", "source": source, "dataset_hash": "ds-123",
        "config_hash": cfg.config_hash(), "image": cfg.cluster.image}
    assert lineage["packages"] == {package: metadata.version(package)
                                   for package in ("llamafactory", "transformers", "peft", "torch")}
    assert Comparison.model_validate(lineage["comparison"]) == comparison
    assert lineage["config"]["training"]["method"] == cfg.training.method

    # The published directory is an MLflow 3 LoggedModel of the parent run, carrying the candidate's scores and
    # linked to the version both ways (an open-source registry does not return ModelVersion.model_id).
    logged = client.get_logged_model(model_id)
    assert (logged.name, logged.source_run_id, logged.model_type) == (f"{name}-v1", parent, "merged-llm")
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [{"name": name, "version": version}]
    assert logged.tags["llmft.source"] == source and logged.tags["llmft.decision"] == "promote"
    assert {metric.key: metric.value for metric in logged.metrics} == pytest.approx({
        "task_row_nll_candidate": task.candidate_mean_nll, "mmlu_candidate": mmlu.candidate_micro,
        "task_row_nll_change": task.relative_change}, abs=1e-6)
    # ...and is the parent run's output (its "Logged models" on the run page).
    assert [output.model_id for output in client.get_run(parent).outputs.model_outputs] == [model_id]
    assert logged.params["datasets"] == "alpaca_sample" and logged.params["method"] == cfg.training.method
    assert registered_aliases(client, name) == {}  # promotion is the promote step's job
    assert client.get_run(parent).data.tags["llmft.registered"] == f"{name} v{version}"


def test_retried_register_finds_its_version_instead_of_adding_one(cfg):
    client, name = _client(cfg), cfg.mlflow.registered_model_name
    model_dir = publish_version(cfg, "v1")
    comparison = comparison_file(cfg, "run-b", "keep-champion")
    first = register(cfg, "run-b", model_dir, "keep-champion", comparison)
    again = register(cfg, "run-b", model_dir, "keep-champion", comparison)
    assert first == again
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    assert registered_aliases(client, name) == {"challenger": first}

    # An attempt killed right after create_model_version left a version with only its run tag.
    other = publish_version(cfg, "v2")
    bare = client.create_model_version(name, source=pvc_uri(cfg, other), tags={"kfp.run_id": "run-c"})
    version = register(cfg, "run-c", other)
    assert version == bare.version
    tags = client.get_model_version(name, version).tags
    assert tags["llmft.dataset_hash"] == "ds-123" and tags["llmft.published_version"] == "v2"
    assert len(client.search_model_versions(f"name = '{name}'")) == 2


def test_promote_is_idempotent_and_clears_challenger(cfg):
    client, name = _client(cfg), cfg.mlflow.registered_model_name
    config = cfg.model_dump_json()
    v1 = register(cfg, "run-1", publish_version(cfg, "v1"))
    assert run_promote(config=config, kfp_run_id="run-1", model_version=v1, version="v1",
                       baseline_version="") == ("champion", "")
    v2 = register(cfg, "run-2", publish_version(cfg, "v2"), "keep-champion")
    assert registered_aliases(client, name) == {"champion": v1, "challenger": v2}
    # A reviewer overrules the gate (no baseline named): promoting the kept-out version moves champion and clears
    # challenger; a retry reports the same previous champion.
    for _attempt in range(2):
        assert run_promote(config=config, kfp_run_id="run-2", model_version=v2, version="v2") == ("champion", v1)
    assert registered_aliases(client, name) == {"champion": v2, "previous": v1}
    assert "llmft.rejected_reason" not in client.get_model_version(name, v2).tags
    assert current_version(cfg) == "v2"

    with pytest.raises(RegistryError, match="was published as 'v2', not 'v1'"):
        run_promote(config=config, kfp_run_id="run-2", model_version=v2, version="v1")
    with pytest.raises(RegistryError, match="has no version '99'"):
        run_promote(config=config, kfp_run_id="run-2", model_version="99", version="v2")
    # A published directory that lost a file is refused before any alias moves.
    v3 = register(cfg, "run-3", publish_version(cfg, "v3"))
    (models_dir(cfg) / "v3" / "model.safetensors").unlink()
    with pytest.raises(RegistryError, match=r"cannot promote .*model\.safetensors is listed"):
        run_promote(config=config, kfp_run_id="run-3", model_version=v3, version="v3")
    assert registered_aliases(client, name) == {"champion": v2, "previous": v1}
    assert current_version(cfg) == "v2"


def test_of_two_candidates_that_beat_champion_v1_only_one_is_promoted(cfg):
    """Both compared with champion v1 and both promote at once: they take turns under the lock, the first moves
    the champion, the second finds a champion it never beat and stays challenger, naming the new one."""
    client, name, config = _client(cfg), cfg.mlflow.registered_model_name, cfg.model_dump_json()
    v1 = register(cfg, "run-1", publish_version(cfg, "v1"))
    run_promote(config=config, kfp_run_id="run-1", model_version=v1, version="v1", baseline_version="")
    candidates = {"run-a": ("v2", register(cfg, "run-a", publish_version(cfg, "v2"))),
                  "run-b": ("v3", register(cfg, "run-b", publish_version(cfg, "v3")))}

    def promote(kfp_run_id: str) -> tuple[str, str]:
        version, model_version = candidates[kfp_run_id]
        return run_promote(config=config, kfp_run_id=kfp_run_id, model_version=model_version, version=version,
                           baseline_version=v1)

    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = dict(zip(candidates, pool.map(promote, candidates), strict=True))
    (winner,) = [run for run, (alias, _) in outcomes.items() if alias == "champion"]
    (loser,) = [run for run in candidates if run != winner]
    won, lost = candidates[winner][1], candidates[loser][1]
    assert outcomes[winner] == ("champion", v1) and outcomes[loser] == ("challenger", won)
    assert registered_aliases(client, name) == {"champion": won, "previous": v1, "challenger": lost}
    assert current_version(cfg) == candidates[winner][0]
    reason = client.get_model_version(name, lost).tags["llmft.rejected_reason"]
    assert reason.startswith(f"not promoted: the champion is now v{won}, promoted by another run after this one "
                             f"compared with the champion v{v1}")


def test_bad_inputs_fail_before_anything_is_registered(cfg, tmp_path):
    client, name = _client(cfg), cfg.mlflow.registered_model_name
    model_dir = publish_version(cfg, "v1")
    comparison = comparison_file(cfg, "run-x")
    with pytest.raises(RegistryError, match="decision must be one of"):
        register(cfg, "run-x", model_dir, decision="maybe", comparison=comparison)
    with pytest.raises(RegistryError, match="decision 'keep-champion' disagrees with .*comparison.json"):
        register(cfg, "run-x", model_dir, decision="keep-champion", comparison=comparison)
    with pytest.raises(RegistryError, match="published model directory .*v9 does not exist"):
        register(cfg, "run-x", model_dir.parent / "v9", comparison=comparison)
    with pytest.raises(RegistryError, match=r"is not the published version 'v2' \(its directory is named 'v1'\)"):
        register(cfg, "run-x", model_dir, comparison=comparison, version="v2")
    outside = tmp_path / "elsewhere" / "v1"
    shutil.copytree(model_dir, outside)
    with pytest.raises(RegistryError, match="outside the storage root"):
        register(cfg, "run-x", outside, comparison=comparison)
    with pytest.raises(RegistryError, match="comparison file .* does not exist"):
        register(cfg, "run-x", model_dir, comparison=tmp_path / "missing.json")
    comparison.write_text(comparison.read_text().replace('"decision": "promote"', '"decision": "ship-it"'))
    with pytest.raises(RegistryError, match=r"comparison file .*comparison.json: decision: Input should be"):
        register(cfg, "run-x", model_dir, comparison=comparison)
    assert client.search_model_versions(f"name = '{name}'") == []


def test_pvc_uris_round_trip_and_refuse_foreign_sources(cfg):
    model_dir = publish_version(cfg, "v1")
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


def test_cli_register_promote_mark_challenger_and_show(cfg, capsys, tmp_path):
    """Each registry step by hand (python -m components.gate.<step>), and the registry's aliases."""
    client, name = _client(cfg), cfg.mlflow.registered_model_name
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg.dump_public()))
    model_dir = publish_version(cfg, "v1")
    assert register_main(["--config", str(config_file), "--kfp-run-id", "run-cli", "--model-dir", f"models/{name}/v1",
                          "--version", "v1", "--comparison", str(comparison_file(cfg, "run-cli")),
                          "--dataset-hash", "ds"]) == 0
    version = capsys.readouterr().out.strip().splitlines()[-1]
    assert promote_main(["--config", str(config_file), "--kfp-run-id", "run-cli", "--model-version", version,
                         "--version", "v1"]) == 0
    capsys.readouterr()
    assert registry_main(["--config", str(config_file)]) == 0
    assert json.loads(capsys.readouterr().out) == {"champion": version}
    assert model_dir.is_dir() and current_version(cfg) == "v1"
    # A candidate the gate kept out is registered as challenger at once, as the pipeline's else-branch does.
    publish_version(cfg, "v2")
    assert register_main(["--config", str(config_file), "--kfp-run-id", "run-cli-2", "--model-dir",
                          f"models/{name}/v2", "--version", "v2", "--comparison",
                          str(comparison_file(cfg, "run-cli-2", "keep-champion")), "--dataset-hash", "ds"]) == 0
    kept = capsys.readouterr().out.strip().splitlines()[-1]
    assert registered_aliases(client, name) == {"champion": version, "challenger": kept}
    # The mark-challenger step by hand records another reason on the same version.
    assert mark_main(["--config", str(config_file), "--kfp-run-id", "run-cli-2", "--model-version", kept,
                      "--headline", "kept by hand"]) == 0
    assert client.get_model_version(name, kept).tags["llmft.rejected_reason"] == "kept by hand"
    assert promote_main(["--config", str(config_file), "--kfp-run-id", "run-cli", "--model-version", "42",
                         "--version", "v1"]) == 1
    assert "has no version '42'" in capsys.readouterr().err
    assert registry_main(["--config", str(tmp_path / "missing.yaml")]) == 2
    with pytest.raises(SystemExit) as usage:
        register_main(["--config", str(config_file)])
    assert usage.value.code == 2


HOSTILE_PATH = "models/x` [click](https://evil.example) ![seen](https://evil.example/p.png) <b>bold</b> `y"


def test_user_text_in_the_description_stays_text(tmp_path):
    """A backtick in the base model's path (a run-form value) must not end its code span: no link, image or HTML
    from the form reaches the registry page. Rendered as MLflow renders Markdown (CommonMark)."""
    from markdown_it import MarkdownIt

    from components.gate.register_model import version_description
    from configs.loading import config_from_dict

    cfg = config_from_dict({"storage": {"base_model": HOSTILE_PATH}, "dataset": {"names": ["my_data_set", "b_c"]}})
    files = [*scores(tmp_path, "candidate", flags(gain=2), [value * 0.9 for value in base_losses()]),
             *scores(tmp_path, "baseline", flags(), base_losses())]
    comparison = compare_files(*files, cfg, baseline_version="")
    description = version_description(cfg, comparison, version="v1", dataset_hash="ds-123",
                                      kfp_run_id="run `1` <i>x</i>")
    html = MarkdownIt("commonmark").render(description)
    assert "<a " not in html and "<img" not in html and "<b>" not in html and "<i>" not in html
    shown = cfg.storage.base_model.replace("<", "&lt;").replace(">", "&gt;")  # the path as the schema normalised it
    assert f"<code>{shown}</code>" in html
    assert "<code>run `1` &lt;i&gt;x&lt;/i&gt;</code>" in html and "my_data_set, b_c" in html
