"""Find the baseline, reuse its stored scores, and compare the candidate with it (the gate is components.gate.rules).

The baseline is the registry version holding the alias ``champion``; before the first promotion it is
the base model. Every evaluation stores its results in MLflow on the evaluate run, tagged with its eval
keys (``llmft.eval_key`` for MMLU, ``llmft.task_eval_key`` for the held-out task). A key covers everything
that decides the score (the model's content, the data, the split, the template...), so a score with the
same key is reused instead of spending GPU time again: the scores a promoted candidate got are the
champion's scores in the next run. When no stored score matches, the baseline is evaluated afresh, and the
report says why (the eval setup that changed).

    python -m components.gate.compare --candidate-mmlu c/results.json --candidate-task c/task.json \\
        --baseline-mmlu b/results.json --baseline-task b/task.json --config configs/lora.yaml --report r.md
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.evaluate.mmlu.results import RESULTS_FILE, ResultsFileError, read_mmlu_results
from components.gate.register_model import CHAMPION, LOCAL_PATH_TAG, alias_version, path_from_pvc_uri, set_run_tags
from components.gate.rules import Comparison, NotComparable, TaskScores
from configs.schema import PipelineConfig

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from components.evaluate.task.results import TaskResults

EVAL_KEY_TAG = "llmft.eval_key"  # MMLU
TASK_EVAL_KEY_TAG = "llmft.task_eval_key"
MODEL_ID_TAG = "llmft.model_id"
TASK_FILE = "task.json"
BASE_MODEL_NAME = "base model"
# What a stored evaluation records of its setup (tags of the evaluate run), to say why a score was not reused.
SETUP_TAGS = {"llmft.task_split_hash": "the held-out split", "llmft.task_template": "the template",
              "llmft.task_cutoff_len": "cutoff_len", "llmft.mmlu_data_hash": "the MMLU data",
              "llmft.mmlu_n_shot": "the MMLU n-shot", "llmft.mmlu_subjects": "the MMLU subjects"}


class BaselineError(RuntimeError):
    """The baseline cannot be found or its stored results cannot be fetched; names the model or eval key."""


class ComparisonError(ValueError):
    """Results that cannot be compared (unreadable, inconsistent or from different setups); names file and field."""


# ---------------------------------------------------------------- reading results


def read_task(path: str | Path, label: str) -> TaskResults:
    """Read a task.json (:mod:`components.evaluate.task.results`).

    Raises:
        ComparisonError: missing, not JSON, or inconsistent; names the file and the field.
    """
    from components.evaluate.task.results import TaskResultsError, load_task_results

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

    Raises:
        ComparisonError: a file is missing or inconsistent, or the two models' results are not comparable.
    """
    from components.gate.rules import compare

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


# ---------------------------------------------------------------- the baseline and its stored scores


def baseline_label(champion_version: str | None) -> str:
    """The baseline's display name: ``champion v3`` or ``base model``."""
    return f"{CHAMPION} v{champion_version}" if champion_version else BASE_MODEL_NAME


def _finished_runs_tagged(client: MlflowClient, cfg: PipelineConfig, tag: str, value: str) -> list:
    from components.common.tracking import experiment_id

    if not re.fullmatch(r"[A-Za-z0-9_.:\-]+", value):
        raise BaselineError(f"{tag} {value!r} must be letters, digits and '_.:-'")
    return client.search_runs([experiment_id(client, cfg.mlflow.experiment)],
                              filter_string=f"tags.`{tag}` = '{value}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.end_time DESC"], max_results=20)


def find_stored(client: MlflowClient, cfg: PipelineConfig, tag: str, key: str,
                file_name: str) -> tuple[str, str] | None:
    """``(run id, artifact path)`` of the newest FINISHED evaluation tagged ``tag`` = ``key`` with ``file_name``."""
    from components.gate.report import find_artifact

    for run in _finished_runs_tagged(client, cfg, tag, key):
        path = find_artifact(client, run.info.run_id, lambda name, wanted=file_name: name == wanted)
        if path:
            return run.info.run_id, path
    return None


def why_not_stored(client: MlflowClient, cfg: PipelineConfig, model_id: str, wanted: dict[str, str]) -> str:
    """Why no stored score matches: the setup fields in which the model's last stored evaluation differs."""
    runs = _finished_runs_tagged(client, cfg, MODEL_ID_TAG, model_id)
    if not runs:
        return "this model has no stored score yet"
    tags = runs[0].data.tags
    changed = [f"{label} ({tags.get(tag, 'unrecorded')[:12]} -> {wanted[tag][:12]})"
               for tag, label in SETUP_TAGS.items() if tag in wanted and tags.get(tag) != wanted[tag]]
    return ("its stored scores were computed differently: " + ", ".join(changed)) if changed else \
        "its stored scores were computed with another scoring version"


