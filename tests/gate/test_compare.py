"""compare_baseline: the four results files through the gate, the baseline found in the registry, its stored
scores reused by eval key, the compare step's files, metrics, reports and MLflow artifacts, and the CLI.

Results files come from tests/builders.py (every number computed from question records and row losses, so
each expected value follows from the counts a test constructs). MLflow is a real server on loopback, KFP
artifacts are real ``kfp.dsl`` objects, and the held-out snapshot a run's eval keys cover is written by the
real validate-dataset split.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from builders import (
    CATEGORY,
    REPO_ROOT,
    base_losses,
    flags_first_right,
    generations_results,
    generations_text,
    mmlu_results,
    mmlu_text,
    moved,
    publish_version,
    row_key,
    stand_in_config,
    task_results,
    task_text,
    write_results,
)

from components.common.storage import on_volume, run_dir
from components.data.split import SPLIT_VERSION, key_position, read_manifest, snapshot_dir
from components.gate.compare import ComparisonError, compare_files, main
from components.gate.compare import run_step as run_compare
from components.gate.find_baseline import run_step as run_resolve_baseline
from components.gate.registry import BaselineError
from components.gate.report import render_html, render_report, sparkline
from components.gate.reuse_baseline_scores import run_step as run_fetch_baseline_results
from components.gate.rules import Comparison
from components.gate.stats import mcnemar_exact_p
from components.merge.publish import set_current
from configs.loading import config_from_dict

PER_SUBJECT = 25
BASE_RIGHT = 10  # 40 of 100 overall


def baseline_flags() -> dict[str, list[bool]]:
    return flags_first_right({}, per_subject=PER_SUBJECT, default=BASE_RIGHT)


def write_pair(folder: Path, candidate_answers: dict[str, list[bool]], candidate_losses: list[float | None], *,
               baseline_answers: dict[str, list[bool]] | None = None,
               baseline_losses: list[float | None] | None = None, baseline_mmlu: dict | None = None,
               baseline_task: dict | None = None,
               generations: tuple[Any, Any] | None = None) -> tuple[Path, Path, Path, Path]:
    """Candidate and baseline results files under ``folder``: (candidate MMLU, candidate task, baseline MMLU,
    baseline task). The baseline answers ``baseline_flags()`` and has ``base_losses()`` unless told otherwise;
    ``baseline_mmlu`` / ``baseline_task`` are builder options for its files (another data hash, template...).
    Each model's generations.jsonl goes beside its task.json: ``generations`` (candidate, baseline), by default
    both answering 40 rows with the same scores."""
    candidate = write_results(folder / "candidate", mmlu_results(candidate_answers, model="cand"),
                              task_results(candidate_losses, model="cand"))
    baseline = write_results(
        folder / "baseline", mmlu_results(baseline_answers or baseline_flags(), model="base", **(baseline_mmlu or {})),
        task_results(base_losses() if baseline_losses is None else baseline_losses, model="base",
                     **(baseline_task or {})))
    same = [float(index) for index in range(40)]
    answers = generations or (generations_results(same, model="cand"), generations_results(same, model="base"))
    for task_path, generated in zip((candidate[1], baseline[1]), answers, strict=True):
        task_path.with_name("generations.jsonl").write_text(generations_text(generated), encoding="utf-8")
    return (*candidate, *baseline)


def defaults(*overrides: str):
    return config_from_dict({}, "defaults", ["gate.bootstrap_samples=500", *overrides])


def better_task() -> list[float]:
    return [value * 0.9 for value in base_losses()]


def failed(comparison: Comparison) -> set[str]:
    return {rule.rule for rule in comparison.rules if not rule.passed}


# ---------------------------------------------------------------- the four files through the gate


def test_better_candidate_is_promoted_with_exact_numbers(tmp_path):
    # +3 right answers in every subject, none lost: 52/100 vs 40/100, 12 discordant questions all for the candidate;
    # every held-out row 10 % lower.
    files = write_pair(tmp_path, moved(baseline_flags(), **dict.fromkeys(CATEGORY, (3, 0))), better_task())
    comparison = compare_files(*files, defaults(), baseline_version="3")
    assert comparison.decision == "promote" and not failed(comparison)
    assert comparison.baseline_name == "champion v3" and not comparison.first_model
    mmlu = comparison.mmlu
    assert (mmlu.questions, mmlu.candidate_only, mmlu.baseline_only) == (100, 12, 0)
    assert mmlu.delta_micro == pytest.approx(0.12) and mmlu.mcnemar_p == pytest.approx(2 / 2**12)
    for row in mmlu.categories:
        assert (row.questions, row.candidate_only, row.baseline_only) == (PER_SUBJECT, 3, 0)
        assert row.delta == pytest.approx(3 / PER_SUBJECT)
    assert mmlu.ci_low > 0  # every resample of all-positive differences is positive
    task = comparison.task
    assert task.rows == 40 and task.candidate_lower == 40 and task.baseline_lower == 0
    assert task.relative_change == pytest.approx(-0.1) and task.ci_high < 0
    assert task.baseline_mean_nll == pytest.approx(sum(base_losses()) / 40)
    assert comparison.headline.startswith("promote: held-out loss -10.0% vs champion v3")


def test_a_candidate_worse_on_either_suite_is_kept_with_that_reason(tmp_path):
    # Held-out loss 10 % lower, but 2 MMLU questions lost (-0.02 > the 0.01 allowed).
    mmlu_worse = write_pair(tmp_path / "a", moved(baseline_flags(), astronomy=(0, 1), nutrition=(0, 1)), better_task())
    kept = compare_files(*mmlu_worse, defaults("gate.max_regression=0.1"), baseline_version="1")
    assert kept.decision == "keep-champion" and failed(kept) == {"mmlu"}
    assert kept.mmlu.delta_micro == pytest.approx(-0.02)
    assert kept.headline.startswith("keep-champion: MMLU -0.020")
    assert kept.reasons[0].startswith("MMLU micro 0.4000 -> 0.3800 (-0.0200)")
    # The same MMLU answers, a held-out loss 5 % higher.
    task_worse = write_pair(tmp_path / "b", baseline_flags(), [value * 1.05 for value in base_losses()])
    kept = compare_files(*task_worse, defaults(), baseline_version="")
    assert kept.decision == "keep-champion" and failed(kept) == {"task"} and kept.first_model
    assert "held-out loss +5.0% vs base model" in kept.headline


def test_results_not_obtained_the_same_way_are_refused(tmp_path):
    flags = moved(baseline_flags(), astronomy=(1, 0))
    cases = {
        "fewer-questions": ({"baseline_answers": {**baseline_flags(), "nutrition": [True] * 20}},
                            "not evaluated on the same questions"),
        "other-mmlu-data": ({"baseline_mmlu": {"data_hash": "data-2"}}, "data_hash is 'data-1' vs 'data-2'"),
        "other-gold": ({"baseline_mmlu": {"gold_of": lambda index: "D" if index == 0 else "ABCD"[index % 4]}},
                       "astronomy#0 has answer 'A' for the candidate but 'D'"),
        "other-template": ({"baseline_task": {"template": "llama3"}}, "template is 'default' vs 'llama3'"),
        "other-rows": ({"baseline_losses": [*base_losses(), 2.0]}, "test_split_hash is"),
    }
    for name, (options, message) in cases.items():
        files = write_pair(tmp_path / name, flags, better_task(), **options)
        with pytest.raises(ComparisonError, match=message) as refused:
            compare_files(*files, defaults(), baseline_version="1")
        assert "evaluate the baseline again" in str(refused.value), name


def test_malformed_results_files_name_the_file_and_field(tmp_path):
    files = write_pair(tmp_path, baseline_flags(), better_task())
    good = {path.name: path.read_text() for path in files[2:]}

    def broken(name: str, change) -> Path:
        data = json.loads(good[name])
        change(data)
        path = tmp_path / "broken" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(data))
        return path

    def refused(mmlu: Path = files[2], task: Path = files[3]) -> str:
        with pytest.raises(ComparisonError) as error:
            compare_files(files[0], files[1], mmlu, task, defaults(), baseline_version="")
        return str(error.value)

    message = refused(mmlu=broken("results.json", lambda data: data["questions"][3].update(correct="yes")))
    assert message.startswith("baseline MMLU results file ") and "results.json: questions.3.correct" in message
    message = refused(mmlu=broken("results.json", lambda data: data.update(micro=0.9)))
    assert "micro 0.9, but the question records give 40/100" in message
    message = refused(task=broken("task.json", lambda data: data["records"][2].update(nll_mean=7.0)))
    assert "baseline task results" in message and "task.json" in message and "records.2: nll_mean (7.0)" in message
    assert "loss is 7.0 but the records give" in refused(task=broken("task.json", lambda data: data.update(loss=7.0)))
    (tmp_path / "bad.json").write_text("{not json")
    assert "is not valid JSON" in refused(mmlu=tmp_path / "bad.json")
    assert "is not a JSON task results file" in refused(task=tmp_path / "bad.json")
    assert refused(task=tmp_path / "missing.json") == f"baseline task results file {tmp_path / 'missing.json'} " \
                                                      "does not exist"


def test_report_has_decision_tables_p_values_and_interval(tmp_path):
    # STEM +3, other -1 of 25 (-0.04, within 0.05): McNemar 3 vs 1 overall.
    files = write_pair(tmp_path, moved(baseline_flags(), astronomy=(3, 0), nutrition=(0, 1)), better_task())
    comparison = compare_files(*files, defaults("gate.max_regression=0.05"), baseline_version="3")
    report = render_report(comparison, training_loss=0.3, loss_plot="`▁▂▃`", note="Baseline: reused")
    assert report.startswith("# ✅ Promote: candidate vs champion v3\n\n**promote: held-out loss -10.0%")
    assert "\nBaseline: reused\n" in report
    assert "| mean per-row answer loss (gated) | 1.9710 | 2.1900 | -10.00% |" in report
    assert "| STEM | 25 | 0.5200 | 0.4000 | +0.1200 | 3 | 0 | 0.25 |" in report  # p = 2 / 2^3
    assert "| other | 25 | 0.3600 | 0.4000 | -0.0400 | 0 | 1 | 1 |" in report
    assert "| **overall (micro)** | 100 | 0.4200 | 0.4000 | +0.0200 | 3 | 1 | 0.625 |" in report
    assert comparison.mmlu.mcnemar_p == pytest.approx(mcnemar_exact_p(3, 1))
    assert f"[{comparison.mmlu.ci_low:+.4f}, {comparison.mmlu.ci_high:+.4f}]" in report
    assert "Mean training loss of the candidate: 0.3000." in report
    assert report.rstrip().endswith("`▁▂▃`")
    kept = compare_files(*write_pair(tmp_path / "kept", baseline_flags(), base_losses()), defaults(),
                         baseline_version="3")
    assert render_report(kept).startswith("# ⏸️ Keep the champion: candidate vs champion v3")
    assert "## Training" not in render_report(kept)


def test_sparkline_spans_lowest_to_highest():
    assert sparkline([3.0, 2.0, 1.0, 1.0]) == "█▅▁▁"  # eight equal bins: the midpoint opens the fifth
    assert sparkline([]) == ""


def test_cli_exit_codes_and_report(tmp_path, capsys):
    better = write_pair(tmp_path / "better", moved(baseline_flags(), astronomy=(4, 0)), better_task())
    worse = write_pair(tmp_path / "worse", moved(baseline_flags(), astronomy=(0, 4)), better_task())

    def argv(files, *extra: str) -> list[str]:
        names = ["--candidate-mmlu", "--candidate-task", "--baseline-mmlu", "--baseline-task"]
        return [item for pair in zip(names, map(str, files), strict=True) for item in pair] + list(extra)

    report, out = tmp_path / "report.md", tmp_path / "comparison.json"
    assert main(argv(better, "--report", str(report), "--json", str(out))) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("promote: held-out loss -10.0% vs base model") and "  - held-out loss" in printed
    assert "| STEM | 25 | 0.5600 | 0.4000 | +0.1600 |" in report.read_text()
    assert Comparison.model_validate_json(out.read_text()).mmlu.delta_micro == pytest.approx(0.04)
    assert main(argv(worse, "--baseline-version", "2")) == 1  # micro -0.04, STEM -0.16
    printed = capsys.readouterr().out
    assert printed.startswith("keep-champion: MMLU -0.040") and "categories dropped more than 0.0200: STEM -0.1600" \
        in printed
    assert main(argv(worse, "--set", "gate.max_regression=0.5", "--set", "gate.mmlu_max_drop=0.05")) == 0
    assert main(argv([*better[:3], tmp_path / "nope.json"])) == 2
    assert "nope.json does not exist" in capsys.readouterr().err
    assert main(argv(better, "--set", "gate.alpha=7")) == 2
    assert "gate.alpha" in capsys.readouterr().err
    assert main(argv(better, "--config", "local")) == 0  # a preset's gate section
    with pytest.raises(SystemExit) as usage:
        main(["--candidate-mmlu", str(better[0])])
    assert usage.value.code == 2


# ---------------------------------------------------------------- steps against a real MLflow server


@pytest.fixture
def cfg(tmp_path, mlflow_server):
    """The local preset on a fresh storage root with a stand-in base model and its own experiment and model."""
    return stand_in_config(tmp_path / "storage", mlflow_server.uri, "compare")


def snapshot(cfg, kfp_run_id: str) -> None:
    """What validate-dataset leaves for a run: the held-out split the task eval key covers."""
    from components.data.validate_dataset import validate_config_data

    result, split = validate_config_data(cfg, kfp_run_id)
    assert result.ok and split is not None


def _client(cfg):
    from components.common.mlflow_client import make_client

    return make_client(cfg)


def _runs(cfg, step: str) -> list:
    client = _client(cfg)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`llmft.step` = '{step}'",
                              order_by=["attributes.start_time ASC"])


def store_eval_run(cfg, kfp_run_id: str, model_dir: Path, *, status: str = "FINISHED", mmlu_key: str | None = None,
                   task_text_of=None) -> str:
    """What the evaluate step leaves in MLflow: a run tagged with both eval keys and their settings, and both files.

    ``mmlu_key``: the eval key written inside results.json (the tag keeps the real one); ``task_text_of``: turns
    task.json's text into what is stored (None from it: no task.json artifact at all)."""
    from components.common.pipeline_runs import experiment_id
    from components.evaluate.evaluate import eval_keys, generation_key, generation_tags

    keys = eval_keys(cfg, kfp_run_id, model_dir)
    gen_key = generation_key(cfg, keys.task_key)
    client = _client(cfg)
    run = client.create_run(experiment_id(client, cfg.mlflow.experiment),
                            tags={"llmft.mmlu_eval_key": keys.mmlu_key, "llmft.task_eval_key": keys.task_key,
                                  "llmft.generation_eval_key": gen_key, **keys.tags, **generation_tags(cfg)})
    client.log_text(run.info.run_id, mmlu_text(mmlu_results(baseline_flags(), eval_key=mmlu_key or keys.mmlu_key)),
                    "eval/results.json")
    task = task_text(task_results(base_losses(), eval_key=keys.task_key))
    task = task_text_of(task) if task_text_of else task
    if task is not None:
        client.log_text(run.info.run_id, task, "eval/task.json")
    client.log_text(run.info.run_id, generations_text(generations_results([50.0] * 40, eval_key=gen_key)),
                    "eval/generations.jsonl")
    client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


