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
    from pipelines.local_summary import format_summary, summarise

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
        summary = summarise(cfg, int(started * 1000) - 1, this_launcher_tags())
    except StepError as exc:
        return fail(parser, exc)
    except KeyboardInterrupt:  # Ctrl-C: the tasks got it too (one process group)
        print(interrupted(cfg, log_dir), file=sys.stderr)
        return 130
    print(format_summary(summary, time.time() - started))
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
