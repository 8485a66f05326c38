"""Training step: fine-tune the base model with LLaMA-Factory (LoRA, QLoRA or full), tracked in MLflow, resumable.

Reads in one pass, in the order it runs (:func:`train_model`):

1. **Resolve paths** (:func:`resolve_paths`): base model, the run-scoped ``output/<kfp run id>/`` (``data/``,
   ``checkpoints/``, then ``adapter/`` or ``full/``). Concurrent runs never share a path.
   **Verify the data** (:func:`prepare_data`): the trainer reads only ``data/``, the train side of the split
   snapshot the validate step wrote; its manifest and file hashes are checked first, so data changed after
   validation is never trained on. Run by hand without that step, train builds the snapshot itself
   (:func:`components.data.validate_dataset.validate_config_data`, validating first).
2. **Resume** (:func:`components.train.checkpoints.prepare_resume`): a retried task resumes from the newest
   *complete* checkpoint; broken ones go to ``checkpoints-discarded/``. Costs nothing when there is none.
   Only the same training resumes them: the fingerprint recorded next to them
   (:mod:`components.train.fingerprint`: model, data, method, hyper-parameters; not the schedule) must match,
   else the whole ``checkpoints/`` moves to ``checkpoints-discarded/`` with the reason and training starts
   fresh. What the metrics need from the resumed checkpoint (step, tokens seen) is read here, before training:
   checkpoint rotation (``training.save_total_limit``) may delete that checkpoint while training. A newest
   checkpoint at ``training.max_steps`` (the last attempt died in its final save or while publishing) is the
   result: its weights are taken as they are, without launching a trainer that would train one step past it.
3. **Render** (:mod:`components.train.render`): the LLaMA-Factory YAML (method preset, precision, DeepSpeed,
   ``report_to: mlflow``) is written to ``train.yaml`` in the run directory and logged to MLflow.
4. **Launch** (:func:`launch_trainer`): LLaMA-Factory's ``run_exp`` in a subprocess (:func:`trainer_worker`),
   so a crash is an exit code with a message, never a silent death. More than one GPU
   (``cluster.accelerator_count``) or DeepSpeed runs it under torchrun, one process per GPU, as LLaMA-Factory's
   ``FORCE_TORCHRUN=1`` launcher does; NCCL then needs the in-memory ``/dev/shm`` the pipeline mounts.
   ``cluster.nodes > 1`` submits a multi-node job instead (:func:`components.train.multinode.training_job.run_training_job`:
   a Trainer v2 TrainJob or a PyTorchJob, ``cluster.training_engine``), whose nodes run the same worker under
   torchrun (:mod:`components.train.multinode.launch`).
5. **Collect** (:func:`collect_metrics`): train loss over all steps (resumes included), eval loss when
   ``training.val_size`` > 0, runtime, tokens/s; ``trainer_log.jsonl`` and a loss plot PNG. Reads only the
   trainer's final state in ``checkpoints/``, never a checkpoint directory.
6. **Publish** (:func:`publish_model`): the final weights go to ``adapter/`` (or ``full/``) through
   :func:`components.common.storage.atomic_directory`; a retry that finds it there reuses it instead of training again.

MLflow: one child run "train" under the pipeline's parent run (found by the tag ``kfp.run_id``). The
trainer attaches to it through ``MLFLOW_RUN_ID`` (its own metrics and TrainingArguments) before LLaMA-Factory
starts, so that the Hugging Face callback does not end it early (LLaMA-Factory's evaluation after training,
on whenever ``val_size`` > 0, would otherwise log into a new stray run); this step adds
our parameters under ``llmft.`` (config fields, the snapshot's data hashes and test split hash, image, package
versions, ``GIT_COMMIT``),
the YAML, the log, the plot and the summary metrics. A trainer that fails or is killed ends the run
FAILED; so does an attempt whose pod died (closed by the next attempt), even after its trainer exited (the
trainer's MLflow client ends the run FINISHED on exit; the step sets it back to RUNNING until it ends).
The tracking server is checked first and an unreachable one fails within 30 s.

A tracking-server outage *during* training does not stop it and loses no metric point: the trainer logs
asynchronously with a longer HTTP retry budget (:data:`TRAINER_MLFLOW_HTTP`, about a minute per request, so a
server restart is ridden out), and after the trainer exits :func:`backfill_metrics` re-logs, from
``trainer_state.json`` on the volume, any point the server still missed (tag ``llmft.backfilled_metric_points``).

Usage::

    python -m components.train.train --config configs/local.yaml --run-id demo
    python -m components.train.train --config configs/local.yaml --run-id demo --set training.max_steps=8
    python -m components.train.train --config configs/lora.yaml --render-only     # print the LLaMA-Factory YAML

Rerunning with the same ``--run-id`` resumes from its checkpoints. Exit codes: 0 trained, 1 the training
failed (the message says why), 2 a usage or configuration error.
"""

import argparse
import base64
import collections
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