def test_the_base_model_is_evaluated_once_then_its_stored_scores_are_reused(cfg):
    from components.evaluate.evaluate import eval_keys, generation_key

    config, base = cfg.model_dump_json(), on_volume(cfg, cfg.storage.base_model)
    snapshot(cfg, "r1")
    keys = eval_keys(cfg, "r1", base)
    needs_eval, model_dir, name, note, mmlu_key, task_key, _, _ = run_resolve_baseline(config=config,
                                                                                     kfp_run_id="r1")
    assert (needs_eval, model_dir, name) == (True, str(base), "base model")
    assert (mmlu_key, task_key) == (keys.mmlu_key, keys.task_key)
    assert note == "base model evaluated afresh: this model has no stored score yet"
    (resolve,) = _runs(cfg, "find-baseline")
    assert resolve.data.tags["llmft.baseline_note"] == note
    assert resolve.data.tags["llmft.baseline_mmlu_eval_key"] == mmlu_key

    store_eval_run(cfg, "r1", base, status="FAILED")  # a failed evaluation is not a stored score
    assert run_resolve_baseline(config=config, kfp_run_id="r1")[0] is True
    source = store_eval_run(cfg, "r1", base)
    snapshot(cfg, "r2")  # the same data: the same held-out rows, the same keys
    needs_eval, _, _, note, mmlu_key2, task_key2, _, _ = run_resolve_baseline(config=config, kfp_run_id="r2")
    assert (needs_eval, mmlu_key2, task_key2) == (False, mmlu_key, task_key)
    assert note == f"base model: stored scores reused (evaluate run {source})"

    mmlu_path, task_path = run_fetch_baseline_results(config=config, kfp_run_id="r2", mmlu_key=mmlu_key,
                                                      task_key=task_key)
    target = run_dir(cfg, "r2") / "eval" / "baseline"
    assert (Path(mmlu_path), Path(task_path)) == (target / "results.json", target / "task.json")
    assert Path(mmlu_path).read_text() == mmlu_text(mmlu_results(baseline_flags(), eval_key=mmlu_key))
    assert Path(task_path).read_text() == task_text(task_results(base_losses(), eval_key=task_key))
    # The generated answers come along, beside task.json where compare looks for them.
    assert (target / "generations.jsonl").read_text() == generations_text(
        generations_results([50.0] * 40, eval_key=generation_key(cfg, task_key)))
    (fetch,) = _runs(cfg, "reuse-baseline-scores")
    assert fetch.data.tags["llmft.source_run_ids"] == source and fetch.info.status == "FINISHED"

    with pytest.raises(BaselineError, match="evaluate the baseline instead"):
        run_fetch_baseline_results(config=config, kfp_run_id="r3", mmlu_key="0" * 64, task_key=task_key)
    assert not (run_dir(cfg, "r3") / "eval").exists()


