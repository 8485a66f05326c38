"""pipelines.submit against a loopback fake of the KFP v2beta1 REST API (tests/fake_kfp_server.py).

No Kubeflow Pipelines API server can run here (it needs Kubernetes, Argo Workflows and MySQL), so the
fake stands in for it; everything else is real: the real config loader and compiler produce the IR,
the real ``kfp.Client`` / ``kfp_server_api`` send the HTTP requests, and the tests assert on the
request bodies and headers the fake recorded.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import kfp
import kfp_server_api
import pytest
import yaml
from builders import REPO_ROOT as REPO
from fake_kfp_server import API, FakeKfpServer

from configs.loading import config_from_json, load_config
from pipelines import submit
from pipelines.kfp_api import (
    MAX_POLL_ERRORS,
    Auth,
    describe_auth,
    make_client,
    public_host,
    resolve_auth,
    wait_for_run,
)
from pipelines.schedule import CronError, validate_cron

TOKEN = "kfp-token-7d3e9a-planted-do-not-print"
SCHEDULE = "0 0 2 * * *"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No ambient KFP settings: no host, token, namespace, SA token file or ~/.config/kfp context."""
    for name in ("KFP_HOST", "KFP_TOKEN", "KFP_NAMESPACE", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT",
                 "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME", "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME",
                 "KF_PIPELINES_IAP_OAUTH2_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-sa-token"))
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))


@pytest.fixture
def server():
    with FakeKfpServer(require_token=TOKEN) as fake:
        yield fake


def _main(*argv: str) -> int:
    return submit.main(list(argv))


def _submit(server: FakeKfpServer, *extra: str, config: str = "lora") -> int:
    return _main("--config", config, "--host", server.url, "--experiment", "exp-a", *extra)


def test_help_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "pipelines.submit", "--help"], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and "--schedule" in proc.stdout


def test_importing_submit_stays_light():
    code = ("import sys, pipelines.submit; heavy = [m for m in ('torch', 'transformers', 'llamafactory', 'peft', "
            "'mlflow', 'datasets') if m in sys.modules]; print(heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_run_sends_pipeline_and_platform_spec_with_typed_parameters(server, monkeypatch, capsys):
    """A --set value with a typed run parameter is sent as that parameter (the KFP run page and "Compare runs"
    show it); the package is the preset's, unchanged."""
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    assert _submit(server, "--set", "training.learning_rate=5e-5", "--set", "training.lora_rank=32",
                   "--run-name", "try-1") == 0

    (created,) = server.calls("POST", f"{API}/runs")
    body = created.json
    assert body["display_name"] == "try-1"
    assert body["experiment_id"] == next(iter(server.experiments))
    spec, platform = body["pipeline_spec"]["pipeline_spec"], body["pipeline_spec"]["platform_spec"]
    assert spec["pipelineInfo"]["name"] == "llm-finetune-lora"
    assert "exec-train" in spec["deploymentSpec"]["executors"]
    assert platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    parameters = body["runtime_config"]["parameters"]
    assert parameters == {"b_learning_rate": 5e-5, "d_lora_rank": 32}
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert config_from_json(defaults["z_config"]["defaultValue"]) == load_config("lora")
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in server.requests)
    assert "/#/runs/details/" in capsys.readouterr().out


