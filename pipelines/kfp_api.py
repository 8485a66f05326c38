"""Talking to the Kubeflow Pipelines API: authentication, experiments, runs and waiting for a run.

Thin functions over ``kfp.Client`` (KFP SDK 2.x, API v2beta1) used by ``python -m pipelines.submit``.
Three rules hold for every function here:

- Tokens never reach stdout, stderr or a log: :class:`Auth` keeps the token out of its ``repr``,
  :func:`describe_auth` masks it, :func:`error_text` strips it from server replies (through the one
  redaction function, :func:`configs.redaction.redact`), and the SDK's own ``print`` calls (links that may
  carry a host with credentials) are swallowed by :func:`quiet`.
- Every request has a bounded wait and every reply must be the API's JSON (:func:`guard_replies`): a server
  that hangs fails after ``timeout_s`` seconds, and a login page or a proxy's HTML answered with 200 is an
  :class:`UnexpectedReply`, never a run "created" with no id.
- A run is finished in any of :data:`FINAL_STATES`. ``Client.wait_for_run_completion`` does not count
  CANCELED as final and would poll a cancelled run until its timeout; :func:`wait_for_run` does.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kfp
import kfp_server_api
import urllib3

from configs import redaction
from configs.errors import StepError

# Where kubelet projects the audience-bound KFP service-account token in a pod (kfp.client defaults).
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
SA_TOKEN_DEFAULT_PATH = "/var/run/secrets/kubeflow/pipelines/token"
DEFAULT_TOKEN_ENV = "KFP_TOKEN"
FINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED"})
MASK = redaction.MASK
# How long one request may take (connect, then read) before submit gives up on the server.
DEFAULT_REQUEST_TIMEOUT_S = 60.0
# Transient poll failures (a restarting API server, a dropped connection) tolerated in a row while waiting.
MAX_POLL_ERRORS = 5
_EQUALS = 1  # kfp.client's numeric filter operation code for EQUALS


class AuthError(StepError, ValueError):
    """The requested authentication cannot be set up (e.g. the named token variable is empty)."""


class UnexpectedReply(StepError, RuntimeError):
    """The server answered, but not as the KFP API does (an HTML login page, a reply without the expected id)."""


class ApiError(StepError, RuntimeError):
    """The KFP API refused a request, cannot be reached or did not answer in time (:func:`api_errors`), or its
    state forbids the request; the message says which, credentials masked."""


class RunTimeout(StepError, TimeoutError):
    """``--wait`` ran out of time while the run was still going."""


@dataclass(frozen=True)
class Auth:
    """How requests authenticate: a bearer token, a service-account token file, or nothing.

    ``token`` is excluded from ``repr`` so that printing or logging an Auth cannot leak it.
    """

    source: str
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None

    def secrets(self) -> list[str]:
        """The secret strings to strip from anything shown to the user."""
        found = [self.token] if self.token else []
        if self.token_file:
            with contextlib.suppress(OSError):
                found.append(Path(self.token_file).read_text(encoding="utf-8").strip())
        return [secret for secret in found if secret]


def resolve_auth(token_env: str | None, environ: dict[str, str] | None = None) -> Auth:
    """Pick the credentials: the token in ``$token_env`` (default ``$KFP_TOKEN``), else the in-cluster
    service-account token file, else none (a port-forward or an open endpoint).

    Raises:
        AuthError: ``token_env`` was named explicitly but is unset or empty, or the token holds a newline,
            another control character or inner whitespace (the message names the variable, never the value).
    """
    environ = os.environ if environ is None else environ
    name = token_env or DEFAULT_TOKEN_ENV
    token = environ.get(name, "").strip()
    if token:
        reason = redaction.unsafe_token(token)
        if reason:  # the HTTP library's own error would quote the whole header, token included
            raise AuthError(f"${name} cannot be sent as a bearer token: {reason} (check how it was exported)")
        return Auth(source=f"bearer token from ${name}", token=token)
    if token_env:
        raise AuthError(f"--token-env {token_env}: the environment variable {token_env} is unset or empty")
    token_file = environ.get(SA_TOKEN_PATH_ENV) or SA_TOKEN_DEFAULT_PATH
    if Path(token_file).is_file():
        return Auth(source=f"service-account token from {token_file}", token_file=token_file)
    return Auth(source="none (no KFP_TOKEN and no service-account token file)")


def describe_auth(auth: Auth) -> str:
    """A printable description of ``auth`` with the token masked."""
    return f"{auth.source} ({MASK})" if auth.token or auth.token_file else auth.source


def public_host(host: str) -> str:
    """``host`` without user info (``https://user:secret@kfp`` -> ``https://kfp``), safe to print
    (:func:`configs.redaction.public_uri`)."""
    return redaction.public_uri(host)


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with every secret, URI user info and bearer credential masked (:func:`configs.redaction.redact`)."""
    return redaction.redact(text, secrets)


def _api_detail(exc: kfp_server_api.ApiException, secrets: list[str]) -> str:
    """The message of an API error reply: the JSON ``message`` field, or a short account of any other body."""
    body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body or "")
    with contextlib.suppress(ValueError, AttributeError, RecursionError):
        message = json.loads(body).get("message")
        if isinstance(message, str) and message:
            return redaction.describe_reply(message, secrets, limit=500)
    return redaction.describe_reply(body, secrets, limit=500) if body.strip() else ""