def test_stored_answers_are_reused_by_their_key_and_generated_afresh_when_the_settings_change(cfg):
    """The champion's generated answers carry their own key (the task key plus the generation settings)."""
    base = on_volume(cfg, cfg.storage.base_model)
    snapshot(cfg, "r1")
    store_eval_run(cfg, "r1", base)
    assert run_resolve_baseline(config=cfg.model_dump_json(), kfp_run_id="r1")[0] is False

    longer = cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"max_new_tokens": 999})})
    needs_eval, _, _, note, mmlu_key, task_key, _, _ = run_resolve_baseline(
        config=longer.model_dump_json(), kfp_run_id="r1")
    assert needs_eval is True  # MMLU and the held-out loss are stored; the answers for 999 tokens are not
    assert note == (f"base model evaluated afresh: its stored scores were computed differently: "
                    f"evaluation.max_new_tokens ({cfg.evaluation.max_new_tokens} -> 999)")
    with pytest.raises(BaselineError, match="llmft.generation_eval_key="):
        run_fetch_baseline_results(config=longer.model_dump_json(), kfp_run_id="r1", mmlu_key=mmlu_key,
                                   task_key=task_key)
    assert not (run_dir(cfg, "r1") / "eval").exists()  # nothing half-copied

    # Generation off: the stored MMLU and task scores suffice, and no answers are copied.
    off = cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"generate_rows": 0})})
    assert run_resolve_baseline(config=off.model_dump_json(), kfp_run_id="r1")[0] is False
    run_fetch_baseline_results(config=off.model_dump_json(), kfp_run_id="r1", mmlu_key=mmlu_key, task_key=task_key)
    assert sorted(path.name for path in (run_dir(cfg, "r1") / "eval" / "baseline").iterdir()) == [
        "results.json", "task.json"]


