"""The sweep without training: its config refused at load with the field named, its trials' settings, directories,
identities and names, the winner's choice (deterministic, ties to the lower trial), what the losers keep on the
volume, and the tokenized data built once under a lock. The trials trained for real through kfp.local are in
``tests/pipelines/test_run_form.py``; the best checkpoint of a real training in ``tests/train/test_train.py``."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from components.train.checkpoints import list_checkpoints
from components.train.fingerprint import training_fingerprint
from components.train.inputs import resolve_paths
from components.train.multinode.job_spec import JOB_NAME_MAX, job_name
from components.train.outputs import SUMMARY_FILE, TrainSummary
from components.train.select_trial import (
    Selection,
    SelectionError,
    TrialScore,
    choose,
    release_resume_state,
    score_trials,
    trials_table,
)
from components.train.tokenized import STALE_S, claim, is_tokenized, tokenization_key
from components.train.trials import is_sweep, trial_config, trial_dir, trial_label, trial_settings
from configs.loading import load_config
from configs.schema import ConfigError


def _sweep(*overrides: str, root: str = "/tmp/storage"):
    return load_config("local", overrides=[f"storage.mount_path={root}", *overrides])


# -- bad input, refused at load with the field named ---------------------------------------------------------


@pytest.mark.parametrize(("overrides", "words"), [
    (["sweep.seed=[1,2]"], r"sweep\.seed: training\.seed cannot vary between trials"),
    (["sweep.deepspeed_stage=[2,3]"], r"sweep\.deepspeed_stage: training\.deepspeed_stage cannot vary"),
    (["sweep.cluster=[1]"], r"sweep\.cluster: not a sweep field; a sweep varies learning_rate, lora_rank"),
    (["sweep.learning_rate=[0.001,0.002,0.003]", "sweep.lora_rank=[4,8,16]", "sweep.max_trials=8"],
     r"sweep: 3 learning_rate x 3 lora_rank make 9 trials, more than max_trials \(8\)"),
    (["sweep.lora_rank=[8,16,8]"], r"sweep\.lora_rank: .*lists 8 more than once"),
    (["sweep.learning_rate=[0.001,2.0]"],
     r"sweep\.learning_rate: the value 2\.0 is not a valid training\.learning_rate"),
    (["sweep.lora_dropout=[0.1,1.5]"], r"sweep\.lora_dropout: the value 1\.5 is not a valid training\.lora_dropout"),
    (["sweep.parallelism=0"], r"sweep\.parallelism: Input should be greater than or equal to 1"),
    (["training.method=full", "training.learning_rate=1e-5", "sweep.lora_alpha=[8,16]"],
     r"sweep\.lora_alpha: training\.method 'full' has no LoRA settings to vary"),
    (["dataset.val_fraction=0", "sweep.learning_rate=[0.001,0.002]"],
     r"sweep: the trials are compared on the validation rows; set dataset\.val_fraction > 0"),
    (["dataset.test_fraction=0.3", "dataset.val_fraction=0.3"],
     r"dataset: test_fraction \+ val_fraction \(0\.3 \+ 0\.3\) must be at most 0\.5"),
    (["sweep.learning_rate=[true,0.1]"], r"sweep\.learning_rate: must hold numbers, not booleans, got \[True, 0\.1\]"),
])
def test_a_bad_sweep_is_refused_at_load_naming_the_field(overrides, words):
    with pytest.raises(ConfigError, match=words):
        _sweep(*overrides)


def test_a_compile_time_sweep_setting_cannot_change_at_run_time():
    from components.run.resolve_config import form_from_overrides, resolve

    # submit sends a --set of a sweep list as its typed parameter, with numbers (YAML reads 1e-4 as text)
    assert form_from_overrides(["sweep.learning_rate=[1e-4,2e-4]", "sweep.lora_rank=[8,16]"]) == (
        {"b_learning_rate_sweep": [1e-4, 2e-4], "d_lora_rank_sweep": [8, 16]}, [])
    with pytest.raises(ConfigError, match=r"sweep\.lora_rank: "):
        form_from_overrides(["sweep.lora_rank=[8,x]"])

    compiled = load_config("lora")
    with pytest.raises(ConfigError, match=r"sweep\.parallelism: compiled as 2, requested 5"):
        resolve("", ["sweep.parallelism=5"], {}, compiled)
    ran = resolve("", [], {"b_learning_rate_sweep": [1e-4, 3e-4], "d_lora_rank_sweep": [8, 16]}, compiled)
    assert ran.sweep.trials() == [{"learning_rate": 1e-4, "lora_rank": 8}, {"learning_rate": 1e-4, "lora_rank": 16},
                                  {"learning_rate": 3e-4, "lora_rank": 8}, {"learning_rate": 3e-4, "lora_rank": 16}]


# -- the trials ----------------------------------------------------------------------------------------------


def test_each_trial_has_its_settings_its_own_directory_and_an_identity_of_its_own():
    cfg = _sweep("sweep.learning_rate=[0.001,0.002]", "sweep.lora_alpha=[8,16]")
    assert is_sweep(cfg) and [trial_settings(cfg, n) for n in range(4)] == [
        {"learning_rate": 0.001, "lora_alpha": 8}, {"learning_rate": 0.001, "lora_alpha": 16},
        {"learning_rate": 0.002, "lora_alpha": 8}, {"learning_rate": 0.002, "lora_alpha": 16}]
    third = trial_config(cfg, 2)
    assert (third.training.learning_rate, third.training.lora_alpha) == (0.002, 8)
    assert third.sweep.trials() == [{}] and third.sweep.parallelism == cfg.sweep.parallelism
    with pytest.raises(ConfigError, match="trial 4 does not exist: the sweep has 4 trial"):
        trial_config(cfg, 4)

    # Each trial writes (and a retry resumes) in its own directory; the snapshot is the run's.
    paths = [resolve_paths(cfg, "run-1", check=False, trial=n) for n in range(4)]
    assert len({(p.output_dir, p.model_dir, p.train_yaml, p.log_dir) for p in paths}) == 4
    assert len({p.output_dir for p in paths} | {p.model_dir for p in paths} | {p.log_dir for p in paths}) == 12
    assert paths[1].output_dir == Path("/tmp/storage/output/run-1/trials/trial-1/checkpoints")
    assert {p.dataset_dir for p in paths} == {Path("/tmp/storage/output/run-1/data")}
    plain = _sweep()
    assert not is_sweep(plain) and trial_dir(plain, "run-1", 0) == Path("/tmp/storage/output/run-1")  # as before

    # A rerun of the run id with a longer grid: trials whose settings did not change keep their identity (their
    # published weights are reused, their checkpoints resumed); a changed one does not.
    longer = _sweep("sweep.learning_rate=[0.001,0.002,0.004]", "sweep.lora_alpha=[8,16]")
    assert trial_config(longer, 2).config_hash() == third.config_hash()
    assert trial_config(longer, 0).config_hash() != trial_config(longer, 1).config_hash()
    changed = _sweep("sweep.learning_rate=[0.001,0.003]", "sweep.lora_alpha=[8,16]")
    assert trial_config(changed, 2).config_hash() != third.config_hash()


def test_a_trials_training_fingerprint_is_its_settings_not_the_grid(tiny_model_dir):
    """What decides whether a retried or rerun trial resumes its checkpoints."""
    cfg = _sweep("sweep.learning_rate=[0.001,0.002]")
    longer = _sweep("sweep.learning_rate=[0.001,0.002,0.003]")

    def fingerprint(config, trial):
        return training_fingerprint(trial_config(config, trial), base_model=tiny_model_dir,
                                    dataset_hashes={"ds": "a" * 64}, gpu=False)

    assert fingerprint(cfg, 1) == fingerprint(longer, 1)
    assert fingerprint(cfg, 0)["training.learning_rate"] != fingerprint(cfg, 1)["training.learning_rate"]


def test_each_trial_of_a_multi_node_sweep_is_a_job_of_its_own():
    run = "8f14e45f-ceea-467f-a0e4-1c4e5f1d3f6a"
    names = {job_name(run, trial_label(trial)) for trial in range(12)}
    assert len(names) == 12 and all(len(name) <= JOB_NAME_MAX for name in names)
    assert job_name(run, "trial-11").endswith("-trial-11") and job_name(run) == f"train-{run}"


# -- choosing ------------------------------------------------------------------------------------------------


def _score(trial: int, val_loss: float | None, **settings: float) -> TrialScore:
    return TrialScore(trial=trial, settings=settings, val_loss=val_loss, best_step=4, global_step=8, train_loss=1.0,
                      model_dir=f"/m/{trial}", mlflow_run_id=f"run{trial}")


def test_the_lowest_validation_loss_wins_and_a_tie_goes_to_the_lower_trial():
    scores = [_score(0, 2.5), _score(1, 1.75), _score(2, 1.75), _score(3, 3.0)]
    assert choose(scores).trial == 1
    assert choose(list(reversed(scores))).trial == 1  # the order they arrive in does not matter
    assert choose([_score(0, None)]).trial == 0  # one trial (no sweep) wins as it is
    with pytest.raises(SelectionError, match="trial-1 have no finite validation loss"):
        choose([_score(0, 1.0), _score(1, float("nan"))])


def test_trials_are_scored_from_their_published_summaries(tmp_path):
    dirs = []
    for trial, loss in ((1, 0.9), (0, 1.1)):
        model_dir = tmp_path / f"trial-{trial}" / "adapter"
        model_dir.mkdir(parents=True)
        (model_dir / SUMMARY_FILE).write_text(_summary(trial, loss, {"learning_rate": 0.001 * (trial + 1)}))
        dirs.append(model_dir)
    scores = score_trials(dirs)
    assert [(s.trial, s.val_loss, s.best_step) for s in scores] == [(0, 1.1, 6), (1, 0.9, 6)]
    selection = Selection(val_split_hash=None, winner=choose(scores).trial, trials=scores)
    table = trials_table(selection)
    assert table.splitlines()[0] == "| trial | learning_rate | validation loss | best step | steps | train loss |"
    assert "| trial-1 (winner) | 0.002 | 0.9000 | 6 | 8 | 2.0000 |" in table
    (dirs[0] / SUMMARY_FILE).unlink()
    with pytest.raises(SelectionError, match=r"cannot score a trial: the train summary .*trial-1/adapter"):
        score_trials(dirs)


def _summary(trial: int, loss: float, settings: dict) -> str:
    return TrainSummary(metrics={"best_val_loss": loss, "best_step": 6, "global_step": 8, "train_loss": 2.0},
                        mlflow_run_id=f"r{trial}", kfp_run_id="k", method="lora", base_model="/b", resumed_from=None,
                        dataset_hash="d", dataset_hashes={}, config_hash="c", training_fingerprint="f",
                        finished_at="t", trial=trial, settings=settings).model_dump_json()


def test_select_trial_by_hand_chooses_among_the_trials_a_run_trained(storage_root, capsys):
    """``python -m components.train.select_trial`` after ``components.train.train --trial N`` for each trial:
    selection.json in the run directory names the winner; the trials' files on the volume are the input."""
    from components.data.validate_dataset import validate_config_data
    from components.train.select_trial import SELECTION_FILE, main

    overrides = ["--config", "local", "--kfp-run-id", "hand", "--set", f"storage.mount_path={storage_root}",
                 "--set", "sweep.learning_rate=[0.001,0.002,0.004]"]
    cfg = _sweep("sweep.learning_rate=[0.001,0.002,0.004]", root=str(storage_root))
    assert main(overrides) == 1  # nothing trained yet: named, not a traceback
    assert "the train summary" in capsys.readouterr().err
    validate_config_data(cfg, "hand")
    for trial, loss in enumerate((1.2, 0.8, 0.8)):  # a tie between trials 1 and 2: the lower wins
        model_dir = resolve_paths(cfg, "hand", check=False, trial=trial).model_dir
        model_dir.mkdir(parents=True)
        (model_dir / SUMMARY_FILE).write_text(_summary(trial, loss, trial_settings(cfg, trial)))
    assert main(overrides) == 0
    out = capsys.readouterr().out
    assert "| trial-1 (winner) | 0.002 | 0.8000 |" in out and '"winner": 1' in out
    selection = Selection.model_validate_json((storage_root / "output" / "hand" / SELECTION_FILE).read_text())
    assert selection.winner == 1 and selection.val_split_hash and len(selection.trials) == 3


