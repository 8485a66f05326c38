"""The train step: fine-tune the base model with LLaMA-Factory (LoRA, QLoRA or full), tracked in MLflow, resumable.

Features, with the settings that control each and what it costs:

- **LoRA, QLoRA or full fine-tuning** (``training.*``): the LLaMA-Factory YAML is rendered from the typed config
  (:mod:`components.train.render`), kept as ``train.yaml`` in the run directory and logged to MLflow. QLoRA needs
  a GPU; full fine-tuning on GPUs runs DeepSpeed ZeRO-3.
- **Validated data only** (``dataset.*``): the trainer reads the train side of the split snapshot validate-dataset
  wrote, checked against its hashes first (:mod:`components.train.inputs`), so data changed after validation is
  never trained on. Run by hand without that step, the snapshot is built here, validating first.
- **The best checkpoint, not the last** (``dataset.val_fraction`` > 0): the trainer evaluates the validation rows
  of the snapshot at every save and the step publishes the weights of the checkpoint with the lowest validation
  loss (:mod:`components.train.render`); the run has ``val_loss`` per checkpoint, ``best_step`` and
  ``best_val_loss``, and the step's last line says which step won. An evaluation pass per save costs
  ``dataset.max_val_rows`` forward passes at most.
- **Resume after a lost pod** (``training.save_steps``, ``training.save_total_limit``; a save costs a few seconds
  to minutes): a retried task resumes from the newest complete checkpoint (:mod:`components.train.checkpoints`),
  but only one the same training wrote (:mod:`components.train.fingerprint`); others move to
  ``checkpoints-discarded/`` with the reason. A checkpoint at ``training.max_steps`` is the result as it is.
- **One GPU, several, or several nodes** (``cluster.accelerator_count``, ``cluster.nodes``,
  ``cluster.training_engine``): one trainer process, torchrun with one per GPU (:mod:`components.train.launch`),
  or a TrainJob or PyTorchJob whose nodes run the same worker (:mod:`components.train.multinode`).
- **A sweep's trials** (``sweep.*``, :mod:`components.train.trials`): trial N trains its own settings in
  ``trials/trial-N/`` and its own MLflow run ``train · trial-N · <run>``; the trials of a run tokenize their
  data once (:mod:`components.train.tokenized`, ``<run dir>/tokenized/<key>``, about the size of the data).
- **MLflow** (``mlflow.*``): the child run ``train`` holds the rendered settings, every logged step, the system
  metrics, the YAML, the log and the loss plot (:mod:`components.train.metrics`); a tracking-server outage loses
  no point (:mod:`components.common.mlflow_client`).
- **Atomic outputs**: the weights appear whole in ``adapter/`` (or ``full/``) with ``train_summary.json``
  (:mod:`components.train.outputs`); a retry after they were published trains nothing.

:class:`TrainRecipe` reads in call order: ``__init__`` checks the inputs, fails fast and creates every attribute,
:meth:`~TrainRecipe.setup` verifies the data, :meth:`~TrainRecipe.train` trains (or reuses) inside the step's MLflow
run and :meth:`~TrainRecipe.cleanup` flushes the metrics; :func:`train_model` runs the three, cleanup whatever
happened.

This module is longer than the others because the recipe, its KFP step and its command line read in one pass, as a
torchtune recipe does; the machinery is in the other modules of the package.

Usage::

    python -m components.train.train --config configs/local.yaml --run-id demo
    python -m components.train.train --config local --run-id demo --set training.max_steps=8
    python -m components.train.train --config lora --render-only     # print the LLaMA-Factory YAML
    python -m components.train.train --config local --run-id demo --trial 1 --set "sweep.learning_rate=[1e-3,5e-3]"

Rerunning with the same ``--run-id`` resumes from its checkpoints. Exit codes: 0 trained, 1 the training failed
(the message says why), 2 a usage or configuration error.

Raises:
    TrainError: the base model is missing, the data is invalid or changed after validation (the file is named),
        or the trainer left no state.
    TrainerFailed: LLaMA-Factory exited non-zero or was killed (its error is in the message).
    TrainingJobError: the multi-node job failed or could not be submitted (``cluster.nodes`` > 1).
    TrackingUnavailable: the MLflow server does not answer within the preflight timeout.
    StorageError: the volume refused a write.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

from components.common.cli import cli_config, fail, new_parser
from components.common.logs import configure_step_logging, step_logger
from components.common.mlflow_client import TRAINER_MLFLOW_HTTP, make_client
from components.common.pipeline_runs import close_stale_runs, step_run
from components.common.run_data import log_metrics, log_params
from components.common.storage import atomic_write_text, on_volume
from components.common.system_metrics import system_metrics_env
from components.common.tags import (
    BACKFILL_TAG,
    DISCARDED_CHECKPOINTS_TAG,
    LINEAGE_PARAM_PREFIX,
    MODEL_DIR_TAG,
    RESUMED_FROM_TAG,
    REUSED_FROM_RUN_TAG,
    TRAINING_FINGERPRINT_TAG,
)
from components.common.typed_files import write_model
from components.data.checks import DATA_CONFIG
from components.data.split import SplitManifest, validation_entry_name
from components.train.checkpoints import (
    FINGERPRINT_FILE,
    ResumePoint,
    best_checkpoint,
    fingerprint_digest,
    finish_from_checkpoint,
    keep_only_same_training,
    prepare_resume,
    trim_trainer_log,
)
from components.train.fingerprint import training_fingerprint
from components.train.inputs import prepare_data, resolve_paths
from components.train.launch import (
    check_shm,
    gpu_available,
    launch_trainer,
    launcher,
    trainer_command,
    trainer_env,
)
from components.train.metrics import backfill_metrics, collect_metrics, loss_plot_html, plot_loss
from components.train.outputs import SUMMARY_FILE, ModelPointer, TrainSummary, publish_weights, read_summary
from components.train.render import render_params, render_sections, render_yaml
from components.train.tokenized import TOKENIZED_DIR, tokenization_key
from components.train.trials import describe_settings, is_sweep, trial_config, trial_label, trial_settings
from configs.errors import StepError
from configs.schema import PipelineConfig

STEP = "train"
log = step_logger(STEP)
TRAINER_LOG = "trainer_log.jsonl"
LOSS_PLOT = "training_loss.png"
PACKAGES = ("llamafactory", "transformers", "torch", "peft", "deepspeed", "bitsandbytes")
KFP_METRICS = ("train_loss", "best_val_loss", "best_step", "train_runtime_s", "tokens_per_second", "global_step",
               "resumed_from_step")



class TrainResult(NamedTuple):
    """What the training step hands on."""

    model_dir: Path
    train_loss: float
    mlflow_run_id: str
    metrics: dict[str, float]
    loss_plot: Path
    reused: bool  # True when a complete model_dir from an earlier attempt was reused


class TrainRecipe:
    """Fine-tune ``storage.base_model`` on ``dataset.names`` for one pipeline run (see the module docstring).

    Reads ``storage`` (mount_path, base_model, data_dir, output_root), ``training`` (every field), ``dataset``,
    ``cluster`` (accelerator_count, nodes, training_engine; image: logged) and ``mlflow``.
    """

    def __init__(self, cfg: PipelineConfig, kfp_run_id: str, dataset_hash: str = "", trial: int = 0):
        self.kfp_run_id, self.dataset_hash, self.trial = kfp_run_id, dataset_hash, trial
        self.label = trial_label(trial) if is_sweep(cfg) else ""  # "" without a sweep: names stay as they were
        self.settings = trial_settings(cfg, trial)
        self.paths = resolve_paths(cfg, kfp_run_id, trial=trial)  # fails fast: no base model, no data directory
        self.cfg = trial_config(cfg, trial)  # from here on, the trial's own settings
        # What setup() finds out: the verified split, the hashes of its train and validation sides, the device.
        self.split: SplitManifest | None = None
        self.train_hashes: dict[str, str] = {}
        self.val_hashes: dict[str, str] = {}
        self.gpu = False
        self.fingerprint: dict[str, str] = {}  # what the checkpoints are trained with (set when training starts)
        if cfg.training.trust_remote_code:
            log.warning("training.trust_remote_code is true: Python code from %s will run in the trainer",
                        self.paths.base_model)

    def setup(self) -> None:
        """Verify the data to train on, decide GPU or CPU, and end FAILED the run an attempt whose pod died left."""
        self.split = prepare_data(self.cfg, self.kfp_run_id, self.paths)
        self.dataset_hash = self.dataset_hash or self.split.dataset_hash
        self.train_hashes = {item.name: item.train_sha256 for item in self.split.datasets}  # the train sides
        # The validation sides choose the best checkpoint: another validation side is another training's result.
        self.val_hashes = {validation_entry_name(item.name): item.val_sha256 for item in self.split.datasets
                           if item.val_sha256}
        self.gpu = gpu_available(self.cfg)
        close_stale_runs(make_client(self.cfg), self.cfg, self.kfp_run_id, step=STEP, status="FAILED",
                         trial=self.label)

    def train(self) -> TrainResult:
        """In the step's MLflow run: log the params, reuse what an earlier attempt published or train, log the
        summary."""
        with step_run(self.cfg, self.kfp_run_id, STEP, trial=self.label) as (client, run_id):
            log_params(client, run_id, self._params(client.get_run(run_id).info.run_name))
            reused = self._reusable(client, run_id)
            summary = reused or self._fit(client, run_id)
            metrics = dict(summary.metrics)
            log_metrics(client, run_id, metrics, step=int(metrics.get("global_step", 0)))
            for name in (LOSS_PLOT, TRAINER_LOG, SUMMARY_FILE):
                if (self.paths.model_dir / name).is_file():
                    client.log_artifact(run_id, str(self.paths.model_dir / name), "train")
            client.set_tag(run_id, MODEL_DIR_TAG, str(self.paths.model_dir))
        if "best_step" in metrics:
            self._say(f"best checkpoint: step {metrics['best_step']:.0f} of {metrics['global_step']:.0f}, "
                      f"validation loss {metrics['best_val_loss']:.4f}; its weights are published")
        return TrainResult(self.paths.model_dir, metrics.get("train_loss", float("nan")), run_id, metrics,
                           self.paths.model_dir / LOSS_PLOT, reused is not None)

    def cleanup(self) -> None:
        """Send the metrics still queued in this process (the asynchronous logging)."""
        import mlflow

        mlflow.flush_async_logging()

    # What train() does, in call order --------------------------------------------------------------------------

    def _params(self, run_name: str) -> dict[str, str]:
        """The LLaMA-Factory settings as rendered, and the lineage under ``llmft.``: the data's hashes and rows, the
        image, the launcher, the libraries' versions and ``GIT_COMMIT`` (the whole config is on the parent run)."""
        params = render_params(self._sections(run_name, resume_from=None))
        params[f"{LINEAGE_PARAM_PREFIX}dataset_hash"] = self.dataset_hash
        params[f"{LINEAGE_PARAM_PREFIX}test_split_hash"] = self.split.test_split_hash
        if self.split.val_split_hash:
            params[f"{LINEAGE_PARAM_PREFIX}val_split_hash"] = self.split.val_split_hash
        if self.label:  # the trial and, as numbers, the settings it varies (MLflow plots them against val_loss)
            params[f"{LINEAGE_PARAM_PREFIX}trial"] = str(self.trial)
            params.update({f"sweep.{key}": json.dumps(value) for key, value in self.settings.items()})
        for item in self.split.datasets:
            params[f"{LINEAGE_PARAM_PREFIX}train_sha256.{item.name}"] = item.train_sha256
            params[f"{LINEAGE_PARAM_PREFIX}train_rows.{item.name}"] = str(item.train_rows)
        params[f"{LINEAGE_PARAM_PREFIX}image"] = self.cfg.cluster.image
        params[f"{LINEAGE_PARAM_PREFIX}launcher"] = launcher(self.cfg, self.gpu)
        for package in PACKAGES:
            with contextlib.suppress(metadata.PackageNotFoundError):
                params[f"{LINEAGE_PARAM_PREFIX}version.{package}"] = metadata.version(package)
        if os.environ.get("GIT_COMMIT"):
            params[f"{LINEAGE_PARAM_PREFIX}git_commit"] = os.environ["GIT_COMMIT"]
        return params

    def _reusable(self, client: Any, run_id: str) -> TrainSummary | None:
        """The summary of weights an earlier attempt published with this very configuration, or None."""
        summary = read_summary(self.paths.model_dir)
        if summary is None or summary.config_hash != self.cfg.config_hash():
            return None  # nothing published yet, or by another configuration (a rerun by hand)
        self._say(f"{self.paths.model_dir} is complete from an earlier attempt; reusing it")
        client.set_tag(run_id, REUSED_FROM_RUN_TAG, summary.mlflow_run_id)
        return summary

    def _fit(self, client: Any, run_id: str) -> TrainSummary:
        """Resume, render, launch, collect, publish."""
        resume = self._resume(client, run_id)
        self._render(client, run_id, resume)
        self._launch(client, run_id, resume)
        metrics, png = self._collect(client, run_id, resume)
        return self._publish(run_id, resume, metrics, png)

    def _resume(self, client: Any, run_id: str) -> ResumePoint | None:
        """Keep only this training's checkpoints and pick the newest complete one (read now: rotation may delete
        it while training)."""
        paths = self.paths
        self.fingerprint = training_fingerprint(self.cfg, base_model=paths.base_model,
                                                dataset_hashes={**self.train_hashes, **self.val_hashes}, gpu=self.gpu)
        other_training = keep_only_same_training(paths.output_dir, paths.discard_dir,
                                                 paths.run_dir / FINGERPRINT_FILE, self.fingerprint)
        if other_training:
            log.warning("not resuming the checkpoints in %s: %s; moved to %s, starting fresh", paths.output_dir,
                        other_training, paths.discard_dir)
            client.set_tag(run_id, DISCARDED_CHECKPOINTS_TAG, other_training[:5000])
        client.set_tag(run_id, TRAINING_FINGERPRINT_TAG, fingerprint_digest(self.fingerprint))
        resume, discarded = prepare_resume(paths.output_dir, paths.discard_dir, self._last_step())
        for name, why in discarded:
            log.warning("not resuming from %s: %s (moved to %s)", name, why, paths.discard_dir)
        trim_trainer_log(paths.output_dir / TRAINER_LOG, resume.step if resume else None)
        client.set_tag(run_id, RESUMED_FROM_TAG, resume.path.name if resume else "")
        settings = f"{describe_settings(self.settings)}, " if self.label else ""
        self._say(f"{settings}{'resuming from ' + str(resume.path) if resume else 'starting from scratch'}")
        return resume

    def _render(self, client: Any, run_id: str, resume: ResumePoint | None) -> None:
        """Write ``train.yaml`` (resuming from ``resume``, tokenized data shared by the run's trials) and log it."""
        # The trainer's MLflow callback renames the run it attaches to after run_name: keep the step's name.
        sections = self._sections(client.get_run(run_id).info.run_name, resume.path if resume else None)
        files = {**self.train_hashes, **self.val_hashes, DATA_CONFIG: self.split.dataset_info_sha256}
        key = tokenization_key(sections["dataset"], sections.get("eval", {}).get("eval_dataset", ""),
                               self.cfg.training.seed, files, self.fingerprint["base_model.sha256"])
        sections["dataset"]["tokenized_path"] = str(self.paths.dataset_dir.parent / TOKENIZED_DIR / key)
        header = (f"LLaMA-Factory training config rendered by components.train for KFP run {self.kfp_run_id}\n"
                  f"method {self.cfg.training.method}, config hash {self.cfg.config_hash()}\n"
                  f"run by hand: llamafactory-cli train {self.paths.train_yaml}")
        atomic_write_text(self.paths.train_yaml, render_yaml(sections, header))
        client.log_artifact(run_id, str(self.paths.train_yaml), "config")

    def _launch(self, client: Any, run_id: str, resume: ResumePoint | None) -> None:
        """Run the trainer here, or on the nodes of a multi-node job; a checkpoint at the last step needs neither."""
        log_path = self.paths.log_dir / f"train-{run_id}.log"
        try:
            if resume and resume.step == self._last_step():
                # An earlier attempt died after its last checkpoint; resumed there, the Trainer would train a step more.
                finish_from_checkpoint(resume.path, self.paths.output_dir)
                self._say(f"{resume.path.name} is the last step (training.max_steps); the best checkpoint's "
                          "weights are the result")
            elif self.cfg.cluster.nodes > 1:
                from components.train.multinode.training_job import run_training_job

                run_training_job(self.cfg, self.kfp_run_id, self.paths.train_yaml, {
                    "MLFLOW_RUN_ID": run_id, **system_metrics_env(os.environ), "DISABLE_VERSION_CHECK": "1",
                    "PYTHONUNBUFFERED": "1", **TRAINER_MLFLOW_HTTP}, trial=self.label)
            else:
                check_shm(self.cfg)
                launch_trainer(trainer_command(self.cfg, self.gpu, self.paths.train_yaml),
                               trainer_env(self.cfg, run_id, self.gpu), log_path)
        finally:
            # The trainer's MLflow client ends the run FINISHED when it exits; until this step ends, it is not.
            # (A step killed from here on then leaves it RUNNING, and the next attempt closes it FAILED.)
            with contextlib.suppress(Exception):
                client.update_run(run_id, status="RUNNING")
            if log_path.is_file():
                with contextlib.suppress(Exception):
                    client.log_artifact(run_id, str(log_path), "logs")

    def _collect(self, client: Any, run_id: str, resume: ResumePoint | None) -> tuple[dict[str, float], Path]:
        """The summary metrics, every point the tracking server missed re-logged, and the loss plot."""
        metrics, history = collect_metrics(self.paths.output_dir, resume)
        backfilled = backfill_metrics(client, run_id, history, after_step=resume.step if resume else 0)
        client.set_tag(run_id, BACKFILL_TAG, str(backfilled))
        if backfilled:
            self._say(f"re-logged {backfilled} metric points the tracking server missed")
        title = f"{self.cfg.name} {self.kfp_run_id} ({self.cfg.training.method})"
        return metrics, plot_loss(history, self.paths.run_dir / LOSS_PLOT, title)

    def _publish(self, run_id: str, resume: ResumePoint | None, metrics: dict[str, float],
                 png: Path) -> TrainSummary:
        """Publish the weights with their summary, the YAML and the plot in ``adapter/`` (or ``full/``); with a
        validation side they are the best checkpoint's, which must still be there (:func:`best_checkpoint`)."""
        best_checkpoint(self.paths.output_dir)
        summary = TrainSummary(
            metrics=metrics, mlflow_run_id=run_id, kfp_run_id=self.kfp_run_id, method=self.cfg.training.method,
            base_model=str(self.paths.base_model), resumed_from=resume.path.name if resume else None,
            dataset_hash=self.dataset_hash, dataset_hashes=self.train_hashes, config_hash=self.cfg.config_hash(),
            trial=self.trial, settings=self.settings,
            training_fingerprint=fingerprint_digest(self.fingerprint),
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        publish_weights(self.paths.output_dir, self.paths.model_dir, {
            LOSS_PLOT: png.read_bytes(), self.paths.train_yaml.name: self.paths.train_yaml.read_bytes(),
            SUMMARY_FILE: (summary.model_dump_json(indent=2) + "\n").encode()})
        return summary

    def _sections(self, run_name: str, resume_from: Path | None) -> dict[str, dict[str, Any]]:
        return render_sections(self.cfg, model_dir=self.paths.base_model, dataset_dir=self.paths.dataset_dir,
                               output_dir=self.paths.output_dir, run_name=run_name, gpu=self.gpu,
                               resume_from=resume_from)

    def _say(self, message: str) -> None:
        """One line for the step's log and the local console: ``[train] [trial-N: ]message``."""
        log.info(f"{self.label + ': ' if self.label else ''}{message}")

    def _last_step(self) -> int | None:
        return self.cfg.training.max_steps if self.cfg.training.max_steps > 0 else None


def train_model(cfg: PipelineConfig, kfp_run_id: str, dataset_hash: str = "", trial: int = 0) -> TrainResult:
    """Fine-tune and publish the weights for ``kfp_run_id`` (the recipe: setup, train, cleanup).

    Args:
        cfg: The resolved pipeline configuration.
        kfp_run_id: The KFP run id: names the run directory and tags the MLflow runs.
        dataset_hash: The data version from validate-dataset ("" when run by hand: the snapshot's is recorded).
        trial: The sweep trial to train (:mod:`components.train.trials`; 0 without a sweep).

    Raises:
        As the module docstring lists; ConfigError for a trial the sweep does not have.
    """
    recipe = TrainRecipe(cfg, kfp_run_id, dataset_hash, trial)
    try:
        recipe.setup()
        return recipe.train()
    finally:
        recipe.cleanup()


def run_step(config: str, kfp_run_id: str, dataset_hash: str, trial: int, weights: Any, metrics: Any,
             loss_plot: Any) -> tuple[str, float, str]:
    """The train pipeline step: train sweep trial ``trial`` (:func:`train_model`), then write the KFP outputs.

    Writes ``weights`` (a directory with ``model.json``, a :class:`components.train.outputs.ModelPointer`),
    ``metrics`` (:data:`KFP_METRICS`, as far as the run has them) and ``loss_plot`` (HTML, the plot embedded).

    Returns:
        (model_dir, train_loss, mlflow_run_id).

    Raises:
        ConfigError: the config parameter is invalid. Otherwise as :func:`train_model`.
    """
    from configs.loading import config_from_json

    configure_step_logging(STEP)

    cfg = config_from_json(config)
    result = train_model(cfg, kfp_run_id, dataset_hash, int(trial))  # kfp.local may hand an int back as a float
    for key in KFP_METRICS:
        if key in result.metrics:
            metrics.log_metric(key, round(result.metrics[key], 6))
    pointer = ModelPointer(model_dir=str(result.model_dir), method=cfg.training.method,
                           base_model=str(on_volume(cfg, cfg.storage.base_model)), pvc_name=cfg.storage.pvc_name,
                           mlflow_run_id=result.mlflow_run_id, dataset_hash=dataset_hash,
                           global_step=int(result.metrics.get("global_step", 0)))
    write_model(Path(weights.path) / "model.json", pointer)
    weights.metadata.update(pointer.model_dump())
    atomic_write_text(loss_plot.path, loss_plot_html(result.loss_plot, result.metrics))
    return str(result.model_dir), result.train_loss, result.mlflow_run_id


def render_only(cfg: PipelineConfig, run_id: str, trial: int = 0) -> str:
    """The LLaMA-Factory YAML this config gives (GPU settings when it asks for GPUs), without checking inputs.

    Raises:
        ConfigError: the sweep has no trial ``trial``.
    """
    paths = resolve_paths(cfg, run_id, check=False, trial=trial)
    cfg = trial_config(cfg, trial)
    gpu = cfg.cluster.accelerator_count > 0
    sections = render_sections(cfg, model_dir=paths.base_model, dataset_dir=paths.dataset_dir,
                               output_dir=paths.output_dir, run_name=STEP, gpu=gpu)
    return render_yaml(sections, f"rendered for {'GPU' if gpu else 'CPU'}")


def build_parser() -> argparse.ArgumentParser:
    """The command line: train as the pipeline's train step does, or print the YAML."""
    parser = new_parser("components.train.train", "Fine-tune with LLaMA-Factory as the pipeline's train step does.")
    parser.add_argument("--run-id", default=None, help="Run id (output/<run id>/); rerun with the same id to resume. "
                        "Default: cli-<UTC time>.")
    parser.add_argument("--dataset-hash", default="", help="The data version to record (from validate_dataset).")
    parser.add_argument("--trial", type=int, default=0, help="The sweep trial to train (0 to trials - 1; default 0, "
                        "the only one without a sweep).")
    parser.add_argument("--render-only", action="store_true",
                        help="Print the LLaMA-Factory YAML for this config and exit (no training, no MLflow).")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns 0 when trained, 1 when training failed, 2 on a usage or configuration error."""
    configure_step_logging(STEP)
    parser = build_parser()
    args = parser.parse_args(argv)
    run_id = args.run_id or time.strftime("cli-%Y%m%d-%H%M%S", time.gmtime())
    try:
        cfg = cli_config(parser, args)
        if args.render_only:
            print(render_only(cfg, run_id, args.trial))
            return 0
        result = train_model(cfg, run_id, args.dataset_hash, args.trial)
    except StepError as exc:
        return fail(parser, exc)
    print(json.dumps({"run_id": run_id, "model_dir": str(result.model_dir), "train_loss": result.train_loss,
                      "mlflow_run_id": result.mlflow_run_id, "reused": result.reused, "metrics": result.metrics},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
