"""The evaluate step: score one model on MMLU and on the held-out task, with the model loaded once.

The candidate is scored as it will be served: the merged, published model directory (never base + adapter),
so that its scores are the champion's scores once it is promoted. Each suite's score carries an eval key
(:func:`eval_keys`): the model's content, the data, the held-out split, template and cutoff. A score with
the same key is never computed twice: a retried task finds its own file, and any model already scored in
this experiment (the champion, or a candidate identical to it) gets its stored score from MLflow.

With ``evaluation.generate_rows`` > 0 the model also answers held-out rows greedily
(:mod:`components.evaluate.generate`): ``generations.jsonl`` beside ``task.json``, under its own eval key (the
task key plus the generation settings), reused like the other scores.

:class:`EvaluateRecipe` reads in call order, as the train recipe does: setup (the keys, the scores stored under
them), MMLU, the held-out task, generation, the results logged; the model is released whatever happens.
:func:`evaluate_model` runs it in the step's MLflow run and :func:`run_step` writes the KFP outputs.

MLflow: the child run ``evaluate-<role>`` holds the results files (``eval/results.json``, ``eval/task.json``,
``eval/generations.jsonl``), the per-row answers as a table (``eval/generations_table.json``, logged with
``log_table``: the run's Evaluation view shows it), the metrics ``mmlu_micro``, ``mmlu_macro``,
``mmlu_<category>``, ``task_token_loss`` (over all answer tokens), ``task_row_nll`` (the mean over rows of each
row's mean answer-token NLL: what the gate compares), ``task_perplexity``, ``task_token_accuracy``,
``gen_<score>`` and ``gen_stop_rate``, and the tags ``llmft.mmlu_eval_key``, ``llmft.task_eval_key``,
``llmft.generation_eval_key`` and the settings they cover (``llmft.model_id``, split hash, template, cutoff, MMLU
data, generation settings) that :func:`components.evaluate.store.why_not_stored` reads.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple

from components.common.logs import configure_step_logging, step_logger
from components.common.pipeline_runs import step_run
from components.common.storage import atomic_write_text, on_volume, run_dir
from components.common.tags import (
    EVAL_MODEL_DIR_TAG,
    EVAL_REUSED_TAG,
    EVAL_ROLE_TAG,
    GENERATE_ROWS_TAG,
    GENERATION_EVAL_KEY_TAG,
    MAX_NEW_TOKENS_TAG,
    MMLU_DATA_HASH_TAG,
    MMLU_EVAL_KEY_TAG,
    MMLU_N_SHOT_TAG,
    MMLU_SUBJECTS_TAG,
    MODEL_ID_TAG,
    TASK_CUTOFF_LEN_TAG,
    TASK_EVAL_KEY_TAG,
    TASK_SPLIT_HASH_TAG,
    TASK_TEMPLATE_TAG,
)
from components.evaluate.generate.results import RESULTS_FILE as GENERATIONS_FILE
from components.evaluate.generate.results import (
    generation_eval_key,
    generation_metrics,
    generation_table,
    parse_generations,
)
from components.evaluate.mmlu.results import RESULTS_FILE as MMLU_RESULTS_FILE
from components.evaluate.mmlu.results import parse_mmlu_results
from components.evaluate.store import find_stored, results_eval_key
from components.evaluate.task.results import RESULTS_FILE as TASK_RESULTS_FILE
from components.evaluate.task.results import dump_task_results, load_task_results
from configs.loading import config_from_json
from configs.schema import PipelineConfig

STEP = "evaluate"
log = step_logger(STEP)
_SCORES = {("results.json",): "MMLU score", ("task.json",): "held-out score",
           ("results.json", "task.json"): "stored scores"}  # files reused -> how the log says it
GENERATIONS_TABLE = "eval/generations_table.json"
ROLES = ("candidate", "baseline")


class EvalKeys(NamedTuple):
    """How a model's scores in this run are keyed."""

    mmlu_key: str
    task_key: str
    tags: dict[str, str]  # the settings the keys cover, as MLflow tags of the evaluate run


