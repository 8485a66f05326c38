"""Launch the trainer on this node and supervise it: one process, or torchrun with one process per GPU.

The trainer runs in a subprocess (:mod:`components.train.worker`), so a crash is an exit code with a
message, never a silent death of the step. More than one GPU (``cluster.accelerator_count``) or DeepSpeed runs
it under torchrun, as LLaMA-Factory's ``FORCE_TORCHRUN=1`` launcher does; NCCL then needs the in-memory
``/dev/shm`` the pipeline mounts. The trainer gets its own session (stopping it stops its torchrun workers too)
and dies with the step (:func:`components.train.worker.die_with_parent`). SIGTERM to the step stops the trainer,
politely first, and fails the step. ``cluster.nodes > 1`` does not come here: the nodes of a multi-node job run
the same worker under torchrun (:mod:`components.train.multinode`).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from components.common.logs import step_logger
from components.common.mlflow_client import TRAINER_MLFLOW_HTTP
from components.common.signals import sigterm_raises
from components.common.system_metrics import system_metrics_env
from components.train.multinode.torchrun import TORCHRUN_ENV, WORKER_MODULE, importable_pythonpath
from components.train.render import deepspeed_stage
from configs.errors import StepError
from configs.schema import PipelineConfig

TRAINER_PARENT_ENV = "LLMFT_TRAINER_PARENT"  # the step's pid: the trainer dies with it (worker.die_with_parent)
TAIL_LINES = 400  # trainer output kept in memory for the error message (the whole log goes to the PVC)
STOP_GRACE_S = 30  # SIGTERM -> SIGKILL for a trainer we stop
MIN_SHM_BYTES = 1 << 30
# The launcher's own wrappers around a worker's real error; the error we report is the one before them.
_WRAPPER_ERRORS = ("ChildFailedError", "CalledProcessError")
_ERROR_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w.]*\.)?([A-Za-z_]\w*(?:Error|Exception|Interrupt))(?::\s?(.*))?$")

logger = step_logger("train")  # the train step launches the trainer


class TrainerFailed(StepError, RuntimeError):
    """LLaMA-Factory exited non-zero or was killed; the message carries its error and where the log is."""


def gpu_available(cfg: PipelineConfig) -> bool:
    """Whether the trainer gets GPUs: none requested means a CPU pod; else ask CUDA (the nodes of a multi-node job
    have them)."""
    if cfg.cluster.accelerator_count == 0:
        return False
    if cfg.cluster.nodes > 1:
        return True
    import torch

    return torch.cuda.is_available()


def launcher(cfg: PipelineConfig, gpu: bool) -> str:
    """How the trainer runs: the multi-node engine, ``torchrun`` or ``single-process``."""
    if cfg.cluster.nodes > 1:
        return cfg.cluster.training_engine
    return "torchrun" if cfg.cluster.accelerator_count > 1 or deepspeed_stage(cfg, gpu) else "single-process"


def trainer_command(cfg: PipelineConfig, gpu: bool, train_yaml: Path) -> list[str]:
    """The trainer's command line: the worker directly, or under torchrun with one process per GPU."""
    worker = ["-m", WORKER_MODULE, str(train_yaml)]
    if launcher(cfg, gpu) != "torchrun":
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
        **system_metrics_env(env),
        DISABLE_VERSION_CHECK="1",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
        **{TRAINER_PARENT_ENV: str(os.getpid())},
        **TRAINER_MLFLOW_HTTP,  # rides out a tracking-server restart (the step's own client fails fast)
        PYTHONPATH=importable_pythonpath(env),
    )
    if launcher(cfg, gpu) == "torchrun":
        env.update(NPROC_PER_NODE=str(max(1, cfg.cluster.accelerator_count)), **TORCHRUN_ENV)
    return env


def check_shm(cfg: PipelineConfig) -> None:
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


def _sigterm_error(signum: int) -> TrainerFailed:
    return TrainerFailed(f"the training step received {signal.Signals(signum).name}; the trainer was stopped")


def launch_trainer(command: list[str], env: dict[str, str], log_path: Path) -> None:
    """Run the trainer ``command`` and wait; its output goes to stdout and ``log_path``.

    Raises:
        TrainerFailed: the trainer exited non-zero or was killed (the message has its error and the log path),
            or this process got SIGTERM (the trainer is stopped first).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    with open(log_path, "a", encoding="utf-8") as log, sigterm_raises(_sigterm_error):
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