def _timed_out(exc: BaseException) -> bool:
    """Whether a request failed because the server did not answer in time (a refused connection is not that,
    though urllib3's NewConnectionError subclasses its ConnectTimeoutError)."""
    reason = getattr(exc, "reason", None) if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
    return (isinstance(reason, urllib3.exceptions.TimeoutError)
            and not isinstance(reason, urllib3.exceptions.NewConnectionError))


def error_text(exc: BaseException, secrets: list[str]) -> str:
    """A one-paragraph, token-free description of an API or connection error."""
    if isinstance(exc, kfp_server_api.ApiException):
        detail = _api_detail(exc, secrets)
        text = f"KFP API answered {exc.status} {exc.reason or ''}".rstrip() + (f": {detail}" if detail else "")
    elif _timed_out(exc):
        text = (f"the KFP API did not answer in time ({getattr(exc, 'reason', None) or exc}); check --host, or "
                "raise --request-timeout for a slow server")
    elif type(exc).__module__.startswith("urllib3"):
        text = f"cannot reach the KFP API: {getattr(exc, 'reason', None) or exc}"
    elif isinstance(exc, UnexpectedReply):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return redaction.redact(text, secrets)


def _require_json(reply: Any, method: str, url: str) -> None:
    """Refuse a 2xx reply whose body is not JSON: a login page or a proxy's page, not the KFP API.

    Raises:
        UnexpectedReply: naming the request (without credentials) and what came back instead.
    """
    data = reply.data if isinstance(reply.data, bytes | str) else b""
    if not data.strip():
        return  # a DELETE answers an empty body on some versions
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        path = redaction.public_uri(urlsplit(url).path)
        raise UnexpectedReply(
            f"{method} {path} was answered (HTTP {reply.status}) with {redaction.describe_reply(data)} instead of the "
            "KFP API's JSON: --host must be the pipeline API (e.g. https://<kubeflow host>/pipeline), and a login "
            "page means the request needs a bearer token ($KFP_TOKEN or --token-env)") from None


def guard_replies(api_client: kfp_server_api.ApiClient, timeout_s: float) -> None:
    """Give every request of ``api_client`` a ``timeout_s`` connect and read limit, and refuse non-JSON replies.

    The generated client sends requests without a timeout (a server that accepts the connection and never
    answers blocks submit forever) and reads any 2xx body it cannot parse as an empty object (an HTML login
    page then "creates" a run without an id). Both are closed here, at the one method every request goes through.
    A read timeout is not retried: the server got the request and did not answer (connect errors still are).
    """
    rest = api_client.rest_client
    send = rest.request

    def request(method: str, url: str, *args: Any, _request_timeout: Any = None, _preload_content: bool = True,
                **kwargs: Any) -> Any:
        reply = send(method, url, *args, _request_timeout=_request_timeout or (timeout_s, timeout_s),
                     _preload_content=_preload_content, **kwargs)
        if _preload_content:
            _require_json(reply, method, url)
        return reply

    rest.request = request
    rest.pool_manager.connection_pool_kw["retries"] = urllib3.Retry(total=3, read=False, redirect=3)
    rest.pool_manager.clear()  # pools made before this point would keep the default retries


def required_id(value: Any, what: str) -> str:
    """``value`` (an id from a reply) as a non-empty string.

    Raises:
        UnexpectedReply: the reply had no such id (a server that is not the KFP API).
    """
    if not isinstance(value, str) or not value.strip():
        raise UnexpectedReply(f"the KFP API's reply has no {what}; is --host the pipeline API?")
    return value