def test_a_loser_keeps_its_weights_and_loses_what_only_resuming_needs(tmp_path):
    trial = tmp_path / "trial-1"
    for step in (4, 8):
        checkpoint = trial / "checkpoints" / f"checkpoint-{step}"
        (checkpoint / "global_step8").mkdir(parents=True)
        (checkpoint / "global_step8" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"o" * 300)
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            (checkpoint / name).write_bytes(b"x" * 100)
        for name in ("adapter_model.safetensors", "adapter_config.json", "trainer_state.json"):
            (checkpoint / name).write_bytes(b"w" * 10)
    assert release_resume_state(trial) == 2 * (300 + 3 * 100)
    for checkpoint in list_checkpoints(trial / "checkpoints"):
        assert sorted(path.name for path in checkpoint.iterdir()) == [
            "adapter_config.json", "adapter_model.safetensors", "trainer_state.json"]
    assert release_resume_state(trial) == 0  # idempotent (a retried select-trial)


# -- tokenized once ------------------------------------------------------------------------------------------


def test_the_tokenization_key_changes_with_every_input_that_decides_the_tokens():
    section = {"dataset": "ds", "template": "default", "cutoff_len": 256, "dataset_dir": "/a",
               "preprocessing_num_workers": 4}
    files = {"ds": "1" * 64, "ds@val": "2" * 64, "dataset_info.json": "3" * 64}
    base = tokenization_key(section, "ds@val", 42, files, "m" * 64)
    assert tokenization_key({**section, "dataset_dir": "/b", "preprocessing_num_workers": 1}, "ds@val", 42, files,
                            "m" * 64) == base  # where the files are and how many workers: not the tokens
    for changed in (tokenization_key({**section, "cutoff_len": 512}, "ds@val", 42, files, "m" * 64),
                    tokenization_key({**section, "template": "llama3"}, "ds@val", 42, files, "m" * 64),
                    tokenization_key(section, "", 42, files, "m" * 64),
                    tokenization_key(section, "ds@val", 7, files, "m" * 64),
                    tokenization_key(section, "ds@val", 42, {**files, "ds": "4" * 64}, "m" * 64),
                    tokenization_key(section, "ds@val", 42, {**files, "ds@val": "4" * 64}, "m" * 64),
                    tokenization_key(section, "ds@val", 42, files, "n" * 64)):
        assert changed != base