from components.data.split import SplitManifest
from components.train.checkpoints import (
    FINGERPRINT_FILE,
    ResumePoint,
    fingerprint_digest,
    finish_from_checkpoint,
    keep_only_same_training,
    prepare_resume,
)
from components.train.fingerprint import training_fingerprint
from components.train.metrics import (
    metrics_callback,
    rendered_params,
    start_trainer_run,
    step_points,
    system_metrics_env,
)
from components.train.render import deepspeed_stage, render_sections, render_yaml
from configs.schema import PipelineConfig

STEP_NAME = "train"
PARAM_PREFIX = "llmft."
TRAINER_LOG = "trainer_log.jsonl"
TRAIN_YAML = "train.yaml"
SUMMARY_FILE = "train_summary.json"
LOSS_PLOT = "training_loss.png"
PACKAGES = ("llamafactory", "transformers", "torch", "peft", "deepspeed", "bitsandbytes")
TAIL_LINES = 400  # trainer output kept in memory for the error message (the whole log goes to the PVC)
STOP_GRACE_S = 30  # SIGTERM -> SIGKILL for a trainer we stop
MIN_SHM_BYTES = 1 << 30
# The trainer's MLflow HTTP settings. The step itself fails fast on an unreachable server
# (tracking.configure_environment: few retries); the trainer instead retries each request for about a minute
# (urllib3 backoff 0, 2, 4, 8, 16, 32 s), enough for a server restart. Its metric logging is asynchronous, so
# training never waits on the server, and a point that still fails is re-logged after training
# (backfill_metrics). Also given to every node of a multi-node job.
TRAINER_MLFLOW_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
TRAINER_PARENT_ENV = "LLMFT_TRAINER_PARENT"
# The launcher's own wrappers around a worker's real error; the error we report is the one before them.
_WRAPPER_ERRORS = ("ChildFailedError", "CalledProcessError")
_ERROR_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w.]*\.)?([A-Za-z_]\w*(?:Error|Exception|Interrupt))(?::\s?(.*))?$")

logger = logging.getLogger(__name__)


class TrainError(RuntimeError):
    """The inputs of the training step are unusable (base model, datasets); the message names the path."""


class TrainerFailed(RuntimeError):
    """LLaMA-Factory exited non-zero or was killed; the message carries its error and where the log is."""


class TrainPaths(NamedTuple):
    """Where one run's training reads and writes (all absolute, on the storage volume)."""

    base_model: Path
    dataset_dir: Path  # data/: the validated split snapshot (the trainer reads its train entries only)
    run_dir: Path
    output_dir: Path  # checkpoints/: the trainer's output_dir
    discard_dir: Path  # checkpoints-discarded/: incomplete checkpoints moved out of the way
    model_dir: Path  # adapter/ or full/: the published final weights
    train_yaml: Path
    log_dir: Path


class TrainResult(NamedTuple):
    """What the training step hands on."""

    model_dir: Path
    train_loss: float
    mlflow_run_id: str
    metrics: dict[str, float]
    loss_plot: Path
    reused: bool  # True when a complete model_dir from an earlier attempt was reused


# 1. Resolve paths ------------------------------------------------------------------------------------------


def resolve_paths(cfg: PipelineConfig, kfp_run_id: str, *, check: bool = True) -> TrainPaths:
    """The paths of this run's training, checking the inputs exist unless ``check`` is False.

    Reads ``storage`` (mount_path, base_model, data_dir, output_root) and ``training.method``.

    Raises:
        TrainError: the base model has no ``config.json``, or there is no split snapshot yet and the data
            directory has no ``dataset_info.json`` to build it from.
        StorageError: a path resolves outside the storage root.
    """
    from components.common.storage import run_dir
    from components.data.split import SNAPSHOT_DIR

    base = run_dir(cfg, kfp_run_id)
    source = cfg.storage.resolve(cfg.storage.data_dir)
    paths = TrainPaths(
        base_model=cfg.storage.resolve(cfg.storage.base_model),
        dataset_dir=base / SNAPSHOT_DIR,
        run_dir=base,
        output_dir=base / "checkpoints",
        discard_dir=base / "checkpoints-discarded",
        model_dir=base / ("full" if cfg.training.method == "full" else "adapter"),
        train_yaml=base / TRAIN_YAML,
        log_dir=base / "logs",
    )
    if check and not (paths.base_model / "config.json").is_file():
        raise TrainError(f"base model {paths.base_model} has no config.json (storage.base_model="
                         f"{cfg.storage.base_model!r}); put a Hugging Face model directory there")
    if check and not paths.dataset_dir.exists() and not (source / "dataset_info.json").is_file():
        raise TrainError(f"{source / 'dataset_info.json'} does not exist (storage.data_dir={cfg.storage.data_dir!r}); "
                         "the data directory needs LLaMA-Factory's dataset_info.json")
    return paths