DAMAGED = {  # what is wrong with the stored scores: (store_eval_run options, what the note must say)
    "truncated task.json": ({"task_text_of": lambda text: text[:len(text) // 2]},
                            "stored task.json of evaluate run {run} is not a JSON task results file"),
    "another eval key": ({"mmlu_key": "f" * 64},
                         "stored results.json of evaluate run {run} has eval key ffffffffffff..., not "
                         "{mmlu_key:.12}..."),
    "artifact gone": ({"task_text_of": lambda text: None}, "evaluate run {run} has no task.json artifact"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGED))
def test_unusable_stored_scores_mean_evaluate_afresh_and_never_block_a_later_run(cfg, damage):
    """Stored scores are validated where they are found: a truncated file, one under another eval key or a missing
    artifact means "evaluate afresh", with the real reason and the MLflow run named (never a temporary download
    path); once a good score is stored, it is reused, and the damaged run is passed over from then on."""
    config, base = cfg.model_dump_json(), on_volume(cfg, cfg.storage.base_model)
    options, reason = DAMAGED[damage]
    snapshot(cfg, "r1")
    damaged = store_eval_run(cfg, "r1", base, **options)
    needs_eval, _, _, note, mmlu_key, task_key, _, _ = run_resolve_baseline(config=config, kfp_run_id="r1")
    assert needs_eval is True
    assert note.startswith("base model evaluated afresh: " + reason.format(run=damaged, mmlu_key=mmlu_key)), note
    assert "/tmp" not in note and "another scoring version" not in note
    # reuse-baseline-scores, should it run anyway, names the run too, and leaves nothing for compare to read.
    with pytest.raises(BaselineError, match=f"evaluate run {damaged}") as refused:
        run_fetch_baseline_results(config=config, kfp_run_id="r1", mmlu_key=mmlu_key, task_key=task_key)
    assert "/tmp" not in str(refused.value)
    assert not (run_dir(cfg, "r1") / "eval").exists()

    good = store_eval_run(cfg, "r1", base)  # what evaluate-baseline leaves when it scores the model afresh
    snapshot(cfg, "r2")
    assert run_resolve_baseline(config=config, kfp_run_id="r2")[:4:3] == (
        False, f"base model: stored scores reused (evaluate run {good})")
    again = store_eval_run(cfg, "r1", base, **options)  # damaged again, and now the newest: its bad file passed over
    needs_eval, _, _, note, _, _, _, _ = run_resolve_baseline(config=config, kfp_run_id="r2")
    assert needs_eval is False and note.startswith("base model: stored scores reused (evaluate run") and good in note
    run_fetch_baseline_results(config=config, kfp_run_id="r2", mmlu_key=mmlu_key, task_key=task_key)
    target = run_dir(cfg, "r2") / "eval" / "baseline"
    assert (target / "task.json").read_text() == task_text(task_results(base_losses(), eval_key=task_key))
    assert (target / "results.json").read_text() == mmlu_text(mmlu_results(baseline_flags(), eval_key=mmlu_key))
    assert set(_runs(cfg, "reuse-baseline-scores")[-1].data.tags["llmft.source_run_ids"].split(",")) <= {good, again}


def champion(cfg, version: str, **tags: str) -> str:
    """What promote-model leaves: a published ``version`` registered with ``tags``, holding the alias champion and
    served by ``current``; returns its registry version."""
    from components.gate.registry import ensure_registered_model, pvc_uri
    from components.merge.publish import set_current

    client, name = _client(cfg), cfg.mlflow.registered_model_name
    model_dir = publish_version(cfg, version)
    ensure_registered_model(client, name)
    registered = client.create_model_version(name, source=pvc_uri(cfg, model_dir),
                                             tags={"llmft.published_version": version, **tags})
    client.set_registered_model_alias(name, "champion", registered.version)
    set_current(model_dir.parent, version)
    return str(registered.version)


def split_tags(fraction: float, scheme: str = SPLIT_VERSION) -> dict[str, str]:
    """The training split register-model records on a version."""
    return {"llmft.split_scheme": scheme, "llmft.test_fraction": repr(fraction)}


def fix_command(message: str, config_file: Path, number: str) -> list[str]:
    """The promote_model arguments of the fix a refusal names for registry version ``number``."""
    import shlex

    (command,) = [fix for fix in re.findall(r"python -m components\.gate\.promote_model ([^;]+)", message)
                  if f"--model-version {number} " in fix]
    return [str(config_file) if word == "<config>" else word for word in shlex.split(command)]


def test_the_baseline_is_what_current_serves_never_the_base_model_behind_its_back(cfg, tmp_path):
    """Issue 23, fourth "Why": deleting the champion's registry version made the base model the baseline while
    ``current`` still served the old champion, so a candidate better than the base model but worse than what is
    served was promoted. Now find-baseline compares with what ``current`` serves and refuses, naming both and the
    command that makes them agree, whenever the registry's champion says otherwise."""
    from components.evaluate.evaluate import eval_keys
    from components.gate.promote_model import main as promote_main

    client, name, config = _client(cfg), cfg.mlflow.registered_model_name, cfg.model_dump_json()
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg.dump_public()))
    snapshot(cfg, "r")
    models = on_volume(cfg, cfg.storage.models_root) / name
    number = champion(cfg, "v1", **split_tags(cfg.dataset.test_fraction))

    needs_eval, model_dir, label, note, key, _, below, version = run_resolve_baseline(config=config, kfp_run_id="r")
    assert (needs_eval, model_dir, label, below, version) == (True, str(models / "v1"), f"champion v{number}", 1.0,
                                                               number)
    assert note.startswith(f"champion v{number} evaluated afresh")
    assert client.get_model_version(name, number).tags["llmft.local_path"] == str(models / "v1")
    assert key != eval_keys(cfg, "r", on_volume(cfg, cfg.storage.base_model)).mmlu_key  # another model's key

    client.delete_model_version(name, number)  # the alias goes with it; current still serves v1
    with pytest.raises(BaselineError) as refused:
        run_resolve_baseline(config=config, kfp_run_id="r")
    message = str(refused.value)
    assert f"{models / 'current'} serves v1, but the registry has no champion of {name!r}" in message
    assert "nor fall back to the base model" in message
    assert "v1 has no registry version: register it" in message and "retire it by removing" in message
    assert _runs(cfg, "find-baseline")[-1].info.status == "FAILED"

    # Registered again without its alias: the refusal names the command that restores it, which works.
    again = client.create_model_version(name, source=f"pvc://{cfg.storage.pvc_name}/models/{name}/v1",
                                        tags={"llmft.published_version": "v1", **split_tags(0.2)}).version
    with pytest.raises(BaselineError) as refused:
        run_resolve_baseline(config=config, kfp_run_id="r")
    assert promote_main(fix_command(str(refused.value), config_file, str(again))) == 0
    assert run_resolve_baseline(config=config, kfp_run_id="r")[1:3] == (str(models / "v1"), f"champion v{again}")

    # The alias moved by hand to another version while current still serves v1: refused, both named.
    moved_to = champion(cfg, "v2", **split_tags(0.2))
    set_current(models, "v1")
    with pytest.raises(BaselineError) as refused:
        run_resolve_baseline(config=config, kfp_run_id="r")
    message = str(refused.value)
    assert f"serves v1, but the registry's champion of {name!r} is v{moved_to} ({models / 'v2'})" in message
    assert f"to serve champion v{moved_to}: " in message and f"to keep v1 (registry v{again}): " in message

    # A promotion cut short (the alias moved, current removed): nothing served, refused too.
    (models / "current").unlink()
    (models / "CURRENT").unlink()
    with pytest.raises(BaselineError, match=r"nothing is served \(.*current and .*CURRENT do not exist\)"):
        run_resolve_baseline(config=config, kfp_run_id="r")
    shutil.rmtree(models / "v2")
    set_current(models, "v1")
    client.set_registered_model_alias(name, "champion", again)
    assert run_resolve_baseline(config=config, kfp_run_id="r")[2] == f"champion v{again}"


