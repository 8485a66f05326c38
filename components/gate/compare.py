"""The compare step: apply the gate (:mod:`components.gate.rules`) to the candidate's and the baseline's results.

Reads the four results files (each model's MMLU ``results.json`` and held-out ``task.json``) and, with generation on
(``evaluation.generate_rows`` > 0), each model's ``generations.jsonl`` beside its ``task.json``; asks the judge when
``evaluation.judge_endpoint`` is set (:mod:`components.gate.judge`); decides, and leaves
``<run dir>/compare/comparison.json`` (:class:`components.gate.rules.Comparison`, which register-model reads),
the report as Markdown and HTML (:mod:`components.gate.report`), the headline numbers as metrics (on the step's
MLflow run and on the pipeline's parent run) and every paired answer as an MLflow table
(``compare/side_by_side.json``, on both runs). The same comparison runs offline on the files::

    python -m components.gate.compare --candidate-mmlu c/results.json --candidate-task c/task.json \\
        --baseline-mmlu b/results.json --baseline-task b/task.json --config configs/lora.yaml --report r.md \\
        [--candidate-generations c/generations.jsonl --baseline-generations b/generations.jsonl]

Exit codes (like ``diff``): 0 promote, 1 keep the champion, 2 a usage or configuration error, an unreadable or
incomparable input, or an output that cannot be written.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from components.common.cli import cli_config, fail, new_parser
from components.common.logs import configure_step_logging, step_logger
from components.common.pipeline_runs import parent_run_id, step_run
from components.common.run_data import log_metrics, set_run_tags
from components.common.storage import StorageError, atomic_write_text, guard_output, on_volume, run_dir
from components.common.tags import BASELINE_TAG, DECISION_LINE_TAG, DECISION_TAG, RUN_NOTE_TAG, rule_tag
from components.common.typed_files import write_model
from components.data.split import key_position
from components.evaluate.generate.results import RESULTS_FILE as GENERATIONS_FILE
from components.evaluate.generate.results import GenerationResultsError, Generations, load_generations
from components.evaluate.mmlu.results import ResultsFileError, read_mmlu_results
from components.evaluate.task.results import TaskResults, TaskResultsError, load_task_results, totals
from components.gate.registry import baseline_label
from components.gate.report import loss_curve, render_html, render_report, train_loss
from components.gate.rules import Comparison, NotComparable, TaskScores, compare
from components.train.select_trial import read_selection, trials_table
from configs.errors import StepError
from configs.loading import config_from_json
from configs.schema import PipelineConfig

STEP = "compare"
log = step_logger(STEP)
COMPARISON_FILE = "comparison.json"
SIDE_BY_SIDE_TABLE = "compare/side_by_side.json"


class ComparisonError(StepError, ValueError):
    """Results that cannot be compared (unreadable, inconsistent or from other eval settings); names file and field."""


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


def read_generations(path: str | Path, label: str) -> Generations:
    """Read a generations.jsonl (:mod:`components.evaluate.generate.results`).

    Raises:
        ComparisonError: missing, not JSON Lines, NaN in it, or inconsistent; names the file, line and field.
    """
    try:
        return load_generations(path)
    except FileNotFoundError:
        raise ComparisonError(f"{label} file {path} does not exist (evaluation.generate_rows > 0: the evaluate step "
                              "writes it beside task.json)") from None
    except GenerationResultsError as exc:
        raise ComparisonError(f"{label}: {exc}") from None
    except OSError as exc:
        raise ComparisonError(f"{label} file {path} is not readable: {exc}") from None


def beside(task_path: str | Path, cfg: PipelineConfig) -> Path | None:
    """The generations.jsonl the evaluate step leaves beside a task.json, when generation is on."""
    return Path(task_path).with_name(GENERATIONS_FILE) if cfg.evaluation.generate_rows else None


def held_out_answers(generations: Generations, held_out_below: float) -> Generations:
    """The answers to rows whose key position is below ``held_out_below`` (as :func:`task_scores` keeps rows)."""
    if held_out_below >= 1.0:
        return generations
    kept = [answer for answer in generations.answers if key_position(answer.key) < held_out_below]
    return generations.model_copy(update={"answers": kept})


def task_scores(results: TaskResults, held_out_below: float = 1.0) -> TaskScores:
    """What the gate needs of a task results file: eval settings, per-row losses keyed by (dataset, row key), loss.

    Only rows whose key position is below ``held_out_below`` count (the rows the baseline was not trained on
    either: :mod:`components.gate.held_out`); the token-weighted loss is then theirs.
    """
    settings = {"test_split_hash": results.test_split_hash, "template": results.template,
             "cutoff_len": results.cutoff_len, "scoring_version": results.scoring_version,
             "entries_hash": results.entries_hash, "datasets": sorted(results.datasets)}
    records = [record for record in results.records if key_position(record.key) < held_out_below]
    losses = {f"{record.dataset}/{record.key}": record.nll_mean for record in records}
    loss = results.loss if len(records) == len(results.records) else float(totals(records)["loss"])
    return TaskScores(eval_key=results.eval_key, eval_settings=settings, losses=losses, loss=loss)


def compare_files(candidate_mmlu: str | Path, candidate_task: str | Path, baseline_mmlu: str | Path,
                  baseline_task: str | Path, cfg: PipelineConfig, *, baseline_version: str,
                  held_out_below: float = 1.0,
                  generations: tuple[str | Path, str | Path] | None = None) -> Comparison:
    """Read the results files and apply the gate (:func:`components.gate.rules.compare`).

    ``baseline_version`` is the registry version of the champion the candidate is compared with, ``""`` for the
    base model (the first model); the report names the baseline after it (``champion v3``, ``base model``).

    Only held-out rows whose key position is below ``held_out_below`` are compared (find-baseline's: the rows
    neither model trained on), the generated answers included; the comparison records how many others were left
    out and why. ``generations``: the candidate's and the baseline's generations.jsonl, or None (no generation
    rule). Reads ``gate``, ``training.seed`` (the bootstraps), ``dataset.test_fraction`` (for the reason) and,
    with ``evaluation.judge_endpoint``, the judge settings.

    Raises:
        ComparisonError: a file is missing or inconsistent, the two models' results are not comparable, or the
            judge failed.
    """
    try:
        mmlu = [read_mmlu_results(candidate_mmlu, "candidate MMLU results"),
                read_mmlu_results(baseline_mmlu, "baseline MMLU results")]
    except ResultsFileError as exc:
        raise ComparisonError(str(exc)) from None
    tasks = [read_task(candidate_task, "candidate task results"), read_task(baseline_task, "baseline task results")]
    baseline_name = baseline_label(baseline_version or None)
    scores = [task_scores(task, held_out_below) for task in tasks]
    answers = None
    if generations is not None:
        answers = tuple(held_out_answers(read_generations(path, f"{role} generations"), held_out_below)
                        for path, role in zip(generations, ("candidate", "baseline"), strict=True))
    try:
        comparison = compare(mmlu[0], mmlu[1], scores[0], scores[1], cfg.gate, baseline_name=baseline_name,
                             first_model=not baseline_version, seed=cfg.training.seed,
                             generations=answers)
    except NotComparable as exc:
        raise ComparisonError(f"{exc}; evaluate the baseline again with the candidate's settings") from None
    left_out = len(tasks[0].records) - len(scores[0].losses)
    if left_out:
        reason = (f"{left_out} of {len(tasks[0].records)} scored held-out rows left out: at hash positions >= "
                  f"{held_out_below:g} (this run holds out {cfg.dataset.test_fraction:g}) they may be the "
                  f"{baseline_name}'s training data")
        task = comparison.task.model_copy(update={"left_out_rows": left_out, "left_out_reason": reason})
        comparison = comparison.model_copy(update={"task": task})
    evaluation = cfg.evaluation
    if answers is None or not evaluation.judge_endpoint:
        return comparison
    from components.gate.judge import JudgeError, judge_pairs

    try:
        judged = judge_pairs(evaluation.judge_endpoint, evaluation.judge_model, *answers,
                             timeout_s=evaluation.judge_timeout_s)
    except JudgeError as exc:
        raise ComparisonError(f"{exc}; nothing was written (unset evaluation.judge_endpoint to compare without "
                              "the judge)") from None
    return comparison.model_copy(update={"judge": judged})


def run_step(config: str, kfp_run_id: str, candidate_mmlu: str, candidate_task: str, baseline_mmlu: str,
             baseline_task: str, baseline_version: str, baseline_note: str, train_run_id: str, report: Any,
             report_html: Any, metrics: Any, held_out_below: float = 1.0) -> tuple[str, str, str]:
    """Compare, decide, and write comparison.json, the reports and the metrics.

    Reads gate, training.seed, dataset.test_fraction, storage and mlflow. MLflow gets ``report/report.md`` with the
    training loss plot beside it (``report/training_loss.png``) and ``comparison.json``; the Kubeflow UI gets the
    Markdown (loss curve as a sparkline) and an HTML page with the plot embedded. Only the held-out rows below
    ``held_out_below`` are compared (find-baseline's: the rows neither model trained on).

    Returns:
        ``(decision, the one-line headline, comparison.json path)``.

    Raises:
        ConfigError: the config parameter is invalid.
        ComparisonError: a results file is missing or inconsistent, or the two are not comparable.
        StorageError: the volume refused to write comparison.json.
        TrackingUnavailable: the MLflow server does not answer.
    """
    configure_step_logging(STEP)
    cfg = config_from_json(config)
    candidate_answers, baseline_answers = beside(on_volume(cfg, candidate_task), cfg), \
        beside(on_volume(cfg, baseline_task), cfg)
    comparison = compare_files(on_volume(cfg, candidate_mmlu), on_volume(cfg, candidate_task),
                               on_volume(cfg, baseline_mmlu), on_volume(cfg, baseline_task), cfg,
                               baseline_version=baseline_version, held_out_below=held_out_below,
                               generations=(candidate_answers, baseline_answers) if candidate_answers else None)
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
        decision = {DECISION_TAG: comparison.decision, BASELINE_TAG: comparison.baseline_name,
                    DECISION_LINE_TAG: comparison.headline}
        set_run_tags(client, parent, {**decision, RUN_NOTE_TAG: _run_description(comparison)})
        folder = Path(tmp) / "report"
        folder.mkdir()
        (folder / "report.md").write_text(with_plot, encoding="utf-8")
        if curve.png:
            (folder / "training_loss.png").write_bytes(curve.png)
        client.log_artifacts(run_id, str(folder), "report")
        client.log_text(run_id, comparison.model_dump_json(indent=2), COMPARISON_FILE)
        if candidate_answers and baseline_answers:
            from components.gate.generation import paired_table

            table = paired_table(load_generations(candidate_answers), load_generations(baseline_answers),
                                 cfg.gate.generation_metric)
            # On the pipeline run too: the experiment's Evaluation view lists the tables of the runs it shows, and
            # it shows the pipeline runs (their steps are folded under them).
            for run in (run_id, parent):
                client.log_table(run, data=table, artifact_file=SIDE_BY_SIDE_TABLE)
        set_run_tags(client, run_id, {**decision, **{rule_tag(rule.rule): "pass" if rule.passed else "fail"
                                                     for rule in comparison.rules}})
    log.info(comparison.headline)
    return comparison.decision, comparison.headline, str(path)


def _run_description(comparison: Comparison) -> str:
    """The pipeline run's description on its MLflow page: the decision and every reason."""
    reasons = "\n".join(f"- {reason}" for reason in comparison.reasons)
    return f"**{comparison.headline}**\n\n{reasons}\n\nThe whole report: the compare step's `report/report.md`."


def flat_metrics(comparison: Comparison) -> dict[str, float]:
    """The comparison's headline numbers as flat metric names (KFP UI and MLflow)."""
    task, mmlu = comparison.task, comparison.mmlu
    numbers = {
        "task_row_nll_candidate": task.candidate_mean_nll, "task_row_nll_baseline": task.baseline_mean_nll,
        "task_row_nll_change": task.relative_change, "task_row_nll_change_low": task.ci_low,
        "task_row_nll_change_high": task.ci_high, "task_wilcoxon_p": task.wilcoxon_p,
        "mmlu_candidate": mmlu.candidate_micro, "mmlu_baseline": mmlu.baseline_micro,
        "mmlu_delta": mmlu.delta_micro, "mmlu_mcnemar_p": mmlu.mcnemar_p,
        "promote": float(comparison.decision == "promote"),
    }
    for row in mmlu.categories:
        numbers[f"mmlu_delta_{row.name.replace(' ', '_')}"] = row.delta
    if comparison.generation is not None:
        generation = comparison.generation
        gated = generation.gated()
        numbers.update({f"gen_{generation.metric}_candidate": gated.candidate,
                        f"gen_{generation.metric}_baseline": gated.baseline,
                        f"gen_{generation.metric}_delta": gated.mean_difference,
                        "gen_stop_rate_candidate": generation.candidate_stopped / generation.rows,
                        "gen_stop_rate_baseline": generation.baseline_stopped / generation.rows})
    if comparison.judge is not None:
        numbers.update({"judge_candidate_wins": comparison.judge.candidate_wins,
                        "judge_baseline_wins": comparison.judge.baseline_wins,
                        "judge_sign_test_p": comparison.judge.sign_test_p})
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
        parser.add_argument(f"--{role}-generations", default=None,
                            help=f"The {role}'s generations.jsonl (both or neither: the generation rule).")
    parser.add_argument("--baseline-version", default="",
                        help="The champion's registry version the baseline is, e.g. 3 (the report names it champion "
                             "v3); leave out for the base model (the first model).")
    parser.add_argument("--held-out-below", type=float, default=1.0,
                        help="Compare only held-out rows whose key position is below this (find-baseline's "
                             "held_out_below: the rows the baseline was not trained on either); default all.")
    parser.add_argument("--report", default=None, help="Write the Markdown report here.")
    parser.add_argument("--json", dest="json_out", default=None, help="Write comparison.json here.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Print the decision and its reasons; exit 0 promote, 1 keep the champion, 2 on any error."""
    configure_step_logging(STEP)
    parser = build_parser()
    args = parser.parse_args(argv)
    inputs = {f"--{name.replace('_', '-')}": getattr(args, name)
              for name in ("candidate_mmlu", "candidate_task", "baseline_mmlu", "baseline_task",
                           "candidate_generations", "baseline_generations")}
    if bool(args.candidate_generations) != bool(args.baseline_generations):
        parser.error("--candidate-generations and --baseline-generations go together")
    try:
        cfg = cli_config(parser, args)
        for flag, output in (("--report", args.report), ("--json", args.json_out)):
            if output:  # checked first: an output must never replace one of the results it compares
                guard_output(output, inputs, flag=flag)
        comparison = compare_files(args.candidate_mmlu, args.candidate_task, args.baseline_mmlu, args.baseline_task,
                                   cfg, baseline_version=args.baseline_version,
                                   held_out_below=args.held_out_below,
                                   generations=(args.candidate_generations, args.baseline_generations)
                                   if args.candidate_generations else None)
        outputs = [(args.report, render_report(comparison)) if args.report else None,
                   (args.json_out, comparison.model_dump_json(indent=2)) if args.json_out else None]
        _write_all([output for output in outputs if output])
    except StepError as exc:
        return fail(parser, exc, code=2)  # exit 1 means "keep the champion"
    print(comparison.headline)
    for reason in comparison.reasons:
        print(f"  - {reason}")
    return 0 if comparison.decision == "promote" else 1


if __name__ == "__main__":
    raise SystemExit(main())
