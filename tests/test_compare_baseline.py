"""Baseline resolution, paired comparison, the promotion gate and the report.

Results are built synthetically (every expected number is computed from the counts the test
constructs); MLflow is a real server on loopback; KFP artifacts are real ``kfp.dsl`` objects.
"""

import json
import shutil
import struct
import uuid
import zlib
from pathlib import Path

import pytest

from components.compare_baseline import (
    BaselineError,
    ComparisonError,
    compare_results,
    compare_with_baseline,
    fetch_baseline_results,
    main,
    read_results,
    resolve_baseline,
)
from components.compare_report import render_report, sparkline
from components.gate_stats import mcnemar_exact_p
from components.storage import run_dir
from configs.schema import GateConfig, load_config

ASSETS = Path(__file__).resolve().parents[1] / "components" / "assets"
CATEGORY = {"astronomy": "STEM", "world_religions": "humanities", "high_school_geography": "social sciences",
            "nutrition": "other"}
PER_SUBJECT = 25
BASE_CORRECT = 10  # 40 of 100 overall


def make_results(correct: dict[str, list[bool]], *, data_hash: str = "data-1", eval_key: str = "key-1") -> dict:
    """A results.json document (the evaluate_mmlu schema) with exactly the given per-question correctness."""
    questions, subjects, categories = [], {}, {}
    for subject, flags in correct.items():
        for index, ok in enumerate(flags):
            gold = "ABCD"[index % 4]
            questions.append({"subject": subject, "index": index, "gold": gold,
                              "pred": gold if ok else "ABCD"[(index + 1) % 4], "correct": ok,
                              "logprobs": [-1.0, -2.0, -3.0, -4.0]})
        subjects[subject] = {"category": CATEGORY[subject], "correct": sum(flags), "total": len(flags),
                             "accuracy": sum(flags) / len(flags)}
        row = categories.setdefault(CATEGORY[subject], {"correct": 0, "total": 0})
        row["correct"] += sum(flags)
        row["total"] += len(flags)
    for row in categories.values():
        row["accuracy"] = row["correct"] / row["total"]
    total = sum(row["total"] for row in categories.values())
    return {"eval_key": eval_key, "prompt_version": "v1", "n_shot": 5, "model": "m", "adapter": "",
            "data_hash": data_hash, "micro": sum(q["correct"] for q in questions) / total,
            "macro": sum(s["accuracy"] for s in subjects.values()) / len(subjects), "subjects": subjects,
            "categories": categories, "questions": questions}


def baseline_flags() -> dict[str, list[bool]]:
    return {subject: [True] * BASE_CORRECT + [False] * (PER_SUBJECT - BASE_CORRECT) for subject in CATEGORY}


def changed(flags: dict[str, list[bool]], **moves: tuple[int, int]) -> dict[str, list[bool]]:
    """Copy of ``flags`` where, per subject, ``(gain, lose)`` wrong answers become right and right ones wrong."""
    result = {subject: list(values) for subject, values in flags.items()}
    for subject, (gain, lose) in moves.items():
        values = result[subject]
        wrong = [i for i, ok in enumerate(values) if not ok][:gain]
        right = [i for i, ok in enumerate(values) if ok][:lose]
        for i in wrong:
            values[i] = True
        for i in right:
            values[i] = False
    return result


def compare(candidate_flags, *, first_model=False, **gate) -> dict:
    gate_cfg = GateConfig(**({"bootstrap_samples": 500} | gate))
    return compare_results(make_results(candidate_flags), make_results(baseline_flags()), gate_cfg,
                           first_model=first_model, seed=42)


# ---------------------------------------------------------------- the gate on synthetic results