def test_experiment_is_created_once_then_reused(server, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    existing = server.add_experiment("exp-b")
    assert _main("--config", "lora", "--host", server.url, "--experiment", "exp-b") == 0
    assert server.calls("POST", f"{API}/experiments") == []
    assert server.calls("POST", f"{API}/runs")[0].json["experiment_id"] == existing
    assert json.loads(server.calls("GET", f"{API}/experiments")[0].query["filter"])["predicates"][0][
        "stringValue"] == "exp-b"

    assert _submit(server) == 0  # exp-a does not exist yet: created with that display name
    (made,) = server.calls("POST", f"{API}/experiments")
    assert made.json["display_name"] == "exp-a"
    (created_id,) = [i for i, e in server.experiments.items() if e["display_name"] == "exp-a"]
    assert server.calls("POST", f"{API}/runs")[1].json["experiment_id"] == created_id


@pytest.mark.parametrize(("states", "code"), [
    (("PENDING", "RUNNING", "SUCCEEDED"), 0),
    (("RUNNING", "CANCELING", "CANCELED"), 1),
    (("RUNNING", "FAILED"), 1),
    (("SKIPPED",), 1),
])
def test_wait_stops_at_every_final_state(monkeypatch, capsys, states, code):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    with FakeKfpServer(run_states=states) as fake:
        assert _submit(fake, "--wait", "--poll-interval", "0.01", "--timeout", "5") == code
        (run_id,) = fake.runs
        assert len(fake.calls("GET", f"{API}/runs/{run_id}")) == len(states)  # stops polling at the final one
    out, err = capsys.readouterr()
    assert all(f"run {run_id}: {state}" in out for state in states)
    assert (f"ended {states[-1]}" in err) == (code == 1)


def test_wait_rides_out_a_few_transient_errors_but_not_many(monkeypatch, capsys):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    with FakeKfpServer(run_states=("RUNNING", "SUCCEEDED")) as fake:
        assert _submit(fake, "--run-name", "flaky") == 0
        (run_id,) = fake.runs
        fake.flaky = {f"GET {API}/runs/{run_id}": MAX_POLL_ERRORS}
        state = wait_for_run(make_client(fake.url, None, resolve_auth(None)), run_id, timeout_s=5,
                             poll_interval_s=0.01, report=lambda s: None)
        assert state == "SUCCEEDED"
        assert len(fake.calls("GET", f"{API}/runs/{run_id}")) == MAX_POLL_ERRORS + 2

        fake.run_polls.clear()
        fake.flaky = {f"GET {API}/runs/{run_id}": MAX_POLL_ERRORS + 1}
        with pytest.raises(kfp_server_api.ApiException) as raised:
            wait_for_run(make_client(fake.url, None, resolve_auth(None)), run_id, timeout_s=5,
                         poll_interval_s=0.01, report=lambda s: None)
        assert raised.value.status == 503


def test_namespace_reaches_experiments_pipelines_and_schedules(server, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    monkeypatch.setenv("KFP_NAMESPACE", "team-a")
    assert _submit(server, "--schedule", SCHEDULE) == 0
    assert server.calls("POST", f"{API}/experiments")[0].json["namespace"] == "team-a"
    assert server.calls("POST", f"{API}/pipelines/upload")[0].query["namespace"] == "team-a"
    assert all(r.query["namespace"] == "team-a" for r in server.calls("GET", f"{API}/recurringruns"))
    assert len(server.calls("GET", f"{API}/healthz")) == 1  # our fail-fast check; the SDK skips its own


def test_wait_gives_up_after_the_timeout(server, monkeypatch, capsys):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    server.run_states = ("RUNNING",)
    assert _submit(server, "--wait", "--poll-interval", "0.01", "--timeout", "0.05") == 1
    assert "still RUNNING after 0.05 s" in capsys.readouterr().err


def test_bad_override_exits_2_before_any_request(server, capsys):
    assert _submit(server, "--set", "training.learning_rate=-1") == 2
    assert "training.learning_rate" in capsys.readouterr().err
    assert _submit(server, "--set", "training.no_such_field=1") == 2
    assert "no_such_field" in capsys.readouterr().err
    assert server.requests == []


def test_dry_run_prints_a_short_readable_summary_and_sends_nothing(server, monkeypatch, capsys):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    assert _submit(server, "--dry-run", "--set", "storage.pvc_name=other-pvc", "--set", "training.learning_rate=5e-5",
                   "--set", "training.warmup_ratio=0.1") == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) <= 15 and max(map(len, lines)) <= 160
    assert lines[0].startswith("dry run: nothing sent to")
    assert "bearer token from $KFP_TOKEN (****)" in lines[0]
    differ = lines[lines.index("  parameters that differ from the preset:") + 1:]
    assert differ[:2] == ["    b_learning_rate=5e-05  (training.learning_rate)",
                          '    h_pvc_name="other-pvc"  (storage.pvc_name)']
    assert "compiled in (no typed parameter): training.warmup_ratio=0.1" in out
    gpu_line = "  GPU tasks   train, merge-lora, evaluate-candidate, evaluate-baseline: 1 x nvidia.com/gpu"
    assert any(line.startswith(gpu_line) for line in lines)
    assert "pipeline    llm-finetune-lora-" in out  # a compile-time change gives the pipeline its own name
    assert TOKEN not in out
    assert server.requests == []


def test_dry_run_json_prints_the_full_request(server, monkeypatch, capsys):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    assert _submit(server, "--dry-run", "--json", "--set", "storage.pvc_name=other-pvc") == 0
    out = capsys.readouterr().out
    request = json.loads(out)
    assert request["parameters"] == {"h_pvc_name": "other-pvc"}
    assert request["resolved_config"]["storage"]["pvc_name"] == "other-pvc"
    assert request["auth"] == "bearer token from $KFP_TOKEN (****)" and TOKEN not in out
    assert server.requests == []


def test_a_set_value_that_cannot_take_effect_at_run_time_is_compiled_in(server, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    assert _submit(server, "--set", "cluster.image=registry.example.com/llm:2") == 0
    (created,) = server.calls("POST", f"{API}/runs")
    executors = created.json["pipeline_spec"]["pipeline_spec"]["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"registry.example.com/llm:2"}
    assert created.json["runtime_config"]["parameters"] == {}


def test_dry_run_needs_no_host_but_a_real_submit_does(monkeypatch, capsys):
    assert _main("--config", "lora", "--dry-run") == 0
    assert "not set" in capsys.readouterr().out.splitlines()[0]
    assert _main("--config", "lora") == 2
    assert "KFP_HOST" in capsys.readouterr().err
    assert _main("--config", "lora", "--host", "kfp.example.com") == 2
    assert "http://" in capsys.readouterr().err


def test_host_comes_from_kfp_host(server, monkeypatch):
    monkeypatch.setenv("KFP_HOST", server.url)
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    assert _main("--config", "lora") == 0
    assert len(server.calls("POST", f"{API}/runs")) == 1


def test_service_account_token_file_is_used_in_a_pod(server, monkeypatch, tmp_path):
    token_file = tmp_path / "sa-token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))
    assert _submit(server) == 0
    assert server.requests and all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in server.requests)
    assert resolve_auth(None).token is None  # read by the SDK per request, never held as a string


def test_token_env_names_the_variable(server, monkeypatch, capsys):
    monkeypatch.setenv("MY_KFP_TOKEN", TOKEN)
    assert _submit(server, "--token-env", "MY_KFP_TOKEN") == 0
    assert server.calls("POST", f"{API}/runs")[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert _submit(server, "--token-env", "UNSET_TOKEN_VARIABLE") == 2
    assert "UNSET_TOKEN_VARIABLE" in capsys.readouterr().err


def test_rejected_token_is_a_clean_failure(server, monkeypatch, capsys):
    monkeypatch.setenv("KFP_TOKEN", "wrong-token-1234")
    assert _submit(server) == 1
    err = capsys.readouterr().err
    assert "401" in err and "Traceback" not in err and "wrong-token-1234" not in err


def test_unreachable_host_is_a_clean_failure(monkeypatch, capsys):
    with FakeKfpServer() as fake:
        url = fake.url
    assert _main("--config", "lora", "--host", url, "--experiment", "x") == 1
    err = capsys.readouterr().err
    assert err.startswith("python -m pipelines.submit: error: cannot reach the KFP API") and "Traceback" not in err


def test_schedule_uploads_the_pipeline_and_pins_a_cron_recurring_run(server, monkeypatch, capsys):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    assert _submit(server, "--schedule", SCHEDULE) == 0

    (upload,) = server.calls("POST", f"{API}/pipelines/upload")
    assert upload.query["name"] == "llm-finetune-lora"
    filename, package = upload.files["uploadfile"]
    assert filename.endswith(".yaml")
    pipeline_doc, platform_doc = yaml.safe_load_all(package)
    assert pipeline_doc["pipelineInfo"]["name"] == "llm-finetune-lora" and platform_doc["platforms"]["kubernetes"]
    assert server.calls("POST", f"{API}/pipelines/upload_version") == []  # the first version is the upload
    (pipeline_id,) = server.pipelines
    (version_id,) = server.versions

    (created,) = server.calls("POST", f"{API}/recurringruns")
    body = created.json
    assert body["display_name"] == "llm-finetune-lora-nightly"
    assert body["trigger"] == {"cron_schedule": {"cron": SCHEDULE}}
    assert int(body["max_concurrency"]) == 1 and body["no_catchup"] is True and body["mode"] == "ENABLE"
    assert body["pipeline_version_reference"] == {"pipeline_id": pipeline_id, "pipeline_version_id": version_id}
    assert "pipeline_spec" not in body  # pinned to the uploaded version, not an inline copy
    assert body["experiment_id"] == server.experiments[body["experiment_id"]]["experiment_id"]
    assert body["runtime_config"]["parameters"] == {}  # the preset as compiled
    assert "llm-finetune-lora-nightly" in capsys.readouterr().out


def test_rerunning_a_schedule_replaces_it_and_leaves_others_alone(monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    with FakeKfpServer(max_page_size=1) as server:  # pages of one: the name lookup must follow next_page_token
        other = server.add_recurring_run("someone-elses-schedule")
        assert _submit(server, "--schedule", SCHEDULE) == 0
        (first,) = [i for i in server.recurring_runs if i != other]
        assert _submit(server, "--schedule", "0 30 3 * * 1-5", "--set", "training.learning_rate=2e-4") == 0

        (upload_version,) = server.calls("POST", f"{API}/pipelines/upload_version")
        (pipeline_id,) = server.pipelines
        assert upload_version.query["pipelineid"] == pipeline_id
        assert upload_version.query["name"].endswith(load_config("lora").config_hash()[:8])
        assert len(server.calls("DELETE", f"{API}/recurringruns/{first}")) == 1
        mine = [r for r in server.recurring_runs.values() if r["display_name"] == "llm-finetune-lora-nightly"]
        assert len(mine) == 1 and other in server.recurring_runs
        assert mine[0]["trigger"]["cron_schedule"]["cron"] == "0 30 3 * * 1-5"
        new_version = mine[0]["pipeline_version_reference"]["pipeline_version_id"]
        assert server.versions[new_version]["display_name"] == upload_version.query["name"]
        assert mine[0]["runtime_config"]["parameters"] == {"b_learning_rate": 2e-4}

        assert _submit(server, "--schedule", SCHEDULE, "--schedule-name", "weekly-extra") == 0
        names = sorted(r["display_name"] for r in server.recurring_runs.values())
        assert names == ["llm-finetune-lora-nightly", "someone-elses-schedule", "weekly-extra"]


def test_failed_create_keeps_the_old_schedule(monkeypatch, capsys):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    with FakeKfpServer() as server:
        old = server.add_recurring_run("llm-finetune-lora-nightly")
        server.fail = {f"POST {API}/recurringruns": 500}
        assert _submit(server, "--schedule", SCHEDULE) == 1
        assert old in server.recurring_runs and server.calls("DELETE", f"{API}/recurringruns/{old}") == []
    assert "500" in capsys.readouterr().err


def test_list_and_delete_schedules(server, monkeypatch, capsys):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    keep = server.add_recurring_run("keep-me", cron="0 0 4 * * 0")
    gone = server.add_recurring_run("drop-me")
    assert _main("--host", server.url, "--list-schedules") == 0
    out = capsys.readouterr().out
    assert "keep-me\t0 0 4 * * 0\tENABLE" in out and f"id={gone}" in out

    assert _main("--host", server.url, "--delete-schedule", "drop-me") == 0
    assert list(server.recurring_runs) == [keep]
    assert _main("--host", server.url, "--delete-schedule", "drop-me") == 1
    assert "no recurring run named 'drop-me'" in capsys.readouterr().err


def test_the_token_is_never_printed(monkeypatch, capsys, caplog, tmp_path):
    """Plant a token, run every command, including failures whose reply echoes the Authorization header."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    host_with_password = None
    with FakeKfpServer(require_token=TOKEN, run_states=("RUNNING", "FAILED")) as server:
        host_with_password = server.url.replace("http://", f"http://user:{TOKEN}@")
        codes = [
            _submit(server, "--dry-run"),
            _submit(server, "--dry-run", "--schedule", SCHEDULE),
            _submit(server, "--wait", "--poll-interval", "0.01"),
            _submit(server, "--schedule", SCHEDULE),
            _main("--host", server.url, "--list-schedules"),
            _main("--host", server.url, "--delete-schedule", "llm-finetune-lora-nightly"),
            _main("--config", "lora", "--dry-run", "--host", host_with_password),
        ]
        server.fail = {f"POST {API}/runs": 500, f"GET {API}/recurringruns": 403}
        codes += [_submit(server), _main("--host", server.url, "--list-schedules")]
        assert any(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in server.requests)
    assert codes == [0, 0, 1, 0, 0, 0, 0, 1, 1]
    out, err = capsys.readouterr()
    assert "you sent Bearer ****" in err  # the echoed header reached us, and was masked
    for text in (out, err, caplog.text):
        assert TOKEN not in text
    assert TOKEN not in repr(Auth(source="x", token=TOKEN))
    assert TOKEN not in describe_auth(Auth(source="x", token=TOKEN))
    assert TOKEN not in public_host(host_with_password)


@pytest.mark.parametrize("expression", [
    "0 0 2 * * *", "*/30 * * * * *", "0 0 9 ? * MON-FRI", "0 15 10 1,15 jan-jun ?", "0 0 0-23/6 * * 0",
    "@daily", "@every 6h30m", "  0  0 2 * *  *  ",
])
def test_valid_cron_expressions(expression):
    assert validate_cron(expression) == " ".join(expression.split())


@pytest.mark.parametrize(("expression", "message"), [
    ("0 2 * * *", "did you mean '0 0 2 * * *'"),
    ("0 25 * * *", "hour field: 25 is outside 0-23"),
    ("0 60 2 * * *", "minute field: 60 is outside 0-59"),
    ("0 0 2 0 * *", "day-of-month field: 0 is outside 1-31"),
    ("0 0 2 * 13 *", "month field: 13 is outside 1-12"),
    ("0 0 2 * * 7", "Sunday is 0"),
    ("0 0 2 * * fri-mon", "runs backwards"),
    ("0 0 2 * * */0", "positive integer"),
    ("? 0 2 * * *", "only allowed in day-of-month"),
    ("0 0 2 * * * 2026", "has 7 fields"),
    ("", "has 0 fields"),
    ("@fortnightly", "unknown descriptor"),
    ("0 0 x * * *", "hour field: 'x' is not a number"),
])
def test_invalid_cron_expressions_name_the_problem(expression, message):
    with pytest.raises(CronError, match=message.replace("*", r"\*").replace("?", r"\?")):
        validate_cron(expression)


def test_five_field_cron_is_refused_before_any_request(server, monkeypatch, capsys):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    assert _submit(server, "--schedule", "0 2 * * *") == 2
    assert "did you mean '0 0 2 * * *'" in capsys.readouterr().err
    assert server.requests == []


@pytest.mark.parametrize("argv", [
    ["--list-schedules", "--config", "lora"],
    ["--config", "lora", "--schedule", SCHEDULE, "--wait"],
    ["--config", "lora", "--schedule-name", "x"],
    ["--wait"],
    ["--config", "lora", "--poll-interval", "0"],
])
def test_flag_combinations_that_make_no_sense_exit_2(argv, capsys):
    assert submit.main(argv) == 2
    assert capsys.readouterr().err.strip()


SWITCHES = [  # (preset, --set values): the method switched on the command line, with and without its bits
    ("lora", ["training.method=qlora", "training.quantization_bit=4"]),
    ("lora", ["training.method=qlora", "training.quantization_bit=8", "training.learning_rate=5e-5"]),
    ("lora", ["training.method=qlora"]),
    ("qlora", ["training.method=lora"]),
    ("qlora", ["training.method=full", "training.learning_rate=1e-5"]),
]


@pytest.mark.parametrize(("preset", "overrides"), SWITCHES, ids=[" ".join(case[1]) for case in SWITCHES])
def test_every_entry_point_reads_the_same_set_values_alike(preset, overrides):
    """compile and run_local load the config with load_config; submit splits the --set values into typed run
    parameters and compiled changes. What the pipeline then resolves is exactly what compile would have compiled
    (``--set training.method=qlora --set training.quantization_bit=4`` exited 2 from submit alone)."""
    from pipelines import run_local

    compiled_alone = load_config(preset, overrides=overrides)
    planned = submit.plan_run(preset, overrides)
    assert planned.resolved == compiled_alone
    assert run_local.localise(load_config(preset, overrides=overrides), None).training == compiled_alone.training


def test_submit_switches_the_method_with_its_bits(server, monkeypatch, capsys):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    assert _submit(server, "--dry-run", "--set", "training.method=qlora", "--set", "training.quantization_bit=4") == 0
    assert "qlora" in capsys.readouterr().out and server.requests == []


def test_a_switched_method_travels_with_its_bits_and_the_rest_stay_run_parameters():
    planned = submit.plan_run("lora", ["training.method=qlora", "training.quantization_bit=8",
                                       "training.learning_rate=5e-5"])
    assert planned.parameters == {"b_learning_rate": 5e-5}
    assert planned.compiled_changes == ["training.quantization_bit=8", "training.method=qlora"]
    assert submit.plan_run("qlora", ["training.method=lora"]).parameters == {"b_method": "lora"}
