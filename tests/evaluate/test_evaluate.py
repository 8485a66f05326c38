"""The evaluate step (components.evaluate.evaluate) on the tiny model, with a real MLflow server on loopback.

One model load scores both suites: MMLU (results.json) and the run's held-out rows (task.json), written to
``eval/<role>/`` and logged on the ``evaluate-<role>`` child run, tagged with both eval keys and their settings.
A score is never computed twice under the same eval key: a retried task reuses its own files, and a model with
the same content (wherever it lives) gets its stored scores from MLflow without being scored. find-baseline
reads the same tags to reuse a baseline's scores, or to say why it must evaluate afresh.

Real parts throughout: the locally built tiny Llama and tokenizer, the sample data split by the real
validate-dataset code, the sample MMLU, real KFP artifact objects.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from components.common.storage import on_volume, run_dir
from components.evaluate.evaluate import eval_keys, heldout_names, run_step
from components.gate.find_baseline import run_step as run_resolve_baseline
from configs.loading import load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def cfg(storage_root, mlflow_server):
    """The CPU demo preset on this test's storage root, its own experiment, two MMLU questions per subject."""
    return load_config("local", overrides=[
        f"storage.mount_path={storage_root}", f"mlflow.tracking_uri={mlflow_server.uri}",
        f"mlflow.experiment=evaluate-{uuid.uuid4().hex[:8]}", "evaluation.limit=2", "evaluation.batch_size=8",
        "evaluation.generate_rows=4", "evaluation.max_new_tokens=8",
    ])


def snapshot(cfg, kfp_run_id: str) -> None:
    """What validate-dataset leaves for the run: the train / held-out split the task score is computed on."""
    from components.data.validate_dataset import validate_config_data

    result, split = validate_config_data(cfg, kfp_run_id)
    assert result.ok and split is not None


def evaluate(cfg, kfp_run_id: str, model_dir: str, role: str, out: Path):
    """The step as the KFP wrapper calls it, with real KFP output artifacts."""
    from kfp.dsl import Artifact, Metrics

    metrics = Metrics(name="metrics", uri=str(out / "metrics"), metadata={})
    mmlu = Artifact(name="mmlu_results", uri=str(out / "mmlu_results"), metadata={})
    task = Artifact(name="task_results", uri=str(out / "task_results"), metadata={})
    outputs = run_step(config=cfg.model_dump_json(), kfp_run_id=kfp_run_id, model_dir=model_dir, role=role,
                       metrics=metrics, mmlu_results=mmlu, task_results=task)
    return outputs, metrics, mmlu, task


def evaluate_runs(cfg, kfp_run_id: str, role: str) -> list:
    from components.common.mlflow_client import make_client

    client = make_client(cfg)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"],
                              filter_string=f"tags.`kfp.run_id` = '{kfp_run_id}' and "
                                            f"tags.`llmft.step` = 'evaluate-{role}'")


