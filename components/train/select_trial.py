"""The select-trial step: pick the sweep's winner on the validation rows; only the winner goes on to the gate.

Features, with the settings that control each and what it costs:

- **The lowest validation loss wins** (``sweep.*``): each trial's train step published its best checkpoint with
  its validation loss (``train_summary.json``, :class:`components.train.outputs.TrainSummary`); the trial with
  the lowest wins, ties going to the lower trial index, so the choice is deterministic. Only validation rows
  decide: the test rows stay unread until the gate judges the winner, so the gate's evidence is not inflated
  by the choice (see "Choosing the best model" in the README).
- **selection.json** in the run directory (:class:`Selection`): every trial's settings, score, best step and
  MLflow run, and the winner; also the step's KFP artifact, with the trials as a Markdown table.
- **MLflow**: the step's run ``select-trial · <run>`` holds ``selection.json``; the pipeline's parent run gets the
  winner (tag ``llmft.winner_trial``, metric ``best_val_loss``) and the table of all trials (``trials.json``,
  MLflow's table artifact).
- **What a sweep leaves on the volume** (:func:`release_resume_state`): each loser keeps its published adapter (or
  full weights) and its checkpoints' weights; their optimizer, scheduler and RNG states, which only resuming
  needs, are deleted once the winner is chosen. The winner keeps everything (its run may be retried).

Without a sweep there is one trial: it wins, and nothing is deleted.

Usage (after the trials were trained by hand with ``python -m components.train.train --trial N``)::

    python -m components.train.select_trial --config local --kfp-run-id demo

Exit codes: 0 chosen, 1 a trial's summary is missing or invalid, 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from components.common.cli import cli_config, fail, new_parser
from components.common.logs import configure_step_logging, step_logger
from components.common.pipeline_runs import parent_run_id, step_run
from components.common.run_data import log_metrics, set_run_tags
from components.common.storage import StorageError, atomic_write_text, on_volume, run_dir
from components.common.tags import TRIALS_TAG, WINNER_RUN_TAG, WINNER_TRIAL_TAG
from components.common.typed_files import TypedFileError, read_model, write_model
from components.data.split import read_manifest, snapshot_dir
from components.train.checkpoints import RESUME_ONLY, list_checkpoints
from components.train.inputs import resolve_paths
from components.train.outputs import SUMMARY_FILE, TrainSummary
from components.train.trials import describe_settings, trial_count, trial_label
from configs.errors import StepError
from configs.loading import config_from_json
from configs.schema import PipelineConfig

STEP = "select-trial"
log = step_logger(STEP)
SELECTION_FILE = "selection.json"
DEEPSPEED_STATE = "global_step"  # DeepSpeed's optimizer (and ZeRO-3 weight) shards: global_step<N>/


class TrialScore(BaseModel):
    """One trial in ``selection.json``: what it varied and how it scored on the validation rows."""

    model_config = ConfigDict(extra="forbid")

    trial: int = Field(ge=0, description="The trial index (its settings are the sweep grid's combination N).")
    settings: dict[str, int | float] = Field(description="The training settings this trial varies.")
    val_loss: float | None = Field(description="Validation loss of its best checkpoint (None without a validation "
                                               "side).")
    best_step: int | None = Field(description="The step of that checkpoint.")
    global_step: int = Field(ge=0, description="The steps the trial trained.")
    train_loss: float | None = Field(description="Its mean training loss.")
    model_dir: str = Field(min_length=1, description="Its published weights (adapter/ or full/).")
    mlflow_run_id: str = Field(min_length=1, description="Its train run (train · trial-N · <run>).")


class Selection(BaseModel):
    """``selection.json``: the sweep's trials and the one that goes on to merge, evaluation and the gate."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = Field(1, description="Version of this file's layout.")
    metric: Literal["val_loss"] = Field("val_loss", description="What decides: lowest wins, ties to the lower trial.")
    val_split_hash: str | None = Field(description="The validation rows every trial was scored on.")
    winner: int = Field(ge=0, description="The winning trial's index.")
    trials: list[TrialScore] = Field(min_length=1, description="Every trial, by index.")

    def winning(self) -> TrialScore:
        """The winner's entry."""
        return next(trial for trial in self.trials if trial.trial == self.winner)


class SelectionError(StepError, RuntimeError):
    """The trials cannot be compared (a summary missing or invalid, trials scored on other rows); names the trial."""