def test_better_candidate_is_promoted_with_exact_numbers():
    # +3 right answers in every subject, none lost: 52/100 vs 40/100, 12 discordant pairs all for the candidate.
    comparison = compare(changed(baseline_flags(), **{subject: (3, 0) for subject in CATEGORY}))
    assert comparison["decision"] == "promote"
    assert comparison["delta"]["micro"] == pytest.approx(0.12)
    assert comparison["delta"]["metric"] == pytest.approx(0.12)
    assert comparison["mcnemar"] == {"candidate_only": 12, "baseline_only": 0, "p_value": pytest.approx(2 / 2**12)}
    for row in comparison["categories"].values():
        assert row["delta"] == pytest.approx(3 / PER_SUBJECT)
        assert (row["questions"], row["candidate_only"], row["baseline_only"]) == (PER_SUBJECT, 3, 0)
    assert comparison["bootstrap"]["low"] > 0  # every resample of all-positive differences is positive
    assert comparison["questions"] == 100


def test_worse_candidate_is_rejected_with_the_metric_as_reason():
    comparison = compare(changed(baseline_flags(), astronomy=(0, 1), nutrition=(0, 1)))
    assert comparison["decision"] == "reject"
    assert comparison["delta"]["micro"] == pytest.approx(-0.02)
    assert comparison["reasons"][0].startswith("mmlu_micro -0.0200")


def test_category_regression_rejects_an_overall_better_candidate():
    # STEM +6, humanities -3 (of 25: -0.12 < -0.02): overall +0.03 but one category regresses.
    comparison = compare(changed(baseline_flags(), astronomy=(6, 0), world_religions=(0, 3)))
    assert comparison["delta"]["micro"] == pytest.approx(0.03)
    assert comparison["categories"]["humanities"]["delta"] == pytest.approx(-0.12)
    assert comparison["decision"] == "reject"
    assert "humanities -0.1200" in comparison["reasons"][0]
    # A looser regression limit lets the same candidate through.
    assert compare(changed(baseline_flags(), astronomy=(6, 0), world_religions=(0, 3)),
                   max_regression=0.15)["decision"] == "promote"


def test_not_significantly_better_is_rejected_only_when_significance_is_required():
    # 3 gained, 1 lost: p = 2 * (C(4,0) + C(4,1)) / 16 = 0.625.
    flags = changed(baseline_flags(), astronomy=(3, 0), nutrition=(0, 1))  # nutrition -0.04
    assert compare(flags, max_regression=0.05)["decision"] == "promote"
    strict = compare(flags, require_significance=True, max_regression=0.05)
    assert strict["mcnemar"]["p_value"] == pytest.approx(mcnemar_exact_p(3, 1)) == pytest.approx(0.625)
    assert strict["decision"] == "reject"
    assert "not < alpha 0.05" in strict["reasons"][0]
    # 12 gained, 1 lost: p = 2 * 14 / 8192 < 0.05 -> significant, promoted.
    strong = compare(changed(baseline_flags(), astronomy=(6, 0), nutrition=(6, 1)), require_significance=True,
                     max_regression=0.1)
    assert strong["mcnemar"]["p_value"] == pytest.approx(28 / 8192)
    assert strong["decision"] == "promote"


def test_min_improvement_boundary_is_inclusive():
    flags = changed(baseline_flags(), astronomy=(2, 0))  # exactly +0.02
    assert compare(flags, min_improvement=0.02)["decision"] == "promote"
    assert compare(flags, min_improvement=0.03)["decision"] == "reject"


def test_first_model_needs_only_to_match_the_base_model():
    same = compare(baseline_flags(), first_model=True, min_improvement=0.05, require_significance=True)
    assert same["decision"] == "promote", same["reasons"]
    assert "vs the base model" in same["reasons"][0]
    worse = compare(changed(baseline_flags(), astronomy=(0, 1)), first_model=True)
    assert worse["decision"] == "reject"
    regressed = compare(changed(baseline_flags(), astronomy=(5, 0), nutrition=(0, 2)), first_model=True)
    assert regressed["decision"] == "reject"  # the category rule holds for a first model too


