"""No secret is printed, raised, logged, stored in MLflow or compiled into the IR.

The one redaction function (:mod:`configs.redaction`) is tested on literal text (its properties, with hypothesis,
are in ``properties/test_redaction.py``); then every path a planted credential could take: a password inside
``mlflow.tracking_uri`` (refused at load, pointing at the credentials Secret, by every CLI that loads a config),
inside ``--host`` of submit, inside the evaluation endpoint, a token holding a newline (KFP, MLflow and OpenAI keys),
a server that echoes the token back, and an error text stored as an MLflow tag. KFP requests go to
tests/fake_kfp_server.py (no KFP API server can run here); MLflow is a real SQLite store; everything else is the
real code.

Before these fixes the tracking URI's password reached the compiled IR and every error naming the URI, a
scheme-less ``--host user:pass@host`` was quoted whole, and a token with a newline came back in the HTTP
library's "Invalid header value" error.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import kfp
import pytest
from fake_kfp_server import API, FakeKfpServer

from components.common.mlflow_client import TrackingUnavailable, make_client
from components.common.pipeline_runs import finalize_pipeline_runs, step_run
from components.demo.samples import SAMPLES
from components.evaluate.mmlu import evaluate_mmlu
from components.evaluate.mmlu.openai_backend import BackendError, completions_url, served_model
from components.run import finalize_runs as finalize
from configs.loading import config_from_dict, load_config
from configs.redaction import MASK, describe_reply, has_credentials, public_uri, redact, unsafe_token
from configs.schema import ConfigError
from pipelines import compile as compile_module
from pipelines import run_local, submit

PASSWORD = "pw-9c2e1d-planted-do-not-print"
TOKEN = "tok-5e8b7a-planted-do-not-print"
SAMPLE_MMLU = SAMPLES / "sample_mmlu"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ("KFP_HOST", "KFP_TOKEN", "KFP_NAMESPACE", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT",
                 "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-sa-token"))
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))


def _no_secret(*texts: str, secret: str = PASSWORD) -> None:
    for text in texts:
        assert secret not in text, text
        for line in secret.splitlines():
            assert len(line) < 3 or line not in text, text
    assert not any("Traceback" in text for text in texts)


# -- the redaction function ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("https://user:s3cret@mlflow.example.com:5000/x", "https://****@mlflow.example.com:5000/x"),
    ("--host 'admin:s3cret@kfp.example.com' must start", "--host '****@kfp.example.com' must start"),
    ("Authorization: Bearer eyJhbGciOi.abc.def", "Authorization: Bearer ****"),
    ("Basic dXNlcjpzM2NyZXQ=", "Basic ****"),
    ("http://h/v1?a=1&token=abc123&b=2", "http://h/v1?a=1&token=****&b=2"),
    ("https://h/x?password=p%40ss#frag", "https://h/x?password=****#frag"),
    ("s3://bucket/k?X-Amz-Signature=0ff1ce&X-Amz-Credential=AKIA", "s3://bucket/k?X-Amz-Signature=****&X-Amz-Credential=****"),
    # left alone: no credential in them
    ("bearer token from $KFP_TOKEN (****)", "bearer token from $KFP_TOKEN (****)"),
    ("training.learning_rate=5e-5", "training.learning_rate=5e-5"),
    ("git@github.com:org/repo.git at 10:20:30", "git@github.com:org/repo.git at 10:20:30"),
])
def test_redact_masks_credentials_in_text(text, expected):
    assert redact(text) == expected


def test_a_secret_with_a_newline_is_masked_whole_escaped_and_line_by_line():
    secret = "abc123\ndef456"
    shown = [f"value {secret} here", f"Invalid header value b'Bearer {secret!r}'", "first abc123, then def456"]
    for text in shown:
        assert redact(text, [secret]).count(MASK) >= 1
        _no_secret(redact(text, [secret]), secret=secret)


def test_public_uri_and_has_credentials():
    assert public_uri("https://u:p@kfp.example.com/pipeline?token=t") == "https://kfp.example.com/pipeline?token=****"
    assert public_uri("u:p@kfp.example.com") == "****@kfp.example.com"
    assert public_uri("http://[::1") == "http://[::1"  # does not parse: passed through redact, no crash
    assert has_credentials("https://u@h") and has_credentials("https://h/?api_key=k") and has_credentials("u:p@h")
    assert not has_credentials("https://mlflow.mlflow.svc.cluster.local:5000")
    assert not has_credentials("sqlite:////storage/mlflow/mlflow.db")


def test_describe_reply_names_an_html_page_and_shortens_the_rest():
    page = b"<!DOCTYPE html><html><head><title> Sign in \n to Kubeflow </title></head><body>" + b"x" * 5000
    assert describe_reply(page) == "an HTML page titled 'Sign in to Kubeflow'"
    assert describe_reply("  ") == "an empty reply"
    assert describe_reply("y" * 1000, limit=10) == "y" * 10 + "..."
    assert describe_reply(f"echo Bearer {TOKEN}", [TOKEN]) == "echo Bearer ****"


def test_unsafe_token_reasons():
    assert unsafe_token("abc\ndef") and unsafe_token("abc\rdef") and unsafe_token("a\u2028b") and unsafe_token("a b")
    assert unsafe_token("pass word", allow_spaces=True) is None and unsafe_token("eyJ.abc-_~+/=") is None


# -- the MLflow tracking URI --------------------------------------------------------------------------------------

URI_WITH_PASSWORD = f"https://ci-bot:{PASSWORD}@mlflow.example.com"


@pytest.mark.parametrize("uri", [URI_WITH_PASSWORD, f"https://mlflow.example.com/?token={PASSWORD}",
                                 f"ci-bot:{PASSWORD}@mlflow.example.com"])
def test_credentials_in_the_tracking_uri_are_refused_at_load(uri):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"mlflow": {"tracking_uri": uri}}, source="hostile.yaml")
    message = str(info.value)
    assert "mlflow.tracking_uri" in message and "mlflow.credentials_secret" in message and "MLFLOW_TRACKING_" in message
    _no_secret(message)


def test_no_cli_prints_the_tracking_uri_password(capsys, tmp_path):
    """Every entry point that loads a config refuses the URI without printing the password, and writes nothing."""
    override = f"mlflow.tracking_uri={URI_WITH_PASSWORD}"
    codes = {
        "submit --dry-run": submit.main(["--config", "lora", "--set", override, "--dry-run", "--json"]),
        "compile": compile_module.main(["--config", "lora", "--set", override, "--output",
                                        str(tmp_path / "ir.yaml")]),
        "run_local": run_local.main(["--storage", str(tmp_path / "storage"), "--set", override]),
        "finalize": finalize.main(["--config", "lora", "--kfp-run-id", "x", "--set", override]),
    }
    out, err = capsys.readouterr()
    assert codes == {"submit --dry-run": 2, "compile": 2, "run_local": 2, "finalize": 2}  # a config error: 2
    assert err.count("mlflow.tracking_uri: must not carry credentials") == 4
    _no_secret(out, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no IR, no storage root


def test_the_compiled_ir_holds_the_bare_tracking_uri(tmp_path):
    """The URI reaches every task as MLFLOW_TRACKING_URI in the IR: only the bare one can get there."""
    cfg = load_config("lora", overrides=["mlflow.tracking_uri=https://mlflow.example.com"])
    ir = Path(compile_module.compile_config(cfg, tmp_path / "ir.yaml", [])).read_text()
    assert "https://mlflow.example.com" in ir and "@mlflow.example.com" not in ir


def test_secret_values_are_not_echoed_in_errors():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"mlflow": {"password": "hunter2-secret"}})
    assert "mlflow.password" in str(info.value)
    assert "hunter2-secret" not in str(info.value)


# -- KFP: --host, the token, a server that echoes it ---------------------------------------------------------------

def test_credentials_in_host_never_appear_in_any_outcome(monkeypatch, capsys):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    with FakeKfpServer(require_token=TOKEN) as server:
        host = server.url.replace("http://", f"http://ci-bot:{PASSWORD}@")
        ok = submit.main(["--config", "lora", "--host", host, "--experiment", "e"])
        listed = submit.main(["--host", host, "--list-schedules"])
        server.html = {"*": 200}
        html = submit.main(["--config", "lora", "--host", host, "--experiment", "e"])
        server.html, server.fail = {}, {f"POST {API}/runs": 500}
        failed = submit.main(["--config", "lora", "--host", host, "--experiment", "e"])
    unreachable = submit.main(["--host", host, "--list-schedules"])  # the server is gone
    bare = submit.main(["--config", "lora", "--host", f"ci-bot:{PASSWORD}@kfp.example.com"])
    assert (ok, listed, html, failed, unreachable, bare) == (0, 0, 1, 1, 1, 2)
    out, err = capsys.readouterr()
    assert f"{server.url}/#/runs/details/" in out  # the run link names the host, without the user info
    assert "****@kfp.example.com" in err
    _no_secret(out, err)
    _no_secret(out, err, secret=TOKEN)


@pytest.mark.parametrize("token", [f"{TOKEN}\nX-Injected: 1", f"{TOKEN[:12]}\r\n{TOKEN[12:]}", f"{TOKEN} {TOKEN}"])
def test_a_kfp_token_that_cannot_be_a_header_is_refused_by_name(token, monkeypatch, capsys):
    monkeypatch.setenv("KFP_TOKEN", token)
    with FakeKfpServer() as server:
        code = submit.main(["--config", "lora", "--host", server.url])
        assert server.requests == []
    assert code == 2
    err = capsys.readouterr().err
    assert "$KFP_TOKEN cannot be sent as a bearer token" in err
    _no_secret(err, secret=token)


# -- MLflow: credentials in the environment, errors stored as tags ---------------------------------------------------

@pytest.fixture
def sqlite_cfg(tmp_path):
    return load_config("local", overrides=[f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                                           f"mlflow.experiment=secrets-{uuid.uuid4().hex[:6]}"])


def test_error_tags_in_mlflow_are_redacted(sqlite_cfg, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)
    error = f"cannot reach https://ci-bot:{PASSWORD}@registry.example.com with Bearer {TOKEN}"
    with pytest.raises(RuntimeError), step_run(sqlite_cfg, "kfp-secret", "train") as (client, run_id):
        raise RuntimeError(error)
    summary = finalize_pipeline_runs(sqlite_cfg, "kfp-secret", "FAILED", error)
    tags = [client.get_run(run_id).data.tags["llmft.error"], client.get_run(summary["parent"]).data.tags["llmft.error"]]
    for tag in tags:
        assert "https://****@registry.example.com" in tag
        _no_secret(tag)
        _no_secret(tag, secret=TOKEN)


@pytest.mark.parametrize("name", ["MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD"])
def test_an_mlflow_credential_with_a_newline_is_refused_by_name(name, sqlite_cfg, monkeypatch):
    monkeypatch.setenv(name, f"{PASSWORD}\n")  # `kubectl create secret --from-file` keeps the file's last newline
    with pytest.raises(TrackingUnavailable) as info:
        make_client(sqlite_cfg)
    assert f"${name} cannot be sent" in str(info.value) and "mlflow.credentials_secret" in str(info.value)
    _no_secret(str(info.value))


# -- the OpenAI-compatible endpoint ---------------------------------------------------------------------------------

@pytest.mark.parametrize("endpoint", [f"http://ci-bot:{PASSWORD}@vllm:8000/v1", f"http://vllm:8000/v1?api_key={PASSWORD}"])
def test_credentials_in_the_endpoint_are_refused(endpoint):
    with pytest.raises(BackendError) as info:
        completions_url(endpoint)
    assert "OPENAI_API_KEY" in str(info.value)
    _no_secret(str(info.value))


def test_an_openai_key_with_a_newline_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", f"{TOKEN}\nX-Injected: 1")
    with pytest.raises(BackendError) as info:
        served_model("http://127.0.0.1:9/v1", timeout_s=1)
    assert "$OPENAI_API_KEY cannot be sent" in str(info.value)
    _no_secret(str(info.value), secret=TOKEN)


def test_evaluate_mmlu_cli_with_credentials_in_the_endpoint(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    code = evaluate_mmlu.main(["--model", str(model), "--data-dir", str(SAMPLE_MMLU), "--backend", "openai",
                               "--endpoint", f"http://ci-bot:{PASSWORD}@127.0.0.1:9/v1",
                               "--output", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 1 and "credentials in the URL" in err
    _no_secret(out, err)
    assert not (tmp_path / "out").exists()