def test_a_champion_that_held_out_less_is_compared_only_on_rows_held_out_for_both(cfg, tmp_path):
    """Issue 23, second "Why": raising dataset.test_fraction scored the champion on rows it had trained on, which
    favours it. A champion trained with test_fraction 0.2, this run holding out 0.35: only the rows below 0.2 (by
    their example's hash) were held out for both; compare uses those alone and says how many it left out."""
    wider = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"test_fraction": 0.35})})
    config = wider.model_dump_json()
    snapshot(wider, "r")
    number = champion(cfg, "v1", **split_tags(0.2))
    _, _, label, note, _, _, below, version = run_resolve_baseline(config=config, kfp_run_id="r")
    keys = read_manifest(snapshot_dir(wider, "r")).dataset("alpaca_sample").test_keys
    both = [key for key in keys if key_position(key) < 0.2]
    assert below == 0.2 and label == f"champion v{number}" and 10 <= len(both) < len(keys)
    assert note.endswith(f"; {len(keys) - len(both)} of {len(keys)} scored held-out rows left out: the {label} was "
                         f"trained with dataset.test_fraction 0.2 (this run 0.35), so rows at hash positions >= 0.2 "
                         f"may be its training data; {len(both)} rows held out for both are compared")

    # The champion memorised the rows it trained on (loss 0.05) and is worse than the candidate on the others.
    candidate = [1.0] * len(keys)
    memorised = [1.2 if key in both else 0.05 for key in keys]
    eval_dir = run_dir(wider, "r") / "eval"
    files = [*write_results(eval_dir / "candidate", mmlu_results(baseline_flags(), model="cand"),
                            task_results(candidate, model="cand", keys=keys)),
             *write_results(eval_dir / "baseline", mmlu_results(baseline_flags(), model="base"),
                            task_results(memorised, model="base", keys=keys))]
    unfair = compare_files(*files, wider, baseline_version=version)  # every row, as before: the champion is kept
    assert unfair.decision == "keep-champion" and unfair.task.rows == len(keys)
    # Its answers too: as good as the candidate's on the rows held out for both, far better on the ones it trained on.
    answered = range(40)
    shared = [index for index in answered if key_position(row_key(index)) < 0.2]
    (eval_dir / "candidate" / "generations.jsonl").write_text(generations_text(generations_results(
        [50.0] * len(answered), model="cand")))
    (eval_dir / "baseline" / "generations.jsonl").write_text(generations_text(generations_results(
        [50.0 if index in shared else 90.0 for index in answered], model="base")))
    report, report_html, metrics = kfp_outputs(tmp_path / "kfp")
    decision, _, comparison_path = run_compare(
        config=config, kfp_run_id="r", candidate_mmlu=str(files[0]), candidate_task=str(files[1]),
        baseline_mmlu=str(files[2]), baseline_task=str(files[3]), baseline_version=version, baseline_note=note,
        held_out_below=below, train_run_id=train_run(wider, [1.0, 0.5], plot=False), report=report,
        report_html=report_html, metrics=metrics)
    task = Comparison.model_validate_json(Path(comparison_path).read_text()).task
    assert decision == "promote" and (task.rows, task.left_out_rows) == (len(both), len(keys) - len(both))
    assert (task.candidate_mean_nll, task.baseline_mean_nll) == pytest.approx((1.0, 1.2))
    assert task.baseline_loss == pytest.approx(1.2)  # the token-weighted loss of those rows too
    reason = (f"{len(keys) - len(both)} of {len(keys)} scored held-out rows left out: at hash positions >= 0.2 (this "
              f"run holds out 0.35) they may be the {label}'s training data")
    assert task.left_out_reason == reason and reason in Path(report.path).read_text()
    generation = Comparison.model_validate_json(Path(comparison_path).read_text()).generation
    assert 0 < generation.rows == len(shared) < len(answered)  # the answers to rows it trained on are left out too
    assert generation.candidate_units == generation.baseline_units