def eval_keys(cfg: PipelineConfig, kfp_run_id: str, model_dir: Path) -> EvalKeys:
    """The eval keys a score of ``model_dir`` in this run carries, and the settings they cover.

    Raises:
        FileNotFoundError: ``model_dir`` is not a model directory.
        MmluDataError: the MMLU data has no test split.
        TaskDataError: the run's held-out rows cannot be read (validate-dataset writes them).
    """
    from components.data.split import snapshot_dir, split_hash
    from components.evaluate.mmlu.data import data_hash, eval_config_key, model_identity
    from components.evaluate.task.data import entries_digest, read_test_rows
    from components.evaluate.task.results import task_eval_key

    model_id = model_identity(model_dir)
    mmlu_dir = on_volume(cfg, cfg.storage.eval_data_dir)
    evaluation, training = cfg.evaluation, cfg.training
    mmlu_key = eval_config_key(mmlu_dir, n_shot=evaluation.n_shot, subjects=list(evaluation.subjects),
                               limit=evaluation.limit, model_id=model_id)
    entries, rows = read_test_rows(snapshot_dir(cfg, kfp_run_id), heldout_names(cfg))
    test_hash = split_hash([row.key for row in rows])
    task_key = task_eval_key(model_id, test_hash, training.template, training.cutoff_len, entries_digest(entries))
    tags = {MODEL_ID_TAG: model_id, TASK_SPLIT_HASH_TAG: test_hash, TASK_TEMPLATE_TAG: training.template,
            TASK_CUTOFF_LEN_TAG: str(training.cutoff_len),
            MMLU_DATA_HASH_TAG: data_hash(mmlu_dir, list(evaluation.subjects)),
            MMLU_N_SHOT_TAG: str(evaluation.n_shot), MMLU_SUBJECTS_TAG: ",".join(evaluation.subjects) or "all"}
    return EvalKeys(mmlu_key, task_key, tags)


def generation_key(cfg: PipelineConfig, task_key: str) -> str:
    """The eval key of this run's generated answers for a model whose task key is ``task_key`` ('' when off)."""
    evaluation = cfg.evaluation
    if not evaluation.generate_rows:
        return ""
    return generation_eval_key(task_key, generate_rows=evaluation.generate_rows,
                               max_new_tokens=evaluation.max_new_tokens)


def generation_tags(cfg: PipelineConfig) -> dict[str, str]:
    """The generation settings as evaluate-run tags (why_not_stored names them when they changed)."""
    return {GENERATE_ROWS_TAG: str(cfg.evaluation.generate_rows),
            MAX_NEW_TOKENS_TAG: str(cfg.evaluation.max_new_tokens)}


def heldout_names(cfg: PipelineConfig) -> list[str]:
    """The dataset_info.json entries of the held-out rows in the run's snapshot."""
    from components.data.split import heldout_entry_name

    return [heldout_entry_name(name) for name in cfg.dataset.names]


def _stored_text(client: Any, cfg: PipelineConfig, tag: str, key: str, file_name: str) -> str | None:
    """The text of a usable results file stored in MLflow under this eval key (validated), or None."""
    found = find_stored(client, cfg, tag, key, file_name).found
    return found.text if found else None


class EvalScores(NamedTuple):
    """What scoring one model hands on: its results files, what they hold and the metrics logged from them."""

    role: str
    mmlu_path: Path
    task_path: Path
    mmlu: Any  # components.evaluate.mmlu.results.MmluResults
    task: Any  # components.evaluate.task.results.TaskResults
    generations: Any  # components.evaluate.generate.results.Generations, None with generation off
    values: dict[str, float]  # the metrics of the step's MLflow run
    keys: EvalKeys
    reused: list[str]  # the results files an earlier attempt or MLflow already held under the same key


