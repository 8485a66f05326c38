"""Compare the candidate with the baseline on the same MMLU questions and decide whether to promote it.

The baseline is the registry version holding the alias ``champion``; before the first promotion it
is the base model. A baseline is evaluated once per evaluation setup: its results.json is kept in
MLflow on the evaluation run tagged ``llmft.eval_key`` and reused while the key is the same.

The comparison is paired (same questions): overall and per-category accuracy deltas, McNemar's
exact test on per-question correctness, a seeded paired bootstrap interval for the accuracy
difference, and train/eval loss against the baseline's training run. The gate (config ``gate``)
promotes when the metric improves by at least ``min_improvement``, no category drops by more than
``max_regression`` and, if ``require_significance``, McNemar's p < ``alpha``. A first model (no
champion yet) is promoted when it is at least as good as the base model and no category regresses.

    python -m components.compare_baseline --candidate cand/results.json --baseline base/results.json
    python -m components.compare_baseline --candidate c.json --baseline b.json --config configs/lora.yaml \\
        --set gate.require_significance=true --report report.md --json comparison.json
"""

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from kfp.dsl import Markdown, Metrics, Output

# Not `dsl.component`: a running task imports this module, and kfp.dsl leaves `component` out at run
# time (_KFP_RUNTIME=true); the decorator module itself imports fine there.
from kfp.dsl.component_decorator import component

from components.compare_report import (
    champion_losses,
    find_artifact,
    loss_curve_markdown,
    render_report,
    run_losses,
)
from components.image import DEFAULT_IMAGE
from components.register_model import (
    CHAMPION,
    LOCAL_PATH_TAG,
    alias_version,
    path_from_pvc_uri,
    set_run_tags,
    storage_path,
)
from configs.schema import GateConfig, PipelineConfig

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

EVAL_KEY_TAG = "llmft.eval_key"
RESULTS_FILE = "results.json"
BASE_MODEL_NAME = "base model"
CATEGORY_ORDER = ("STEM", "humanities", "social sciences", "other")
EPSILON = 1e-12  # accuracies are ratios of counts; equal values must compare equal at the boundary


class ComparisonError(ValueError):
    """Results that cannot be compared (unreadable, malformed, or from different questions); names file and field."""


class BaselineError(RuntimeError):
    """The baseline cannot be found or its stored results cannot be fetched; names the model or eval key."""


# ---------------------------------------------------------------- reading results


