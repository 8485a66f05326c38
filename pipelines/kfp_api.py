"""Talking to the Kubeflow Pipelines API: authentication, experiments, runs and waiting for a run.

Thin functions over ``kfp.Client`` (KFP SDK 2.x, API v2beta1) used by ``python -m pipelines.submit``.
Two rules hold for every function here:

- Tokens never reach stdout, stderr or a log: :class:`Auth` keeps the token out of its ``repr``,
  :func:`describe_auth` masks it, :func:`error_text` strips it from server replies, and the SDK's own
  ``print`` calls (links that may carry a host with credentials) are swallowed by :func:`quiet`.
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
from urllib.parse import urlsplit, urlunsplit

import kfp
import kfp_server_api

# Where kubelet projects the audience-bound KFP service-account token in a pod (kfp.client defaults).
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
SA_TOKEN_DEFAULT_PATH = "/var/run/secrets/kubeflow/pipelines/token"
DEFAULT_TOKEN_ENV = "KFP_TOKEN"
FINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED"})
MASK = "****"
# Transient poll failures (a restarting API server, a dropped connection) tolerated in a row while waiting.
MAX_POLL_ERRORS = 5
_EQUALS = 1  # kfp.client's numeric filter operation code for EQUALS


class AuthError(ValueError):
    """The requested authentication cannot be set up (e.g. the named token variable is empty)."""


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
        AuthError: ``token_env`` was named explicitly but is unset or empty.
    """
    environ = os.environ if environ is None else environ
    name = token_env or DEFAULT_TOKEN_ENV
    token = environ.get(name, "").strip()
    if token:
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
    """``host`` without user info (``https://user:secret@kfp`` -> ``https://kfp``), safe to print."""
    parts = urlsplit(host)
    if parts.username is None and parts.password is None:
        return host
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with every secret replaced by a mask."""
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def error_text(exc: BaseException, secrets: list[str]) -> str:
    """A one-paragraph, token-free description of an API or connection error."""
    if isinstance(exc, kfp_server_api.ApiException):
        detail = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body or "")
        with contextlib.suppress(ValueError, AttributeError):
            detail = json.loads(detail).get("message") or detail
        text = f"KFP API answered {exc.status} {exc.reason or ''}".rstrip() + (f": {detail[:500]}" if detail else "")
    elif type(exc).__module__.startswith("urllib3"):
        text = f"cannot reach the KFP API: {getattr(exc, 'reason', None) or exc}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return redact(text, secrets)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Swallow the SDK's prints (links, 'Experiment details: ...') and its FutureWarning banner."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", FutureWarning)
        yield


def check_health(host: str, auth: Auth) -> None:
    """One healthz request with the same credentials, so a wrong host or token fails at once.

    ``kfp.Client()`` itself calls healthz when no namespace is set, and retries any API error five
    times, five seconds apart, before raising an unhelpful TimeoutError; this check answers with the
    server's status (401, 403, ...) in a fraction of a second instead.

    Raises:
        kfp_server_api.ApiException: the server refused the request.
        urllib3.exceptions.HTTPError: the host cannot be reached.
    """
    from kfp.client import ServiceAccountTokenVolumeCredentials

    config = kfp_server_api.Configuration(host=host)
    if auth.token or auth.token_file:
        config.api_key["authorization"] = auth.token or "placeholder"  # the hook below replaces a placeholder
        config.api_key_prefix["authorization"] = "Bearer"
    if auth.token_file:
        config.refresh_api_key_hook = ServiceAccountTokenVolumeCredentials(auth.token_file).refresh_api_key_hook
    with kfp_server_api.ApiClient(config) as api:
        kfp_server_api.HealthzServiceApi(api).healthz_service_get_healthz()


def make_client(host: str, namespace: str | None, auth: Auth) -> kfp.Client:
    """A ``kfp.Client`` for ``host`` authenticated as ``auth`` describes (after :func:`check_health`).

    With a token file the SDK's ``ServiceAccountTokenVolumeCredentials`` re-reads the file before
    every request, so a token the kubelet rotates keeps working during a long ``--wait``.
    """
    from kfp.client import ServiceAccountTokenVolumeCredentials

    check_health(host, auth)
    credentials = ServiceAccountTokenVolumeCredentials(auth.token_file) if auth.token_file else None
    with quiet():
        return kfp.Client(host=host, namespace=namespace or "kubeflow", existing_token=auth.token,
                          credentials=credentials)


def name_filter(display_name: str) -> str:
    """The v2beta1 list filter selecting objects whose display name equals ``display_name``."""
    return json.dumps({"predicates": [{"operation": _EQUALS, "key": "display_name", "stringValue": display_name}]})


def get_or_create_experiment(client: kfp.Client, name: str, namespace: str | None) -> str:
    """The id of the experiment called ``name`` in ``namespace``, created when missing."""
    with quiet():
        return client.create_experiment(name=name, namespace=namespace).experiment_id


def create_run(client: kfp.Client, *, experiment_id: str, run_name: str, package_path: Path,
               parameters: dict[str, Any], service_account: str | None = None) -> str:
    """Start one run of the compiled pipeline (pipeline and platform spec sent inline); returns its id."""
    with quiet():
        run = client.run_pipeline(experiment_id=experiment_id, job_name=run_name,
                                  pipeline_package_path=str(package_path), params=parameters,
                                  service_account=service_account)
    return run.run_id


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, kfp_server_api.ApiException):
        return exc.status in (0, 429, 502, 503, 504)
    return isinstance(exc, OSError) or type(exc).__module__.startswith("urllib3")


def wait_for_run(client: kfp.Client, run_id: str, *, timeout_s: float, poll_interval_s: float,
                 report: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> str:
    """Poll the run until it reaches a state in :data:`FINAL_STATES` and return that state.

    Each state change is passed to ``report``. Up to :data:`MAX_POLL_ERRORS` transient errors in a
    row are retried; other API errors propagate.

    Raises:
        TimeoutError: the run is still going after ``timeout_s`` seconds.
        kfp_server_api.ApiException: a non-transient API error, or too many transient ones in a row.
    """
    deadline = clock() + timeout_s
    last_state, errors = None, 0
    while True:
        try:
            state = str(client.get_run(run_id).state or "RUNTIME_STATE_UNSPECIFIED").upper()
            errors = 0
        except Exception as exc:
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
            raise TimeoutError(f"run {run_id} is still {last_state} after {timeout_s:g} s")
        sleep(poll_interval_s)