class EvaluateRecipe:
    """Score ``model_dir`` as ``role`` for one pipeline run (see the module docstring).

    The methods read in call order: ``__init__`` checks the role and resolves the paths, ``setup`` keys the
    scores and takes every results file already scored under its key (an earlier attempt's, or one stored in
    MLflow), ``score_mmlu``, ``score_task`` and ``generate`` compute what is still missing (the model is loaded
    once, when first needed), ``log_results`` reads the files back and logs them to the step's MLflow run, and
    ``cleanup`` releases the model; :func:`evaluate_model` runs them.

    Reads storage (eval_data_dir, output_root), evaluation (n_shot, subjects, batch_size, limit, generate_rows,
    max_new_tokens, accelerator_count, gpu_memory_fraction), training (template, cutoff_len), dataset.names (the
    held-out entries) and mlflow. Writes ``<output_root>/<run id>/eval/<role>/results.json``, ``task.json`` and
    (generation on) ``generations.jsonl`` atomically.
    """

    def __init__(self, cfg: PipelineConfig, kfp_run_id: str, model_dir: str, role: str):
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        self.cfg, self.kfp_run_id, self.role = cfg, kfp_run_id, role
        self.model_path = on_volume(cfg, model_dir)
        out_dir = run_dir(cfg, kfp_run_id) / "eval" / role
        self.mmlu_path, self.task_path = out_dir / MMLU_RESULTS_FILE, out_dir / TASK_RESULTS_FILE
        self.generations_path = out_dir / GENERATIONS_FILE
        self.keys = EvalKeys("", "", {})  # set by setup()
        self.generation_key = ""  # "" with generation off
        self.reused: list[str] = []
        self.loaded: tuple[Any, Any] | None = None  # (model, tokenizer), once loaded
        self.started = time.monotonic()

    def setup(self, client: Any, run_id: str) -> None:
        """Key this model's scores, tag the run with the keys and the settings they cover, take every results file
        already scored under its key."""
        from mlflow.entities import RunTag

        self.started = time.monotonic()
        self.keys = eval_keys(self.cfg, self.kfp_run_id, self.model_path)
        self.generation_key = gen_key = generation_key(self.cfg, self.keys.task_key)
        client.log_batch(run_id, tags=[RunTag(key, value) for key, value in {
            MMLU_EVAL_KEY_TAG: self.keys.mmlu_key, TASK_EVAL_KEY_TAG: self.keys.task_key, EVAL_ROLE_TAG: self.role,
            EVAL_MODEL_DIR_TAG: str(self.model_path), **self.keys.tags,
            **({GENERATION_EVAL_KEY_TAG: gen_key, **generation_tags(self.cfg)} if gen_key else {})}.items()])
        for path, tag, key in self._wanted():
            if _has_key(path, key):  # an earlier attempt's
                self.reused.append(path.name)
                continue
            text = _stored_text(client, self.cfg, tag, key, path.name)  # validated, under this key
            if text is not None:
                atomic_write_text(path, text)
                self.reused.append(path.name)

    def score_mmlu(self) -> None:
        """MMLU accuracy (``results.json``), unless ``setup`` found it under its key."""
        if self.mmlu_path.name in self.reused:
            return
        from components.evaluate.mmlu.evaluate_mmlu import dump_results, evaluate

        settings = self.cfg.evaluation
        results = evaluate(self.model_path, on_volume(self.cfg, self.cfg.storage.eval_data_dir), n_shot=settings.n_shot,
                           subjects=settings.subjects, batch_size=settings.batch_size, limit=settings.limit,
                           loaded=self._model())
        atomic_write_text(self.mmlu_path, dump_results(results))

    def score_task(self) -> None:
        """The held-out loss (``task.json``), unless ``setup`` found it under its key."""
        if self.task_path.name in self.reused:
            return
        from components.data.split import snapshot_dir
        from components.evaluate.task.evaluate_task import score_loaded

        task = score_loaded(*self._model(), snapshot_dir(self.cfg, self.kfp_run_id), heldout_names(self.cfg),
                            template=self.cfg.training.template, cutoff_len=self.cfg.training.cutoff_len,
                            model_dir=self.model_path, batch_size=self.cfg.evaluation.batch_size)
        atomic_write_text(self.task_path, dump_task_results(task))

    def generate(self) -> None:
        """Greedy answers to the held-out rows, scored (``generations.jsonl``), when generation is on and
        ``setup`` did not find them under their key."""
        if not self.generation_key or self.generations_path.name in self.reused:
            return
        from components.data.split import snapshot_dir
        from components.evaluate.generate.generate import generate_loaded
        from components.evaluate.generate.results import dump_generations

        evaluation = self.cfg.evaluation
        generations = generate_loaded(*self._model(), snapshot_dir(self.cfg, self.kfp_run_id), heldout_names(self.cfg),
                                      template=self.cfg.training.template, cutoff_len=self.cfg.training.cutoff_len,
                                      generate_rows=evaluation.generate_rows,
                                      max_new_tokens=evaluation.max_new_tokens, model_dir=self.model_path,
                                      model_id=self.keys.tags[MODEL_ID_TAG], task_eval_key=self.keys.task_key,
                                      batch_size=evaluation.batch_size)
        atomic_write_text(self.generations_path, dump_generations(generations))

    def log_results(self, client: Any, run_id: str) -> EvalScores:
        """Read the results files back and log them to the step's run: the metrics, the files, the answers' table."""
        from mlflow.entities import Metric, RunTag

        from components.evaluate.mmlu.evaluate_mmlu import category_metric

        mmlu = parse_mmlu_results(self.mmlu_path.read_text(encoding="utf-8"), str(self.mmlu_path))
        task = load_task_results(self.task_path)
        generations = parse_generations(self.generations_path.read_text(encoding="utf-8"),
                                        str(self.generations_path)) if self.generation_key else None
        values = {"mmlu_micro": mmlu.micro, "mmlu_macro": mmlu.macro, "mmlu_questions": float(mmlu.total),
                  **{category_metric(name): row.accuracy for name, row in mmlu.categories.items()},
                  "task_token_loss": task.loss, "task_row_nll": task.mean_example_nll,
                  "task_perplexity": task.perplexity, "task_token_accuracy": task.token_accuracy,
                  "task_rows": float(task.examples),
                  **(generation_metrics(generations) if generations else {}),
                  "eval_seconds": round(time.monotonic() - self.started, 3)}
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(key, float(value), now, 0) for key, value in values.items()],
                         tags=[RunTag(EVAL_REUSED_TAG, ",".join(self.reused) or "none")])
        client.log_artifact(run_id, str(self.mmlu_path), artifact_path="eval")
        client.log_artifact(run_id, str(self.task_path), artifact_path="eval")
        if generations:
            client.log_artifact(run_id, str(self.generations_path), artifact_path="eval")
            client.log_table(run_id, data=generation_table(generations), artifact_file=GENERATIONS_TABLE)
        return EvalScores(self.role, self.mmlu_path, self.task_path, mmlu, task, generations, values, self.keys,
                          self.reused)

    def cleanup(self) -> None:
        """Release the model and the GPU memory it held, whatever happened before."""
        if self.loaded is None:
            return
        self.loaded = None
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # What the steps above share ----------------------------------------------------------------------------------

    def _wanted(self) -> list[tuple[Path, str, str]]:
        """``(results file, eval-key tag, key)`` of each score this run needs."""
        wanted = [(self.mmlu_path, MMLU_EVAL_KEY_TAG, self.keys.mmlu_key),
                  (self.task_path, TASK_EVAL_KEY_TAG, self.keys.task_key)]
        if self.generation_key:
            wanted.append((self.generations_path, GENERATION_EVAL_KEY_TAG, self.generation_key))
        return wanted

    def _model(self) -> tuple[Any, Any]:
        """The model and tokenizer, loaded on first use: on one GPU, across several, or on the CPU."""
        if self.loaded is None:
            from components.evaluate.placement import load_placed

            self.loaded = load_placed(self.model_path, self.cfg.evaluation)
        return self.loaded