def read_results(path: str | Path, label: str = "results") -> dict[str, Any]:
    """Load and check an MMLU results.json (the fields the comparison needs).

    Raises:
        ComparisonError: the file is missing, not JSON, or a needed field is missing or of the wrong
            type; the message names the file and the field (e.g. ``questions[3].correct``).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ComparisonError(f"{label} file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ComparisonError(f"{label} file {path} is not readable JSON: {exc}") from None

    def fail(field: str, problem: str) -> ComparisonError:
        return ComparisonError(f"{label} file {path}: {field}: {problem}")

    if not isinstance(data, dict):
        raise fail("(top level)", "must be an object")
    for field in ("micro", "macro"):
        if not isinstance(data.get(field), int | float) or not 0 <= data[field] <= 1:
            raise fail(field, f"must be an accuracy in [0, 1], got {data.get(field)!r}")
    for field in ("categories", "subjects"):
        if not isinstance(data.get(field), dict) or not data[field]:
            raise fail(field, "must be a non-empty object")
    for name, row in data["categories"].items():
        if not isinstance(row, dict) or not isinstance(row.get("accuracy"), int | float):
            raise fail(f"categories.{name}.accuracy", "missing or not a number")
    for name, row in data["subjects"].items():
        if not isinstance(row, dict) or not isinstance(row.get("category"), str):
            raise fail(f"subjects.{name}.category", "missing or not a string")
    questions = data.get("questions")
    if not isinstance(questions, list) or not questions:
        raise fail("questions", "must be a non-empty list (per-question correctness is needed for paired tests)")
    for position, question in enumerate(questions):
        if not isinstance(question, dict):
            raise fail(f"questions[{position}]", "must be an object")
        if question.get("subject") not in data["subjects"]:
            raise fail(f"questions[{position}].subject", f"{question.get('subject')!r} is not in subjects")
        if not isinstance(question.get("index"), int) or isinstance(question.get("index"), bool):
            raise fail(f"questions[{position}].index", "missing or not an integer")
        if not isinstance(question.get("correct"), bool):
            raise fail(f"questions[{position}].correct", "missing or not true/false")
    observed = sum(question["correct"] for question in questions) / len(questions)
    if abs(observed - data["micro"]) > 1e-6:
        raise fail("micro", f"{data['micro']} does not match its questions ({observed:.6f} of {len(questions)})")
    return data


class PairedQuestion(NamedTuple):
    """One question answered by both models."""

    subject: str
    category: str
    candidate: bool
    baseline: bool


def pair_questions(candidate: dict[str, Any], baseline: dict[str, Any]) -> list[PairedQuestion]:
    """Match the two results question by question (by subject and index).

    Raises:
        ComparisonError: the results come from different evaluation setups (data hash, shots, prompt
            version) or different question sets, or list a question twice.
    """
    for field in ("data_hash", "n_shot", "prompt_version"):
        if candidate.get(field) is not None and baseline.get(field) is not None \
                and candidate[field] != baseline[field]:
            raise ComparisonError(f"candidate and baseline were evaluated differently: {field} is "
                                  f"{candidate[field]!r} vs {baseline[field]!r}; re-evaluate the baseline")
    indexed = []
    for label, results in (("candidate", candidate), ("baseline", baseline)):
        by_key: dict[tuple[str, int], dict[str, Any]] = {}
        for question in results["questions"]:
            key = (question["subject"], question["index"])
            if key in by_key:
                raise ComparisonError(f"{label} results list question {key[0]}#{key[1]} twice")
            by_key[key] = question
        indexed.append(by_key)
    cand, base = indexed
    if cand.keys() != base.keys():
        only_cand = sorted(cand.keys() - base.keys())[:3]
        only_base = sorted(base.keys() - cand.keys())[:3]
        raise ComparisonError(
            f"candidate ({len(cand)} questions) and baseline ({len(base)}) were not evaluated on the same questions; "
            f"only candidate: {only_cand}, only baseline: {only_base}; check evaluation.subjects and limit")
    pairs = []
    for key in sorted(cand):
        if "gold" in cand[key] and "gold" in base[key] and cand[key]["gold"] != base[key]["gold"]:
            raise ComparisonError(f"question {key[0]}#{key[1]} has answer {cand[key]['gold']!r} for the candidate "
                                  f"but {base[key]['gold']!r} for the baseline: different MMLU data")
        category = candidate["subjects"][key[0]]["category"]
        pairs.append(PairedQuestion(key[0], category, cand[key]["correct"], base[key]["correct"]))
    return pairs


# ---------------------------------------------------------------- comparison and decision


def compare_results(candidate: dict[str, Any], baseline: dict[str, Any], gate: GateConfig, *, first_model: bool,
                    seed: int) -> dict[str, Any]:
    """Compare two results dicts and decide; returns the comparison (all numbers, the decision, the reasons).

    Reads gate (metric, min_improvement, max_regression, require_significance, alpha,
    bootstrap_samples). The bootstrap interval is for the gate metric: micro resamples questions,
    macro resamples questions within subjects.

    Raises:
        ComparisonError: the results cannot be paired (see :func:`pair_questions`).
    """
    from components.gate_stats import mcnemar_exact, paired_bootstrap_ci

    pairs = pair_questions(candidate, baseline)
    overall = mcnemar_exact([p.candidate for p in pairs], [p.baseline for p in pairs])
    strata = [p.subject for p in pairs] if gate.metric == "mmlu_macro" else None
    interval = paired_bootstrap_ci([p.candidate for p in pairs], [p.baseline for p in pairs],
                                   samples=gate.bootstrap_samples, confidence=1 - gate.alpha, seed=seed, strata=strata)
    if candidate["categories"].keys() != baseline["categories"].keys():
        raise ComparisonError(f"candidate categories {sorted(candidate['categories'])} differ from the baseline's "
                              f"{sorted(baseline['categories'])}")
    categories = {}
    for category in sorted(baseline["categories"], key=_category_order):
        members = [p for p in pairs if p.category == category]
        test = mcnemar_exact([p.candidate for p in members], [p.baseline for p in members]) if members else None
        cand_acc = float(candidate["categories"][category]["accuracy"])
        base_acc = float(baseline["categories"][category]["accuracy"])
        categories[category] = {
            "candidate": cand_acc, "baseline": base_acc, "delta": cand_acc - base_acc, "questions": len(members),
            "candidate_only": test.candidate_only if test else 0, "baseline_only": test.baseline_only if test else 0,
            "p_value": test.p_value if test else 1.0,
        }
    metric = gate.metric.removeprefix("mmlu_")
    comparison: dict[str, Any] = {
        "metric": gate.metric,
        "first_model": first_model,
        "questions": len(pairs),
        "candidate": _summary(candidate),
        "baseline": _summary(baseline),
        "delta": {"micro": candidate["micro"] - baseline["micro"], "macro": candidate["macro"] - baseline["macro"],
                  "metric": candidate[metric] - baseline[metric]},
        "categories": categories,
        "mcnemar": {"candidate_only": overall.candidate_only, "baseline_only": overall.baseline_only,
                    "p_value": overall.p_value},
        "bootstrap": interval._asdict() | {"metric": gate.metric},
        "gate": gate.model_dump(),
    }
    comparison["decision"], comparison["reasons"] = decide(comparison, gate)
    return comparison


def _category_order(name: str) -> tuple[int, str]:
    """MMLU's usual order (STEM, humanities, social sciences, other), then any other name alphabetically."""
    return (CATEGORY_ORDER.index(name) if name in CATEGORY_ORDER else len(CATEGORY_ORDER), name)


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    return {"micro": float(results["micro"]), "macro": float(results["macro"]),
            "eval_key": results.get("eval_key"), "model": results.get("model"), "adapter": results.get("adapter")}