def test_macro_metric_uses_the_subject_stratified_interval():
    # Only astronomy changes (+5 of 25): macro gain = 0.2 / 4 subjects = 0.05.
    comparison = compare(changed(baseline_flags(), astronomy=(5, 0)), metric="mmlu_macro")
    assert comparison["delta"]["metric"] == pytest.approx(0.05)
    assert comparison["bootstrap"]["estimate"] == pytest.approx(0.05)
    assert comparison["bootstrap"]["metric"] == "mmlu_macro"


def test_results_on_different_questions_or_data_are_refused():
    candidate = make_results(changed(baseline_flags(), astronomy=(1, 0)))
    fewer = make_results({**baseline_flags(), "nutrition": [True] * 20})
    with pytest.raises(ComparisonError, match="not evaluated on the same questions"):
        compare_results(candidate, fewer, GateConfig(), first_model=False, seed=0)
    other_data = make_results(baseline_flags(), data_hash="data-2")
    with pytest.raises(ComparisonError, match="data_hash is 'data-1' vs 'data-2'"):
        compare_results(candidate, other_data, GateConfig(), first_model=False, seed=0)
    other_gold = make_results(baseline_flags())
    other_gold["questions"][0]["gold"] = "D"
    with pytest.raises(ComparisonError, match="astronomy#0 has answer 'A'"):
        compare_results(candidate, other_gold, GateConfig(), first_model=False, seed=0)


def test_malformed_results_files_name_the_file_and_field(tmp_path):
    broken = make_results(baseline_flags())
    broken["questions"][3]["correct"] = "yes"
    path = tmp_path / "results.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(ComparisonError, match=r"results.json: questions\[3\].correct"):
        read_results(path)
    inconsistent = make_results(baseline_flags())
    inconsistent["micro"] = 0.9
    path.write_text(json.dumps(inconsistent))
    with pytest.raises(ComparisonError, match="micro: 0.9 does not match its questions"):
        read_results(path)
    path.write_text("{not json")
    with pytest.raises(ComparisonError, match="not readable JSON"):
        read_results(path)
    with pytest.raises(ComparisonError, match="does not exist"):
        read_results(tmp_path / "missing.json")


def test_report_has_decision_table_p_value_and_interval():
    comparison = compare(changed(baseline_flags(), astronomy=(3, 0), nutrition=(0, 1)), max_regression=0.05)
    comparison["baseline_name"] = "champion v3"
    report = render_report(comparison, "`▁▂▃`")
    assert report.startswith("# ✅ Promote: candidate vs champion v3")
    assert "| STEM | 25 | 0.5200 | 0.4000 | +0.1200 | 3 | 0 | 0.25 |" in report  # p = 2 / 2^3
    assert "| other | 25 | 0.3600 | 0.4000 | -0.0400 | 0 | 1 | 1 |" in report
    assert "| **overall (micro)** | 100 | 0.4200 | 0.4000 | +0.0200 | 3 | 1 | 0.625 |" in report
    assert f"[{comparison['bootstrap']['low']:+.4f}, {comparison['bootstrap']['high']:+.4f}]" in report
    assert report.rstrip().endswith("`▁▂▃`")


def test_sparkline_spans_lowest_to_highest():
    assert sparkline([3.0, 2.0, 1.0, 1.0]) == "█▅▁▁"  # eight equal bins: the midpoint opens the fifth
    assert sparkline([]) == ""