def test_a_champion_whose_split_is_unknown_or_shares_too_few_rows_is_refused(cfg):
    client, name, config = _client(cfg), cfg.mlflow.registered_model_name, cfg.model_dump_json()
    snapshot(cfg, "r")
    number = champion(cfg, "v1")  # registered before versions recorded their split
    with pytest.raises(BaselineError, match=rf"the champion v{number} does not record which rows it was trained "
                                            r"without .* gate\.allow_unknown_baseline_split=true"):
        run_resolve_baseline(config=config, kfp_run_id="r")
    allowed = cfg.model_copy(update={"gate": cfg.gate.model_copy(update={"allow_unknown_baseline_split": True})})
    _, _, _, note, _, _, below, _ = run_resolve_baseline(config=allowed.model_dump_json(), kfp_run_id="r")
    assert below == 1.0 and "compared on every held-out row (gate.allow_unknown_baseline_split)" in note

    for key, value in split_tags(0.2, scheme="llmft-split-v1").items():
        client.set_model_version_tag(name, number, key, value)
    with pytest.raises(BaselineError, match="was trained with split scheme 'llmft-split-v1', not 'llmft-split-v2'"):
        run_resolve_baseline(config=config, kfp_run_id="r")
    for key, value in split_tags(0.001).items():
        client.set_model_version_tag(name, number, key, value)
    with pytest.raises(BaselineError, match=r"only \d of this run's \d+ scored held-out rows were held out for the "
                                            r"champion v\d+ too .* at least dataset\.min_test_rows=10"):
        run_resolve_baseline(config=config, kfp_run_id="r")