def test_scores_both_suites_into_eval_role_and_tags_the_run_with_both_keys_and_the_setup(cfg, tmp_path):
    from components.common.mlflow_client import make_client
    from components.data.split import snapshot_dir
    from components.evaluate.mmlu.data import eval_config_key, model_identity
    from components.evaluate.mmlu.evaluate_mmlu import evaluate as evaluate_mmlu
    from components.evaluate.mmlu.results import read_mmlu_results
    from components.evaluate.task.evaluate_task import eval_key_for, evaluate_task
    from components.evaluate.task.results import load_task_results

    base = on_volume(cfg, cfg.storage.base_model)
    mmlu_dir = on_volume(cfg, cfg.storage.eval_data_dir)
    snapshot(cfg, "run-1")
    (mmlu_path, task_path, micro, loss), metrics, mmlu_artifact, task_artifact = evaluate(
        cfg, "run-1", "models/base-model", "candidate", tmp_path / "first")

    folder = run_dir(cfg, "run-1") / "eval" / "candidate"
    assert (Path(mmlu_path), Path(task_path)) == (folder / "results.json", folder / "task.json")
    mmlu, task = read_mmlu_results(mmlu_path), load_task_results(task_path)
    assert (micro, loss) == (mmlu.micro, task.loss)
    # The keys, computed independently: the MMLU key from the data and the model's content, the task key as the
    # task evaluator's CLI computes it from the run's held-out rows.
    model_id = model_identity(base)
    assert mmlu.model_id == task.model_id == model_id
    assert mmlu.eval_key == eval_config_key(mmlu_dir, n_shot=5, subjects=[], limit=2, model_id=model_id)
    assert task.eval_key == eval_key_for(base, snapshot_dir(cfg, "run-1"), heldout_names(cfg), template="default",
                                         cutoff_len=256)
    # What the step scored is what each evaluator gives on its own.
    alone = evaluate_mmlu(base, mmlu_dir, n_shot=5, limit=2, batch_size=8, progress=False)
    assert mmlu.total == 10 and [q.pred for q in mmlu.questions] == [q["pred"] for q in alone["questions"]]
    reference = evaluate_task(base, snapshot_dir(cfg, "run-1"), heldout_names(cfg), template="default",
                              cutoff_len=256, batch_size=8, progress=False)
    assert [(r.key, r.answer_tokens) for r in task.records] == [(r.key, r.answer_tokens) for r in reference.records]
    assert [r.nll_mean for r in task.records] == pytest.approx([r.nll_mean for r in reference.records], abs=1e-5)

    # KFP: both files as artifacts, the headline numbers as metrics.
    assert Path(mmlu_artifact.path).read_bytes() == Path(mmlu_path).read_bytes()
    assert Path(task_artifact.path).read_bytes() == Path(task_path).read_bytes()
    assert mmlu_artifact.metadata["eval_key"] == mmlu.eval_key and task_artifact.metadata["eval_key"] == task.eval_key
    assert metrics.metadata["mmlu_micro"] == round(micro, 6) and metrics.metadata["task_token_loss"] == round(loss, 6)
    assert {"mmlu_macro", "mmlu_stem", "task_perplexity", "task_token_accuracy"} <= set(metrics.metadata)

    # MLflow: both keys and the settings they cover as tags, the scores as metrics, both files as artifacts.
    (run,) = evaluate_runs(cfg, "run-1", "candidate")
    keys = eval_keys(cfg, "run-1", base)
    assert run.info.status == "FINISHED" and run.info.run_name == f"evaluate-candidate · {cfg.name}-run-1"
    assert {key: run.data.tags.get(key) for key in ("llmft.mmlu_eval_key", "llmft.task_eval_key", "llmft.eval_role",
                                                    "llmft.eval_model_dir", "llmft.eval_reused", *keys.tags)} == {
        "llmft.mmlu_eval_key": mmlu.eval_key, "llmft.task_eval_key": task.eval_key, "llmft.eval_role": "candidate",
        "llmft.eval_model_dir": str(base), "llmft.eval_reused": "none", **keys.tags}
    assert keys.tags["llmft.task_split_hash"] == task.test_split_hash and keys.tags["llmft.mmlu_n_shot"] == "5"
    assert run.data.metrics["mmlu_micro"] == mmlu.micro and run.data.metrics["task_token_loss"] == task.loss
    assert run.data.metrics["task_rows"] == task.examples and run.data.metrics["mmlu_questions"] == 10
    client = make_client(cfg)
    assert sorted(item.path for item in client.list_artifacts(run.info.run_id, "eval")) == [
        "eval/generations.jsonl", "eval/generations_table.json", "eval/results.json", "eval/task.json"]
    # The generated answers: beside task.json, under their own key, as metrics and as an MLflow table.
    from components.evaluate.evaluate import generation_key
    from components.evaluate.generate.results import load_generations

    generations_path = folder / "generations.jsonl"
    generations = load_generations(generations_path)
    assert generations.header.eval_key == generation_key(cfg, task.eval_key) == \
        run.data.tags["llmft.generation_eval_key"]
    assert generations.header.rows == 4 and generations.header.max_new_tokens == 8
    assert (run.data.tags["llmft.generate_rows"], run.data.tags["llmft.max_new_tokens"]) == ("4", "8")
    assert run.data.metrics["gen_chrf"] == generations.header.means.chrf
    assert run.data.metrics["gen_stop_rate"] == generations.header.stop_rate
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "eval/generations_table.json",
                                                      str(tmp_path / "table"))).read_text())
    assert table["columns"][:4] == ["row", "prompt", "reference", "answer"] and len(table["data"]) == 4

    # A retry of the same task finds its own complete files under the same keys and scores nothing again.
    stamps = [path.stat().st_mtime_ns for path in (Path(mmlu_path), Path(task_path), generations_path)]
    outputs, _, _, _ = evaluate(cfg, "run-1", "models/base-model", "candidate", tmp_path / "retry")
    assert outputs == (mmlu_path, task_path, micro, loss)
    assert [path.stat().st_mtime_ns for path in (Path(mmlu_path), Path(task_path), generations_path)] == stamps
    _, retry = evaluate_runs(cfg, "run-1", "candidate")
    assert retry.data.tags["llmft.eval_reused"] == "results.json,task.json,generations.jsonl"
    assert retry.info.status == "FINISHED"
    assert retry.data.tags["llmft.attempt"] == "2"

    with pytest.raises(ValueError, match="role must be one of candidate, baseline, got 'judge'"):
        evaluate(cfg, "run-1", "models/base-model", "judge", tmp_path / "bad")