def decide(comparison: dict[str, Any], gate: GateConfig) -> tuple[str, list[str]]:
    """Apply the gate to a comparison: ``("promote" | "reject", reasons)``; failed rules are listed first.

    Rules: the metric gains at least ``min_improvement`` (a first model: at least 0, i.e. as good as
    the base model); no category drops by more than ``max_regression``; with ``require_significance``
    (not for a first model), the candidate wins more discordant questions and McNemar p < ``alpha``.
    """
    first = comparison["first_model"]
    delta = comparison["delta"]["metric"]
    needed = 0.0 if first else gate.min_improvement
    against = "the base model" if first else "the champion"
    passed, failed = [], []
    (passed if delta >= needed - EPSILON else failed).append(
        f"{gate.metric} {delta:+.4f} vs {against} (needs >= {needed:+.4f})")
    worst_name, worst = min(((name, row["delta"]) for name, row in comparison["categories"].items()),
                            key=lambda item: item[1])
    regressed = [f"{name} {row['delta']:+.4f}" for name, row in comparison["categories"].items()
                 if row["delta"] < -gate.max_regression - EPSILON]
    if regressed:
        failed.append(f"categories regressed more than {gate.max_regression:.4f}: {', '.join(regressed)}")
    else:
        passed.append(f"no category drops more than {gate.max_regression:.4f} (worst {worst_name} {worst:+.4f})")
    test = comparison["mcnemar"]
    significance = f"McNemar p={test['p_value']:.4g} ({test['candidate_only']} vs {test['baseline_only']} discordant)"
    if gate.require_significance and not first:
        significant = test["p_value"] < gate.alpha and test["candidate_only"] > test["baseline_only"]
        (passed if significant else failed).append(
            f"{significance} {'<' if significant else 'not <'} alpha {gate.alpha} in the candidate's favour")
    else:
        passed.append(f"{significance}; significance not required")
    return ("reject" if failed else "promote"), failed + passed


