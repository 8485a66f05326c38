"""What a pipeline run's MLflow runs are called: decided once by resolve-config, kept in ``run_name.json``."""

from __future__ import annotations

import re
import time

from pydantic import BaseModel, ConfigDict, Field

from components.common.storage import run_dir
from components.common.typed_files import read_model, write_model
from configs.schema import PipelineConfig

RUN_NAME_FILE = "run_name.json"
# How kfp.local names a run: "<pipeline>-YYYY-MM-DD-HH-MM-SS-ffffff" (not a name anybody chose).
_KFP_LOCAL_NAME = re.compile(r".+-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-\d{6}")


class RunName(BaseModel):
    """``run_name.json`` in the run directory: what this pipeline run's MLflow runs are called."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=250, description="The parent run's name; steps are '<step> · name'.")


def write_run_name(cfg: PipelineConfig, kfp_run_id: str, kfp_run_name: str) -> str:
    """Decide the name of this pipeline run's MLflow runs and keep it in the run directory; return it.

    The KFP run's own name when it has one; otherwise (kfp.local names a run after the pipeline and the time)
    ``<pipeline>-<method>-<UTC time>``.

    Raises:
        StorageError: the volume refused the write.
    """
    name = kfp_run_name.strip()
    if not name or _KFP_LOCAL_NAME.fullmatch(name):
        name = f"{cfg.name}-{cfg.training.method}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    write_model(run_dir(cfg, kfp_run_id) / RUN_NAME_FILE, RunName(name=name[:250]))
    return name[:250]


def run_name(cfg: PipelineConfig, kfp_run_id: str) -> str:
    """The name :func:`write_run_name` chose for this pipeline run (``<pipeline>-<run id>`` when there is none).

    Raises:
        TypedFileError: ``run_name.json`` exists but does not validate (the file and field are named).
    """
    path = run_dir(cfg, kfp_run_id) / RUN_NAME_FILE
    if not path.is_file():
        return f"{cfg.name}-{kfp_run_id}"
    return read_model(path, RunName, "the run's name").name