def test_a_copy_of_a_scored_model_gets_the_stored_scores_without_being_scored(cfg, tmp_path):
    base = on_volume(cfg, cfg.storage.base_model)
    snapshot(cfg, "run-1")
    (mmlu_path, task_path, micro, loss), _, _, _ = evaluate(cfg, "run-1", "models/base-model", "candidate",
                                                            tmp_path / "first")
    # Another pipeline run on the same data; the champion it compares with is a copy of the same weights elsewhere.
    copy = shutil.copytree(base, on_volume(cfg, cfg.storage.models_root) / "champion-copy")
    snapshot(cfg, "run-2")
    (mmlu_copy, task_copy, micro_copy, loss_copy), _, _, _ = evaluate(
        cfg, "run-2", "models/champion-copy", "baseline", tmp_path / "second")

    assert (micro_copy, loss_copy) == (micro, loss)
    assert Path(mmlu_copy) == run_dir(cfg, "run-2") / "eval" / "baseline" / "results.json"
    # Byte for byte the stored files: had the copy been scored, its files would name the copy's directory.
    assert Path(mmlu_copy).read_bytes() == Path(mmlu_path).read_bytes()
    assert Path(task_copy).read_bytes() == Path(task_path).read_bytes()
    assert f'"model": "{base}"' in Path(mmlu_copy).read_text() and str(copy) not in Path(task_copy).read_text()
    answers = Path(task_path).with_name("generations.jsonl")
    answers_copy = Path(task_copy).with_name("generations.jsonl")
    assert answers_copy.read_bytes() == answers.read_bytes()  # the champion's answers: reused by their key
    (run,) = evaluate_runs(cfg, "run-2", "baseline")
    assert run.data.tags["llmft.eval_reused"] == "results.json,task.json,generations.jsonl"
    assert run.data.tags["llmft.eval_model_dir"] == str(copy)

    # Other generation settings: another key. Only the answers are generated again; MMLU and the loss are reused.
    longer = cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"max_new_tokens": 12})})
    snapshot(longer, "run-3")
    evaluate(longer, "run-3", "models/champion-copy", "baseline", tmp_path / "third")
    (run,) = evaluate_runs(cfg, "run-3", "baseline")
    assert run.data.tags["llmft.eval_reused"] == "results.json,task.json"
    regenerated = run_dir(cfg, "run-3") / "eval" / "baseline" / "generations.jsonl"
    assert '"max_new_tokens": 12' in regenerated.read_text() and str(copy) in regenerated.read_text()


def test_find_baseline_reuses_stored_scores_or_says_why_it_evaluates_afresh(cfg, tmp_path):
    snapshot(cfg, "run-1")
    evaluate(cfg, "run-1", "models/base-model", "baseline", tmp_path / "first")
    (scored,) = evaluate_runs(cfg, "run-1", "baseline")

    # The same data: the same held-out rows, so the base model's stored scores are reused.
    snapshot(cfg, "run-2")
    needs_eval, _, name, note, mmlu_key, task_key, _, _ = run_resolve_baseline(config=cfg.model_dump_json(),
                                                                         kfp_run_id="run-2")
    assert (needs_eval, name) == (False, "base model")
    assert (mmlu_key, task_key) == (scored.data.tags["llmft.mmlu_eval_key"], scored.data.tags["llmft.task_eval_key"])
    assert note == f"base model: stored scores reused (evaluate run {scored.info.run_id})"

    # Another held-out share: other held-out rows, another task key; the note names what changed.
    wider = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"test_fraction": 0.3})})
    snapshot(wider, "run-3")
    old_split, new_split = scored.data.tags["llmft.task_split_hash"], eval_keys(
        wider, "run-3", on_volume(cfg, cfg.storage.base_model)).tags["llmft.task_split_hash"]
    assert old_split != new_split
    needs_eval, _, _, note, mmlu_key3, task_key3, _, _ = run_resolve_baseline(config=wider.model_dump_json(),
                                                                        kfp_run_id="run-3")
    assert needs_eval is True and mmlu_key3 == mmlu_key and task_key3 != task_key  # MMLU alone would still match
    assert note == (f"base model evaluated afresh: its stored scores were computed differently: the held-out split "
                    f"({old_split[:12]} -> {new_split[:12]})")