def evaluate_model(cfg: PipelineConfig, kfp_run_id: str, model_dir: str, role: str) -> EvalScores:
    """Score ``model_dir`` as ``role`` in the step's MLflow run ``evaluate-<role>`` (the recipe: setup, MMLU, the
    held-out task, generation, the results logged; the model released whatever happens).

    Raises:
        As :func:`run_step`.
    """
    recipe = EvaluateRecipe(cfg, kfp_run_id, model_dir, role)
    with step_run(cfg, kfp_run_id, f"{STEP}-{role}", system_metrics=True) as (client, run_id):
        try:
            recipe.setup(client, run_id)
            recipe.score_mmlu()
            recipe.score_task()
            recipe.generate()
            return recipe.log_results(client, run_id)
        finally:
            recipe.cleanup()


def run_step(config: str, kfp_run_id: str, model_dir: str, role: str, metrics: Any, mmlu_results: Any,
             task_results: Any) -> tuple[str, str, float, float]:
    """Score ``model_dir`` on MMLU and on the run's held-out rows as ``role``; reuse any score with the same key.

    :func:`evaluate_model` scores (:class:`EvaluateRecipe` lists the settings it reads and the files it writes);
    then the KFP outputs are written and the scores logged in one line (two with generation on).

    Returns:
        ``(MMLU results path, task results path, MMLU micro accuracy, held-out loss)``.

    Raises:
        ConfigError: the config parameter is invalid.
        ValueError: ``role`` is not candidate or baseline.
        MmluDataError, TaskDataError: the evaluation data is missing or malformed (file and row named).
        ScoringError: the model gave non-finite scores.
        GenerationError: answers cannot be generated or scored (no usable reference, no room for a prompt).
        PlacementError: the model fits neither one GPU nor all of evaluation.accelerator_count together.
        ModelLoadError: the model directory is not one, or cannot be loaded.
        StorageError: the volume refused the write.
        TrackingUnavailable: the MLflow server does not answer.
    """
    configure_step_logging(STEP)
    scores = evaluate_model(config_from_json(config), kfp_run_id, model_dir, role)
    _write_outputs(scores, metrics, mmlu_results, task_results)
    _log_summary(scores)
    return str(scores.mmlu_path), str(scores.task_path), float(scores.mmlu.micro), float(scores.task.loss)


