"""What a run records besides its files: params, metrics and tags, in as few requests as MLflow allows."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from configs.schema import PipelineConfig

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def public_params(cfg: PipelineConfig) -> dict[str, str]:
    """The parent run's params: every run-form field and every other field that differs from its default,
    flattened (``training.learning_rate``): what a person compares between pipeline runs."""
    from configs.form import by_path, canonical

    form = by_path()
    defaults = _flatten(PipelineConfig().model_dump(mode="json", exclude_none=True))
    params = {}
    for path, value in _flatten(cfg.model_dump(mode="json", exclude_none=True)).items():
        if value != "" and (path in form or canonical(value) != canonical(defaults.get(path))):
            params[path] = value if isinstance(value, str) else json.dumps(value)
    return {key: value[:MAX_PARAM_CHARS] for key, value in params.items()}


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and key != "gpu_node_selector":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    """Log ``params`` in batches of 100 (MLflow's limit per request), each value cut to MLflow's limit."""
    from mlflow.entities import Param

    items = [Param(key, str(value)[:MAX_PARAM_CHARS]) for key, value in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100])


def log_metrics(client: MlflowClient, run_id: str, values: dict[str, float], step: int = 0) -> None:
    """Log ``values`` now, at ``step``, in one request."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, float(value), now, step) for key, value in values.items()])


def set_run_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    """Set several tags on a run in one request."""
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])