def test_cli_exit_codes_and_report(tmp_path, capsys):
    base, better, worse = tmp_path / "base.json", tmp_path / "better.json", tmp_path / "worse.json"
    base.write_text(json.dumps(make_results(baseline_flags())))
    better.write_text(json.dumps(make_results(changed(baseline_flags(), astronomy=(4, 0)))))
    worse.write_text(json.dumps(make_results(changed(baseline_flags(), astronomy=(0, 4)))))
    report, out = tmp_path / "report.md", tmp_path / "comparison.json"
    assert main(["--candidate", str(better), "--baseline", str(base), "--report", str(report),
                 "--json", str(out)]) == 0
    assert capsys.readouterr().out.startswith("promote")
    assert "| STEM | 25 | 0.5600 | 0.4000 | +0.1600 |" in report.read_text()
    assert json.loads(out.read_text())["delta"]["micro"] == pytest.approx(0.04)
    assert main(["--candidate", str(worse), "--baseline", str(base)]) == 1
    assert main(["--candidate", str(worse), "--baseline", str(base), "--set", "gate.max_regression=0.5",
                 "--set", "gate.min_improvement=-0.05"]) == 0
    assert main(["--candidate", str(tmp_path / "nope.json"), "--baseline", str(base)]) == 2
    assert main(["--candidate", str(better), "--baseline", str(base), "--set", "gate.alpha=7"]) == 2
    with pytest.raises(SystemExit) as usage:
        main(["--candidate", str(better)])
    assert usage.value.code == 2


# ---------------------------------------------------------------- steps against a real MLflow server


@pytest.fixture
def cfg(tmp_path, mlflow_server):
    """The local preset on a fresh storage root (fake base model, sample MMLU) and its own experiment/model."""
    root = tmp_path / "storage"
    base = root / "models" / "base-model"
    base.mkdir(parents=True)
    (base / "config.json").write_text('{"model_type": "llama"}')
    (base / "model.safetensors").write_bytes(b"base weights")
    shutil.copytree(ASSETS / "sample_mmlu", root / "eval" / "mmlu")
    tag = uuid.uuid4().hex[:8]
    return load_config("local", overrides=[
        f"storage.mount_path={root}", f"mlflow.tracking_uri={mlflow_server.uri}",
        f"mlflow.experiment=compare-{tag}", f"mlflow.registered_model_name=model-{tag}",
        "gate.bootstrap_samples=200",
    ])


def _client(cfg):
    from components.tracking import make_client

    return make_client(cfg)


def _store_eval_run(cfg, eval_key: str, results: dict, status: str = "FINISHED") -> str:
    """What evaluate_mmlu leaves in MLflow: a run tagged llmft.eval_key with eval/results.json."""
    from components.tracking import experiment_id

    client = _client(cfg)
    run = client.create_run(experiment_id(client, cfg.mlflow.experiment), tags={"llmft.eval_key": eval_key})
    client.log_text(run.info.run_id, json.dumps(results), "eval/results.json")
    client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


def test_first_run_evaluates_the_base_model_once_then_reuses_the_stored_score(cfg):
    from components.evaluate_mmlu import eval_config_key, model_identity

    base = cfg.storage.resolve(cfg.storage.base_model)
    expected_key = eval_config_key(cfg.storage.resolve(cfg.storage.eval_data_dir), n_shot=cfg.evaluation.n_shot,
                                   subjects=cfg.evaluation.subjects, limit=cfg.evaluation.limit,
                                   model_id=model_identity(base))
    needs_eval, model_dir, name, key = resolve_baseline.python_func(config=cfg.model_dump_json(), kfp_run_id="r1")
    assert (needs_eval, model_dir, name, key) == (True, str(base), "base model", expected_key)

    results = make_results(baseline_flags(), eval_key=key)
    _store_eval_run(cfg, key, results, status="FAILED")  # a failed evaluation is not a stored score
    assert resolve_baseline.python_func(config=cfg.model_dump_json(), kfp_run_id="r1")[0] is True
    source_run = _store_eval_run(cfg, key, results)
    assert resolve_baseline.python_func(config=cfg.model_dump_json(), kfp_run_id="r2")[0] is False

    (path,) = fetch_baseline_results.python_func(config=cfg.model_dump_json(), kfp_run_id="r2", eval_key=key)
    assert Path(path) == run_dir(cfg, "r2") / "eval" / "baseline" / "results.json"
    assert json.loads(Path(path).read_text()) == results
    fetch_run = _client(cfg).search_runs([_client(cfg).get_experiment_by_name(cfg.mlflow.experiment).experiment_id],
                                         filter_string="tags.`llmft.step` = 'fetch-baseline-results'")[0]
    assert fetch_run.data.tags["llmft.source_run_id"] == source_run

    with pytest.raises(BaselineError, match="evaluate the baseline instead"):
        fetch_baseline_results.python_func(config=cfg.model_dump_json(), kfp_run_id="r2", eval_key="0" * 64)
    assert not (run_dir(cfg, "r2") / "eval" / "baseline" / "other").exists()