def _write_outputs(scores: EvalScores, metrics: Any, mmlu_results: Any, task_results: Any) -> None:
    """The KFP outputs: the headline metrics, and both results files with their eval keys."""
    from components.evaluate.mmlu.evaluate_mmlu import category_metric

    mmlu, task, role = scores.mmlu, scores.task, scores.role
    for key in ("mmlu_micro", "mmlu_macro", "task_token_loss", "task_perplexity", "task_token_accuracy"):
        metrics.log_metric(key, round(float(scores.values[key]), 6))
    for name, row in mmlu.categories.items():
        metrics.log_metric(category_metric(name), row.accuracy)
    for artifact, path in ((mmlu_results, scores.mmlu_path), (task_results, scores.task_path)):
        Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, artifact.path)
    mmlu_results.metadata.update({"eval_key": scores.keys.mmlu_key, "mmlu_micro": mmlu.micro, "role": role})
    task_results.metadata.update({"eval_key": scores.keys.task_key, "task_token_loss": task.loss, "role": role})


def _log_summary(scores: EvalScores) -> None:
    """The scores in one line, and the answers' in a second (what the local console shows)."""
    mmlu, task, generations, role = scores.mmlu, scores.task, scores.generations, scores.role
    scores_reused = tuple(sorted(set(scores.reused) - {GENERATIONS_FILE}))
    log.info(f"{role}: held-out loss {task.mean_example_nll:.4f} on {task.examples} rows, MMLU {mmlu.micro:.4f} "
             f"on {mmlu.total} questions" + (f" ({_SCORES[scores_reused]} of this model reused)" if scores_reused
                                             else ""))
    if generations:
        from components.evaluate.generate.generate import summary_line

        log.info(f"{role} answers on {generations.header.rows} held-out rows: {summary_line(generations)}"
                 + (" (stored, reused)" if GENERATIONS_FILE in scores.reused else ""))


def _has_key(path: Path, key: str) -> bool:
    """Whether ``path`` holds a valid results file (MMLU, task or generations) scored under ``key``."""
    try:
        return results_eval_key(path.read_text(encoding="utf-8"), path.name, str(path)) == key
    except (ValueError, OSError):  # missing, unreadable, not UTF-8, or not a valid results file
        return False
