"""Files passed between steps, as pydantic models: one way to write them, one way to read them.

Every file one step leaves for another has a pydantic model next to the code that writes it:

============================  ===========================================  ==========================
file                          model                                        written by
============================  ===========================================  ==========================
``resolved_config.json``      :class:`configs.schema.PipelineConfig`       resolve-config
``run_name.json``             :class:`components.common.run_name.RunName`  resolve-config
``data/split.json``           :class:`components.data.split.SplitManifest` validate-dataset
``model.json``                :class:`components.train.outputs.ModelPointer`   train
``train_summary.json``        :class:`components.train.outputs.TrainSummary`   train
``merge_info.json``           :class:`components.merge.merge_lora.MergeInfo`  merge-lora
``results.json``              :class:`components.evaluate.mmlu.results.MmluResults`  evaluate
``task.json``                 :class:`components.evaluate.task.results.TaskResults`  evaluate
``generations.jsonl``         :class:`components.evaluate.generate.results.Generations`  evaluate (JSON Lines)
``comparison.json``           :class:`components.gate.rules.Comparison`    compare
============================  ===========================================  ==========================

:func:`write_model` writes one atomically; :func:`read_model` reads one through the safe JSON reader and,
when it does not validate (a file from an older release, a tampered or half-written one), raises an error
that names the file and the offending fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from components.common.storage import atomic_write_text
from configs.errors import StepError
from configs.safe_json import DocumentError, read_json

Model = TypeVar("Model", bound=BaseModel)


class TypedFileError(StepError, ValueError):
    """A file passed between steps is missing, not JSON, or does not validate; the message names file and field."""


def describe_validation_error(exc: ValidationError, limit: int = 5) -> str:
    """The first ``limit`` problems of a pydantic error as ``field.path: message``, on one line."""
    problems = []
    for item in exc.errors()[:limit]:
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        problems.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
    more = exc.error_count() - len(problems)
    return "; ".join(problems) + (f"; and {more} more" if more > 0 else "")


def read_model(path: str | Path, model: type[Model], what: str,
               error: type[Exception] = TypedFileError) -> Model:
    """Read and validate one file passed between steps.

    Args:
        path: The file.
        model: Its pydantic model.
        what: How messages name it ("the train summary").
        error: The exception to raise (the one the caller's callers catch).

    Raises:
        error: the file is missing or unreadable, not JSON (NaN, a duplicate key, too deep...), or a field does
            not validate; the message names the file and the fields.
    """
    path = Path(path)
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except DocumentError as exc:
        raise error(f"{what} {path} is not valid JSON: {exc.reason}") from None
    except OSError as exc:
        raise error(f"{what} {path} is not readable ({exc.strerror or exc})") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(f"{what} {path}: {describe_validation_error(exc)}") from None


def write_model(path: str | Path, value: BaseModel) -> Path:
    """Write ``value`` as indented JSON to ``path``, atomically (:func:`~components.common.storage.atomic_write_text`).

    Raises:
        StorageError: the volume refused the write.
    """
    return atomic_write_text(path, value.model_dump_json(indent=2) + "\n")