def prepare_data(cfg: PipelineConfig, kfp_run_id: str, paths: TrainPaths) -> SplitManifest:
    """The split snapshot this run trains on, verified against its manifest.

    The validate step wrote it; a run by hand without that step builds it here, validating the data first.
    Reads ``dataset`` (names, test_fraction, min_test_rows, max_test_rows; all of it when it builds).

    Raises:
        TrainError: the data is invalid (the problems are listed); a snapshot file changed after validation
            or its manifest is invalid (the file is named); or the snapshot was split for other datasets
            or settings than this config's.
        StorageError: the volume refused a write while building the snapshot.
    """
    from components.data.split import SplitError, verify_snapshot

    names = cfg.dataset.names
    if not paths.dataset_dir.exists():
        from components.data.validate_dataset import validate_config_data

        result, split = validate_config_data(cfg, kfp_run_id)
        if split is None:
            listed = ", ".join(repr(name) for name in names)
            raise TrainError(f"cannot train on dataset{'s' if len(names) > 1 else ''} {listed} (dataset.names): "
                             f"{result.failure_message()}")
        print(f"[train] validated the data and wrote its split snapshot to {paths.dataset_dir}", flush=True)
    try:
        split = verify_snapshot(paths.dataset_dir)
    except SplitError as exc:
        raise TrainError(f"the validated training data cannot be used: {exc}") from None
    wanted = (cfg.dataset.test_fraction, cfg.dataset.min_test_rows, cfg.dataset.max_test_rows)
    made = (split.test_fraction, split.min_test_rows, split.max_test_rows)
    has = [item.name for item in split.datasets]
    if made != wanted or not set(names) <= set(has):
        raise TrainError(f"the split snapshot {paths.dataset_dir} holds {has} split with (test_fraction, "
                         f"min_test_rows, max_test_rows) = {made}; this config asks for {names} with {wanted}: "
                         "validate again (a new pipeline run, or a new --run-id by hand)")
    return split