# ---------------------------------------------------------------- baseline resolution (MLflow)


def baseline_label(champion_version: str | None) -> str:
    """The baseline's display name: ``champion v3`` or ``base model``."""
    return f"{CHAMPION} v{champion_version}" if champion_version else BASE_MODEL_NAME


def champion_from_label(label: str) -> str | None:
    """The champion version number in a :func:`baseline_label`, or None for the base model.

    Raises:
        ComparisonError: the label is neither form.
    """
    if label == BASE_MODEL_NAME:
        return None
    match = re.fullmatch(rf"{CHAMPION} v(\d+)", label)
    if not match:
        raise ComparisonError(f"baseline name {label!r} must be 'base model' or 'champion v<N>'")
    return match.group(1)


def find_stored_results(client: "MlflowClient", cfg: PipelineConfig, eval_key: str) -> tuple[str, str] | None:
    """``(run_id, artifact path)`` of a FINISHED run tagged ``llmft.eval_key`` = ``eval_key`` with a results.json."""
    from components.tracking import experiment_id

    if not re.fullmatch(r"[A-Za-z0-9_.:\-]+", eval_key):
        raise BaselineError(f"eval key {eval_key!r} must be letters, digits and '_.:-'")
    runs = client.search_runs(
        [experiment_id(client, cfg.mlflow.experiment)],
        filter_string=f"tags.`{EVAL_KEY_TAG}` = '{eval_key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.end_time DESC"], max_results=20)
    for run in runs:
        path = find_artifact(client, run.info.run_id, lambda name: name == RESULTS_FILE)
        if path:
            return run.info.run_id, path
    return None


def run_resolve_baseline(config: str, kfp_run_id: str) -> tuple[bool, str, str, str]:
    """Find the baseline model and whether its MMLU results must be computed.

    Reads storage (mount path, pvc_name, base_model, eval_data_dir), evaluation (n_shot, subjects,
    limit) and mlflow (tracking URI, experiment, registered_model_name).

    Returns:
        ``(needs_eval, model_dir, baseline_name, eval_key)``.

    Raises:
        ConfigError: the config parameter is invalid.
        BaselineError: the baseline's model directory does not exist on the volume.
        RegistryError: the champion's source URI is not on this PVC.
        TrackingUnavailable: the MLflow server does not answer.
    """
    from components.evaluate_mmlu import eval_config_key, model_identity
    from components.tracking import step_run
    from configs.schema import config_from_json

    cfg = config_from_json(config)
    name = cfg.mlflow.registered_model_name
    with step_run(cfg, kfp_run_id, "resolve-baseline") as (client, run_id):
        champion = alias_version(client, name, CHAMPION)
        if champion is None:
            model_dir = cfg.storage.resolve(cfg.storage.base_model)
        else:
            model_dir = path_from_pvc_uri(cfg, champion.source)
            if champion.tags.get(LOCAL_PATH_TAG) != str(model_dir):
                client.set_model_version_tag(name, champion.version, LOCAL_PATH_TAG, str(model_dir))
        label = baseline_label(champion.version if champion else None)
        if not model_dir.is_dir():
            hint = f"registry source {champion.source}" if champion else "check storage.base_model"
            raise BaselineError(f"the {label} directory {model_dir} does not exist on the volume ({hint})")
        eval_key = eval_config_key(cfg.storage.resolve(cfg.storage.eval_data_dir), n_shot=cfg.evaluation.n_shot,
                                   subjects=list(cfg.evaluation.subjects), limit=cfg.evaluation.limit,
                                   model_id=model_identity(model_dir))
        stored = find_stored_results(client, cfg, eval_key)
        set_run_tags(client, run_id, {"llmft.baseline": label, "llmft.baseline_eval_key": eval_key,
                                 "llmft.baseline_results_run": stored[0] if stored else "none"})
    print(json.dumps({"baseline": label, "model_dir": str(model_dir), "eval_key": eval_key,
                      "needs_eval": stored is None}))
    return stored is None, str(model_dir), label, eval_key


