"""MLflow lineage shared by every step: one parent run per pipeline run, one child run per step.

The parent run is found or created by the tag ``kfp.run_id`` (so retries and later steps attach to
the same one); each step opens a child run through :func:`step_run`, named after the step (``train``,
``compare``...), which ends it FAILED when the step raises and closes RUNNING leftovers of an earlier, killed
attempt of the same step. Credentials come only from the environment (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``
or ``MLFLOW_TRACKING_TOKEN`` from a Kubernetes Secret; the schema refuses them inside the URI). Nothing here
prints, raises or stores them: the URI is shown through :func:`configs.redaction.public_uri` and error texts
written to MLflow tags pass through :func:`configs.redaction.redact` with the credential values masked.

When the tracking server is down (the one account of it; the modules involved point here):

- **before a step starts**, :func:`make_client` fails within about 30 s, naming the URI, when the server is
  down, hangs, answers an HTML page (a login page or a proxy in front of MLflow) or refuses the credentials: a
  step's own client makes few, short retries (:func:`configure_environment`);
- **during training** the outage costs nothing: the trainer logs asynchronously (training never waits on the
  server) and retries each request for about a minute (:data:`TRAINER_MLFLOW_HTTP`), which rides out a server
  restart; after the trainer exits, the train step re-logs from ``trainer_state.json`` on the volume every
  point the server still missed (:func:`components.train.metrics.backfill_metrics`, tag
  ``llmft.backfilled_metric_points``), so the run ends with every point and none twice.

A pipeline run on the cluster is closed by its exit handler (:func:`finalize_pipeline_runs`); a local run that
was SIGKILLed runs none, and the next local run closes what it left (:mod:`components.common.local_runs`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from components.common.storage import run_dir
from components.common.typed_files import read_model, write_model
from configs.errors import StepError
from configs.redaction import describe_reply, looks_like_html, public_uri, redact, secrets_from_env, unsafe_token
from configs.schema import PipelineConfig

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

KFP_RUN_TAG = "kfp.run_id"
ROLE_TAG = "llmft.role"
STEP_TAG = "llmft.step"
TRIAL_TAG = "llmft.trial"  # a sweep's trial (trial-N) of a step that runs once per trial
PARENT_ROLE = "pipeline"
# MLflow 3's UI opens an experiment in its GenAI view (traces, prompts) unless this tag says it holds model training.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
# Environment variables the tasks read from the MLflow credentials Secret (all optional: an open server needs none).
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
PREFLIGHT_TIMEOUT_S = 20
RUN_NAME_FILE = "run_name.json"
# How kfp.local names a run: "<pipeline>-YYYY-MM-DD-HH-MM-SS-ffffff" (not a name anybody chose).
_KFP_LOCAL_NAME = re.compile(r".+-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-\d{6}")
# The trainer's MLflow HTTP settings (see "When the tracking server is down" above): each request is retried
# for about a minute (urllib3 backoff 0, 2, 4, 8, 16, 32 s), enough for a server restart. Also given to every
# node of a multi-node job.
TRAINER_MLFLOW_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
# MLflow's system metrics monitor: a sample every few seconds, logged at once, unless the environment says
# otherwise (a run shorter than one interval records nothing; the tests sample every second).
SYSTEM_METRICS_DEFAULTS = {"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "5",
                           "MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING": "1"}
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


class TrackingUnavailable(StepError, RuntimeError):
    """The MLflow tracking server cannot be reached; the message names the URI."""


def configure_environment(cfg: PipelineConfig) -> None:
    """Point MLflow at the configured server with short HTTP timeouts (the defaults retry for minutes)."""
    os.environ["MLFLOW_TRACKING_URI"] = cfg.mlflow.tracking_uri
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(cfg.mlflow.request_timeout_s)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(cfg.mlflow.request_max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = "0.5"
    # A step sets its run explicitly; an experiment name in the environment would start a second run.
    os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)


def tracking_secrets() -> list[str]:
    """The MLflow credentials in this process's environment: the values to mask in anything shown or stored."""
    return secrets_from_env(MLFLOW_SECRET_KEYS)


