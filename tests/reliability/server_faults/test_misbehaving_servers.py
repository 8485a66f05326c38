"""Servers that answer the wrong thing, or nothing: every command fails with a clear message, exit 1, in bounded
time, and never reports success.

- KFP: ``pipelines.submit`` (a run, ``--wait``, ``--schedule``, ``--list-schedules``, ``--delete-schedule``)
  against tests/fake_kfp_server.py, a loopback fake of the v2beta1 API (no KFP API server can run here: it needs
  Kubernetes, Argo and MySQL). The fake answers an HTML login page with 200 (an authenticating proxy in front of
  the API), a 500 with an HTML page, ``{}`` without the id the client needs, or hangs. The real ``kfp.Client``
  sends the requests.
- MLflow: ``components.common.mlflow_client.preflight`` and ``make_client`` against a stand-in for a proxy in
  front of MLflow (HTML pages, a hang, a 401): a real MLflow server never answers that way, so :class:`StandIn`
  plays the proxy.
- The OpenAI-compatible endpoint of ``components.evaluate.mmlu.openai_backend`` answering HTML or echoing the key in
  an error.

Before these fixes, a login page gave "run ... created" with exit 0 (and "0 recurring run(s)"), a hanging server
made submit wait forever, and the MLflow preflight took a login page for a healthy server.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kfp
import pytest
from fake_kfp_server import API, FakeKfpServer

from components.common.mlflow_client import TrackingUnavailable, make_client, preflight
from components.common.pipeline_runs import step_run
from components.evaluate.mmlu.openai_backend import BackendError, score_prompts, served_model
from configs.loading import load_config
from pipelines import submit
from pipelines.kfp_api import MAX_POLL_ERRORS

TOKEN = "kfp-token-4b1f0c-planted-do-not-print"
SCHEDULE = "0 0 2 * * *"
TIMEOUT = "1"  # --request-timeout for the hanging server, in seconds
BOUND_S = 15.0  # what "bounded" means here: well over the timeouts involved, far under "forever"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No ambient KFP settings; the planted token in $KFP_TOKEN."""
    for name in ("KFP_HOST", "KFP_NAMESPACE", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT",
                 "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME", "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME",
                 "KF_PIPELINES_IAP_OAUTH2_CLIENT_ID", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                 "MLFLOW_TRACKING_TOKEN", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-sa-token"))
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))


COMMANDS = {
    "submit": ["--config", "lora", "--experiment", "exp-a"],
    "schedule": ["--config", "lora", "--experiment", "exp-a", "--schedule", SCHEDULE],
    "list-schedules": ["--list-schedules"],
    "delete-schedule": ["--delete-schedule", "llm-finetune-lora-nightly"],
}
# The request of each command whose reply decides its outcome (the one a broken proxy would spoil).
DECISIVE = {
    "submit": f"POST {API}/runs",
    "schedule": f"POST {API}/recurringruns",
    "list-schedules": f"GET {API}/recurringruns",
    "delete-schedule": f"DELETE {API}/recurringruns/{{existing}}",
}


def _run(server: FakeKfpServer, command: str, *extra: str) -> tuple[int, float]:
    """``(exit code, seconds spent on the server)``: from its first request (compiling the pipeline before it,
    seconds on a loaded machine, is not waiting on the server) to the command's return."""
    started = time.monotonic()
    code = submit.main([*COMMANDS[command], "--host", server.url, *extra])
    first = server.requests[0].received if server.requests else started
    return code, time.monotonic() - first


