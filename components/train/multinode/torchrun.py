"""How the trainer worker is started under torchrun, on one node or many: its module, the ``PYTHONPATH`` under
which it imports this very package, and LLaMA-Factory's torchrun settings.

Both launchers use it: the train step's own (:mod:`components.train.launch`, several GPUs on one node) and the
entry point of every node of a multi-node job (:mod:`components.train.multinode.launch`). It lives here, below
both, so that ``components.train`` imports ``components.train.multinode`` and never the other way round.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

WORKER_MODULE = "components.train.worker"
# The directory that holds the components package: the trainer and every node import it from there.
PACKAGE_ROOT = Path(__file__).resolve().parents[3]
# What LLaMA-Factory's own torchrun launcher sets (OPTIM_TORCH): less fragmentation, fewer NCCL stalls.
TORCHRUN_ENV = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "TORCH_NCCL_AVOID_RECORD_STREAMS": "1"}


def importable_pythonpath(environ: Mapping[str, str]) -> str:
    """``PYTHONPATH`` under which ``python -m components...`` imports this very package, whatever the working
    directory (the trainer on this node, every node of a multi-node job)."""
    return os.pathsep.join(filter(None, [str(PACKAGE_ROOT), environ.get("PYTHONPATH")]))