def tracking_params(cfg: PipelineConfig, dataset_hash: str, split: SplitManifest, gpu: bool,
                    sections: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The train run's params: the LLaMA-Factory settings we rendered, under their own names
    (:func:`components.train.metrics.rendered_params`), and the lineage under ``llmft.``: the data's hashes and
    rows (from the split's manifest), the image, the launcher, the main libraries' versions and ``GIT_COMMIT``.
    The whole resolved config is on the pipeline's parent run."""
    params = rendered_params(sections)
    params[f"{PARAM_PREFIX}dataset_hash"] = dataset_hash or split.dataset_hash
    params[f"{PARAM_PREFIX}test_split_hash"] = split.test_split_hash
    for item in split.datasets:
        params[f"{PARAM_PREFIX}train_sha256.{item.name}"] = item.train_sha256
        params[f"{PARAM_PREFIX}train_rows.{item.name}"] = str(item.train_rows)
    params[f"{PARAM_PREFIX}image"] = cfg.cluster.image
    params[f"{PARAM_PREFIX}launcher"] = _launcher(cfg, gpu)
    for package in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            params[f"{PARAM_PREFIX}version.{package}"] = metadata.version(package)
    if os.environ.get("GIT_COMMIT"):
        params[f"{PARAM_PREFIX}git_commit"] = os.environ["GIT_COMMIT"]
    return {key: value[:6000] for key, value in params.items()}  # MLflow's limit on a param value


# 2-4. Render and launch ------------------------------------------------------------------------------------


def _gpu_available(cfg: PipelineConfig) -> bool:
    """Whether the trainer gets GPUs: none requested means a CPU pod; else ask CUDA (the nodes of a multi-node job
    have them)."""
    if cfg.cluster.accelerator_count == 0:
        return False
    if cfg.cluster.nodes > 1:
        return True
    import torch

    return torch.cuda.is_available()


def _launcher(cfg: PipelineConfig, gpu: bool) -> str:
    if cfg.cluster.nodes > 1:
        return cfg.cluster.training_engine
    return "torchrun" if cfg.cluster.accelerator_count > 1 or deepspeed_stage(cfg, gpu) else "single-process"


def trainer_command(cfg: PipelineConfig, gpu: bool, train_yaml: Path) -> list[str]:
    """The trainer's command line: :func:`trainer_worker` directly, or under torchrun with one process per GPU."""
    worker = ["-m", "components.train.train", "--trainer-worker", str(train_yaml)]
    if _launcher(cfg, gpu) != "torchrun":
        return [sys.executable, *worker]
    nproc = str(max(1, cfg.cluster.accelerator_count))
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", nproc,
            *worker]


def trainer_env(cfg: PipelineConfig, mlflow_run_id: str, gpu: bool) -> dict[str, str]:
    """The trainer's environment: our MLflow run, offline hubs, and LLaMA-Factory's torchrun settings."""
    env = dict(os.environ)
    # The trainer attaches to our run; an experiment name would make the HF callback look elsewhere.
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    env.update(
        MLFLOW_RUN_ID=mlflow_run_id,
        MLFLOW_TRACKING_URI=cfg.mlflow.tracking_uri,
        **system_metrics_env(),
        DISABLE_VERSION_CHECK="1",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
        **{TRAINER_PARENT_ENV: str(os.getpid())},  # the trainer dies with this process (_die_with_parent)
        **TRAINER_MLFLOW_HTTP,  # rides out a tracking-server restart (the step's own client fails fast)
        # The worker is `python -m components.train.train`: importable wherever this module was imported from.
        PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")])),
    )
    if _launcher(cfg, gpu) == "torchrun":
        # What LLaMA-Factory's own torchrun launcher sets (OPTIM_TORCH): less fragmentation, fewer NCCL stalls.
        env.update(NPROC_PER_NODE=str(max(1, cfg.cluster.accelerator_count)),
                   PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True", TORCH_NCCL_AVOID_RECORD_STREAMS="1")
    return env


def trainer_worker(train_yaml: Path) -> int:
    """What each trainer process runs: attach to the step's MLflow run (rank 0), then LLaMA-Factory's run_exp.

    The Hugging Face MLflow callback ends a run it opened itself when training ends, and LLaMA-Factory's
    evaluation after training (on whenever val_size > 0) then logs into a new, stray run. A run opened here
    first stays open for that evaluation and ends when the process exits; the step sets its final status.
    """
    _die_with_parent()
    import mlflow
    import yaml
    from llamafactory.train.tuner import run_exp

    run_id = os.environ.pop("MLFLOW_RUN_ID", "")
    if run_id and os.environ.get("RANK", "0") == "0":
        start_trainer_run(run_id)
    try:
        run_exp(yaml.safe_load(Path(train_yaml).read_text(encoding="utf-8")), callbacks=[metrics_callback()])
    finally:
        # Ends the system metrics monitor (its last samples flushed) and the async metric queue; the step sets
        # the run's final status itself.
        if mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.flush_async_logging()
    return 0


def _die_with_parent() -> None:
    """Have Linux SIGKILL this trainer process when the process that started it dies.

    The trainer runs in its own session (so that stopping it stops its torchrun workers too), which also
    shields it from a kill aimed at the step's process group: a SIGKILLed step (a killed ``run_local``) would
    leave it training, and its MLflow client would end the step's run FINISHED when it exits. In a pod the
    kernel ends every process of the container anyway. Under torchrun the parent is the elastic agent.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    # The step that launched us directly (trainer_env), or, under torchrun, whoever is the parent now.
    expected = os.getppid() if "LOCAL_RANK" in os.environ else int(os.environ.get(TRAINER_PARENT_ENV) or 0)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
    if expected and os.getppid() != expected:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def _check_shm(cfg: PipelineConfig) -> None:
    """Warn when several GPUs share a node with a small /dev/shm (NCCL then fails or crawls)."""
    if cfg.cluster.accelerator_count < 2:
        return
    with contextlib.suppress(OSError):
        stats = os.statvfs("/dev/shm")
        if stats.f_frsize * stats.f_blocks < MIN_SHM_BYTES:
            logger.warning("/dev/shm holds only %d MiB; NCCL needs more with %d GPUs: mount an in-memory emptyDir "
                           "at /dev/shm (cluster.shm_size)", stats.f_frsize * stats.f_blocks >> 20,
                           cfg.cluster.accelerator_count)


def trainer_error(lines: list[str]) -> str:
    """The error LLaMA-Factory (or a torchrun worker) died with, from the tail of its output ("" if none)."""
    found = ""
    for line in lines:
        match = _ERROR_LINE.match(line.rstrip())
        if match and match.group(1) not in _WRAPPER_ERRORS:
            found = line.strip()
    return found


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM (a cancelled run, a task timeout) into an exception, so that the trainer is stopped and the
    MLflow run ends FAILED; signals can only be caught in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise TrainerFailed(f"the training step received {signal.Signals(signum).name}; the trainer was stopped")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop(process: subprocess.Popen) -> None:
    """Stop the trainer and its torchrun workers (one process group), politely first."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def launch_trainer(command: list[str], env: dict[str, str], log_path: Path) -> None:
    """Run the trainer ``command`` and wait; its output goes to stdout and ``log_path``.

    Raises:
        TrainerFailed: the trainer exited non-zero or was killed (the message has its error and the log path),
            or this process got SIGTERM (the trainer is stopped first).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    with open(log_path, "a", encoding="utf-8") as log, _sigterm_raises():
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                   errors="replace", bufsize=1, start_new_session=True)
        try:
            for line in process.stdout:
                sys.stdout.write(line)
                log.write(line)
                tail.append(line)
            code = process.wait()
        except BaseException:
            _stop(process)
            raise
        finally:
            process.stdout.close()
            log.flush()
    if code != 0:
        error = trainer_error(list(tail)) or "no error message in its output"
        if code < 0:
            name = signal.Signals(-code).name
            cause = " (out of memory, or the process was stopped)" if name == "SIGKILL" else ""
            error = f"killed by {name}{cause}; last error seen: {error}"
        raise TrainerFailed(f"LLaMA-Factory training failed (exit code {code}): {error}. Full log: {log_path}")


def trim_trainer_log(path: Path, last_step: int | None) -> None:
    """Drop LLaMA-Factory log lines after the checkpoint we resume from (it appends, and would repeat them)."""
    from components.common.storage import atomic_write_text

    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            if last_step is not None and json.loads(line).get("current_steps", 0) <= last_step:
                kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


# 5. Collect ------------------------------------------------------------------------------------------------


def collect_metrics(output_dir: Path, resumed: ResumePoint | None) -> tuple[dict[str, float], list[dict]]:
    """Summary metrics and the log history of a finished training in ``output_dir``.

    ``train_loss`` is the step-weighted mean of the logged losses over the whole run, so a resumed run
    reports its full history (the Trainer's own figure only covers the last attempt); the last logged loss is
    the last point of the per-step ``loss`` metric. ``tokens_per_second`` counts this attempt's tokens over its
    runtime; it is left out when this attempt trained nothing (it resumed from the last step). ``resumed`` was
    read before training: the checkpoint it names may be gone by now (rotation), and nothing here reads it.

    Raises:
        TrainError: the trainer left no ``trainer_state.json`` (it did not finish).
    """
    try:
        state = json.loads((output_dir / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainError(f"the trainer finished without a readable {output_dir / 'trainer_state.json'}: {exc}") \
            from None
    results_file = output_dir / "all_results.json"
    results = json.loads(results_file.read_text(encoding="utf-8")) if results_file.is_file() else {}
    history = [entry for entry in state.get("log_history", []) if isinstance(entry, dict)]
    losses = [(entry["step"], entry["loss"]) for entry in history if "loss" in entry and "step" in entry]
    metrics: dict[str, float] = {"global_step": float(state.get("global_step", 0))}
    if losses:
        previous, total = 0, 0.0
        for step, loss in losses:
            total += loss * (step - previous)
            previous = step
        metrics["train_loss"] = total / previous if previous else losses[-1][1]
    elif "train_loss" in results:
        metrics["train_loss"] = float(results["train_loss"])
    eval_losses = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    if eval_losses or "eval_loss" in results:
        metrics["eval_loss"] = float(eval_losses[-1] if eval_losses else results["eval_loss"])
    runtime = float(results.get("train_runtime", 0.0))
    tokens = int(state.get("num_input_tokens_seen") or 0) - (resumed.tokens_seen if resumed else 0)
    metrics["train_runtime_s"] = runtime
    if runtime > 0 and tokens > 0:
        metrics["tokens_per_second"] = tokens / runtime
    metrics["num_input_tokens_seen"] = float(state.get("num_input_tokens_seen") or 0)
    metrics["resumed_from_step"] = float(resumed.step if resumed else 0)
    return metrics, history


BACKFILL_TAG = "llmft.backfilled_metric_points"


def trainer_points(history: list[dict], after_step: int = 0) -> dict[str, dict[int, float]]:
    """The metric points the trainer's MLflow callback logs for ``history`` (trainer_state.json's log_history),
    as ``{key: {step: value}}``: :func:`components.train.metrics.step_points` of each entry, at its step.

    Only steps after ``after_step`` (the checkpoint a resumed attempt started from) belong to this attempt.
    """
    points: dict[str, dict[int, float]] = {}
    for entry in history:
        step = entry.get("step")
        if not isinstance(step, int) or step <= after_step:
            continue
        for key, value in step_points(entry).items():
            points.setdefault(key, {})[step] = value
    return points


def backfill_metrics(client: Any, run_id: str, history: list[dict], after_step: int = 0) -> int:
    """Log the trainer's metric points that the run lacks (the server was down); return how many were logged.

    ``trainer_state.json`` on the volume is the source of truth (:func:`trainer_points`). Idempotent: a point
    already in the run, matched by key and step, is not logged again. Backfilled points carry the time of
    the backfill (the trainer log has no timestamps); their steps and values are the trainer's.

    Raises:
        MlflowException: the tracking server refused the history query or the batch.
    """
    from mlflow.entities import Metric

    missing = []
    now = int(time.time() * 1000)
    for key, by_step in trainer_points(history, after_step).items():
        logged = {metric.step for metric in client.get_metric_history(run_id, key)}
        missing += [Metric(key, value, now, step) for step, value in sorted(by_step.items()) if step not in logged]
    for start in range(0, len(missing), 1000):  # log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=missing[start:start + 1000])
    return len(missing)


def plot_loss(history: list[dict], png_path: Path, title: str) -> Path:
    """Draw training (and eval) loss by step into ``png_path`` (matplotlib, no global pyplot state)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    axes = figure.add_subplot()
    for key, label in (("loss", "train loss"), ("eval_loss", "eval loss")):
        points = [(entry["step"], entry[key]) for entry in history if key in entry and "step" in entry]
        if points:
            axes.plot(*zip(*points, strict=True), marker="o" if key == "eval_loss" else "", label=label)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png_path, format="png")
    return png_path


def loss_plot_html(png_path: Path, metrics: dict[str, float]) -> str:
    """A self-contained HTML page with the loss plot embedded as base64 (what the Kubeflow UI shows)."""
    encoded = base64.b64encode(png_path.read_bytes()).decode()
    rows = "".join(f"<tr><td>{key}</td><td>{value:.6g}</td></tr>" for key, value in sorted(metrics.items()))
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Training loss</title></head><body>"
            f"<img alt=\"training loss\" src=\"data:image/png;base64,{encoded}\"/>"
            f"<table>{rows}</table></body></html>\n")


