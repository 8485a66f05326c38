"""Bad input of the exit handler that closes a pipeline run's MLflow runs (``components.run.finalize_runs``)."""

from __future__ import annotations

import pytest

from .refusals import assert_refused, case_ids


def _finalize(*args: str) -> list[str]:
    return ["components.run.finalize_runs", "--config", "local", "--set", "mlflow.tracking_uri=sqlite:///{ws}/out/f.db",
            *args]


# (case id, argv after `python -m`, words the message must contain, extra environment)
CASES = [
    ("finalize-malformed-config", ["components.run.finalize_runs", "--config", "{ws}/malformed.yaml", "--kfp-run-id",
                                   "r"], ["malformed.yaml"], {}),
    ("finalize-unknown-state", _finalize("--kfp-run-id", "r", "--state", "BOGUS"), ["BOGUS"], {}),
    ("finalize-empty-run-id", _finalize("--kfp-run-id", " "), ["--kfp-run-id"], {}),
]


@pytest.mark.parametrize(("argv", "words", "extra_env"), [case[1:] for case in CASES], ids=case_ids(CASES))
def test_hostile_input_is_refused_clearly_and_writes_nothing(ws, argv, words, extra_env):
    assert_refused(ws, argv, words, extra_env)