def run_fetch_baseline_results(config: str, kfp_run_id: str, eval_key: str) -> tuple[str]:
    """Copy the stored baseline results.json for ``eval_key`` to ``<run dir>/eval/baseline/results.json``.

    Reads storage (mount path, output_root) and mlflow (tracking URI, experiment).

    Raises:
        ConfigError: the config parameter is invalid.
        BaselineError: no stored results for the key (resolve-baseline should have asked for an evaluation).
        ComparisonError: the stored file is malformed or belongs to another eval key.
        TrackingUnavailable: the MLflow server does not answer.
    """
    from components.storage import atomic_write_text, run_dir
    from components.tracking import step_run
    from configs.schema import config_from_json

    cfg = config_from_json(config)
    target = run_dir(cfg, kfp_run_id) / "eval" / "baseline" / RESULTS_FILE
    with step_run(cfg, kfp_run_id, "fetch-baseline-results") as (client, run_id):
        stored = find_stored_results(client, cfg, eval_key)
        if stored is None:
            raise BaselineError(f"no FINISHED run in experiment {cfg.mlflow.experiment!r} has tag {EVAL_KEY_TAG}="
                                f"{eval_key} and a {RESULTS_FILE} artifact; evaluate the baseline instead")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(client.download_artifacts(stored[0], stored[1], tmp))
            results = read_results(local, label=f"stored baseline results (run {stored[0]})")
            if results.get("eval_key") not in (None, "", eval_key):
                raise ComparisonError(f"stored results of run {stored[0]} have eval_key {results['eval_key']!r}, "
                                      f"not {eval_key!r}")
            atomic_write_text(target, local.read_text(encoding="utf-8"))
        set_run_tags(client, run_id, {"llmft.baseline_eval_key": eval_key, "llmft.source_run_id": stored[0]})
    return (str(target),)


def run_compare(config: str, kfp_run_id: str, candidate_results: str, baseline_results: str, baseline_name: str,
                train_run_id: str, report: Any, metrics: Any) -> tuple[str, str, str]:
    """Compare, decide, and write comparison.json, the Markdown report and the metrics.

    Reads gate, training.seed, storage (mount path, output_root) and mlflow (tracking URI,
    experiment, registered_model_name: the champion's losses).

    Returns:
        ``(decision, reasons joined with "; ", comparison.json path)``.

    Raises:
        ConfigError: the config parameter is invalid.
        ComparisonError: a results file is missing or malformed, or the two cover different questions.
        StorageError: the volume refused to write comparison.json.
        TrackingUnavailable: the MLflow server does not answer.
    """
    from components.storage import atomic_write_text, run_dir
    from components.tracking import step_run
    from configs.schema import config_from_json

    cfg = config_from_json(config)
    champion = champion_from_label(baseline_name)
    candidate = read_results(storage_path(cfg, candidate_results), label="candidate results")
    baseline = read_results(storage_path(cfg, baseline_results), label="baseline results")
    comparison = compare_results(candidate, baseline, cfg.gate, first_model=champion is None, seed=cfg.training.seed)
    comparison.update(baseline_name=baseline_name, kfp_run_id=kfp_run_id, train_run_id=train_run_id or "n/a")
    with step_run(cfg, kfp_run_id, "compare-baseline") as (client, run_id):
        comparison["losses"] = {"candidate": run_losses(client, train_run_id),
                                "baseline": champion_losses(client, cfg, champion)}
        markdown = render_report(comparison, loss_curve_markdown(client, train_run_id))
        path = atomic_write_text(run_dir(cfg, kfp_run_id) / "compare" / "comparison.json",
                                 json.dumps(comparison, indent=2, sort_keys=True))
        atomic_write_text(report.path, markdown)
        numbers = flat_metrics(comparison)
        for key, value in numbers.items():
            metrics.log_metric(key, value)
        client.log_batch(run_id, metrics=_mlflow_metrics(numbers))
        client.log_text(run_id, markdown, "report.md")
        client.log_dict(run_id, comparison, "comparison.json")
        set_run_tags(client, run_id, {"llmft.decision": comparison["decision"], "llmft.baseline": baseline_name})
    reasons = "; ".join(comparison["reasons"])
    print(json.dumps({"decision": comparison["decision"], "reasons": reasons, "comparison": str(path)}))
    return comparison["decision"], reasons, str(path)