def check_credentials_env() -> None:
    """Refuse MLflow credentials the HTTP library cannot send (its own error would quote them).

    Raises:
        TrackingUnavailable: a credential variable holds a newline or another control character (or the token,
            inner whitespace); the message names the variable and the Secret, never the value.
    """
    for name in MLFLOW_SECRET_KEYS:
        value = os.environ.get(name, "")
        reason = unsafe_token(value, allow_spaces=not name.endswith("TOKEN")) if value else None
        if reason:
            raise TrackingUnavailable(f"${name} cannot be sent to the MLflow server: {reason}; check the key {name} "
                                      "of the Secret named by mlflow.credentials_secret")


def preflight(tracking_uri: str, timeout_s: float = PREFLIGHT_TIMEOUT_S, request_timeout_s: float = 5.0) -> None:
    """Fail fast with a clear message when the tracking server does not answer, or is not MLflow.

    ``<uri>/health`` is asked every second until ``timeout_s`` (a server still starting); each request waits at
    most ``request_timeout_s``, so a server that accepts connections and never answers fails in bounded time.

    Raises:
        TrackingUnavailable: no answer from ``<uri>/health`` within ``timeout_s`` seconds, an HTML page instead of
            MLflow's answer, or a URI that cannot be requested; the message names the URI without credentials.
    """
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return
    if not tracking_uri.startswith(("http://", "https://")):
        return
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
                                      f"{redact(str(exc), tracking_secrets())}") from None
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    raise TrackingUnavailable(
        f"MLflow tracking server {shown} is unreachable after {timeout_s:.0f} s "
        f"({redact(last_error, tracking_secrets())}); check mlflow.tracking_uri and that the server is running"
    )


def _api_failure(exc: Exception) -> str:
    """A short account of why MLflow's REST client failed: never the whole reply body (an HTML page, or a body
    that echoes a credential)."""
    text = str(exc)
    head, marker, body = text.partition("Response body: ")
    if marker:
        return f"{head.strip().rstrip('.')}; it answered {describe_reply(body.strip(chr(39)), tracking_secrets())}"
    flat = " ".join(text.split())
    return redact(flat[:400] + ("..." if len(flat) > 400 else ""), tracking_secrets())


def make_client(cfg: PipelineConfig) -> MlflowClient:
    """An MlflowClient for the configured server, after checking that it answers as MLflow does.

    Reads ``mlflow.tracking_uri``, ``request_timeout_s`` and ``request_max_retries``. For an http(s) server, one
    cheap API call (``search_experiments``, one result) runs with the step's credentials, so that an HTML login
    page, a hanging server or refused credentials fail here with the URI named, not later with a traceback.

    Raises:
        TrackingUnavailable: the server is unreachable, hangs, is not MLflow, refuses the credentials, or a
            credential variable cannot be sent; the message names the URI without credentials.
    """
    from mlflow.tracking import MlflowClient

    configure_environment(cfg)
    check_credentials_env()
    uri = cfg.mlflow.tracking_uri
    preflight(uri, request_timeout_s=cfg.mlflow.request_timeout_s)
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
                                      f"does: {_api_failure(exc)}; {hint}") from None
    return client


def experiment_id(client: MlflowClient, name: str) -> str:
    """Id of the named experiment, created when missing (race-safe); marked as model training for MLflow's UI
    unless it already has a kind."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
    except Exception:  # created concurrently by another step
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _runs_with_tags(client: MlflowClient, exp_id: str, tags: dict[str, str]) -> list:
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    return client.search_runs([exp_id], filter_string=query, max_results=1000, order_by=["attributes.start_time ASC"])


class RunName(BaseModel):
    """``run_name.json`` in the run directory: what this pipeline run's MLflow runs are called."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=250, description="The parent run's name; steps are '<step> · name'.")


def write_run_name(cfg: PipelineConfig, kfp_run_id: str, kfp_run_name: str) -> str:
    """Decide the name of this pipeline run's MLflow runs and keep it in the run directory; return it.

    The KFP run's own name when it has one; otherwise (kfp.local names a run after the pipeline and the time)
    ``<pipeline>-<method>-<UTC time>``.

    Raises:
        StorageError: the volume refused the write.
    """
    name = kfp_run_name.strip()
    if not name or _KFP_LOCAL_NAME.fullmatch(name):
        name = f"{cfg.name}-{cfg.training.method}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    write_model(run_dir(cfg, kfp_run_id) / RUN_NAME_FILE, RunName(name=name[:250]))
    return name[:250]