def test_champion_alias_makes_the_published_model_the_baseline(cfg):
    client = _client(cfg)
    name = cfg.mlflow.registered_model_name
    published = cfg.storage.resolve(cfg.storage.models_root) / name / "v1"
    published.mkdir(parents=True)
    (published / "config.json").write_text('{"model_type": "llama"}')
    (published / "model.safetensors").write_bytes(b"merged weights")
    client.create_registered_model(name)
    version = client.create_model_version(name, source=f"pvc://{cfg.storage.pvc_name}/models/{name}/v1")
    client.set_registered_model_alias(name, "champion", version.version)

    needs_eval, model_dir, label, key = resolve_baseline.python_func(config=cfg.model_dump_json(), kfp_run_id="r")
    assert (needs_eval, model_dir, label) == (True, str(published), f"champion v{version.version}")
    assert client.get_model_version(name, version.version).tags["llmft.local_path"] == str(published)
    base_key = resolve_baseline.python_func(config=cfg.model_copy(update={"mlflow": cfg.mlflow.model_copy(
        update={"registered_model_name": name + "-none"})}).model_dump_json(), kfp_run_id="r")[3]
    assert key != base_key  # another model, another cache key

    shutil.rmtree(published)
    with pytest.raises(BaselineError, match=f"champion v{version.version} directory .* does not exist"):
        resolve_baseline.python_func(config=cfg.model_dump_json(), kfp_run_id="r")


