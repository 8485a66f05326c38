"""Run the whole fine-tuning pipeline on this machine, on the CPU, through ``kfp.local``.

    python -m pipelines.run_local                              # configs/local.yaml, storage in ./storage
    python -m pipelines.run_local --set training.max_steps=40  # any config value can be overridden
    python -m pipelines.run_local --storage /tmp/storage --config configs/local.yaml
    python -m pipelines.run_local --verbose                    # stream every task's whole output

This is the same pipeline function that ``pipelines.compile`` compiles for the cluster, run by
``kfp.local.SubprocessRunner(use_venv=False)`` (Kubernetes settings do not apply locally). The
storage directory is laid out like the NFS volume; what is missing is created: a tiny random base
model (built locally, deterministic), the sample alpaca dataset and the sample MMLU data shipped in
``components/demo``. MLflow uses a SQLite store inside the storage directory. A second run
compares against the champion the first run promoted.

The console shows one line per task and the training loss every few steps (:mod:`pipelines.console`);
each task's whole output goes to ``<storage>/logs/<run>/``, and a failed task's last lines are shown.

A local run that is SIGKILLed runs no exit handler and leaves its MLflow runs RUNNING; the next local
run on the same host ends them KILLED before it starts (:mod:`components.common.local_runs`: the parent run
records this process's host, pid and start time). Ctrl-C ends it with one line (exit code 130): the tasks stop
(a train step stops its trainer), and every MLflow run left open is ended KILLED.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from configs.errors import StepError
from configs.loading import load_config
from configs.schema import PipelineConfig

if TYPE_CHECKING:
    from pipelines.console import TaskConsole

ANSI = re.compile(r"\x1b\[[0-9;]*m")

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "local.yaml"


class PipelineFailed(StepError, RuntimeError):
    """A task of the local run failed; the console showed the tail of its log and where the whole log is."""


def localise(cfg: PipelineConfig, storage: Path | None) -> PipelineConfig:
    """Make the storage root and a SQLite tracking URI absolute, so every task process agrees on them."""
    root = (storage or Path(cfg.storage.mount_path)).resolve()
    uri = cfg.mlflow.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    return cfg.model_copy(update={
        "storage": cfg.storage.model_copy(update={"mount_path": str(root)}),
        "mlflow": cfg.mlflow.model_copy(update={"tracking_uri": uri}),
    })


def prepare_storage(cfg: PipelineConfig) -> list[str]:
    """Create what the run needs and is missing: base model, sample data, MMLU sample. Returns what was made.

    Safe when several runs start at once on one storage root: each piece is built in a temporary sibling
    and renamed into place whole, and a run that loses the race uses the copy that won.

    Raises:
        StorageError: a piece cannot be written (full or read-only volume, a file in the way).
    """
    from components.common.storage import on_volume
    from components.demo.samples import SAMPLE_DATA, SAMPLE_MMLU
    from components.demo.tiny_model import build_tiny_llama

    made = []
    base = on_volume(cfg, cfg.storage.base_model)
    if _build_once(base, "config.json", lambda tmp: build_tiny_llama(tmp, seed=0)):
        made.append(f"tiny base model -> {base}")
    data = on_volume(cfg, cfg.storage.data_dir)
    if _build_once(data, "dataset_info.json", lambda tmp: _copy_into(SAMPLE_DATA, tmp), in_place=True):
        made.append(f"sample dataset -> {data}")
    mmlu = on_volume(cfg, cfg.storage.eval_data_dir)
    if _build_once(mmlu, "test", lambda tmp: _copy_into(SAMPLE_MMLU, tmp), in_place=True):
        made.append(f"sample MMLU -> {mmlu}")
    _ensure_experiment(cfg)
    return made


def _copy_into(source: Path, target: Path) -> None:
    shutil.copytree(source, target, dirs_exist_ok=True)


def _build_once(final: Path, marker: str, build: Any, in_place: bool = False) -> bool:
    """Build ``final`` (complete when ``final/marker`` exists) unless it is there; True when this call built it.

    With ``in_place`` an existing directory without the marker (a user's own data directory) is filled in
    place, as before; otherwise it is an error.
    """
    from components.common.storage import StorageError, atomic_directory

    if (final / marker).exists():
        return False
    if in_place and final.is_dir():
        build(final)
        return True
    try:
        with atomic_directory(final) as tmp:
            build(tmp)
    except StorageError:
        if (final / marker).exists():  # a concurrent run renamed its complete copy into place first
            return False
        raise
    return True


def _ensure_experiment(cfg: PipelineConfig) -> None:
    """Create the experiment with its artifacts inside the storage root (SQLite stores default to ./mlruns).

    Runs started together on one root take turns here: the first SQLite client creates the schema by
    running MLflow's migrations, which fail when two processes run them on one new database at once.
    """
    if not cfg.mlflow.tracking_uri.startswith("sqlite:///"):
        return
    from mlflow.tracking import MlflowClient

    from components.common.storage import on_volume
    from components.common.tags import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND

    database = Path(cfg.mlflow.tracking_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.parent / ".init.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
        if client.get_experiment_by_name(cfg.mlflow.experiment) is None:
            artifacts = on_volume(cfg, "mlflow") / "artifacts"
            client.create_experiment(cfg.mlflow.experiment, artifact_location=artifacts.as_uri(),
                                     tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})


def run_pipeline(cfg: PipelineConfig, arguments: dict[str, Any] | None = None) -> None:
    """Run the pipeline for ``cfg`` with kfp.local, its run parameters at their defaults unless ``arguments``
    gives them (e.g. ``{"b_learning_rate": 2e-3}``, as the Kubeflow UI's form would).

    Raises:
        PipelineFailed: a task failed.
    """
    from kfp import local

    from components.common.local_launcher import local_launcher_env
    from components.common.storage import on_volume
    from pipelines.finetune import build_pipeline

    os.environ.update({"MLFLOW_TRACKING_URI": cfg.mlflow.tracking_uri, "HF_HUB_OFFLINE": "1",
                       "TOKENIZERS_PARALLELISM": "false", "DISABLE_VERSION_CHECK": "1", "MPLBACKEND": "Agg",
                       **local_launcher_env()})  # the parent run records who to check for liveness
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(on_volume(cfg, "kfp-local")), raise_on_error=True)
    try:
        build_pipeline(cfg)(**(arguments or {}))
    except StepError:
        raise
    except RuntimeError as exc:  # how kfp.local (raise_on_error) says that a task failed
        raise PipelineFailed(f"pipeline failed: {ANSI.sub('', str(exc))}") from exc


@contextlib.contextmanager
def preparing_storage(cfg: PipelineConfig) -> Iterator[None]:
    """Inside the block, a volume that refuses a write (a file where the storage root should be, a full or
    read-only volume) is a StorageError naming the storage root.

    Raises:
        StorageError: as above.
    """
    from components.common.storage import StorageError

    try:
        yield
    except (StorageError, OSError) as exc:
        raise StorageError(f"cannot prepare the storage root {cfg.storage.mount_path}: {exc}") from exc


def new_log_dir(logs: Path, name: str) -> Path:
    """Create and return ``logs/<name>``, or ``logs/<name>-2``, ``-3``... when a run that started in the same second
    took it: each run's task logs get a directory of their own (created exclusively, so two runs cannot share one).

    Raises:
        OSError: the directory cannot be created (a full or read-only volume, a file in the way).
    """
    logs.mkdir(parents=True, exist_ok=True)
    attempt = 1
    while True:
        candidate = logs / (name if attempt == 1 else f"{name}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            attempt += 1
        else:
            return candidate


@contextlib.contextmanager
def task_console(cfg: PipelineConfig, log_dir: Path) -> Iterator[TaskConsole]:
    """stdout and stderr sorted into per-task logs under ``log_dir`` and a short console, while the block runs."""
    from pipelines.console import TaskConsole

    for name in ("mlflow", "alembic"):  # the store's first-use chatter, printed by this process
        logging.getLogger(name).setLevel(logging.WARNING)
    console = TaskConsole(sys.stdout, log_dir, logging_steps=cfg.training.logging_steps)
    with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
        try:
            yield console
        finally:
            console.close()


def close_orphaned_runs(cfg: PipelineConfig) -> list[str]:
    """End the MLflow runs that earlier local runs on this host left RUNNING when they were killed.

    Raises:
        TrackingUnavailable: the tracking server does not answer.
    """
    from components.common.local_runs import close_orphaned_local_runs
    from components.common.mlflow_client import make_client

    return close_orphaned_local_runs(make_client(cfg), cfg)


def summarise(cfg: PipelineConfig, since_ms: int, launcher: dict[str, str] | None = None) -> dict[str, Any]:
    """Collect what the run produced from MLflow and the storage root: the newest parent run since ``since_ms``,
    of the launcher ``launcher`` names (its launcher tags, e.g. ``local_launcher.this_launcher_tags()``; None:
    any), so that two local runs side by side each report their own."""
    from mlflow.tracking import MlflowClient

    from components.common import tags
    from components.common.storage import on_volume, run_dir
    from components.common.typed_files import read_model
    from components.gate.compare import COMPARISON_FILE
    from components.gate.compare import STEP as COMPARE
    from components.gate.registry import CHAMPION, registered_aliases
    from components.gate.rules import Comparison

    client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    # With the run started after since_ms, host and pid name the launcher (the process start may be empty).
    ours = "".join(f" and tags.`{key}` = '{value}'" for key, value in (launcher or {}).items()
                   if key != tags.LAUNCHER_START_TAG)
    parents = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{tags.ROLE_TAG}` = '{tags.PARENT_ROLE}'{ours}",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    if not parents or parents[0].info.start_time < since_ms:
        raise RuntimeError("no pipeline run was recorded in MLflow")
    parent = parents[0]
    kfp_run_id = parent.data.tags[tags.KFP_RUN_TAG]
    children = {
        run.data.tags.get(tags.STEP_TAG): run
        for run in client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`{tags.KFP_RUN_TAG}` = '{kfp_run_id}'",
            order_by=["attributes.start_time ASC"],
        )
        if run.data.tags.get(tags.ROLE_TAG) != tags.PARENT_ROLE
    }
    summary: dict[str, Any] = {"kfp_run_id": kfp_run_id, "parent_run": parent.info.run_id,
                               "parent_status": parent.info.status, "steps": sorted(k for k in children if k)}
    summary["dataset_hash"] = _first_tag(children, tags.DATASET_HASH_TAG)
    winner = parent.data.tags.get(tags.WINNER_RUN_TAG)  # a sweep's winning trial (select-trial tags the parent)
    train = client.get_run(winner) if winner else children.get("train")
    summary["train_loss"] = train.data.metrics.get("train_loss") if train else None
    summary["best_val_loss"] = train.data.metrics.get("best_val_loss") if train else None
    summary["winner"] = parent.data.tags.get(tags.WINNER_TRIAL_TAG)
    summary["trials"] = int(parent.data.tags.get(tags.TRIALS_TAG, "1"))
    comparison_file = run_dir(cfg, kfp_run_id) / COMPARE / COMPARISON_FILE
    if comparison_file.exists():
        comparison = read_model(comparison_file, Comparison, "comparison file")
        summary.update(decision=comparison.decision, headline=comparison.headline, reasons=comparison.reasons,
                       baseline=comparison.baseline_name, mmlu_candidate=comparison.mmlu.candidate_micro,
                       mmlu_baseline=comparison.mmlu.baseline_micro, task_candidate=comparison.task.candidate_mean_nll,
                       task_baseline=comparison.task.baseline_mean_nll, task_change=comparison.task.relative_change)
        if comparison.generation is not None:
            generation = comparison.generation
            gated = generation.gated()
            summary.update(generation=f"{gated.name} {gated.candidate:.2f} candidate, {gated.baseline:.2f} "
                                      f"{comparison.baseline_name} ({gated.mean_difference:+.2f}); stopped "
                                      f"{generation.candidate_stopped}/{generation.rows} candidate, "
                                      f"{generation.baseline_stopped}/{generation.rows} {comparison.baseline_name}")
    name = cfg.mlflow.registered_model_name
    versions = client.search_model_versions(f"name = '{name}' and tag.`{tags.KFP_RUN_TAG}` = '{kfp_run_id}'")
    aliases = registered_aliases(client, name)
    if versions:
        number = str(versions[0].version)
        summary["registered"] = f"{name} v{number}"
        summary["aliases"] = sorted(alias for alias, version in aliases.items() if version == number)
    summary["champion"] = f"{name} v{aliases[CHAMPION]}" if CHAMPION in aliases else None
    models_dir = on_volume(cfg, cfg.storage.models_root) / name
    current = models_dir / "current"
    summary["served_model"] = str(current.resolve()) if current.exists() else None
    summary["mlflow_ui"] = f"mlflow ui --backend-store-uri {cfg.mlflow.tracking_uri} --port 5000"
    summary["mlflow_page"] = runs_page("http://127.0.0.1:5000", experiment.experiment_id)
    return summary


def runs_page(mlflow_url: str, experiment_id: str) -> str:
    """The experiment's runs table in MLflow's UI, in its model-training view: MLflow 3.17 picks the view with its
    GenAI / Model training switch (GenAI until a browser switches once), not from the experiment's kind tag."""
    return f"{mlflow_url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def _first_tag(runs: dict[str, Any], key: str) -> str | None:
    for run in runs.values():
        if key in run.data.tags:
            return run.data.tags[key]
        if key in run.data.params:
            return run.data.params[key]
    return None


def format_summary(summary: dict[str, Any], seconds: float) -> str:
    """A short human summary of one run."""
    def fmt(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value if value is not None else "n/a")

    lines = [
        "",
        f"== Pipeline run {summary['kfp_run_id']} finished in {seconds:.0f} s ==",
        f"dataset hash      : {fmt(summary.get('dataset_hash'))}",
        f"train loss        : {fmt(summary.get('train_loss'))}",
        f"validation loss   : {fmt(summary.get('best_val_loss'))} (best checkpoint)"
        + (f"; {summary['winner']} of {summary['trials']} trials won" if summary.get("trials", 1) > 1 else ""),
        f"held-out loss     : {fmt(summary.get('task_candidate'))} candidate, {fmt(summary.get('task_baseline'))} "
        f"{fmt(summary.get('baseline'))}",
        f"MMLU              : {fmt(summary.get('mmlu_candidate'))} candidate, {fmt(summary.get('mmlu_baseline'))} "
        f"{fmt(summary.get('baseline'))}",
        *([f"generated answers : {summary['generation']}"] if summary.get("generation") else []),
        f"decision          : {fmt(summary.get('headline'))}",
        *[f"                    - {reason}" for reason in summary.get("reasons", [])],
        f"registered        : {fmt(summary.get('registered'))} aliases={summary.get('aliases', [])}",
        f"champion          : {fmt(summary.get('champion'))}",
        f"served model      : {fmt(summary.get('served_model'))}",
        f"MLflow UI         : {summary['mlflow_ui']}",
        f"                    then open {summary['mlflow_page']}",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags of ``python -m pipelines.run_local``."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.run_local",
                                     description="Run the fine-tuning pipeline locally (kfp.local, CPU).")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="Config YAML or preset name (default: local).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="Override a config value (repeatable).")
    parser.add_argument("--storage", type=Path, help="Storage root (default: the config's mount_path, ./storage).")
    parser.add_argument("--verbose", action="store_true",
                        help="Stream every task's whole output instead of one line per task.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 when the pipeline succeeded, 1 when a task failed or the storage root cannot be prepared,
    2 on a bad config."""
    from components.common.cli import fail

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = localise(load_config(args.config, overrides=args.overrides), args.storage)
        started = time.time()
        name = f"{cfg.name}-{cfg.training.method}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(started))}"
        with preparing_storage(cfg):
            log_dir = None if args.verbose else new_log_dir(Path(cfg.storage.mount_path) / "logs", name)
    except StepError as exc:
        return fail(parser, exc)
    from components.common.local_launcher import this_launcher_tags

    quiet = contextlib.nullcontext() if log_dir is None else task_console(cfg, log_dir)
    print(f"Running {cfg.name} ({cfg.training.method}) locally with kfp.local"
          + ("" if args.verbose else f"; every task's log goes to {log_dir}"), flush=True)
    try:
        with quiet as console:
            say = console.say if console else print
            with preparing_storage(cfg):
                made = prepare_storage(cfg)
            for line in made:
                say(f"prepared: {line}")
            closed = close_orphaned_runs(cfg)  # TrackingUnavailable: checked before the pipeline starts
            if closed:
                say(f"closed {len(closed)} MLflow runs left RUNNING by a killed local run: {', '.join(closed)}")
            run_pipeline(cfg)  # PipelineFailed: the console showed the failed task's log tail
    except StepError as exc:
        return fail(parser, exc)
    except KeyboardInterrupt:  # Ctrl-C: the tasks got it too (one process group)
        print(interrupted(cfg, log_dir), file=sys.stderr)
        return 130
    print(format_summary(summarise(cfg, int(started * 1000) - 1, this_launcher_tags()), time.time() - started))
    return 0


def interrupted(cfg: PipelineConfig, log_dir: Path | None, grace_s: float = 60.0) -> str:
    """After Ctrl-C: wait for the task processes to end (each ends its own MLflow run KILLED, a train step stops its
    trainer and every atomic write removes its temporary file), kill what is left after ``grace_s``, then end this
    launcher's runs still RUNNING (the parent run) KILLED. A second Ctrl-C does not cut this short. Returns the
    one line to print."""
    import signal

    import psutil

    from components.common.local_runs import close_interrupted_local_runs
    from components.common.mlflow_client import make_client

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tasks = psutil.Process().children(recursive=True)
    _, alive = psutil.wait_procs(tasks, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=10)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # MLflow's store chatter is not the line we print
            closed = close_interrupted_local_runs(make_client(cfg), cfg)
        runs = f"ended {len(closed)} MLflow run(s) KILLED"
    except Exception as exc:  # the tracking server is gone too: say so in the one line
        runs = f"could not end its MLflow runs ({type(exc).__name__}: {str(exc)[:200]}); the next run ends them KILLED"
    killed = f"killed {len(alive)} task process(es) that did not stop within {grace_s:.0f} s, " if alive else ""
    logs = f"; task logs in {log_dir}" if log_dir else ""
    return f"interrupted (Ctrl-C): {killed}{runs}{logs}"


if __name__ == "__main__":
    raise SystemExit(main())
