"""The trainer process: attach to the train step's MLflow run, then run LLaMA-Factory's ``run_exp``.

Started by the train step (:func:`components.train.launch.trainer_command`, one process or one per GPU under
torchrun) and by every node of a multi-node job (:mod:`components.train.multinode.launch`)::

    python -m components.train.worker /storage/output/RUN/train.yaml

Rank 0 attaches to the step's run (``MLFLOW_RUN_ID``) with MLflow's system metrics monitor sampling meanwhile,
and logs the trainer's points through :func:`components.train.metrics.metrics_callback`. The tokenized data is
loaded from the run's shared ``tokenized_path`` when another trial (or attempt) built it, or built there once
(:mod:`components.train.tokenized`). Hugging Face's own
MLflow callback ends a run it opened itself when training ends, and LLaMA-Factory's evaluation after training
(on whenever there are validation rows) then logs into a new, stray run; a run opened here first stays open for that
evaluation and ends when the process exits. The step sets the run's final status.

Exit codes: 0 trained, 1 training raised (the traceback is the trainer's log), 2 a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path

from components.train.launch import TRAINER_PARENT_ENV
from components.train.multinode.torchrun import WORKER_MODULE


def die_with_parent() -> None:
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


def run_trainer(train_yaml: Path) -> int:
    """Attach to the step's MLflow run (rank 0), run LLaMA-Factory on ``train_yaml``, end the run's monitors.

    GPU figures in the system metrics need NVIDIA's bindings (``nvidia-ml-py``, in the image's ``gpu`` extra);
    CPU, memory, disk and network come from ``psutil``.
    """
    die_with_parent()
    import mlflow
    import yaml
    from llamafactory.train.tuner import run_exp

    from components.train.metrics import metrics_callback
    from components.train.tokenized import claim, publish_callback

    args = yaml.safe_load(Path(train_yaml).read_text(encoding="utf-8"))
    callbacks = [metrics_callback()]
    held = None
    if args.get("tokenized_path"):
        held = claim(Path(args["tokenized_path"]), rank=int(os.environ.get("RANK", "0")))
        if held.path is None:
            args.pop("tokenized_path")  # tokenize as usual, without saving
        else:
            args["tokenized_path"] = str(held.path)
        if held.build_into is not None:
            callbacks.append(publish_callback(held))
    run_id = os.environ.pop("MLFLOW_RUN_ID", "")
    if run_id and os.environ.get("RANK", "0") == "0":
        mlflow.start_run(run_id=run_id, log_system_metrics=True)
    try:
        run_exp(args, callbacks=callbacks)
    finally:
        if held is not None:
            held.release()
        # Ends the system metrics monitor (its last samples flushed) and the async metric queue; the step sets
        # the run's final status itself.
        if mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.flush_async_logging()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The trainer's command line: the rendered LLaMA-Factory YAML."""
    parser = argparse.ArgumentParser(prog=f"python -m {WORKER_MODULE}",
                                     description="Run LLaMA-Factory on a rendered training YAML, attached to the "
                                                 "train step's MLflow run (MLFLOW_RUN_ID).")
    parser.add_argument("train_yaml", type=Path, help="The LLaMA-Factory training YAML (train.yaml in the run dir).")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the trainer; LLaMA-Factory's errors propagate (the step reads them from the output)."""
    return run_trainer(build_parser().parse_args(argv).train_yaml)


if __name__ == "__main__":
    raise SystemExit(main())
