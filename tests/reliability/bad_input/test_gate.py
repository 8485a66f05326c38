"""Bad input of the gate: the comparison (``components.gate.compare``) and the registration
(``components.gate.register_model``). Malformed, non-UTF-8, empty, tampered and NaN results files, results from
another template, comparison files and model directories out of the storage root: refused, nothing written.
"""

from __future__ import annotations

import pytest

from .refusals import assert_refused, case_ids

GOOD_MMLU, GOOD_TASK = "{ws}/good/results.json", "{ws}/good/task.json"
OUTPUTS = ["--report", "{ws}/out/report.md", "--json", "{ws}/out/comparison.json"]


def _compare(mmlu: str = GOOD_MMLU, task: str = GOOD_TASK, *args: str) -> list[str]:
    """The comparison of the candidate ``mmlu`` and ``task`` results with the good baseline files."""
    return ["components.gate.compare", "--candidate-mmlu", mmlu, "--candidate-task", task,
            "--baseline-mmlu", GOOD_MMLU, "--baseline-task", GOOD_TASK, *args]


def _register(*args: str) -> list[str]:
    return ["components.gate.register_model", "--config", "local", "--set", "storage.mount_path={ws}/store",
            "--set", "mlflow.tracking_uri=sqlite:///{ws}/r.db", "--kfp-run-id", "r1", "--dataset-hash", "h", *args]


# (case id, argv after `python -m`, words the message must contain, extra environment)
CASES = [
    # compare
    ("compare-malformed-json", _compare("{ws}/malformed.json", GOOD_TASK, "--report", "{ws}/out/r1.md", "--json",
                                        "{ws}/out/c1.json"), ["malformed.json"], {}),
    ("compare-non-utf8", _compare(GOOD_MMLU, "{ws}/latin1.json", "--report", "{ws}/out/r2.md"), ["latin1.json"], {}),
    ("compare-empty-file", _compare("{ws}/empty.json", GOOD_TASK, "--report", "{ws}/out/r3.md"), ["empty.json"], {}),
    ("compare-missing-file", _compare(GOOD_MMLU, "{ws}/nowhere.json", "--report", "{ws}/out/r4.md"),
     ["nowhere.json"], {}),
    ("compare-bad-gate", [*_compare(), "--config", "local", "--set", "gate.alpha=7"], ["gate.alpha"], {}),
    ("compare-tampered-mmlu", _compare("{ws}/mmlu_tampered.json", GOOD_TASK, "--report", "{ws}/out/r5.md"),
     ["mmlu_tampered.json", "micro"], {}),
    ("compare-tampered-task", _compare(GOOD_MMLU, "{ws}/task_tampered.json", "--report", "{ws}/out/r6.md"),
     ["task_tampered.json", "loss"], {}),
    ("compare-other-template", _compare(GOOD_MMLU, "{ws}/llama3/task.json", "--json", "{ws}/out/c7.json"),
     ["template", "evaluate the baseline again"], {}),
    ("compare-results-are-a-list", _compare("{ws}/list.json", GOOD_TASK, *OUTPUTS), ["list.json", "valid dictionary"],
     {}),
    ("compare-nan-accuracy", _compare("{ws}/nan.json", GOOD_TASK, *OUTPUTS), ["nan.json", "NaN"], {}),
    ("compare-results-are-a-directory", _compare("{ws}/adir", GOOD_TASK, *OUTPUTS), ["{ws}/adir", "not readable"],
     {}),
    ("compare-task-is-a-list", _compare(GOOD_MMLU, "{ws}/list.json", *OUTPUTS), ["list.json", "task results"], {}),
    ("compare-task-nan-loss", _compare(GOOD_MMLU, "{ws}/task_nan.json", *OUTPUTS), ["task_nan.json", "NaN"], {}),
    ("compare-task-is-a-directory", _compare(GOOD_MMLU, "{ws}/adir", *OUTPUTS), ["adir", "task results"], {}),
    ("compare-negative-bootstrap", _compare("{ws}/list.json", GOOD_TASK, "--set", "gate.bootstrap_samples=-1",
                                            *OUTPUTS), ["gate.bootstrap_samples"], {}),
    # register_model
    ("register-bad-uri", ["components.gate.register_model", "--config", "local", "--set", "mlflow.tracking_uri=ftp://x",
                          "--kfp-run-id", "r1", "--model-dir", "models/m/v1", "--version", "v1", "--comparison",
                          "c.json", "--dataset-hash", "h"], ["mlflow.tracking_uri"], {}),
    ("register-model-dir-escape", _register("--model-dir", "../../etc", "--version", "v1", "--comparison", "c.json"),
     ["../../etc"], {}),
    ("register-version-mismatch", _register("--model-dir", "models/m/v1", "--version", "v2", "--comparison",
                                            "c.json"), ["'v2'", "models/m/v1"], {}),
    ("register-bad-comparison", _register("--model-dir", "models/m/v1", "--version", "v1", "--comparison",
                                          "bad_c.json"), ["bad_c.json", "decision"], {}),
    ("register-missing-comparison", _register("--model-dir", "models/m/v1", "--version", "v1", "--comparison",
                                              "output/r1/compare/comparison.json"),
     ["comparison.json", "does not exist"], {}),
    ("register-comparison-escape", ["components.gate.register_model", "--config", "local", "--set",
                                    "storage.mount_path={ws}", "--set", "mlflow.tracking_uri=sqlite:///{ws}/out/r.db",
                                    "--kfp-run-id", "r1", "--model-dir", "model", "--version", "v1",
                                    "--comparison", "../../../etc/passwd", "--dataset-hash", "h"],
     ["../../../etc/passwd"], {}),
    ("register-without-arguments", ["components.gate.register_model"], ["required", "--kfp-run-id"], {}),
]


@pytest.mark.parametrize(("argv", "words", "extra_env"), [case[1:] for case in CASES], ids=case_ids(CASES))
def test_hostile_input_is_refused_clearly_and_writes_nothing(ws, argv, words, extra_env):
    assert_refused(ws, argv, words, extra_env)
