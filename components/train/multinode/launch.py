"""The entry point every node of a multi-node training job (TrainJob or PyTorchJob) runs.

The training engine describes a node's place in the job with its own variables. This module reads
them, then replaces itself with ``torchrun`` (``python -m torch.distributed.run``) given
this node's rank, the node count, the master's address and port and one process per GPU, each
running the trainer worker of the single-node train step (``python -m components.train.worker <yaml>``,
:mod:`components.train.worker`): the same code trains on one node and on many, and rank 0 attaches to the
step's MLflow run (``MLFLOW_RUN_ID``)::

    python -m components.train.multinode.launch --gpus-per-node 8 /storage/output/RUN/train.yaml
    python -m components.train.multinode.launch --gpus-per-node 8 /storage/output/RUN/train.yaml --dry-run

``--dry-run`` prints the node's place in the job, the extra environment and the command instead of
running it (to check a pod's environment). Exit codes: 0 ok (or the exec replaced this process), 1 a
missing or contradictory variable or a missing YAML file, 2 a usage error.

The engines' variables:

- Kubeflow Trainer v2 (``trainer.kubeflow.org/v1alpha1`` TrainJob, a torch runtime): only ``PET_NNODES``,
  ``PET_NODE_RANK`` (the pod's completion index, 0 to N-1), ``PET_MASTER_ADDR`` (node 0's pod:
  ``<job>-node-0-0.<job>``), ``PET_MASTER_PORT`` and ``PET_NPROC_PER_NODE`` (``numProcPerNode``);
- Training Operator v1 (``kubeflow.org/v1`` PyTorchJob), every version: ``MASTER_ADDR``, ``MASTER_PORT``,
  ``RANK`` (the replica's node index: master 0, worker i is i + 1) and ``WORLD_SIZE``; before 1.7
  ``WORLD_SIZE`` is the number of replicas (nodes); from 1.7 it is nodes x ``nprocPerNode`` and the five
  ``PET_*`` variables are set as well.

``PET_*`` wins when present; ``NNODES`` falls back to ``WORLD_SIZE / PET_NPROC_PER_NODE`` and then to
``WORLD_SIZE`` (the pre-1.7 meaning). ``PET_NPROC_PER_NODE`` must agree with ``--gpus-per-node`` (one
process per GPU of the pod; ``auto`` means just that).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from components.common.cli import fail
from components.common.logs import configure_step_logging
from components.train.multinode.torchrun import TORCHRUN_ENV, WORKER_MODULE, importable_pythonpath
from configs.errors import StepError

STEP = "multinode-launch"  # its lines: [multinode-launch] ...


class LaunchEnvError(StepError, ValueError):
    """The replica's environment does not describe a usable multi-node job; the message names the variable."""


