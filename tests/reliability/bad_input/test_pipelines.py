"""Bad input of the pipelines' command lines: ``pipelines.compile``, ``pipelines.submit`` (with ``--schedule``) and
``pipelines.run_local``: refused before any request, any compiled file, any storage root.

Schedules KFP would accept and then never run, or run wrongly, are refused before any request. KFP reads
``--schedule`` with robfig/cron: six fields, seconds first, or ``@every <Go duration>``. Before these checks,
``@every 0s`` and ``@every 0.5s`` (robfig/cron makes both one second), ``0 0 0 31 2 *`` (February 31st: never fires)
and digits such as Arabic-Indic ``٣`` or fullwidth ``３`` (Python's ``str.isdigit`` accepts them; ``int('²')`` even
raised a ValueError traceback) were accepted. The properties of the cron check (any text; accepted means it fires
within four years, against a day-by-day reference) are in ``properties/test_cron_schedule.py``.
"""

from __future__ import annotations

import kfp
import pytest
from fake_kfp_server import FakeKfpServer

from pipelines import submit
from pipelines.schedule import MIN_EVERY_S, CronError, validate_cron

from .refusals import assert_refused, case_ids


def _submit(*args: str) -> list[str]:
    return ["pipelines.submit", "--config", "lora", "--dry-run", *args]


def _run_local(*args: str) -> list[str]:
    return ["pipelines.run_local", "--storage", "{ws}/out/storage", *args]


# (case id, argv after `python -m`, words the message must contain, extra environment)
CASES = [
    # compile
    ("compile-malformed", ["pipelines.compile", "--config", "{ws}/malformed.yaml", "--output", "{ws}/out/ir.yaml"],
     ["malformed.yaml"], {}),
    ("compile-zero-epochs", ["pipelines.compile", "--config", "lora", "--set", "training.num_train_epochs=0",
                             "--output", "{ws}/out/ir2.yaml"], ["training.num_train_epochs"], {}),
    ("compile-output-not-yaml", ["pipelines.compile", "--config", "lora", "--output", "{ws}/adir"],
     ["{ws}/adir", ".yaml"], {}),
    ("compile-non-utf8", ["pipelines.compile", "--config", "{ws}/latin1.yaml", "--output", "{ws}/out/ir.yaml"],
     ["latin1.yaml", "UTF-8"], {}),
    ("compile-config-is-a-directory", ["pipelines.compile", "--config", "{ws}/adir", "--output", "{ws}/out/ir.yaml"],
     ["{ws}/adir"], {}),
    ("compile-override-without-config", ["pipelines.compile", "--set", "training.learning_rate=1", "--output",
                                         "{ws}/out/ir.yaml"], ["--config"], {}),
    # submit
    ("submit-data-escape", _submit("--set", "storage.data_dir=/etc"), ["storage.data_dir"], {}),
    ("submit-five-field-cron", _submit("--schedule", "0 2 * * *"), ["0 0 2 * * *"], {}),
    ("submit-negative-timeout", _submit("--timeout", "-5"), ["--timeout"], {}),
    ("submit-cron-second-out-of-range", _submit("--schedule", "61 * * * * *"), ["61"], {}),
    ("submit-non-http-host", _submit("--host", "ftp://kfp.example"), ["--host"], {}),
    ("submit-non-utf8", ["pipelines.submit", "--config", "{ws}/latin1.yaml", "--dry-run"], ["latin1.yaml"], {}),
    ("submit-template-escape", _submit("--set", "training.template=../../x"), ["training.template"], {}),
    # run_local
    ("run-local-malformed", ["pipelines.run_local", "--config", "{ws}/malformed.yaml", "--storage", "{ws}/out/st"],
     ["malformed.yaml"], {}),
    ("run-local-zero-lr", ["pipelines.run_local", "--set", "training.learning_rate=0", "--storage", "{ws}/out/st2"],
     ["training.learning_rate"], {}),
    ("run-local-storage-is-a-file", ["pipelines.run_local", "--storage", "{ws}/afile"], ["{ws}/afile"], {}),
    ("run-local-unknown-preset", _run_local("--config", "nopreset"), ["nopreset"], {}),
    ("run-local-dataset-escape", _run_local("--set", "dataset.names=[../x]"), ["dataset.names"], {}),
    ("run-local-non-utf8", _run_local("--config", "{ws}/latin1.yaml"), ["latin1.yaml"], {}),
]


@pytest.mark.parametrize(("argv", "words", "extra_env"), [case[1:] for case in CASES], ids=case_ids(CASES))
def test_hostile_input_is_refused_clearly_and_writes_nothing(ws, argv, words, extra_env):
    assert_refused(ws, argv, words, extra_env)


# --- schedules ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("expression", "words"), [
    ("@every 0s", "too short"),
    ("@every 0.5s", "too short"),
    ("@every 999ms", "too short"),
    ("@every 1ms", "too short"),
    (f"@every {MIN_EVERY_S - 1}s", "too short"),
    ("@every 90.5s", "whole seconds"),
    ("@every 1h0.5s", "whole seconds"),
    ("@every 0", "not a Go duration"),
    ("@every -1h", "not a Go duration"),
    ("@every 6 h", "not a Go duration"),
    ("@hourly 2", "unknown descriptor"),
    ("@every ٦h", "not a Go duration"),
    ("@every 99999999999h", "longest Go duration"),
    ("0 0 0 31 2 *", "never fires"),
    ("0 0 0 30 2 *", "never fires"),
    ("0 0 0 30-31 2 ?", "never fires"),
    ("0 0 0 31 4,6,9,11 *", "never fires"),
    ("0 0 0 31 feb-feb *", "never fires"),
    ("0 0 ٣ * * *", "hour field: '٣' is not a number in ASCII digits"),
    ("0 0 ３ * * *", "hour field: '３' is not a number in ASCII digits"),
    ("0 0 ² * * *", "hour field: '²' is not a number in ASCII digits"),
    ("0 0 2 * * */٢", "step in '*/٢' must be a positive integer"),
    ("0 0 2 1-３ * *", "day-of-month field"),
])
def test_schedules_that_never_or_wrongly_fire_are_refused(expression, words):
    with pytest.raises(CronError) as info:
        validate_cron(expression)
    assert words in str(info.value), str(info.value)


@pytest.mark.parametrize("expression", [
    "@every 1m", "@every 60s", "@every 6h30m", "@every .5h", "@every 150000ms",
    "0 0 0 29 2 *",  # a leap day: robfig/cron looks five years ahead, so it fires
    "0 0 0 31 2 1",  # day-of-month and day-of-week both restricted: either one matches, Mondays fire
    "0 0 0 31 2 */2",  # a stepped day-of-week is restricted too
    "0 0 0 31 1-2 *", "0 0 0 31 * *", "0 0 0 30 2,3 ?",
])
def test_schedules_that_fire_are_accepted(expression):
    assert validate_cron(expression) == expression


def test_a_refused_schedule_sends_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    monkeypatch.delenv("KFP_TOKEN", raising=False)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "none"))
    with FakeKfpServer() as server:
        codes = [submit.main(["--config", "lora", "--host", server.url, "--schedule", cron])
                 for cron in ("@every 0s", "0 0 0 31 2 *", "0 0 ٣ * * *")]
        assert server.requests == []
    assert codes == [2, 2, 2]
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 3