def _assert_clean_failure(capsys, *words: str) -> str:
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "created" not in out and "recurring run(s)" not in err and "deleted" not in out, (out, err)
    assert TOKEN not in out + err
    assert "<html" not in (out + err).lower() and "<form" not in (out + err).lower()  # named, not dumped
    for word in words:
        assert word in err, err
    return err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_login_page_on_every_request_is_not_success(command, capsys):
    with FakeKfpServer(html={"*": 200}) as server:
        existing = server.add_recurring_run("llm-finetune-lora-nightly")
        code, _ = _run(server, command)
    assert code == 1
    _assert_clean_failure(capsys, "HTML page titled 'Log in to Your Account'", "KFP API's JSON", "bearer token")
    assert existing in server.recurring_runs


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_login_page_on_the_decisive_request_only_is_not_success(command, capsys):
    """healthz and the rest answer JSON; only the request that creates, lists or deletes gets the page."""
    with FakeKfpServer(require_token=TOKEN) as server:
        existing = server.add_recurring_run("llm-finetune-lora-nightly")
        decisive = DECISIVE[command].format(existing=existing)
        server.html = {decisive: 200}
        code, _ = _run(server, command)
        assert server.calls(*decisive.split(" ", 1)), "the decisive request was never sent"
    assert code == 1
    _assert_clean_failure(capsys, f"{decisive.split(' ')[0]} ", "HTML page", "instead of the KFP API's JSON")
    assert existing in server.recurring_runs  # a failed schedule create keeps the old one


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_500_html_page_is_a_clean_failure(command, capsys):
    with FakeKfpServer(require_token=TOKEN) as server:
        existing = server.add_recurring_run("llm-finetune-lora-nightly")
        server.html = {DECISIVE[command].format(existing=existing): 500}
        code, _ = _run(server, command)
    assert code == 1
    _assert_clean_failure(capsys, "KFP API answered 500", "an HTML page titled 'Log in to Your Account'")


@pytest.mark.parametrize(("command", "reply", "what"), [
    ("submit", f"POST {API}/runs", "run id"),
    ("submit", f"POST {API}/experiments", "experiment id"),
    ("schedule", f"POST {API}/recurringruns", "recurring run id"),
    ("schedule", f"POST {API}/pipelines/upload", "pipeline id"),
])
def test_a_json_reply_without_the_id_is_not_success(command, reply, what, capsys):
    """A proxy that answers ``{}``, which the SDK reads as an object without fields: before, submit printed
    ".../runs/details/None" and exited 0."""
    with FakeKfpServer(require_token=TOKEN, canned={reply: {}}) as server:
        code, _ = _run(server, command)
    assert code == 1
    _assert_clean_failure(capsys, f"has no {what}")


@pytest.mark.parametrize(("command", "hangs"), [
    ("submit", f"GET {API}/healthz"),
    ("submit", f"POST {API}/runs"),
    ("schedule", f"POST {API}/pipelines/upload"),
    ("list-schedules", f"GET {API}/healthz"),
    ("list-schedules", f"GET {API}/recurringruns"),
    ("delete-schedule", f"GET {API}/recurringruns"),
])
def test_a_hanging_server_gets_a_bounded_wait_and_a_clear_message(command, hangs, capsys):
    with FakeKfpServer(require_token=TOKEN, hang={hangs}) as server:
        code, elapsed = _run(server, command, "--request-timeout", TIMEOUT)
        assert server.calls(*hangs.split(" ", 1)), "the hanging endpoint was never reached"
    assert code == 1
    assert elapsed < BOUND_S
    _assert_clean_failure(capsys, "did not answer in time", "--request-timeout")


def test_a_server_that_hangs_while_a_run_is_followed_gives_up(capsys):
    """--wait rides out a few transient errors (a read timeout is one), then stops: bounded, exit 1."""
    with FakeKfpServer(require_token=TOKEN, hang={f"GET {API}/runs/*"}) as server:
        code, elapsed = _run(server, "submit", "--wait", "--poll-interval", "0.01", "--request-timeout", "0.5")
        polls = [r for r in server.requests if r.method == "GET" and r.path.startswith(f"{API}/runs/")]
    assert code == 1
    assert elapsed < BOUND_S
    assert len(polls) == MAX_POLL_ERRORS + 1  # each poll timed out once, none was resent by urllib3
    out, err = capsys.readouterr()
    assert "created" in out  # the run exists; following it is what failed
    assert "did not answer in time" in err and "Traceback" not in err and TOKEN not in out + err


# -- MLflow ------------------------------------------------------------------------------------------------------

LOGIN = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body><form>password</form></body></html>"


class StandIn:
    """A loopback HTTP server standing in for a proxy or login page in front of MLflow or vLLM.

    ``routes`` maps a path prefix to ``(status, content type, body)``, or to ``"hang"`` (never answer until
    stopped). A body may contain ``{authorization}``, replaced by the request's Authorization header (a server
    that echoes the credential back). Unmatched paths answer 404.
    """

    def __init__(self, routes: dict[str, Any]):
        self.routes = routes
        self.released = threading.Event()
        self.seen: list[str] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stand_in.seen.append(self.path)
                route = next((value for prefix, value in stand_in.routes.items() if self.path.startswith(prefix)),
                             (404, "text/plain", b"not found"))
                if route == "hang":
                    stand_in.released.wait()
                    self.close_connection = True
                    return
                status, content_type, body = route
                body = body.replace(b"{authorization}", (self.headers.get("Authorization") or "").encode())
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def __enter__(self) -> StandIn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()