def test_the_first_trial_builds_the_tokenized_data_under_a_lock_the_others_load_it(tmp_path):
    final = tmp_path / "tokenized" / "abc"
    first = claim(final)
    assert first.path == first.build_into and first.build_into.name == f"abc.tmp-{os.getpid()}"
    assert first.lock.is_file()
    assert claim(final, rank=1).path is None  # another rank tokenizes without saving meanwhile
    first.build_into.mkdir()
    (first.build_into / "dataset_dict.json").write_text("{}")  # what LLaMA-Factory saves
    first.publish()
    assert is_tokenized(final) and first.lock is None and not (tmp_path / "tokenized" / "abc.lock").exists()
    assert sorted(path.name for path in (tmp_path / "tokenized").iterdir()) == ["abc"]
    later = claim(final)
    assert later.path == final and later.build_into is None and later.lock is None  # loaded, not built again


def test_a_dead_holders_lock_is_taken_over_and_its_half_built_copy_removed(tmp_path):
    final = tmp_path / "tokenized" / "abc"
    final.parent.mkdir()
    lock = final.with_name("abc.lock")
    lock.write_text("other-host 1234\n")
    half = final.with_name("abc.tmp-1234")
    half.mkdir()
    (half / "data-00000-of-00001.arrow").write_bytes(b"half")
    waited = claim(final, wait_limit_s=0)  # a live holder (a fresh lock) is waited for, here no longer than 0 s
    assert waited.path is None and waited.build_into is None and half.exists()  # then: tokenize, do not save
    stale = time.time() - STALE_S - 5
    os.utime(lock, (stale, stale))  # its heartbeat stopped: the holder died
    taken = claim(final, wait_limit_s=0)
    assert taken.build_into is not None and taken.lock == lock and not half.exists()
    assert lock.read_text().split()[1] == str(os.getpid())
    taken.release()
    assert not lock.exists() and not is_tokenized(final)
