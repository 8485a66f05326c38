"""The MLflow client a step uses, checked before the step starts: settings, credentials, reachability.

Credentials come only from the environment (``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` or ``MLFLOW_TRACKING_TOKEN``
from a Kubernetes Secret; the schema refuses them inside the URI). Nothing here prints, raises or stores them: the
URI is shown through :func:`configs.redaction.public_uri` and error texts pass through
:func:`configs.redaction.redact` with the credential values masked.

When the tracking server is down (the one account of it; the modules involved point here):

- **before a step starts**, :func:`make_client` fails within about 30 s, naming the URI, when the server is
  down, hangs, answers an HTML page (a login page or a proxy in front of MLflow) or refuses the credentials: a
  step's own client makes few, short retries (:func:`client_environment`);
- **during training** the outage costs nothing: the trainer logs asynchronously (training never waits on the
  server) and retries each request for about a minute (:data:`TRAINER_MLFLOW_HTTP`), which rides out a server
  restart; after the trainer exits, the train step re-logs from ``trainer_state.json`` on the volume every
  point the server still missed (:func:`components.train.metrics.backfill_metrics`, tag
  ``llmft.backfilled_metric_points``), so the run ends with every point and none twice.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from configs.errors import StepError
from configs.redaction import describe_reply, looks_like_html, public_uri, redact, secrets_from_env, unsafe_token
from configs.schema import PipelineConfig

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# Environment variables the tasks read from the MLflow credentials Secret (all optional: an open server needs none).
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
# A step sets its run explicitly; an experiment name in the environment would start a second run.
STEP_UNSET_ENV = ("MLFLOW_EXPERIMENT_NAME",)
PREFLIGHT_TIMEOUT_S = 20
# The trainer's MLflow HTTP settings (see "When the tracking server is down" above): each request is retried
# for about a minute (urllib3 backoff 0, 2, 4, 8, 16, 32 s), enough for a server restart. Also given to every
# node of a multi-node job.
TRAINER_MLFLOW_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


class TrackingUnavailable(StepError, RuntimeError):
    """The MLflow tracking server cannot be reached; the message names the URI."""


def client_environment(cfg: PipelineConfig) -> dict[str, str]:
    """The variables that point MLflow's client at the configured server with short HTTP timeouts (its defaults
    retry for minutes). Reads ``mlflow.tracking_uri``, ``request_timeout_s`` and ``request_max_retries``."""
    return {"MLFLOW_TRACKING_URI": cfg.mlflow.tracking_uri,
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(cfg.mlflow.request_timeout_s),
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(cfg.mlflow.request_max_retries),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5"}


def tracking_secrets(environ: Mapping[str, str]) -> list[str]:
    """The MLflow credentials in ``environ``: the values to mask in anything shown or stored."""
    return secrets_from_env(MLFLOW_SECRET_KEYS, environ)


def check_credentials(environ: Mapping[str, str]) -> None:
    """Refuse MLflow credentials in ``environ`` that the HTTP library cannot send (its own error would quote them).

    Raises:
        TrackingUnavailable: a credential variable holds a newline or another control character (or the token,
            inner whitespace); the message names the variable and the Secret, never the value.
    """
    for name in MLFLOW_SECRET_KEYS:
        value = environ.get(name, "")
        reason = unsafe_token(value, allow_spaces=not name.endswith("TOKEN")) if value else None
        if reason:
            raise TrackingUnavailable(f"${name} cannot be sent to the MLflow server: {reason}; check the key {name} "
                                      "of the Secret named by mlflow.credentials_secret")


def preflight(tracking_uri: str, timeout_s: float = PREFLIGHT_TIMEOUT_S, request_timeout_s: float = 5.0,
              secrets: Iterable[str] = ()) -> None:
    """Fail fast with a clear message when the tracking server does not answer, or is not MLflow.

    ``<uri>/health`` is asked every second until ``timeout_s`` (a server still starting); each request waits at
    most ``request_timeout_s``, so a server that accepts connections and never answers fails in bounded time.
    ``secrets`` are masked in the messages.

    Raises:
        TrackingUnavailable: no answer from ``<uri>/health`` within ``timeout_s`` seconds, an HTML page instead of
            MLflow's answer, or a URI that cannot be requested; the message names the URI without credentials.
    """
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return
    if not tracking_uri.startswith(("http://", "https://")):
        return
    secrets = list(secrets)
    shown = public_uri(tracking_uri)
    deadline = time.monotonic() + timeout_s
    last_error = "no answer"
    while (left := deadline - time.monotonic()) > 0:
        try:
            with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health",
                                        timeout=max(0.1, min(request_timeout_s, left))) as reply:
                body = reply.read(65536)
                if "html" in (reply.headers.get("Content-Type") or "").lower() or looks_like_html(
                        body.decode("utf-8", errors="replace")):
                    raise TrackingUnavailable(
                        f"MLflow tracking server {shown} answered /health with {describe_reply(body)}, not MLflow's "
                        "answer: a login page or a proxy stands in front of it; point mlflow.tracking_uri at the "
                        "MLflow server itself (credentials go in the Secret named by mlflow.credentials_secret)")
                if reply.status == 200:
                    return
                last_error = f"HTTP {reply.status}"
        except urllib.error.HTTPError as exc:
            # A server that answers (even 401/403 behind an auth proxy) is reachable; make_client checks the rest.
            if exc.code in (401, 403):
                return
            last_error = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last_error = str(getattr(exc, "reason", exc))
        except ValueError as exc:  # http.client.InvalidURL and friends: no use retrying
            raise TrackingUnavailable(f"MLflow tracking URI {shown} cannot be requested: "
                                      f"{redact(str(exc), secrets)}") from None
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    raise TrackingUnavailable(
        f"MLflow tracking server {shown} is unreachable after {timeout_s:.0f} s "
        f"({redact(last_error, secrets)}); check mlflow.tracking_uri and that the server is running"
    )


def _api_failure(exc: Exception, secrets: list[str]) -> str:
    """A short account of why MLflow's REST client failed: never the whole reply body (an HTML page, or a body
    that echoes a credential)."""
    text = str(exc)
    head, marker, body = text.partition("Response body: ")
    if marker:
        return f"{head.strip().rstrip('.')}; it answered {describe_reply(body.strip(chr(39)), secrets)}"
    flat = " ".join(text.split())
    return redact(flat[:400] + ("..." if len(flat) > 400 else ""), secrets)


def make_client(cfg: PipelineConfig) -> MlflowClient:
    """An MlflowClient for the configured server, after checking that it answers as MLflow does.

    Sets this process's MLflow variables (:func:`client_environment`: MLflow's client reads its HTTP settings
    from the environment, never from arguments). For an http(s) server, one cheap API call
    (``search_experiments``, one result) runs with the step's credentials, so that an HTML login page, a hanging
    server or refused credentials fail here with the URI named, not later with a traceback.

    Raises:
        TrackingUnavailable: the server is unreachable, hangs, is not MLflow, refuses the credentials, or a
            credential variable cannot be sent; the message names the URI without credentials.
    """
    from mlflow.tracking import MlflowClient

    # The one place that changes the process environment: MLflow's HTTP layer reads it on every request.
    os.environ.update(client_environment(cfg))
    for name in STEP_UNSET_ENV:
        os.environ.pop(name, None)
    check_credentials(os.environ)
    secrets = tracking_secrets(os.environ)
    uri = cfg.mlflow.tracking_uri
    preflight(uri, request_timeout_s=cfg.mlflow.request_timeout_s, secrets=secrets)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if uri.startswith(("http://", "https://")):
        try:
            client.search_experiments(max_results=1)
        except Exception as exc:  # MlflowException or a requests error, whichever the failure was
            status = exc.get_http_status_code() if hasattr(exc, "get_http_status_code") else None
            refused = status in (401, 403) or any(f"error code {code}" in str(exc) for code in (401, 403))
            hint = ("check MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN in the Secret named by "
                    "mlflow.credentials_secret" if refused else
                    "check that mlflow.tracking_uri is the MLflow server itself and that it is healthy")
            raise TrackingUnavailable(f"MLflow tracking server {public_uri(uri)} did not answer its REST API as MLflow "
                                      f"does: {_api_failure(exc, secrets)}; {hint}") from None
    return client