def _png() -> bytes:
    """A valid 1x1 PNG (what LLaMA-Factory's plot_loss writes, only smaller)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b""))


def _train_run(cfg, losses: list[float], *, plot: bool) -> str:
    from mlflow.entities import Metric

    from components.tracking import experiment_id

    client = _client(cfg)
    run_id = client.create_run(experiment_id(client, cfg.mlflow.experiment), tags={"llmft.step": "train"}).info.run_id
    client.log_batch(run_id, metrics=[Metric("loss", value, 1000 + step, step * 2) for step, value in
                                      enumerate(losses)] + [Metric("train_loss", 0.3, 2000, 0),
                                                            Metric("eval_loss", 0.45, 2000, 0)])
    if plot:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "training_loss.png").write_bytes(_png())
            client.log_artifact(run_id, str(Path(tmp) / "training_loss.png"))
    client.set_terminated(run_id)
    return run_id


def _artifacts(tmp_path):
    from kfp.dsl import Markdown, Metrics

    return Markdown(uri=str(tmp_path / "kfp" / "report.md")), Metrics(uri=str(tmp_path / "kfp" / "metrics.json"))


def test_compare_step_writes_comparison_report_metrics_and_mlflow_run(cfg, tmp_path):
    run = run_dir(cfg, "run-7")
    cand_path, base_path = run / "eval" / "candidate" / "results.json", run / "eval" / "baseline" / "results.json"
    for path, flags in ((cand_path, changed(baseline_flags(), astronomy=(4, 0), nutrition=(2, 1))),
                        (base_path, baseline_flags())):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(make_results(flags)))
    train_run = _train_run(cfg, [2.0, 1.5, 1.0, 0.8, 0.5], plot=False)
    (tmp_path / "kfp").mkdir()
    report, metrics = _artifacts(tmp_path)

    decision, reasons, comparison_path = compare_with_baseline.python_func(
        config=cfg.model_dump_json(), kfp_run_id="run-7", candidate_results=str(cand_path),
        baseline_results=str(base_path), baseline_name="base model", train_run_id=train_run, report=report,
        metrics=metrics)

    assert decision == "promote"  # +5 net of 100 on the first model, worst category (other) +0.04
    comparison = json.loads(Path(comparison_path).read_text())
    assert Path(comparison_path) == run / "compare" / "comparison.json"
    assert comparison["delta"]["micro"] == pytest.approx(0.05)
    assert comparison["mcnemar"]["p_value"] == pytest.approx(mcnemar_exact_p(6, 1))
    assert comparison["losses"]["candidate"] == {"run_id": train_run, "train_loss": 0.3, "eval_loss": 0.45}
    assert comparison["losses"]["baseline"]["train_loss"] == "n/a"
    assert reasons == "; ".join(comparison["reasons"])
    text = Path(report.path).read_text()
    assert "| STEM | 25 | 0.5600 | 0.4000 | +0.1600 | 4 | 0 |" in text
    assert "`█▆▃▂▁`" in text and "loss over 5 logged steps" in text
    assert "| train loss | 0.3000 | n/a |" in text
    assert metrics.metadata["delta_micro"] == pytest.approx(0.05)
    assert metrics.metadata["promote"] == 1.0

    client = _client(cfg)
    step = client.search_runs([client.get_experiment_by_name(cfg.mlflow.experiment).experiment_id],
                              filter_string="tags.`llmft.step` = 'compare-baseline'")[0]
    assert step.info.status == "FINISHED" and step.data.tags["llmft.decision"] == "promote"
    assert step.data.metrics["mcnemar_p"] == pytest.approx(comparison["mcnemar"]["p_value"])
    logged = Path(client.download_artifacts(step.info.run_id, "report.md", str(tmp_path)))
    assert logged.read_text() == text


def test_report_embeds_the_loss_plot_and_bad_input_fails_the_step(cfg, tmp_path):
    import base64

    run = run_dir(cfg, "run-8")
    for role in ("candidate", "baseline"):
        path = run / "eval" / role / "results.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(make_results(baseline_flags())))
    train_run = _train_run(cfg, [1.0, 0.9], plot=True)
    (tmp_path / "kfp").mkdir()
    report, metrics = _artifacts(tmp_path)
    compare_with_baseline.python_func(
        config=cfg.model_dump_json(), kfp_run_id="run-8", candidate_results=str(run / "eval/candidate/results.json"),
        baseline_results="output/run-8/eval/baseline/results.json", baseline_name="base model",
        train_run_id=train_run, report=report, metrics=metrics)
    assert f"data:image/png;base64,{base64.b64encode(_png()).decode()}" in Path(report.path).read_text()

    (run / "eval/baseline/results.json").write_text('{"micro": 2}')
    with pytest.raises(ComparisonError, match="baseline results file .*results.json: micro"):
        compare_with_baseline.python_func(
            config=cfg.model_dump_json(), kfp_run_id="run-9",
            candidate_results=str(run / "eval/candidate/results.json"),
            baseline_results=str(run / "eval/baseline/results.json"), baseline_name="base model",
            train_run_id=train_run, report=report, metrics=metrics)
    assert not (run_dir(cfg, "run-9") / "compare").exists()  # nothing half-written for register-model to read


def test_modules_import_light_and_at_task_run_time():
    """A KFP task imports these modules with _KFP_RUNTIME=true (kfp.dsl then lacks `component`)."""
    import os
    import subprocess
    import sys

    code = ("import sys, components.compare_baseline, components.register_model, components.gate_stats; "
            "print([m for m in ('torch', 'mlflow', 'numpy', 'scipy', 'transformers') if m in sys.modules])")
    for runtime in ("true", "false"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parents[1], env=dict(os.environ, _KFP_RUNTIME=runtime))
        assert out.stdout.strip() == "[]", out.stderr