def run_name(cfg: PipelineConfig, kfp_run_id: str) -> str:
    """The name :func:`write_run_name` chose for this pipeline run (``<pipeline>-<run id>`` when there is none).

    Raises:
        TypedFileError: ``run_name.json`` exists but does not validate (the file and field are named).
    """
    path = run_dir(cfg, kfp_run_id) / RUN_NAME_FILE
    if not path.is_file():
        return f"{cfg.name}-{kfp_run_id}"
    return read_model(path, RunName, "the run's name").name


def public_params(cfg: PipelineConfig) -> dict[str, str]:
    """The parent run's params: every run-form field and every other field that differs from its default,
    flattened (``training.learning_rate``): what a person compares between pipeline runs."""
    from configs.form import by_path, canonical

    form = by_path()
    defaults = _flatten(PipelineConfig().model_dump(mode="json", exclude_none=True))
    params = {}
    for path, value in _flatten(cfg.model_dump(mode="json", exclude_none=True)).items():
        if value != "" and (path in form or canonical(value) != canonical(defaults.get(path))):
            params[path] = value if isinstance(value, str) else json.dumps(value)
    return {key: value[:MAX_PARAM_CHARS] for key, value in params.items()}


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and key != "gpu_node_selector":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def parent_run_id(client: MlflowClient, cfg: PipelineConfig, kfp_run_id: str) -> str:
    """The parent run of this pipeline run: found by ``kfp.run_id``, else created with the run's params (and
    launcher tags when local)."""
    from components.common.local_runs import launcher_tags

    exp_id = experiment_id(client, cfg.mlflow.experiment)
    found = _runs_with_tags(client, exp_id, {KFP_RUN_TAG: kfp_run_id, ROLE_TAG: PARENT_ROLE})
    if found:
        return found[0].info.run_id
    run = client.create_run(
        exp_id,
        run_name=run_name(cfg, kfp_run_id),
        tags={KFP_RUN_TAG: kfp_run_id, ROLE_TAG: PARENT_ROLE, "llmft.config_hash": cfg.config_hash(),
              "llmft.method": cfg.training.method, **launcher_tags()},
    )
    log_params(client, run.info.run_id, public_params(cfg))
    return run.info.run_id


def log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    """Log ``params`` in batches of 100 (MLflow's limit per request), each value cut to MLflow's limit."""
    from mlflow.entities import Param

    items = [Param(key, str(value)[:MAX_PARAM_CHARS]) for key, value in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100])