def score_trials(model_dirs: list[str | Path]) -> list[TrialScore]:
    """Each trial's score, read from the ``train_summary.json`` its train step published, by trial index.

    Raises:
        SelectionError: a summary is missing or invalid, or two directories hold the same trial.
    """
    scores = []
    for model_dir in model_dirs:
        try:
            summary = read_model(Path(model_dir) / SUMMARY_FILE, TrainSummary, "the train summary")
        except TypedFileError as exc:
            raise SelectionError(f"cannot score a trial: {exc}") from None
        metrics = summary.metrics
        best = metrics.get("best_step")
        scores.append(TrialScore(
            trial=summary.trial, settings=summary.settings, val_loss=metrics.get("best_val_loss"),
            best_step=int(best) if best is not None else None, global_step=int(metrics.get("global_step", 0)),
            train_loss=metrics.get("train_loss"), model_dir=str(model_dir), mlflow_run_id=summary.mlflow_run_id))
    indices = [score.trial for score in scores]
    if len(set(indices)) != len(indices):
        raise SelectionError(f"the trials' summaries name trials {sorted(indices)}: one trial twice")
    return sorted(scores, key=lambda score: score.trial)


def choose(scores: list[TrialScore]) -> TrialScore:
    """The winner: the lowest validation loss, ties to the lower trial index; a lone trial wins as it is.

    Raises:
        SelectionError: several trials and one has no validation loss (nothing to compare it by), or a loss is
            not a finite number.
    """
    if len(scores) == 1:
        return scores[0]
    unscored = [trial_label(score.trial) for score in scores
                if score.val_loss is None or not math.isfinite(score.val_loss)]
    if unscored:
        raise SelectionError(f"{', '.join(unscored)} have no finite validation loss: the trials cannot be compared "
                             "(dataset.val_fraction must be > 0 for a sweep)")
    return min(scores, key=lambda score: (score.val_loss, score.trial))


def release_resume_state(trial_root: Path) -> int:
    """Delete what only resuming needs from the checkpoints of a trial that lost (optimizer, scheduler, RNG and
    DeepSpeed states); its weights stay. Returns the bytes freed.

    Raises:
        StorageError: the volume refused a deletion.
    """
    freed = 0
    for checkpoint in list_checkpoints(trial_root / "checkpoints"):
        for item in checkpoint.iterdir():
            try:
                if item.is_file() and RESUME_ONLY.match(item.name):
                    freed += item.stat().st_size
                    item.unlink()
                elif item.is_dir() and item.name.startswith(DEEPSPEED_STATE):
                    freed += sum(path.stat().st_size for path in item.rglob("*") if path.is_file())
                    shutil.rmtree(item)
            except OSError as exc:
                raise StorageError(f"cannot delete {item}: {exc.strerror or exc}") from exc
    return freed