def _first(environ: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    """The first of ``names`` set to a non-empty value, as ``(name, value)``."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def _integer(name: str, value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise LaunchEnvError(f"{name}={value!r} is not an integer") from None
    if number < minimum:
        raise LaunchEnvError(f"{name}={value!r} must be >= {minimum}")
    return number


def _node_count(environ: Mapping[str, str]) -> int:
    """Nodes in the job, from PET_NNODES, else WORLD_SIZE (divided by PET_NPROC_PER_NODE from operator 1.7)."""
    found = _first(environ, "PET_NNODES")
    if found:
        name, value = found
        if ":" in value:
            raise LaunchEnvError(f"{name}={value!r} is an elastic range; these jobs are not elastic "
                                 "(the job must not set an elastic policy)")
        return _integer(name, value, 1)
    found = _first(environ, "WORLD_SIZE")
    if not found:
        raise LaunchEnvError("neither PET_NNODES nor WORLD_SIZE is set; is this running in a TrainJob or PyTorchJob "
                             "node?")
    world_size = _integer(*found, 1)
    per_node = _first(environ, "PET_NPROC_PER_NODE")
    if per_node and per_node[1].isdigit() and int(per_node[1]) > 0:
        procs = int(per_node[1])
        if world_size % procs:
            raise LaunchEnvError(f"WORLD_SIZE={world_size} is not a multiple of PET_NPROC_PER_NODE={procs}")
        return world_size // procs
    return world_size


def _procs_per_node(environ: Mapping[str, str], gpus_per_node: int) -> int:
    """One process per GPU (at least one, on CPU); PET_NPROC_PER_NODE, when a number, must say the same."""
    wanted = max(1, gpus_per_node)
    found = _first(environ, "PET_NPROC_PER_NODE")
    if found is None or found[1] in ("auto", "gpu"):  # torch runtimes' "one per GPU"
        return wanted
    procs = _integer(*found, 1)
    if procs != wanted:
        raise LaunchEnvError(f"{found[0]}={procs} does not match --gpus-per-node {gpus_per_node} "
                             f"(one process per GPU of this pod: {wanted})")
    return procs


def map_operator_env(environ: Mapping[str, str], gpus_per_node: int) -> dict[str, str]:
    """This node's place in the job, from the training engine's variables (Trainer v2 or Training Operator).

    Args:
        environ: The replica's environment (``os.environ`` in the pod).
        gpus_per_node: GPUs of this pod (``cluster.accelerator_count``); one process per GPU,
            at least one process (CPU).

    Returns:
        ``NNODES``, ``NODE_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` and ``NPROC_PER_NODE`` (strings;
        LLaMA-Factory's launcher reads the same names), the arguments of :func:`launch_command`.

    Raises:
        LaunchEnvError: a variable is missing, not a number, out of range (``NODE_RANK >= NNODES``,
            a port outside 1-65535), an elastic range, or ``PET_NPROC_PER_NODE`` differs from
            ``gpus_per_node``; the message names the variable.
    """
    nnodes = _node_count(environ)
    rank = _first(environ, "PET_NODE_RANK", "RANK")
    if not rank:
        raise LaunchEnvError("neither PET_NODE_RANK nor RANK is set; is this running in a TrainJob or PyTorchJob "
                             "node?")
    node_rank = _integer(*rank, 0)
    if node_rank >= nnodes:
        raise LaunchEnvError(f"{rank[0]}={node_rank} is not below the node count {nnodes}")
    address = _first(environ, "PET_MASTER_ADDR", "MASTER_ADDR")
    if not address:
        raise LaunchEnvError("neither PET_MASTER_ADDR nor MASTER_ADDR is set (a torch runtime of Kubeflow Trainer, "
                             "or the Training Operator for a job with a Master replica, sets them)")
    port = _first(environ, "PET_MASTER_PORT", "MASTER_PORT")
    if not port:
        raise LaunchEnvError("neither PET_MASTER_PORT nor MASTER_PORT is set (a torch runtime of Kubeflow Trainer "
                             "sets it; a PyTorchJob's master container needs a port named pytorchjob-port)")
    master_port = _integer(*port, 1)
    if master_port > 65535:
        raise LaunchEnvError(f"{port[0]}={master_port} is not a TCP port")
    return {
        "NNODES": str(nnodes),
        "NODE_RANK": str(node_rank),
        "MASTER_ADDR": address[1],
        "MASTER_PORT": str(master_port),
        "NPROC_PER_NODE": str(_procs_per_node(environ, gpus_per_node)),
    }


def launch_command(mapped: Mapping[str, str], train_yaml: Path, python: str | None = None) -> list[str]:
    """torchrun with this node's place in the job (static rendezvous at the master, as LLaMA-Factory's launcher
    does), one process per GPU, each running the single-node trainer worker on ``train_yaml``.

    Args:
        mapped: The result of :func:`map_operator_env`.
        train_yaml: The LLaMA-Factory training YAML on the shared volume.
        python: The interpreter; default this one (the image's, where torch and LLaMA-Factory are installed).
    """
    return [python or sys.executable, "-m", "torch.distributed.run",
            "--nnodes", mapped["NNODES"], "--node-rank", mapped["NODE_RANK"],
            "--nproc-per-node", mapped["NPROC_PER_NODE"],
            "--master-addr", mapped["MASTER_ADDR"], "--master-port", mapped["MASTER_PORT"],
            "-m", WORKER_MODULE, str(train_yaml)]


def launch_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What the launch adds to the replica's environment: LLaMA-Factory's torchrun settings and a PYTHONPATH
    under which ``components`` is the package this module came from."""
    return {**TORCHRUN_ENV, "PYTHONPATH": importable_pythonpath(environ)}


def build_parser() -> argparse.ArgumentParser:
    """The command line of one node of a multi-node job."""
    parser = argparse.ArgumentParser(
        prog="python -m components.train.multinode.launch",
        description="Map the training engine's environment to torchrun and exec the trainer worker.",
    )
    parser.add_argument("train_yaml", type=Path, help="The LLaMA-Factory training YAML on the shared volume.")
    parser.add_argument("--gpus-per-node", type=int, required=True, help="GPUs of this pod (one process each).")
    parser.add_argument("--dry-run", action="store_true",
                        help="Print the node's place in the job, the added environment and the command; run nothing.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Map the environment and exec torchrun with the trainer worker; returns only on errors or ``--dry-run``."""
    log = configure_step_logging(STEP)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        mapped = map_operator_env(os.environ, args.gpus_per_node)
        command, extra_env = launch_command(mapped, args.train_yaml), launch_env(os.environ)
        if args.dry_run:
            print(json.dumps({"node": mapped, "env": extra_env, "command": command}, indent=2))
            return 0
        if not args.train_yaml.is_file():
            raise LaunchEnvError(f"the training YAML {args.train_yaml} does not exist on this node (is the storage "
                                 "PVC mounted at the same path as in the train step?)")
        log.info(f"node {mapped['NODE_RANK']} of {mapped['NNODES']}, {mapped['NPROC_PER_NODE']} process(es), master "
                 f"{mapped['MASTER_ADDR']}:{mapped['MASTER_PORT']}")
        _exec(command, {**os.environ, **extra_env})
    except StepError as exc:
        return fail(parser, exc)
    return 1  # not reached: exec replaces the process


def _exec(command: list[str], env: dict[str, str]) -> None:
    """Replace this process with ``command``.

    Raises:
        LaunchEnvError: the command cannot run here.
    """
    try:
        os.execve(command[0], command, env)
    except OSError as exc:
        raise LaunchEnvError(f"cannot run {command[0]}: {exc.strerror}") from None


if __name__ == "__main__":
    raise SystemExit(main())