def run_resolve_baseline(config: str, kfp_run_id: str) -> tuple[bool, str, str, str, str, str]:
    """Find the baseline model and whether its scores must be computed.

    Reads storage, evaluation, training (template, cutoff_len), dataset.names and mlflow.

    Returns:
        ``(needs_eval, model_dir, baseline_name, note, MMLU eval key, task eval key)``: ``note`` says which stored
        scores are reused, or why none could be.

    Raises:
        ConfigError: the config parameter is invalid.
        BaselineError: the baseline's model directory does not exist on the volume.
        RegistryError: the champion's source URI is not on this PVC.
        TrackingUnavailable: the MLflow server does not answer.
    """
    from components.common.tracking import step_run
    from components.evaluate.evaluate import eval_setup
    from configs.schema import config_from_json

    cfg = config_from_json(config)
    name = cfg.mlflow.registered_model_name
    with step_run(cfg, kfp_run_id, "find-baseline") as (client, run_id):
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
        mmlu_key, task_key, setup = eval_setup(cfg, kfp_run_id, model_dir)
        stored_mmlu = find_stored(client, cfg, EVAL_KEY_TAG, mmlu_key, RESULTS_FILE)
        stored_task = find_stored(client, cfg, TASK_EVAL_KEY_TAG, task_key, TASK_FILE)
        needs_eval = stored_mmlu is None or stored_task is None
        if needs_eval:
            note = f"{label} evaluated afresh: {why_not_stored(client, cfg, setup[MODEL_ID_TAG], setup)}"
        else:
            note = f"{label}: stored scores reused (evaluate runs {stored_mmlu[0]}, {stored_task[0]})"
        set_run_tags(client, run_id, {"llmft.baseline": label, "llmft.baseline_eval_key": mmlu_key,
                                      "llmft.baseline_task_eval_key": task_key, "llmft.baseline_note": note[:4000]})
    print(f"[find-baseline] {note}", flush=True)
    return needs_eval, str(model_dir), label, note, mmlu_key, task_key


def run_fetch_baseline_results(config: str, kfp_run_id: str, mmlu_key: str, task_key: str) -> tuple[str, str]:
    """Copy the baseline's stored results.json and task.json (by eval key) to ``<run dir>/eval/baseline/``.

    Raises:
        ConfigError: the config parameter is invalid.
        BaselineError: no stored results for the baseline's eval keys (resolve-baseline asks for an evaluation then).
        ComparisonError: a stored file is malformed or belongs to another eval key.
        TrackingUnavailable: the MLflow server does not answer.
    """
    from components.common.storage import atomic_write_text, run_dir
    from components.common.tracking import step_run
    from configs.schema import config_from_json

    cfg = config_from_json(config)
    target = run_dir(cfg, kfp_run_id) / "eval" / "baseline"
    with step_run(cfg, kfp_run_id, "reuse-baseline-scores") as (client, run_id), \
            tempfile.TemporaryDirectory() as tmp:
        texts, sources = {}, {}
        for tag, key, file_name in ((EVAL_KEY_TAG, mmlu_key, RESULTS_FILE), (TASK_EVAL_KEY_TAG, task_key, TASK_FILE)):
            stored = find_stored(client, cfg, tag, key, file_name)
            if stored is None:
                raise BaselineError(f"no FINISHED run in experiment {cfg.mlflow.experiment!r} has {tag}={key} and a "
                                    f"{file_name} artifact; evaluate the baseline instead")
            local = Path(client.download_artifacts(stored[0], stored[1], tmp))
            texts[file_name], sources[file_name] = local.read_text(encoding="utf-8"), stored[0]
            # Checked before anything is written: a refused file must not be left where compare would read it.
            stored_key = read_mmlu_results(local) if file_name == RESULTS_FILE else read_task(local, "stored")
            if stored_key.eval_key != key:
                raise ComparisonError(f"stored {file_name} of run {stored[0]} has eval key "
                                      f"{stored_key.eval_key}, not {key}")
        for file_name in (RESULTS_FILE, TASK_FILE):
            atomic_write_text(target / file_name, texts[file_name])
        set_run_tags(client, run_id, {"llmft.baseline_eval_key": mmlu_key, "llmft.baseline_task_eval_key": task_key,
                                      "llmft.source_run_ids": ",".join(sorted(set(sources.values())))})
    return str(target / RESULTS_FILE), str(target / TASK_FILE)


# ---------------------------------------------------------------- the compare step