def flat_metrics(comparison: dict[str, Any]) -> dict[str, float]:
    """The comparison's headline numbers as flat metric names (KFP UI and MLflow)."""
    numbers = {
        "candidate_micro": comparison["candidate"]["micro"], "baseline_micro": comparison["baseline"]["micro"],
        "delta_micro": comparison["delta"]["micro"], "candidate_macro": comparison["candidate"]["macro"],
        "baseline_macro": comparison["baseline"]["macro"], "delta_macro": comparison["delta"]["macro"],
        "mcnemar_p": comparison["mcnemar"]["p_value"], "bootstrap_low": comparison["bootstrap"]["low"],
        "bootstrap_high": comparison["bootstrap"]["high"], "promote": float(comparison["decision"] == "promote"),
    }
    for name, row in comparison["categories"].items():
        numbers[f"delta_{name.replace(' ', '_')}"] = row["delta"]
    return {key: round(float(value), 6) for key, value in numbers.items()}  # 0.05, not 0.04999999999999999


def _mlflow_metrics(numbers: dict[str, float]) -> list:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key, value, now, 0) for key, value in numbers.items()]


# ---------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The CLI: compare two results.json files offline and print the gate's decision."""
    parser = argparse.ArgumentParser(description="Compare a candidate's MMLU results with a baseline's.")
    parser.add_argument("--candidate", required=True, help="Candidate results.json (from evaluate_mmlu).")
    parser.add_argument("--baseline", required=True, help="Baseline results.json.")
    parser.add_argument("--config", default=None, help="Config YAML or preset name for the gate (default: defaults).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.field=value")
    parser.add_argument("--first-model", action="store_true",
                        help="The baseline is the base model (no champion yet): promote when at least as good.")
    parser.add_argument("--report", default=None, help="Write the Markdown report here.")
    parser.add_argument("--json", dest="json_out", default=None, help="Write the comparison JSON here.")
    return parser


