"""Scores stored in MLflow: every evaluation keeps its results on its run, found again by eval key.

Every evaluate run stores its results files as artifacts and is tagged with its eval keys (``llmft.mmlu_eval_key``
for MMLU, ``llmft.task_eval_key`` for the held-out task, ``llmft.generation_eval_key`` for the generated answers).
A key covers everything that decides the score (the model's content, the data, the split, the template...), so
a score with the same key is reused instead of spending GPU time again: the scores a promoted candidate got are
the champion's in the next run. Each stored file is validated where it is found (:func:`find_stored`: a missing,
damaged or foreign one is passed over, its run named); when none matches, :func:`why_not_stored` says which part
of the settings changed. The evaluate step and the gate's find-baseline and reuse-baseline-scores read them here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from components.common.mlflow_artifacts import find_artifact
from components.common.pipeline_runs import experiment_id
from components.common.tags import (
    GENERATE_ROWS_TAG,
    MAX_NEW_TOKENS_TAG,
    MMLU_DATA_HASH_TAG,
    MMLU_N_SHOT_TAG,
    MMLU_SUBJECTS_TAG,
    MODEL_ID_TAG,
    TASK_CUTOFF_LEN_TAG,
    TASK_SPLIT_HASH_TAG,
    TASK_TEMPLATE_TAG,
)
from configs.schema import PipelineConfig

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# What a stored evaluation records of its settings (tags of the evaluate run), to say why a score was not reused.
SETUP_TAGS = {TASK_SPLIT_HASH_TAG: "the held-out split", TASK_TEMPLATE_TAG: "the template",
              TASK_CUTOFF_LEN_TAG: "cutoff_len", MMLU_DATA_HASH_TAG: "the MMLU data",
              MMLU_N_SHOT_TAG: "the MMLU n-shot", MMLU_SUBJECTS_TAG: "the MMLU subjects",
              GENERATE_ROWS_TAG: "evaluation.generate_rows", MAX_NEW_TOKENS_TAG: "evaluation.max_new_tokens"}


class StoredScore(NamedTuple):
    """A results file stored in MLflow that validates and carries the eval key it was looked up by."""

    run_id: str
    text: str


class StoredLookup(NamedTuple):
    """What :func:`find_stored` found: the newest usable file, and why newer evaluations were passed over."""

    found: StoredScore | None
    problems: list[str]  # one line per evaluation passed over, newest first, each naming its MLflow run


def _finished_runs_tagged(client: MlflowClient, cfg: PipelineConfig, tag: str, value: str) -> list:
    if not re.fullmatch(r"[A-Za-z0-9_.:\-]+", value):
        raise ValueError(f"{tag} {value!r} must be letters, digits and '_.:-'")
    return client.search_runs([experiment_id(client, cfg.mlflow.experiment)],
                              filter_string=f"tags.`{tag}` = '{value}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.end_time DESC"], max_results=20)


def find_stored(client: MlflowClient, cfg: PipelineConfig, tag: str, key: str, file_name: str) -> StoredLookup:
    """The newest FINISHED evaluation tagged ``tag`` = ``key`` whose ``file_name`` artifact is usable.

    Each candidate file is downloaded and validated here, where it is found, not only where it is used: a run
    without the artifact, a file that does not parse or validate (truncated, damaged) or one that carries another
    eval key is passed over with the reason, so a bad stored file never blocks later runs (the next evaluation
    under the same key is stored, and found first).

    Raises:
        ValueError: ``key`` is not a plain eval key.
    """
    problems = []
    for run in _finished_runs_tagged(client, cfg, tag, key):
        run_id = run.info.run_id
        path = find_artifact(client, run_id, lambda name, wanted=file_name: name == wanted)
        if path is None:
            problems.append(f"evaluate run {run_id} has no {file_name} artifact")
            continue
        problem, text = _check_stored(client, run_id, path, file_name, key)
        if problem is None:
            return StoredLookup(StoredScore(run_id, text), problems)
        problems.append(problem)
    return StoredLookup(None, problems)


def _check_stored(client: MlflowClient, run_id: str, path: str, file_name: str, key: str) -> tuple[str | None, str]:
    """``(why the stored file cannot be used or None, its text)``; messages name the run, never a download path."""
    import tempfile

    from mlflow.exceptions import MlflowException

    from components.evaluate.generate.results import GenerationResultsError
    from components.evaluate.mmlu.results import ResultsFileError
    from components.evaluate.task.results import TaskResultsError

    source = f"stored {file_name} of evaluate run {run_id}"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            text = Path(client.download_artifacts(run_id, path, tmp)).read_text(encoding="utf-8")
        except (MlflowException, OSError, UnicodeDecodeError) as exc:
            reason = str(exc).replace(tmp, "<download>")[:300]
            return f"{source} cannot be read: {type(exc).__name__}: {reason}", ""
    try:
        stored_key = results_eval_key(text, file_name, source)
    except (ResultsFileError, TaskResultsError, GenerationResultsError) as exc:
        return str(exc)[:1000], text
    if stored_key != key:
        return f"{source} has eval key {stored_key[:12]}..., not {key[:12]}...", text
    return None, text


def results_eval_key(text: str, file_name: str, source: str) -> str:
    """The eval key a results file was scored under: MMLU's ``results.json``, ``generations.jsonl``, else
    ``task.json``, each validated whole by its own parser.

    Raises:
        ResultsFileError, GenerationResultsError, TaskResultsError (each a ValueError): the text is not a valid
            file of that name; the message names ``source``.
    """
    from components.evaluate.generate.results import RESULTS_FILE as GENERATIONS_FILE
    from components.evaluate.generate.results import parse_generations
    from components.evaluate.mmlu.results import RESULTS_FILE as MMLU_RESULTS_FILE
    from components.evaluate.mmlu.results import parse_mmlu_results
    from components.evaluate.task.results import parse_task_results

    if file_name == MMLU_RESULTS_FILE:
        return parse_mmlu_results(text, source).eval_key
    if file_name == GENERATIONS_FILE:
        return parse_generations(text, source).header.eval_key
    return parse_task_results(text, source).eval_key


def why_not_stored(client: MlflowClient, cfg: PipelineConfig, model_id: str, wanted: dict[str, str]) -> str:
    """Why no stored score matches: the settings in which the model's last stored evaluation differs."""
    runs = _finished_runs_tagged(client, cfg, MODEL_ID_TAG, model_id)
    if not runs:
        return "this model has no stored score yet"
    tags = runs[0].data.tags
    changed = [f"{label} ({tags.get(tag, 'unrecorded')[:12]} -> {wanted[tag][:12]})"
               for tag, label in SETUP_TAGS.items() if tag in wanted and tags.get(tag) != wanted[tag]]
    return ("its stored scores were computed differently: " + ", ".join(changed)) if changed else \
        "its stored scores were computed with another scoring version"