def run_compare(config: str, kfp_run_id: str, candidate_mmlu: str, candidate_task: str, baseline_mmlu: str,
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
    from components.common.storage import atomic_write_text, on_volume, run_dir
    from components.common.tracking import parent_run_id, step_run
    from components.gate.report import loss_curve, render_html, render_report, train_loss
    from configs.schema import config_from_json

    cfg = config_from_json(config)
    comparison = compare_files(on_volume(cfg, candidate_mmlu), on_volume(cfg, candidate_task),
                               on_volume(cfg, baseline_mmlu), on_volume(cfg, baseline_task), cfg,
                               baseline_name=baseline_name)
    with step_run(cfg, kfp_run_id, "compare") as (client, run_id), tempfile.TemporaryDirectory() as tmp:
        curve, loss = loss_curve(client, train_run_id), train_loss(client, train_run_id)
        notes = f"Baseline: {baseline_note}" if baseline_note else ""
        markdown = render_report(comparison, training_loss=loss, loss_plot=curve.text, note=notes)
        with_plot = render_report(comparison, training_loss=loss, note=notes,
                                  loss_plot="![training loss](training_loss.png)" if curve.png else curve.text)
        path = atomic_write_text(run_dir(cfg, kfp_run_id) / "compare" / "comparison.json",
                                 comparison.model_dump_json(indent=2))
        atomic_write_text(report.path, markdown)
        atomic_write_text(report_html.path, render_html(with_plot, {"training_loss.png": curve.png} if curve.png
                                                        else None))
        numbers = flat_metrics(comparison)
        for key, value in numbers.items():
            metrics.log_metric(key, value)
        client.log_batch(run_id, metrics=_mlflow_metrics(numbers))
        # The pipeline run's page (the parent run) holds the headline numbers and the decision too, so that two
        # pipeline runs compare at a glance in the experiment's table and charts.
        parent = parent_run_id(client, cfg, kfp_run_id)
        client.log_batch(parent, metrics=_mlflow_metrics(numbers))
        set_run_tags(client, parent, {"llmft.decision": comparison.decision, "llmft.baseline": baseline_name,
                                      "llmft.decision_line": comparison.headline,
                                      "mlflow.note.content": _run_description(comparison)})
        folder = Path(tmp) / "report"
        folder.mkdir()
        (folder / "report.md").write_text(with_plot, encoding="utf-8")
        if curve.png:
            (folder / "training_loss.png").write_bytes(curve.png)
        client.log_artifacts(run_id, str(folder), "report")
        client.log_text(run_id, comparison.model_dump_json(indent=2), "comparison.json")
        set_run_tags(client, run_id, {"llmft.decision": comparison.decision, "llmft.baseline": baseline_name,
                                      "llmft.decision_line": comparison.headline,
                                      **{f"llmft.rule.{rule.rule}": "pass" if rule.passed else "fail"
                                         for rule in comparison.rules}})
    print(f"[compare] {comparison.headline}", flush=True)
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


def _mlflow_metrics(numbers: dict[str, float]) -> list:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key, value, now, 0) for key, value in numbers.items()]


# ---------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The CLI: compare a candidate's results files with a baseline's offline and print the gate's decision."""
    parser = argparse.ArgumentParser(prog="python -m components.gate.compare",
                                     description="Apply the promotion gate to two models' results files.")
    for role in ("candidate", "baseline"):
        parser.add_argument(f"--{role}-mmlu", required=True, help=f"The {role}'s MMLU results.json.")
        parser.add_argument(f"--{role}-task", required=True, help=f"The {role}'s held-out task.json.")
    parser.add_argument("--baseline-name", default=BASE_MODEL_NAME, help="How the report names the baseline.")
    parser.add_argument("--config", default=None, help="Config YAML or preset name for the gate (default: defaults).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.field=value")
    parser.add_argument("--report", default=None, help="Write the Markdown report here.")
    parser.add_argument("--json", dest="json_out", default=None, help="Write the comparison JSON here.")
    return parser


def _write_all(outputs: list[tuple[str, str]]) -> None:
    """Write every (path, text) atomically, or none: a report left without its comparison JSON (a full volume
    after the first file) would be read as a finished comparison.

    Raises:
        StorageError: a file could not be written (the ones already written are removed again).
    """
    from components.common.storage import StorageError, atomic_write_text

    written: list[Path] = []
    try:
        for path, text in outputs:
            written.append(atomic_write_text(path, text))
    except StorageError:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit 0 promote, 1 keep the champion, 2 usage error, unreadable input or unwritable output."""
    from components.common.storage import StorageError, guard_output
    from components.gate.report import render_report
    from configs.schema import ConfigError, config_from_dict, load_config

    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides) if args.config else config_from_dict({}, "defaults",
                                                                                            args.overrides)
        inputs = {f"--{name.replace('_', '-')}": getattr(args, name)
                  for name in ("candidate_mmlu", "candidate_task", "baseline_mmlu", "baseline_task")}
        for flag, output in (("--report", args.report), ("--json", args.json_out)):
            if output:  # checked first: an output must never replace one of the results it compares
                guard_output(output, inputs, flag=flag)
        comparison = compare_files(args.candidate_mmlu, args.candidate_task, args.baseline_mmlu, args.baseline_task,
                                   cfg, baseline_name=args.baseline_name)
        outputs = [(args.report, render_report(comparison)) if args.report else None,
                   (args.json_out, comparison.model_dump_json(indent=2)) if args.json_out else None]
        _write_all([output for output in outputs if output])
    except (ConfigError, ComparisonError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(comparison.headline)
    for reason in comparison.reasons:
        print(f"  - {reason}")
    return 0 if comparison.decision == "promote" else 1


if __name__ == "__main__":
    raise SystemExit(main())