@contextlib.contextmanager
def api_errors(secrets: list[str]) -> Iterator[None]:
    """Inside the block, what the KFP client raises for a server that refuses a request (``ApiException``), cannot
    be reached or does not answer in time (a urllib3 error, ``OSError``, the SDK's ``TimeoutError``) is an
    :class:`ApiError` worded by :func:`error_text`; the project's own errors pass as they are.

    Raises:
        ApiError: as above.
    """
    try:
        yield
    except StepError:
        raise
    except (kfp_server_api.ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise ApiError(error_text(exc, secrets)) from exc


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Swallow the SDK's prints (links, 'Experiment details: ...') and its FutureWarning banner."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", FutureWarning)
        yield


def check_health(host: str, auth: Auth, timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> None:
    """One healthz request with the same credentials, so a wrong host or token fails at once.

    ``kfp.Client()`` itself calls healthz when no namespace is set, and retries any API error five
    times, five seconds apart, before raising an unhelpful TimeoutError; this check answers with the
    server's status (401, 403, ...) in a fraction of a second instead.

    Raises:
        kfp_server_api.ApiException: the server refused the request.
        UnexpectedReply: the server answered something other than the API's JSON (a login page).
        urllib3.exceptions.HTTPError: the host cannot be reached, or did not answer within ``timeout_s``.
    """
    from kfp.client import ServiceAccountTokenVolumeCredentials

    config = kfp_server_api.Configuration(host=host)
    if auth.token or auth.token_file:
        config.api_key["authorization"] = auth.token or "placeholder"  # the hook below replaces a placeholder
        config.api_key_prefix["authorization"] = "Bearer"
    if auth.token_file:
        config.refresh_api_key_hook = ServiceAccountTokenVolumeCredentials(auth.token_file).refresh_api_key_hook
    with kfp_server_api.ApiClient(config) as api:
        guard_replies(api, timeout_s)
        kfp_server_api.HealthzServiceApi(api).healthz_service_get_healthz()


def make_client(host: str, namespace: str | None, auth: Auth,
                timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> kfp.Client:
    """A ``kfp.Client`` for ``host`` authenticated as ``auth`` describes (after :func:`check_health`), whose
    requests wait at most ``timeout_s`` seconds and accept only JSON replies (:func:`guard_replies`).

    With a token file the SDK's ``ServiceAccountTokenVolumeCredentials`` re-reads the file before
    every request, so a token the kubelet rotates keeps working during a long ``--wait``.

    Raises:
        As :func:`check_health`.
    """
    from kfp.client import ServiceAccountTokenVolumeCredentials

    check_health(host, auth, timeout_s)
    credentials = ServiceAccountTokenVolumeCredentials(auth.token_file) if auth.token_file else None
    with quiet():
        client = kfp.Client(host=host, namespace=namespace or "kubeflow", existing_token=auth.token,
                            credentials=credentials)
    guard_replies(client._run_api.api_client, timeout_s)  # one ApiClient serves every API object of the client
    return client


def name_filter(display_name: str) -> str:
    """The v2beta1 list filter selecting objects whose display name equals ``display_name``."""
    return json.dumps({"predicates": [{"operation": _EQUALS, "key": "display_name", "stringValue": display_name}]})


def get_or_create_experiment(client: kfp.Client, name: str, namespace: str | None) -> str:
    """The id of the experiment called ``name`` in ``namespace``, created when missing."""
    with quiet():
        experiment = client.create_experiment(name=name, namespace=namespace)
    return required_id(getattr(experiment, "experiment_id", None), f"experiment id for {name!r}")


def create_run(client: kfp.Client, *, experiment_id: str, run_name: str, package_path: Path,
               parameters: dict[str, Any], service_account: str | None = None) -> str:
    """Start one run of the compiled pipeline (pipeline and platform spec sent inline); returns its id."""
    with quiet():
        run = client.run_pipeline(experiment_id=experiment_id, job_name=run_name,
                                  pipeline_package_path=str(package_path), params=parameters,
                                  service_account=service_account)
    return required_id(getattr(run, "run_id", None), "run id")


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, kfp_server_api.ApiException):
        return exc.status in (0, 429, 502, 503, 504)
    return isinstance(exc, OSError) or type(exc).__module__.startswith("urllib3")  # read timeouts included


def wait_for_run(client: kfp.Client, run_id: str, *, timeout_s: float, poll_interval_s: float,
                 report: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> str:
    """Poll the run until it reaches a state in :data:`FINAL_STATES` and return that state.

    Each state change is passed to ``report``. Up to :data:`MAX_POLL_ERRORS` transient errors in a
    row are retried; other API errors propagate.

    Raises:
        RunTimeout: the run is still going after ``timeout_s`` seconds.
        kfp_server_api.ApiException: a non-transient API error, or too many transient ones in a row.
    """
    deadline = clock() + timeout_s
    last_state, errors = None, 0
    while True:
        try:
            state = str(client.get_run(run_id).state or "RUNTIME_STATE_UNSPECIFIED").upper()
            errors = 0
        except Exception as exc:  # the KFP client's errors: anything but a few transient ones is raised again
            errors += 1
            if not _is_transient(exc) or errors > MAX_POLL_ERRORS:
                raise
            state = last_state
        if state != last_state and state is not None:
            report(state)
            last_state = state
        if state in FINAL_STATES:
            return state
        if clock() >= deadline:
            raise RunTimeout(f"run {run_id} is still {last_state} after {timeout_s:g} s")
        sleep(poll_interval_s)