def trials_table(selection: Selection) -> str:
    """The trials as a Markdown table, the winner marked (the step's KFP artifact and the gate's report)."""
    keys = list(dict.fromkeys(key for trial in selection.trials for key in trial.settings))
    header = ["trial", *keys, "validation loss", "best step", "steps", "train loss"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for trial in selection.trials:
        mark = " (winner)" if trial.trial == selection.winner else ""
        cells = [f"{trial_label(trial.trial)}{mark}", *(f"{trial.settings.get(key, '')}" for key in keys),
                 _number(trial.val_loss), str(trial.best_step or ""), str(trial.global_step),
                 _number(trial.train_loss)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "n/a"


def select(cfg: PipelineConfig, kfp_run_id: str, model_dirs: list[str | Path]) -> Selection:
    """Score the trials, choose the winner and write ``selection.json`` in the run directory.

    Raises:
        SelectionError: as :func:`score_trials` and :func:`choose`, or the trials are not this run's sweep.
        SplitError: the run's split snapshot has no readable manifest.
        StorageError: the volume refused the write.
    """
    scores = score_trials(model_dirs)
    expected = trial_count(cfg)
    if [score.trial for score in scores] != list(range(expected)):
        raise SelectionError(f"the sweep has {expected} trial(s); the summaries are of trials "
                             f"{[score.trial for score in scores]}")
    winner = choose(scores)
    selection = Selection(val_split_hash=read_manifest(snapshot_dir(cfg, kfp_run_id)).val_split_hash,
                          winner=winner.trial, trials=scores)
    write_model(run_dir(cfg, kfp_run_id) / SELECTION_FILE, selection)
    return selection


def read_selection(cfg: PipelineConfig, kfp_run_id: str) -> Selection | None:
    """The run's ``selection.json``, or None when select-trial has not written one.

    Raises:
        TypedFileError: the file exists but does not validate (the file and fields are named).
    """
    path = run_dir(cfg, kfp_run_id) / SELECTION_FILE
    return read_model(path, Selection, "the trial selection") if path.is_file() else None


def log_selection(client: Any, run_id: str, parent: str, selection: Selection) -> None:
    """The step's run: ``selection.json``; the pipeline's parent run: the winner and the table of all trials."""
    winner = selection.winning()
    client.log_text(run_id, selection.model_dump_json(indent=2), SELECTION_FILE)
    tags = {WINNER_TRIAL_TAG: trial_label(winner.trial), WINNER_RUN_TAG: winner.mlflow_run_id,
            TRIALS_TAG: str(len(selection.trials))}
    for target in (run_id, parent):
        set_run_tags(client, target, tags)
        if winner.val_loss is not None:
            log_metrics(client, target, {"best_val_loss": winner.val_loss, "winner_trial": winner.trial})
    keys = list(dict.fromkeys(key for trial in selection.trials for key in trial.settings))
    table = {"trial": [trial.trial for trial in selection.trials],
             **{key: [trial.settings.get(key) for trial in selection.trials] for key in keys},
             "val_loss": [trial.val_loss for trial in selection.trials],
             "best_step": [trial.best_step for trial in selection.trials],
             "winner": [trial.trial == selection.winner for trial in selection.trials],
             "train_run": [trial.mlflow_run_id for trial in selection.trials]}
    client.log_table(parent, data=table, artifact_file="trials.json")


def run_step(config: str, kfp_run_id: str, model_dirs: list, selection: Any, report: Any) -> tuple[str, str, int]:
    """The select-trial pipeline step: choose, free the losers' resume state, log, write the outputs.

    Reads ``sweep`` (the trials), ``storage`` and ``mlflow``. ``model_dirs`` are the trials' published weights
    (the train tasks' ``model_dir`` outputs, collected from the trials loop).

    Returns:
        (the winner's model_dir, its train run's MLflow id, its trial index).

    Raises:
        ConfigError: the config parameter is invalid.
        SelectionError: the trials cannot be compared.
        StorageError: the volume refused a write or a deletion.
        TrackingUnavailable: the MLflow server does not answer.
    """
    configure_step_logging(STEP)
    cfg = config_from_json(config)
    with step_run(cfg, kfp_run_id, STEP) as (client, run_id):
        chosen = select(cfg, kfp_run_id, [on_volume(cfg, path) for path in model_dirs])
        freed = sum(release_resume_state(resolve_paths(cfg, kfp_run_id, check=False, trial=trial.trial).run_dir)
                    for trial in chosen.trials if trial.trial != chosen.winner)
        log_selection(client, run_id, parent_run_id(client, cfg, kfp_run_id), chosen)
        log_metrics(client, run_id, {"resume_state_freed_mb": freed / 2**20})
    table = trials_table(chosen)
    write_model(Path(selection.path), chosen)
    atomic_write_text(report.path, f"# Trials: {trial_label(chosen.winner)} wins\n\n{table}")
    selection.metadata.update({"winner": chosen.winner, "trials": len(chosen.trials)})
    winner = chosen.winning()
    others = ", ".join(f"{trial_label(trial.trial)} {_number(trial.val_loss)}" for trial in chosen.trials
                       if trial.trial != chosen.winner)
    log.info(f"{trial_label(winner.trial)} wins ({describe_settings(winner.settings)}): validation loss "
             f"{_number(winner.val_loss)} at step {winner.best_step}" + (f"; {others}" if others else ""))
    return winner.model_dir, winner.mlflow_run_id, winner.trial


def build_parser() -> argparse.ArgumentParser:
    """The command line: choose among the trials a run trained (by hand, one ``--trial`` at a time)."""
    parser = new_parser("components.train.select_trial", "Pick the sweep trial with the lowest validation loss.")
    parser.add_argument("--kfp-run-id", required=True, help="The run id the trials were trained under.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Choose; 0 done, 1 a trial cannot be scored, 2 usage or config error."""
    configure_step_logging(STEP)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = cli_config(parser, args)
        dirs = [resolve_paths(cfg, args.kfp_run_id, check=False, trial=trial).model_dir
                for trial in range(trial_count(cfg))]
        chosen = select(cfg, args.kfp_run_id, dirs)
    except StepError as exc:
        return fail(parser, exc)
    print(trials_table(chosen), end="")
    print(json.dumps({"winner": chosen.winner, "model_dir": chosen.winning().model_dir}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
