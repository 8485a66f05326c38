"""Bad input of the held-out loss evaluation (``components.evaluate.task.evaluate_task``): refused before it writes."""

from __future__ import annotations

import pytest

from .refusals import assert_refused, case_ids


def _task_eval(*args: str, model: str = "{ws}/model", data: str = "{ws}/data", dataset: str = "alpaca_sample",
               template: str = "default", cutoff_len: str = "256", output: str = "{ws}/out/task") -> list[str]:
    """The CLI on the workspace's model and sample data: the keywords replace a default flag's value, ``args``
    come after the defaults (a flag given again there wins, as argparse reads it)."""
    return ["components.evaluate.task.evaluate_task", "--model", model, "--data-dir", data, "--dataset", dataset,
            "--template", template, "--cutoff-len", cutoff_len, *args, "--output", output]


# (case id, argv after `python -m`, words the message must contain, extra environment)
CASES = [
    ("task-eval-missing-data-dir", _task_eval(data="{ws}/nowhere", output="{ws}/out/task1"),
     ["nowhere", "dataset_info.json"], {}),
    ("task-eval-unknown-entry", _task_eval(dataset="nope", output="{ws}/out/task2"), ["'nope'"], {}),
    ("task-eval-unknown-template", _task_eval(template="nope", output="{ws}/out/task3"), ["template 'nope'"], {}),
    ("task-eval-zero-cutoff", _task_eval(cutoff_len="0", output="{ws}/out/task4"), ["--cutoff-len"], {}),
    ("task-eval-missing-model", _task_eval(model="{ws}/nowhere", output="{ws}/out/task5"), ["nowhere"], {}),
    ("task-eval-truncated-weights", _task_eval(model="{ws}/model_truncated"), ["model_truncated", "weights"], {}),
    ("task-eval-data-dir-is-a-file", _task_eval(data="{ws}/afile"), ["afile/dataset_info.json"], {}),
    ("task-eval-entry-escape", _task_eval("--dataset", "../../etc/passwd"), ["'../../etc/passwd'"], {}),
    ("task-eval-unknown-device", _task_eval("--device", "tpu9"), ["tpu9"], {}),
    ("task-eval-cuda-without-gpu", _task_eval("--device", "cuda"), ["device 'cuda' is not available", "no CUDA GPU"],
     {"CUDA_VISIBLE_DEVICES": ""}),
    ("task-eval-zero-batch", _task_eval("--batch-size", "0"), ["--batch-size"], {}),
]


@pytest.mark.parametrize(("argv", "words", "extra_env"), [case[1:] for case in CASES], ids=case_ids(CASES))
def test_hostile_input_is_refused_clearly_and_writes_nothing(ws, argv, words, extra_env):
    assert_refused(ws, argv, words, extra_env)
