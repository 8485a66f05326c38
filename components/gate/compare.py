"""The compare step: apply the gate (:mod:`components.gate.rules`) to the candidate's and the baseline's results.

Reads the four results files (each model's MMLU ``results.json`` and held-out ``task.json``), decides, and leaves
``<run dir>/compare/comparison.json`` (:class:`components.gate.rules.Comparison`, which register-model reads),
the report as Markdown and HTML (:mod:`components.gate.report`) and the headline numbers as metrics, on the
step's MLflow run and on the pipeline's parent run. The same comparison runs offline on four files::

    python -m components.gate.compare --candidate-mmlu c/results.json --candidate-task c/task.json \\
        --baseline-mmlu b/results.json --baseline-task b/task.json --config configs/lora.yaml --report r.md

Exit codes (like ``diff``): 0 promote, 1 keep the champion, 2 a usage or configuration error, an unreadable or
incomparable input, or an output that cannot be written.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from components.common.cli import cli_config, fail, new_parser
from components.common.storage import StorageError, atomic_write_text, guard_output, on_volume, run_dir
from components.common.tracking import log_metrics, parent_run_id, set_run_tags, step_run
from components.common.typed_files import write_model
from components.evaluate.mmlu.results import ResultsFileError, read_mmlu_results
from components.evaluate.task.results import TaskResults, TaskResultsError, load_task_results
from components.gate.registry import BASE_MODEL_NAME
from components.gate.report import loss_curve, render_html, render_report, train_loss
from components.gate.rules import Comparison, NotComparable, TaskScores, compare
from components.train.select_trial import read_selection, trials_table
from configs.loading import config_from_json
from configs.schema import ConfigError, PipelineConfig

STEP = "compare"
COMPARISON_FILE = "comparison.json"


class ComparisonError(ValueError):
    """Results that cannot be compared (unreadable, inconsistent or from different setups); names file and field."""


def read_task(path: str | Path, label: str) -> TaskResults:
    """Read a task.json (:mod:`components.evaluate.task.results`).

    Raises:
        ComparisonError: missing, not JSON, or inconsistent; names the file and the field.
    """
    try:
        return load_task_results(path)
    except FileNotFoundError:
        raise ComparisonError(f"{label} file {path} does not exist") from None
    except TaskResultsError as exc:
        raise ComparisonError(f"{label}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:  # their messages need not name the file
        raise ComparisonError(f"{label} file {path} is not readable: {exc}") from None


def task_scores(results: TaskResults) -> TaskScores:
    """What the gate needs of a task results file: setup, per-row losses keyed by (dataset, row key), loss."""
    setup = {"test_split_hash": results.test_split_hash, "template": results.template,
             "cutoff_len": results.cutoff_len, "scoring_version": results.scoring_version,
             "entries_hash": results.entries_hash, "datasets": sorted(results.datasets)}
    losses = {f"{record.dataset}/{record.key}": record.nll_mean for record in results.records}
    return TaskScores(eval_key=results.eval_key, setup=setup, losses=losses, loss=results.loss)


def compare_files(candidate_mmlu: str | Path, candidate_task: str | Path, baseline_mmlu: str | Path,
                  baseline_task: str | Path, cfg: PipelineConfig, *, baseline_name: str) -> Comparison:
    """Read the four results files and apply the gate (:func:`components.gate.rules.compare`).

    Reads ``gate`` and ``training.seed`` (the bootstraps).

    Raises:
        ComparisonError: a file is missing or inconsistent, or the two models' results are not comparable.
    """
    try:
        mmlu = [read_mmlu_results(candidate_mmlu, "candidate MMLU results"),
                read_mmlu_results(baseline_mmlu, "baseline MMLU results")]
    except ResultsFileError as exc:
        raise ComparisonError(str(exc)) from None
    tasks = [read_task(candidate_task, "candidate task results"), read_task(baseline_task, "baseline task results")]
    try:
        return compare(mmlu[0], mmlu[1], task_scores(tasks[0]), task_scores(tasks[1]), cfg.gate,
                       baseline_name=baseline_name, first_model=baseline_name == BASE_MODEL_NAME,
                       seed=cfg.training.seed)
    except NotComparable as exc:
        raise ComparisonError(f"{exc}; evaluate the baseline again with the candidate's settings") from None


def run_step(config: str, kfp_run_id: str, candidate_mmlu: str, candidate_task: str, baseline_mmlu: str,
             baseline_task: str, baseline_name: str, baseline_note: str, train_run_id: str, report: Any,
             report_html: Any, metrics: Any) -> tuple[str, str, str]:
    """Compare, decide, and write comparison.json, the reports and the metrics.

    Reads gate, training.seed, storage and mlflow. MLflow gets ``report/report.md`` with the training loss plot
    beside it (``report/training_loss.png``) and ``comparison.json``; the Kubeflow UI gets the Markdown (loss
    curve as a sparkline) and an HTML page with the plot embedded.

    Returns:
        ``(decision, the one-line headline, comparison.json path)``.

    Raises:
        ConfigError: the config parameter is invalid.
        ComparisonError: a results file is missing or inconsistent, or the two are not comparable.
        StorageError: the volume refused to write comparison.json.
        TrackingUnavailable: the MLflow server does not answer.
    """
    cfg = config_from_json(config)
    comparison = compare_files(on_volume(cfg, candidate_mmlu), on_volume(cfg, candidate_task),
                               on_volume(cfg, baseline_mmlu), on_volume(cfg, baseline_task), cfg,
                               baseline_name=baseline_name)
    with step_run(cfg, kfp_run_id, STEP) as (client, run_id), tempfile.TemporaryDirectory() as tmp:
        curve, loss = loss_curve(client, train_run_id), train_loss(client, train_run_id)
        notes = f"Baseline: {baseline_note}" if baseline_note else ""
        selection = read_selection(cfg, kfp_run_id)
        trials = trials_table(selection) if selection and len(selection.trials) > 1 else ""
        markdown = render_report(comparison, training_loss=loss, loss_plot=curve.text, note=notes, trials=trials)
        with_plot = render_report(comparison, training_loss=loss, note=notes, trials=trials,
                                  loss_plot="![training loss](training_loss.png)" if curve.png else curve.text)
        path = write_model(run_dir(cfg, kfp_run_id) / STEP / COMPARISON_FILE, comparison)
        atomic_write_text(report.path, markdown)
        atomic_write_text(report_html.path, render_html(with_plot, {"training_loss.png": curve.png} if curve.png
                                                        else None))
        numbers = flat_metrics(comparison)
        for key, value in numbers.items():
            metrics.log_metric(key, value)
        log_metrics(client, run_id, numbers)
        # The pipeline run's page (the parent run) holds the headline numbers and the decision too, so that two
        # pipeline runs compare at a glance in the experiment's table and charts.
        parent = parent_run_id(client, cfg, kfp_run_id)
        log_metrics(client, parent, numbers)
        decision = {"llmft.decision": comparison.decision, "llmft.baseline": baseline_name,
                    "llmft.decision_line": comparison.headline}
        set_run_tags(client, parent, {**decision, "mlflow.note.content": _run_description(comparison)})
        folder = Path(tmp) / "report"
        folder.mkdir()
        (folder / "report.md").write_text(with_plot, encoding="utf-8")
        if curve.png:
            (folder / "training_loss.png").write_bytes(curve.png)
        client.log_artifacts(run_id, str(folder), "report")
        client.log_text(run_id, comparison.model_dump_json(indent=2), COMPARISON_FILE)
        set_run_tags(client, run_id, {**decision, **{f"llmft.rule.{rule.rule}": "pass" if rule.passed else "fail"
                                                     for rule in comparison.rules}})
    print(f"[{STEP}] {comparison.headline}", flush=True)
    return comparison.decision, comparison.headline, str(path)


def _run_description(comparison: Comparison) -> str:
    """The pipeline run's description on its MLflow page: the decision and every reason."""
    reasons = "\n".join(f"- {reason}" for reason in comparison.reasons)
    return f"**{comparison.headline}**\n\n{reasons}\n\nThe whole report: the compare step's `report/report.md`."