# 6. Publish ------------------------------------------------------------------------------------------------


def _move(source: Path, target: Path) -> None:
    try:
        # Same volume: instant, no second copy of the weights, and no hard link that a later trainer run
        # could rewrite in place under the published name.
        os.replace(source, target)
    except OSError:
        shutil.copy2(source, target)


def publish_model(output_dir: Path, model_dir: Path, extra: dict[str, bytes]) -> Path:
    """Move the trainer's final weights (the files at the top of ``output_dir``) and write ``extra`` files into
    ``model_dir`` atomically: a crash leaves either the complete directory or none. The checkpoints stay, so
    a retry after a crash here resumes from the last one and saves the weights again.

    Raises:
        StorageError: the volume refused the write.
    """
    from components.common.storage import atomic_directory

    with atomic_directory(model_dir, replace=True) as staging:
        for source in sorted(output_dir.iterdir()):
            if source.is_file() and source.name not in extra:
                _move(source, staging / source.name)
        for name, data in extra.items():
            (staging / name).write_bytes(data)
    return model_dir


def _read_summary(model_dir: Path) -> dict | None:
    """The summary of a model published by an earlier attempt of this run, or None."""
    with contextlib.suppress(OSError, ValueError):
        summary = json.loads((model_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
        if isinstance(summary, dict) and isinstance(summary.get("metrics"), dict):
            return summary
    return None


# The recipe --------------------------------------------------------------------------------------------


def _log_params(client: Any, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(key, value) for key, value in params.items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[start:start + 100])


def _train(cfg: PipelineConfig, kfp_run_id: str, paths: TrainPaths, client: Any, run_id: str, gpu: bool,
           dataset_hash: str, hashes: dict[str, str]) -> dict:
    """Resume, render, launch, collect and publish; returns the summary written next to the weights."""
    from components.common.storage import atomic_write_text

    fingerprint = training_fingerprint(cfg, base_model=paths.base_model, dataset_hashes=hashes, gpu=gpu)
    other_training = keep_only_same_training(paths.output_dir, paths.discard_dir,
                                             paths.run_dir / FINGERPRINT_FILE, fingerprint)
    if other_training:
        logger.warning("not resuming the checkpoints in %s: %s; moved to %s, starting fresh", paths.output_dir,
                       other_training, paths.discard_dir)
        client.set_tag(run_id, "llmft.discarded_checkpoints", other_training[:5000])
    client.set_tag(run_id, "llmft.training_fingerprint", fingerprint_digest(fingerprint))
    last_step = cfg.training.max_steps if cfg.training.max_steps > 0 else None
    resume, discarded = prepare_resume(paths.output_dir, paths.discard_dir, last_step)
    for name, why in discarded:
        logger.warning("not resuming from %s: %s (moved to %s)", name, why, paths.discard_dir)
    resume_from = resume.path if resume else None
    trim_trainer_log(paths.output_dir / TRAINER_LOG, resume.step if resume else None)
    client.set_tag(run_id, "llmft.resumed_from", resume_from.name if resume_from else "")
    print(f"[train] {'resuming from ' + str(resume_from) if resume_from else 'starting from scratch'}", flush=True)

    # The trainer's MLflow callback renames the run it attaches to after run_name: keep the step's name.
    sections = render_sections(cfg, model_dir=paths.base_model, dataset_dir=paths.dataset_dir,
                               output_dir=paths.output_dir, run_name=client.get_run(run_id).info.run_name,
                               gpu=gpu, resume_from=resume_from)
    header = (f"LLaMA-Factory training config rendered by components.train.train for KFP run {kfp_run_id}\n"
              f"method {cfg.training.method}, config hash {cfg.config_hash()}\n"
              f"run by hand: llamafactory-cli train {paths.train_yaml}")
    atomic_write_text(paths.train_yaml, render_yaml(sections, header))
    client.log_artifact(run_id, str(paths.train_yaml), "config")

    log_path = paths.log_dir / f"train-{run_id}.log"
    try:
        if resume and resume.step == last_step:
            # An earlier attempt died after its last checkpoint; resumed there, the Trainer would train a step more.
            finish_from_checkpoint(resume.path, paths.output_dir)
            print(f"[train] {resume.path.name} is the last step (training.max_steps); its weights are the result",
                  flush=True)
        elif cfg.cluster.nodes > 1:
            from components.train.multinode.training_job import run_training_job

            run_training_job(cfg, kfp_run_id, paths.train_yaml, {
                "MLFLOW_RUN_ID": run_id, **system_metrics_env(), "DISABLE_VERSION_CHECK": "1",
                "PYTHONUNBUFFERED": "1", **TRAINER_MLFLOW_HTTP})
        else:
            _check_shm(cfg)
            launch_trainer(trainer_command(cfg, gpu, paths.train_yaml), trainer_env(cfg, run_id, gpu), log_path)
    finally:
        # The trainer's MLflow client ends the run FINISHED when it exits; until this step ends, it is not.
        # (A step killed from here on then leaves it RUNNING, and the next attempt closes it FAILED.)
        with contextlib.suppress(Exception):
            client.update_run(run_id, status="RUNNING")
        if log_path.is_file():
            with contextlib.suppress(Exception):
                client.log_artifact(run_id, str(log_path), "logs")

    metrics, history = collect_metrics(paths.output_dir, resume)
    backfilled = backfill_metrics(client, run_id, history, after_step=resume.step if resume else 0)
    client.set_tag(run_id, BACKFILL_TAG, str(backfilled))
    if backfilled:
        print(f"[train] re-logged {backfilled} metric points the tracking server missed", flush=True)
    png = plot_loss(history, paths.run_dir / LOSS_PLOT, f"{cfg.name} {kfp_run_id} ({cfg.training.method})")
    summary = {"metrics": metrics, "mlflow_run_id": run_id, "kfp_run_id": kfp_run_id, "method": cfg.training.method,
               "base_model": str(paths.base_model), "resumed_from": resume_from.name if resume_from else None,
               "dataset_hash": dataset_hash, "dataset_hashes": hashes, "config_hash": cfg.config_hash(),
               "training_fingerprint": fingerprint_digest(fingerprint),
               "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    publish_model(paths.output_dir, paths.model_dir, {
        LOSS_PLOT: png.read_bytes(),
        TRAIN_YAML: paths.train_yaml.read_bytes(),
        SUMMARY_FILE: (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode(),
    })
    return summary


def train_model(cfg: PipelineConfig, kfp_run_id: str, dataset_hash: str = "") -> TrainResult:
    """Fine-tune ``storage.base_model`` on ``dataset.names`` with LLaMA-Factory and publish the weights.

    Reads ``storage`` (mount_path, base_model, data_dir, output_root), ``training`` (all fields: method preset,
    hyper-parameters, precision, checkpoints, val_size, trust_remote_code), ``dataset``
    (:func:`prepare_data`), ``cluster`` (accelerator_count: torchrun; nodes and training_engine: a multi-node
    job; image: logged) and ``mlflow`` (tracking_uri, experiment). See the module docstring for the phases.
    A model already published for this run with the same configuration is reused (a KFP retry after the weights
    were published trains nothing).

    Args:
        cfg: The resolved pipeline configuration.
        kfp_run_id: The KFP run id: names the run directory and tags the MLflow runs.
        dataset_hash: The data version from the validate step ("" when run by hand: the snapshot's is recorded).

    Returns:
        The published model directory, the train loss, the MLflow run id and the metrics.

    Raises:
        TrainError: the base model is missing, the data is invalid, a snapshot file changed after validation
            (the file is named), or the trainer left no state.
        TrainerFailed: LLaMA-Factory exited non-zero or was killed (its error is in the message).
        TrackingUnavailable: the MLflow server does not answer within the preflight timeout.
        StorageError: the volume refused a write.
        TrainingJobError: the multi-node job failed or could not be submitted (``cluster.nodes`` > 1).
    """
    import mlflow
    from mlflow.entities import Metric

    from components.common.tracking import close_stale_runs, make_client, step_run

    paths = resolve_paths(cfg, kfp_run_id)
    if cfg.training.trust_remote_code:
        logger.warning("training.trust_remote_code is true: Python code from %s will run in the trainer",
                       paths.base_model)
    split = prepare_data(cfg, kfp_run_id, paths)
    dataset_hash = dataset_hash or split.dataset_hash
    hashes = {item.name: item.train_sha256 for item in split.datasets}  # what is trained on: the train side
    gpu = _gpu_available(cfg)
    # An attempt whose pod died left its run RUNNING; it failed, whoever ended it.
    close_stale_runs(make_client(cfg), cfg, kfp_run_id, step=STEP_NAME, status="FAILED")
    try:
        with step_run(cfg, kfp_run_id, STEP_NAME) as (client, run_id):
            sections = render_sections(cfg, model_dir=paths.base_model, dataset_dir=paths.dataset_dir,
                                       output_dir=paths.output_dir, run_name=client.get_run(run_id).info.run_name,
                                       gpu=gpu)
            _log_params(client, run_id, tracking_params(cfg, dataset_hash, split, gpu, sections))
            summary = _read_summary(paths.model_dir)
            # Reuse only what this very configuration produced (a rerun by hand may have changed it).
            reused = summary is not None and summary.get("config_hash") == cfg.config_hash()
            if reused:
                print(f"[train] {paths.model_dir} is complete from an earlier attempt; reusing it", flush=True)
                client.set_tag(run_id, "llmft.reused_from_run", summary.get("mlflow_run_id", ""))
            else:
                summary = _train(cfg, kfp_run_id, paths, client, run_id, gpu, dataset_hash, hashes)
            metrics = {key: float(value) for key, value in summary["metrics"].items()}
            now, step = int(time.time() * 1000), int(metrics.get("global_step", 0))
            client.log_batch(run_id, metrics=[Metric(key, value, now, step) for key, value in metrics.items()])
            for name in (LOSS_PLOT, TRAINER_LOG, SUMMARY_FILE):
                if (paths.model_dir / name).is_file():
                    client.log_artifact(run_id, str(paths.model_dir / name), "train")
            client.set_tag(run_id, "llmft.model_dir", str(paths.model_dir))
    finally:
        mlflow.flush_async_logging()
    return TrainResult(paths.model_dir, metrics.get("train_loss", float("nan")), run_id, metrics,
                       paths.model_dir / LOSS_PLOT, reused)


def run_step(config: str, kfp_run_id: str, dataset_hash: str, adapter: Any, metrics: Any,
             loss_plot: Any) -> tuple[str, float, str]:
    """The train pipeline step: parse the config, train (:func:`train_model`), write the KFP outputs.

    Writes ``adapter`` (a directory with ``model.json`` pointing at the weights on the PVC, metadata:
    model_dir, method, base_model, global_step, mlflow_run_id, dataset_hash), ``metrics`` (train_loss,
    eval_loss when val_size > 0, train_runtime_s, tokens_per_second, global_step, resumed_from_step)
    and ``loss_plot`` (HTML with the plot embedded).

    Returns:
        (model_dir, train_loss, mlflow_run_id).

    Raises:
        ConfigError: the config parameter is invalid. Otherwise as :func:`train_model`.
    """
    from components.common.storage import atomic_write_text
    from configs.schema import config_from_json

    cfg = config_from_json(config)
    result = train_model(cfg, kfp_run_id, dataset_hash)
    for key in ("train_loss", "eval_loss", "train_runtime_s", "tokens_per_second", "global_step",
                "resumed_from_step"):
        if key in result.metrics:
            metrics.log_metric(key, round(result.metrics[key], 6))
    pointer = {"model_dir": str(result.model_dir), "method": cfg.training.method,
               "base_model": str(cfg.storage.resolve(cfg.storage.base_model)), "pvc_name": cfg.storage.pvc_name,
               "mlflow_run_id": result.mlflow_run_id, "dataset_hash": dataset_hash,
               "global_step": int(result.metrics.get("global_step", 0))}
    Path(adapter.path).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(adapter.path) / "model.json", json.dumps(pointer, indent=2) + "\n")
    adapter.metadata.update(pointer)
    atomic_write_text(loss_plot.path, loss_plot_html(result.loss_plot, result.metrics))
    return str(result.model_dir), result.train_loss, result.mlflow_run_id


# CLI ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="python -m components.train.train",
                                     description="Fine-tune with LLaMA-Factory as the pipeline's train step does.")
    parser.add_argument("--config", help="A config YAML or a preset name (configs/<name>.yaml). Required.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="Override a config value (repeatable).")
    parser.add_argument("--run-id", default=None, help="Run id (output/<run id>/); rerun with the same id to resume. "
                        "Default: cli-<UTC time>.")
    parser.add_argument("--dataset-hash", default="", help="The data version to record (from validate_dataset).")
    parser.add_argument("--render-only", action="store_true",
                        help="Print the LLaMA-Factory YAML for this config and exit (no training, no MLflow).")
    # Internal: the trainer subprocess (see trainer_worker); torchrun starts one per GPU.
    parser.add_argument("--trainer-worker", metavar="TRAIN_YAML", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns 0 when trained, 1 when training failed, 2 on a usage or configuration error."""
    from components.common.storage import StorageError
    from components.common.tracking import TrackingUnavailable
    from configs.schema import ConfigError, load_config

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.trainer_worker:
        return trainer_worker(Path(args.trainer_worker))
    if not args.config:
        print(f"{parser.prog}: error: --config is required", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, overrides=args.overrides)
    except ConfigError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    run_id = args.run_id or time.strftime("cli-%Y%m%d-%H%M%S", time.gmtime())
    if args.render_only:
        paths = resolve_paths(cfg, run_id, check=False)
        gpu = cfg.cluster.accelerator_count > 0
        print(render_yaml(render_sections(cfg, model_dir=paths.base_model, dataset_dir=paths.dataset_dir,
                                          output_dir=paths.output_dir, run_name=STEP_NAME,
                                          gpu=gpu), f"rendered for {'GPU' if gpu else 'CPU'}"))
        return 0
    try:
        result = train_model(cfg, run_id, args.dataset_hash)
    except (TrainError, TrainerFailed, TrackingUnavailable, StorageError) as exc:
        print(f"{parser.prog}: training failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"run_id": run_id, "model_dir": str(result.model_dir), "train_loss": result.train_loss,
                      "mlflow_run_id": result.mlflow_run_id, "reused": result.reused, "metrics": result.metrics},
                     indent=2))
    return 0


__all__ = ["TrainError", "TrainResult", "TrainerFailed", "main", "run_step", "train_model"]


if __name__ == "__main__":
    raise SystemExit(main())