def _cfg(uri: str, *extra: str):
    return load_config("local", overrides=[f"mlflow.tracking_uri={uri}", "mlflow.request_timeout_s=1",
                                           "mlflow.request_max_retries=0", *extra])


def test_mlflow_health_answered_by_a_login_page_fails_at_once():
    with StandIn({"/health": (200, "text/html", LOGIN)}) as proxy:
        started = time.monotonic()
        with pytest.raises(TrackingUnavailable) as info:
            preflight(proxy.url, timeout_s=10)
    assert time.monotonic() - started < 5  # not retried until the deadline: it answered, and is not MLflow
    message = str(info.value)
    assert proxy.url in message and "HTML page titled 'Sign in'" in message and "mlflow.tracking_uri" in message


def test_mlflow_health_that_hangs_is_bounded():
    with StandIn({"/health": "hang"}) as proxy:
        started = time.monotonic()
        with pytest.raises(TrackingUnavailable, match="unreachable after 3 s"):
            preflight(proxy.url, timeout_s=3, request_timeout_s=1)
        elapsed = time.monotonic() - started
    assert 3 <= elapsed < BOUND_S
    assert len(proxy.seen) >= 2  # asked again after each timeout, until the deadline


@pytest.mark.parametrize(("api", "words"), [
    ((200, "text/html", LOGIN), "an HTML page titled 'Sign in'"),
    ("hang", "did not answer its REST API"),
    ((401, "application/json", b'{"error_code": "UNAUTHENTICATED", "message": "who are you"}'),
     "MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN"),
    ((502, "text/html", b"<html><head><title>502 Bad Gateway</title></head></html>"), "502"),
])
def test_make_client_fails_fast_when_the_api_is_not_mlflow(api, words):
    """/health says OK (a proxy that lets health checks through), the REST API does not answer as MLflow."""
    with StandIn({"/health": (200, "text/plain", b"OK"), "/api/": api}) as proxy:
        started = time.monotonic()
        with pytest.raises(TrackingUnavailable) as info:
            make_client(_cfg(proxy.url))
        elapsed = time.monotonic() - started
    message = str(info.value)
    assert proxy.url in message and words in message, message
    assert "<html" not in message.lower() and "<form" not in message
    assert elapsed < BOUND_S


def test_step_run_fails_fast_and_cleanly_against_a_login_page():
    """The whole step entry: a login page on the API means no child run, no traceback past TrackingUnavailable."""
    with StandIn({"/health": (200, "text/plain", b"OK"), "/api/": (200, "text/html", LOGIN)}) as proxy, \
            pytest.raises(TrackingUnavailable, match="did not answer its REST API"), \
            step_run(_cfg(proxy.url), "kfp-html", "train"):
        pytest.fail("the step body must not run")


# -- the OpenAI-compatible endpoint -------------------------------------------------------------------------------

def test_an_endpoint_answering_a_login_page_is_named_not_parsed(monkeypatch):
    with StandIn({"/v1/models": (200, "text/html", LOGIN)}) as proxy, \
            pytest.raises(BackendError) as info:
        served_model(proxy.url, timeout_s=5)
    message = str(info.value)
    assert f"{proxy.url}/v1/models" in message and "HTML page titled 'Sign in'" in message
    assert "instead of JSON" in message


def test_an_endpoint_that_echoes_the_key_in_an_error_never_shows_it(monkeypatch):
    key = "sk-vllm-key-7f3a9b-planted"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    # skip the back-off between retries
    monkeypatch.setattr("components.evaluate.mmlu.openai_backend.time.sleep", lambda _s: None)
    models = json.dumps({"data": [{"id": "m"}]}).encode()
    with StandIn({"/v1/models": (200, "application/json", models),
                  "/v1/completions": (500, "application/json", b'{"message": "bad key {authorization}"}')}) as proxy, \
            pytest.raises(BackendError) as info:
        score_prompts(proxy.url, ["Q?"], timeout_s=5)
    assert "/v1/completions" in " ".join(proxy.seen)
    assert key not in str(info.value) and "Bearer ****" in str(info.value)