def log_metrics(client: MlflowClient, run_id: str, values: dict[str, float], step: int = 0) -> None:
    """Log ``values`` now, at ``step``, in one request."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, float(value), now, step) for key, value in values.items()])


def set_run_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    """Set several tags on a run in one request."""
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])


def close_stale_runs(client: MlflowClient, cfg: PipelineConfig, kfp_run_id: str, step: str | None = None,
                     status: str = "KILLED", trial: str = "") -> list[str]:
    """End RUNNING runs of this pipeline run (of one step, or all; of one trial of it when ``trial`` names one, so
    that trials running side by side never close each other's runs) with ``status``; return their ids."""
    exp_id = experiment_id(client, cfg.mlflow.experiment)
    tags = {KFP_RUN_TAG: kfp_run_id}
    if step:
        tags[STEP_TAG] = step
    if trial:
        tags[TRIAL_TAG] = trial
    closed = []
    for run in _runs_with_tags(client, exp_id, tags):
        if run.info.status == "RUNNING" and (step is None or run.data.tags.get(ROLE_TAG) != PARENT_ROLE):
            client.set_tag(run.info.run_id, "llmft.closed_by", "stale-run-cleanup")
            client.set_terminated(run.info.run_id, status=status)
            closed.append(run.info.run_id)
    return closed


@contextlib.contextmanager
def step_run(cfg: PipelineConfig, kfp_run_id: str, step: str, *, system_metrics: bool = False,
             trial: str = "") -> Iterator[tuple[MlflowClient, str]]:
    """Open this step's child run under the pipeline's parent run; yield ``(client, run_id)``.

    Earlier attempts of the same step (and ``trial``: a sweep's ``trial-N``, in the run's name and the tag
    ``llmft.trial``) left RUNNING (a killed pod) are ended KILLED first. The child ends FINISHED when the block
    completes, FAILED (with the error as a tag) when it raises, and KILLED when it is interrupted (Ctrl-C, or a
    SIGTERM raised as KeyboardInterrupt). With ``system_metrics`` (the GPU steps), MLflow's monitor samples CPU,
    memory and GPU into the run meanwhile.
    """
    client = make_client(cfg)
    parent = parent_run_id(client, cfg, kfp_run_id)
    close_stale_runs(client, cfg, kfp_run_id, step=step, trial=trial)
    exp_id = experiment_id(client, cfg.mlflow.experiment)
    which = {KFP_RUN_TAG: kfp_run_id, STEP_TAG: step, **({TRIAL_TAG: trial} if trial else {})}
    attempt = len(_runs_with_tags(client, exp_id, which)) + 1
    label = f"{step} · {trial}" if trial else step
    run = client.create_run(
        exp_id,
        run_name=f"{label} · {run_name(cfg, kfp_run_id)}" + ("" if attempt == 1 else f" (attempt {attempt})"),
        tags={"mlflow.parentRunId": parent, **which, ROLE_TAG: step, "llmft.attempt": str(attempt)},
    )
    run_id = run.info.run_id
    monitor = _system_metrics_monitor(run_id, cfg) if system_metrics else None
    try:
        yield client, run_id
    except BaseException as exc:
        with contextlib.suppress(Exception):
            if monitor:
                monitor.finish()
            client.set_tag(run_id, "llmft.error", redact(f"{type(exc).__name__}: {exc}", tracking_secrets())[:4000])
            client.set_terminated(run_id, status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    if monitor:
        monitor.finish()
    client.set_terminated(run_id, status="FINISHED")


def system_metrics_env() -> dict[str, str]:
    """The system metrics monitor's settings for a process we start: the defaults, overridden by this process's
    environment."""
    return {key: os.environ.get(key, value) for key, value in SYSTEM_METRICS_DEFAULTS.items()}


def _system_metrics_monitor(run_id: str, cfg: PipelineConfig):
    """MLflow's system metrics monitor, sampling into ``run_id`` (every 5 s by default) until finished."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    settings = system_metrics_env()
    monitor = SystemMetricsMonitor(run_id, sampling_interval=float(settings["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"]),
                                   samples_before_logging=int(settings["MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING"]),
                                   tracking_uri=cfg.mlflow.tracking_uri)
    monitor.start()
    return monitor


def finalize_pipeline_runs(cfg: PipelineConfig, kfp_run_id: str, pipeline_state: str, error: str = "") -> dict:
    """Exit-handler logic: close every run of this pipeline run according to the pipeline's final state.

    A failed or cancelled pipeline leaves no RUNNING run: open children end FAILED and the parent
    ends FAILED with the error as a tag. A successful pipeline ends its parent FINISHED.
    Returns a summary ``{"parent": id, "closed": [...], "status": ...}``.
    """
    client = make_client(cfg)
    parent = parent_run_id(client, cfg, kfp_run_id)
    succeeded = pipeline_state.upper() == "SUCCEEDED"
    status = "FINISHED" if succeeded else "FAILED"
    closed = [] if succeeded else close_stale_runs(client, cfg, kfp_run_id, status="FAILED")
    client.set_tag(parent, "kfp.final_state", pipeline_state)
    if error:
        client.set_tag(parent, "llmft.error", redact(error, tracking_secrets())[:4000])
    client.set_terminated(parent, status=status)
    return {"parent": parent, "closed": [run for run in closed if run != parent], "status": status}


def find_artifact(client: MlflowClient, run_id: str, wanted: Callable[[str], bool], depth: int = 2) -> str | None:
    """The first artifact path (breadth first, ``depth`` levels) whose file name satisfies ``wanted``."""
    folders = [None]
    for _ in range(depth):
        deeper = []
        for folder in folders:
            for item in client.list_artifacts(run_id, folder):
                if item.is_dir:
                    deeper.append(item.path)
                elif wanted(Path(item.path).name):
                    return item.path
        folders = deeper
    return None