def _png() -> bytes:
    """A valid 1x1 PNG (what LLaMA-Factory's plot_loss writes, only smaller)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b""))


def train_run(cfg, losses: list[float], *, plot: bool) -> str:
    """What the train step leaves: the loss history, train_loss and (optionally) training_loss.png."""
    from mlflow.entities import Metric

    from components.common.pipeline_runs import experiment_id

    client = _client(cfg)
    run_id = client.create_run(experiment_id(client, cfg.mlflow.experiment), tags={"llmft.step": "train"}).info.run_id
    client.log_batch(run_id, metrics=[Metric("loss", value, 1000 + step, step * 2) for step, value in
                                      enumerate(losses)] + [Metric("train_loss", 0.3, 2000, 0)])
    if plot:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "training_loss.png").write_bytes(_png())
            client.log_artifact(run_id, str(Path(tmp) / "training_loss.png"), "train")
    client.set_terminated(run_id)
    return run_id


def kfp_outputs(folder: Path):
    from kfp.dsl import HTML, Markdown, Metrics

    folder.mkdir(parents=True)
    return (Markdown(uri=str(folder / "report.md")), HTML(uri=str(folder / "report.html")),
            Metrics(uri=str(folder / "metrics.json")))


def image_sources(markdown: str) -> list[str]:
    """Every image reference of a Markdown document, as markdown-it-py parses it."""
    from markdown_it import MarkdownIt

    sources = []
    for token in MarkdownIt("commonmark").enable("table").parse(markdown):
        for child in token.children or []:
            if child.type == "image":
                sources.append(child.attrs["src"])
    return sources


def test_compare_step_writes_comparison_reports_metrics_and_mlflow_artifacts(cfg, tmp_path):
    client, config = _client(cfg), cfg.model_dump_json()
    # Generated answers: the candidate scores 2 chrF points more on every row but row 3 (10 fewer): +1.7 on average.
    base_chrf = [20.0 + index for index in range(40)]
    cand_chrf = [score - 10 if index == 3 else score + 2 for index, score in enumerate(base_chrf)]
    hostile = "<script>alert(1)</script> | **bold** [link](http://x) `code`\nsecond line"
    answers = (generations_results(cand_chrf, model="cand", answers={3: hostile}, prompts={3: "Q | <b>?"}),
               generations_results(base_chrf, model="base"))
    files = write_pair(run_dir(cfg, "run-7") / "eval", moved(baseline_flags(), astronomy=(4, 0), nutrition=(2, 1)),
                       better_task(), generations=answers)
    train = train_run(cfg, [2.0, 1.5, 1.0, 0.8, 0.5], plot=True)
    report, report_html, metrics = kfp_outputs(tmp_path / "kfp")

    decision, headline, comparison_path = run_compare(
        config=config, kfp_run_id="run-7", candidate_mmlu=str(files[0]), candidate_task=str(files[1]),
        baseline_mmlu="output/run-7/eval/baseline/results.json", baseline_task=str(files[3]),
        baseline_version="", baseline_note="base model evaluated afresh: no stored score", train_run_id=train,
        report=report, report_html=report_html, metrics=metrics)

    # comparison.json is the gate's Comparison, exactly what the four files give.
    assert Path(comparison_path) == run_dir(cfg, "run-7") / "compare" / "comparison.json"
    comparison = Comparison.model_validate_json(Path(comparison_path).read_text())
    beside = (files[1].with_name("generations.jsonl"), files[3].with_name("generations.jsonl"))
    assert comparison == compare_files(*files, cfg, baseline_version="", generations=beside)
    generation = comparison.generation
    assert generation.rows == 40 and generation.gated().mean_difference == pytest.approx(1.7)
    assert generation.candidate_units - generation.baseline_units == 17 * 4 * 10**4  # 68 points over 40 rows
    assert [pair.row.rsplit("/", 1)[1] for pair in generation.regressions] == [row_key(3)]
    assert len(generation.improvements) == 5 and generation.improvements[0].difference == pytest.approx(2)
    assert comparison.rules[-1].rule == "generation" and comparison.rules[-1].passed
    assert headline.endswith("chrF +1.7 (may drop <= 15)")  # the demo preset's limit
    assert (decision, headline) == ("promote", comparison.headline) == (comparison.decision, comparison.headline)
    assert comparison.mmlu.delta_micro == pytest.approx(0.05)
    assert comparison.mmlu.mcnemar_p == pytest.approx(mcnemar_exact_p(6, 1))

    # The Kubeflow UI's Markdown: the loss curve as a sparkline, no image, and never a data: URI.
    markdown = Path(report.path).read_text()
    assert "| STEM | 25 | 0.5600 | 0.4000 | +0.1600 | 4 | 0 |" in markdown
    assert "`█▆▃▂▁`" in markdown and "loss over 5 logged steps" in markdown
    assert "Mean training loss of the candidate: 0.3000." in markdown
    assert "Baseline: base model evaluated afresh: no stored score" in markdown
    assert "data:" not in markdown and image_sources(markdown) == []
    # The side-by-side rows: the one regression first, its user text escaped (no table broken, no HTML let in).
    assert "## Generated answers: 40 held-out rows, greedy, at most 64 new tokens" in markdown
    regressions = markdown.split("### Worst regressions")[1].split("### Best improvements")[0]
    assert f"**1. chrF 23.00 → 13.00 (-10.00)**, row `alpaca_sample@test/{row_key(3)}`" in regressions
    assert "- prompt: Q \\| \\<b\\>?" in regressions
    assert ("| answer | \\<script\\>alert(1)\\</script\\> \\| \\*\\*bold\\*\\* \\[link\\](http://x) "
            "\\`code\\` ↵ second line | base says 3 |") in regressions
    # Its HTML twin embeds the plot.
    html = Path(report_html.path).read_text()
    import base64

    assert f'src="data:image/png;base64,{base64.b64encode(_png()).decode()}"' in html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; | **bold** [link](http://x) `code`" in html
    assert "<b>" not in html
    assert 'src="training_loss.png"' not in html
    assert metrics.metadata["promote"] == 1.0 and metrics.metadata["mmlu_delta"] == pytest.approx(0.05)
    assert metrics.metadata["task_row_nll_change"] == pytest.approx(-0.1)

    # MLflow: the step run holds report/report.md with its image beside it, and comparison.json.
    (step,) = _runs(cfg, "compare")
    assert step.info.status == "FINISHED" and step.data.tags["llmft.decision"] == "promote"
    assert {key: value for key, value in step.data.tags.items() if key.startswith("llmft.rule.")} == {
        "llmft.rule.task": "pass", "llmft.rule.significance": "pass", "llmft.rule.mmlu": "pass",
        "llmft.rule.categories": "pass", "llmft.rule.generation": "pass"}
    assert step.data.metrics["gen_chrf_delta"] == pytest.approx(1.7)
    # Every paired answer as an MLflow table (the run's Evaluation view shows it), worst difference first.
    table = json.loads(Path(client.download_artifacts(step.info.run_id, "compare/side_by_side.json",
                                                      str(tmp_path / "table"))).read_text())
    assert table["columns"][:5] == ["row", "prompt", "reference", "candidate_answer", "baseline_answer"]
    assert len(table["data"]) == 40 and table["data"][0][3] == hostile
    assert step.data.metrics["mmlu_mcnemar_p"] == pytest.approx(round(comparison.mmlu.mcnemar_p, 6))
    assert {item.path for item in client.list_artifacts(step.info.run_id, "report")} == {
        "report/report.md", "report/training_loss.png"}
    logged = Path(client.download_artifacts(step.info.run_id, "report", str(tmp_path / "mlflow")))
    mlflow_markdown = (logged / "report.md").read_text()
    sources = image_sources(mlflow_markdown)
    assert sources == ["training_loss.png"] and "data:" not in mlflow_markdown
    for source in sources:  # every image the report shows is an artifact beside it
        assert (logged / source).read_bytes() == _png()
    # The same report as the Kubeflow UI's, but for how it shows the loss curve.
    assert mlflow_markdown.split("## Training")[0] == markdown.split("## Training")[0]
    stored = Path(client.download_artifacts(step.info.run_id, "comparison.json", str(tmp_path / "mlflow")))
    assert Comparison.model_validate_json(stored.read_text()) == comparison

    # The pipeline run's page (the parent run) carries the headline numbers and the decision.
    parent = client.get_run(step.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["llmft.decision"] == "promote" and parent.data.tags["llmft.baseline"] == "base model"
    assert parent.data.tags["llmft.decision_line"] == headline
    assert parent.data.metrics["task_row_nll_change"] == pytest.approx(-0.1)
    assert parent.data.metrics["promote"] == 1.0
    # ... and the side-by-side table, which the experiment's Evaluation view lists for the pipeline runs it shows.
    assert [item.path for item in client.list_artifacts(parent.info.run_id, "compare")] == [
        "compare/side_by_side.json"]
    assert json.loads(parent.data.tags["mlflow.loggedArtifacts"]) == [
        {"path": "compare/side_by_side.json", "type": "table"}]


def test_without_a_loss_plot_the_mlflow_report_shows_the_sparkline_and_bad_input_fails_the_step(cfg, tmp_path):
    client, config = _client(cfg), cfg.model_dump_json()
    files = write_pair(run_dir(cfg, "run-8") / "eval", baseline_flags(), base_losses())
    train = train_run(cfg, [1.0, 0.9], plot=False)
    report, report_html, metrics = kfp_outputs(tmp_path / "kfp")
    inputs = {"candidate_mmlu": str(files[0]), "candidate_task": str(files[1]), "baseline_mmlu": str(files[2]),
              "baseline_task": str(files[3])}
    decision, _, _ = run_compare(config=config, kfp_run_id="run-8", **inputs, baseline_version="1",
                                 baseline_note="", train_run_id=train, report=report, report_html=report_html,
                                 metrics=metrics)
    assert decision == "keep-champion" and metrics.metadata["promote"] == 0.0
    (step,) = _runs(cfg, "compare")
    assert [item.path for item in client.list_artifacts(step.info.run_id, "report")] == ["report/report.md"]
    logged = Path(client.download_artifacts(step.info.run_id, "report/report.md", str(tmp_path)))
    assert image_sources(logged.read_text()) == [] and "loss over 2 logged steps" in logged.read_text()
    assert "<img" not in Path(report_html.path).read_text()

    tampered = json.loads(files[2].read_text())
    tampered["micro"] = 2
    files[2].write_text(json.dumps(tampered))
    report, report_html, metrics = kfp_outputs(tmp_path / "kfp-bad")
    with pytest.raises(ComparisonError, match=r"baseline MMLU results file .*results.json: micro: Input should be"):
        run_compare(config=config, kfp_run_id="run-9", **inputs, baseline_version="1", baseline_note="",
                    train_run_id=train, report=report, report_html=report_html, metrics=metrics)
    assert not (run_dir(cfg, "run-9") / "compare").exists()  # nothing half-written for register-model to read
    assert not Path(report.path).exists() and not Path(report_html.path).exists()


def test_modules_import_light_and_at_task_run_time():
    """A KFP task imports these modules with _KFP_RUNTIME=true (kfp.dsl then lacks `component`)."""
    import os
    import subprocess
    import sys

    code = ("import sys, components.gate.compare, components.gate.report, components.gate.register_model, "
            "components.gate.rules, components.gate.stats, components.evaluate.mmlu.results, "
            "components.evaluate.task.results, components.evaluate.evaluate; "
            "print([m for m in ('torch', 'mlflow', 'numpy', 'scipy', 'transformers', 'kfp') if m in sys.modules])")
    for runtime in ("true", "false"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             cwd=REPO_ROOT, env=dict(os.environ, _KFP_RUNTIME=runtime))
        assert out.stdout.strip() == "[]", out.stderr


def test_user_text_in_the_report_stays_text(tmp_path):
    """The baseline note carries text from outside (paths, run ids, an MLflow error): in the Markdown report and
    its HTML twin it reads as written, never as a link, an image or HTML."""
    from markdown_it import MarkdownIt

    files = write_pair(tmp_path, baseline_flags(), better_task())
    comparison = compare_files(*files, defaults(), baseline_version="3")
    note = ("stored task.json of run `abc` unusable: [click](https://evil.example) ![x](https://e.example/p.png) "
            "<script>")
    report = render_report(comparison, note=f"Baseline: {note}")
    page = MarkdownIt("commonmark").enable("table").render(report)
    html = render_html(report)
    for rendered in (page, html):
        assert "<a " not in rendered and "<img" not in rendered and "<script>" not in rendered
        assert "[click](https://evil.example)" in rendered and "&lt;script&gt;" in rendered
