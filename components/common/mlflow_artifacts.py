"""Finding a file among a run's MLflow artifacts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


def find_artifact(client: MlflowClient, run_id: str, wanted: Callable[[str], bool], depth: int = 2) -> str | None:
    """The first artifact path (breadth first, ``depth`` levels) whose file name satisfies ``wanted``."""
    folders = [None]
    for _ in range(depth):
        deeper = []
        for folder in folders:
            for item in client.list_artifacts(run_id, folder):
                if item.is_dir:
                    deeper.append(item.path)
                elif wanted(Path(item.path).name):
                    return item.path
        folders = deeper
    return None