def _write_all(outputs: list[tuple[str, str]]) -> None:
    """Write every (path, text) atomically, or none: a report left without its comparison JSON (a full volume
    after the first file) would be read as a finished comparison.

    Raises:
        StorageError: a file could not be written (the ones already written are removed again).
    """
    from components.storage import StorageError, atomic_write_text

    written: list[Path] = []
    try:
        for path, text in outputs:
            written.append(atomic_write_text(path, text))
    except StorageError:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit 0 promote, 1 reject, 2 usage error, unreadable input or unwritable output."""
    from components.storage import StorageError
    from configs.schema import ConfigError, config_from_dict, load_config

    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides) if args.config else config_from_dict({}, "defaults",
                                                                                            args.overrides)
        comparison = compare_results(read_results(args.candidate, "candidate results"),
                                     read_results(args.baseline, "baseline results"), cfg.gate,
                                     first_model=args.first_model, seed=cfg.training.seed)
        comparison["baseline_name"] = BASE_MODEL_NAME if args.first_model else "baseline"
        outputs = [(args.report, render_report(comparison)) if args.report else None,
                   (args.json_out, json.dumps(comparison, indent=2, sort_keys=True)) if args.json_out else None]
        _write_all([output for output in outputs if output])
    except (ConfigError, ComparisonError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(comparison["decision"])
    for reason in comparison["reasons"]:
        print(f"  - {reason}")
    return 0 if comparison["decision"] == "promote" else 1


# ---------------------------------------------------------------- KFP components


@component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def resolve_baseline(config: str, kfp_run_id: str) -> NamedTuple(
        "Outputs", [("needs_eval", bool), ("model_dir", str), ("baseline_name", str), ("eval_key", str)]):
    """Find the baseline (the registry's champion, else the base model) and whether it needs an MMLU run.

    Args:
        config: The resolved pipeline configuration (JSON).
        kfp_run_id: The KFP run id (for the MLflow child run).

    Returns:
        needs_eval: True when no stored MMLU results exist for this baseline and evaluation setup.
        model_dir: The baseline model directory on the PVC.
        baseline_name: "champion v<N>" or "base model".
        eval_key: The evaluation cache key (MLflow tag llmft.eval_key of stored results).
    """
    from components.compare_baseline import run_resolve_baseline

    return run_resolve_baseline(config=config, kfp_run_id=kfp_run_id)


@component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def fetch_baseline_results(config: str, kfp_run_id: str, eval_key: str) -> NamedTuple("Outputs",
                                                                                      [("results_path", str)]):
    """Reuse the baseline's stored MMLU results from MLflow instead of evaluating it again.

    Args:
        config: The resolved pipeline configuration (JSON).
        kfp_run_id: The KFP run id; the file goes to the run's output directory.
        eval_key: The evaluation cache key from resolve-baseline.

    Returns:
        results_path: The baseline's results.json on the PVC.
    """
    from components.compare_baseline import run_fetch_baseline_results

    return run_fetch_baseline_results(config=config, kfp_run_id=kfp_run_id, eval_key=eval_key)


@component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def compare_with_baseline(config: str, kfp_run_id: str, candidate_results: str, baseline_results: str,
                          baseline_name: str, train_run_id: str, report: Output[Markdown],
                          metrics: Output[Metrics]) -> NamedTuple("Outputs", [("decision", str), ("reasons", str),
                                                                               ("comparison_path", str)]):
    """Compare the candidate with the baseline on MMLU (paired tests) and decide whether to promote it.

    Args:
        config: The resolved pipeline configuration (JSON); the gate section sets the rules.
        kfp_run_id: The KFP run id; comparison.json goes to the run's output directory.
        candidate_results: The candidate's results.json (from evaluate-candidate).
        baseline_results: The baseline's results.json (evaluated now or reused from MLflow).
        baseline_name: "champion v<N>" or "base model" (from resolve-baseline).
        train_run_id: The MLflow run of the training step (losses and loss curve).
        report: The Markdown report shown in the Kubeflow UI (also logged to MLflow).
        metrics: Headline numbers: accuracies, deltas, McNemar p, bootstrap interval, promote (1/0).

    Returns:
        decision: "promote" or "reject".
        reasons: The rules that failed and passed, joined with "; ".
        comparison_path: comparison.json on the PVC (every number of the comparison).
    """
    from components.compare_baseline import run_compare

    return run_compare(config=config, kfp_run_id=kfp_run_id, candidate_results=candidate_results,
                       baseline_results=baseline_results, baseline_name=baseline_name, train_run_id=train_run_id,
                       report=report, metrics=metrics)


if __name__ == "__main__":
    raise SystemExit(main())