def flat_metrics(comparison: Comparison) -> dict[str, float]:
    """The comparison's headline numbers as flat metric names (KFP UI and MLflow)."""
    task, mmlu = comparison.task, comparison.mmlu
    numbers = {
        "task_loss_candidate": task.candidate_mean_nll, "task_loss_baseline": task.baseline_mean_nll,
        "task_loss_change": task.relative_change, "task_loss_change_low": task.ci_low,
        "task_loss_change_high": task.ci_high, "task_wilcoxon_p": task.wilcoxon_p,
        "mmlu_candidate": mmlu.candidate_micro, "mmlu_baseline": mmlu.baseline_micro,
        "mmlu_delta": mmlu.delta_micro, "mmlu_mcnemar_p": mmlu.mcnemar_p,
        "promote": float(comparison.decision == "promote"),
    }
    for row in mmlu.categories:
        numbers[f"mmlu_delta_{row.name.replace(' ', '_')}"] = row.delta
    return {key: round(float(value), 6) for key, value in numbers.items()}  # 0.05, not 0.04999999999999999


def _write_all(outputs: list[tuple[str, str]]) -> None:
    """Write every (path, text) atomically, or none: a report left without its comparison JSON (a full volume
    after the first file) would be read as a finished comparison.

    Raises:
        StorageError: a file could not be written (the ones already written are removed again).
    """
    written: list[Path] = []
    try:
        for path, text in outputs:
            written.append(atomic_write_text(path, text))
    except StorageError:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def build_parser() -> argparse.ArgumentParser:
    """The command line: compare a candidate's results files with a baseline's and print the gate's decision."""
    parser = new_parser("components.gate.compare", "Apply the promotion gate to two models' results files "
                                                   "(the gate section of --config).")
    for role in ("candidate", "baseline"):
        parser.add_argument(f"--{role}-mmlu", required=True, help=f"The {role}'s MMLU results.json.")
        parser.add_argument(f"--{role}-task", required=True, help=f"The {role}'s held-out task.json.")
    parser.add_argument("--baseline-name", default=BASE_MODEL_NAME, help="How the report names the baseline.")
    parser.add_argument("--report", default=None, help="Write the Markdown report here.")
    parser.add_argument("--json", dest="json_out", default=None, help="Write comparison.json here.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Print the decision and its reasons; exit 0 promote, 1 keep the champion, 2 on any error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    inputs = {f"--{name.replace('_', '-')}": getattr(args, name)
              for name in ("candidate_mmlu", "candidate_task", "baseline_mmlu", "baseline_task")}
    try:
        cfg = cli_config(parser, args)
        for flag, output in (("--report", args.report), ("--json", args.json_out)):
            if output:  # checked first: an output must never replace one of the results it compares
                guard_output(output, inputs, flag=flag)
        comparison = compare_files(args.candidate_mmlu, args.candidate_task, args.baseline_mmlu, args.baseline_task,
                                   cfg, baseline_name=args.baseline_name)
        outputs = [(args.report, render_report(comparison)) if args.report else None,
                   (args.json_out, comparison.model_dump_json(indent=2)) if args.json_out else None]
        _write_all([output for output in outputs if output])
    except (ConfigError, ComparisonError, StorageError) as exc:
        return fail(parser, exc, 2)
    print(comparison.headline)
    for reason in comparison.reasons:
        print(f"  - {reason}")
    return 0 if comparison.decision == "promote" else 1


if __name__ == "__main__":
    raise SystemExit(main())
