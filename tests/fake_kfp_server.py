"""A loopback stand-in for the Kubeflow Pipelines v2beta1 REST API, for tests of pipelines.submit.

No KFP API server can run here (it needs Kubernetes, Argo and MySQL), so this implements just the
endpoints ``kfp.Client`` 2.17 calls for submit and schedule, with the request and reply shapes of
``kfp_server_api``: healthz, experiments (list with filter, create), pipelines (list with filter,
multipart upload, multipart upload_version, list versions), runs (create, get) and recurring runs
(create, list with filter and paging, get, delete). Every request is recorded (method, path, query,
headers, JSON body or multipart parts) so tests can assert on exactly what was sent.

Behaviour knobs: ``run_states`` is the sequence of states successive GETs of a run report (the last
one repeats); ``max_page_size`` caps list pages, as the real server does, to exercise paging;
``require_token`` answers 401 to requests without that bearer token; ``fail`` maps
``"METHOD /path"`` to a status code, answered with a body that echoes the request's Authorization
header (as a careless proxy might) to prove the client never repeats it; ``flaky`` maps
``"METHOD /path"`` to a number of 503 replies given before the endpoint works (a restarting server).

Misbehaving servers: ``html`` maps ``"METHOD /path"`` (or ``"*"`` for every request) to a status code
answered with an HTML login page, as an authenticating proxy in front of the API does (the page echoes the
Authorization header, as a careless one might); ``hang`` is a set of ``"METHOD /path"`` (``"*"`` for every
request, a trailing ``*`` for a path prefix such as ``"GET /apis/v2beta1/runs/*"``) whose requests are read
and recorded but never answered until the server stops (``hang_released`` is set then);
``canned`` maps ``"METHOD /path"`` to a JSON body answered with 200 in place of the API's (e.g. ``{}``, a
reply without the id the client needs).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API = "/apis/v2beta1"
LOGIN_PAGE = ("<!DOCTYPE html>\n<html><head><title>Log in to Your Account</title></head><body>\n"
              "<form method=\"post\" action=\"/dex/auth\"><input name=\"login\"><input name=\"password\" "
              "type=\"password\"></form>\n<!-- request carried: {authorization} -->\n</body></html>\n")


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any = None
    form: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    received: float = field(default_factory=time.monotonic)  # when the server read it (time.monotonic)


def _matches(item: dict[str, Any], filter_json: str | None) -> bool:
    """Apply a v2beta1 filter (EQUALS predicates only; anything else is a test failure)."""
    if not filter_json:
        return True
    for predicate in json.loads(filter_json).get("predicates", []):
        if predicate.get("operation") not in (1, "EQUALS"):
            raise ValueError(f"fake server supports EQUALS only, got {predicate}")
        value = predicate.get("stringValue", predicate.get("string_value"))
        if item.get(predicate["key"]) != value:
            return False
    return True


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    form, files = {}, {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if part.get_filename():
            files[name] = (part.get_filename(), payload)
        else:
            form[name] = payload.decode()
    return form, files


class FakeKfpServer:
    """The fake API on 127.0.0.1:<free port>; use as a context manager or call start()/stop()."""

    def __init__(self, *, run_states: tuple[str, ...] = ("SUCCEEDED",), max_page_size: int = 100,
                 require_token: str | None = None, fail: dict[str, int] | None = None,
                 flaky: dict[str, int] | None = None, multi_user: bool = False,
                 html: dict[str, int] | None = None, hang: set[str] | None = None,
                 canned: dict[str, Any] | None = None):
        self.run_states = run_states
        self.max_page_size = max_page_size
        self.require_token = require_token
        self.fail = fail or {}
        self.flaky = dict(flaky or {})
        self.multi_user = multi_user
        self.html = dict(html or {})
        self.hang = set(hang or ())
        self.canned = dict(canned or {})
        self.hang_released = threading.Event()
        self.requests: list[Recorded] = []
        self.experiments: dict[str, dict] = {}
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.run_polls: dict[str, int] = {}
        self.recurring_runs: dict[str, dict] = {}
        self._clock = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FakeKfpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.hang_released.set()  # let hanging handlers return, so no thread outlives the server
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeKfpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers for tests -------------------------------------------------------------------------

    def calls(self, method: str, path: str) -> list[Recorded]:
        """Recorded requests with this method and exact path."""
        return [r for r in self.requests if r.method == method and r.path == path]

    def add_experiment(self, name: str, namespace: str = "") -> str:
        experiment_id = str(uuid.uuid4())
        self.experiments[experiment_id] = {"experiment_id": experiment_id, "display_name": name,
                                           "namespace": namespace}
        return experiment_id

    def add_recurring_run(self, name: str, cron: str = "0 0 1 * * *") -> str:
        recurring_run_id = str(uuid.uuid4())
        self.recurring_runs[recurring_run_id] = {
            "recurring_run_id": recurring_run_id, "display_name": name, "mode": "ENABLE",
            "trigger": {"cron_schedule": {"cron": cron}}, "created_at": self._created_at()}
        return recurring_run_id

    def _created_at(self) -> str:
        self._clock += 1  # a strictly increasing creation time, so "created_at desc" is well defined
        return f"2026-01-01T00:00:{self._clock:02d}Z"

    # -- request handling --------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _handle(self) -> None:
                split = urlsplit(self.path)
                query = {key: values[-1] for key, values in parse_qs(split.query).items()}
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                record = Recorded(self.command, split.path, query, {k.lower(): v for k, v in self.headers.items()})
                content_type = self.headers.get("Content-Type", "")
                if content_type.startswith("multipart/form-data"):
                    record.form, record.files = _parse_multipart(content_type, body)
                elif body:
                    record.json = json.loads(body)
                key = f"{record.method} {record.path}"
                with fake._lock:
                    fake.requests.append(record)
                    hangs = any(pattern == key or (pattern.endswith("*") and key.startswith(pattern[:-1]))
                                for pattern in fake.hang)
                    html_status = fake.html.get(key, fake.html.get("*"))
                    status, reply = (0, None) if hangs or html_status else fake._route(record)
                if hangs:  # never answer; the client's own timeout must end the wait
                    fake.hang_released.wait()
                    self.close_connection = True
                    return
                content_type = "application/json"
                if html_status:
                    status, content_type = html_status, "text/html; charset=utf-8"
                    data = LOGIN_PAGE.format(authorization=record.headers.get("authorization")).encode()
                else:
                    data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _handle

        return Handler

    def _route(self, r: Recorded) -> tuple[int, Any]:
        if self.require_token and r.headers.get("authorization") != f"Bearer {self.require_token}":
            return 401, {"code": 16, "message": "missing or wrong bearer token"}
        key = f"{r.method} {r.path}"
        if key in self.fail:
            return self.fail[key], {"code": 13, "message": f"boom; you sent {r.headers.get('authorization')}"}
        if key in self.canned:
            return 200, self.canned[key]
        if self.flaky.get(key, 0) > 0:
            self.flaky[key] -= 1
            return 503, {"code": 14, "message": "unavailable, try again"}
        try:
            return self._dispatch(r)
        except KeyError as exc:
            return 404, {"code": 5, "message": f"not found: {exc}"}

    def _dispatch(self, r: Recorded) -> tuple[int, Any]:
        parts = r.path.removeprefix(API).strip("/").split("/")
        match (r.method, parts):
            case ("GET", ["healthz"]):
                return 200, {"multi_user": self.multi_user, "pipeline_store": "database"}
            case ("GET", ["experiments"]):
                found = [e for e in self.experiments.values() if _matches(e, r.query.get("filter"))]
                return 200, {"experiments": found, "total_size": len(found)}
            case ("POST", ["experiments"]):
                experiment_id = self.add_experiment(r.json["display_name"], r.json.get("namespace") or "")
                return 200, self.experiments[experiment_id]
            case ("GET", ["pipelines"]):
                found = [p for p in self.pipelines.values() if _matches(p, r.query.get("filter"))]
                return 200, {"pipelines": found, "total_size": len(found)}
            case ("POST", ["pipelines", "upload"]):
                return self._upload(r)
            case ("POST", ["pipelines", "upload_version"]):
                return self._upload_version(r)
            case ("GET", ["pipelines", pipeline_id, "versions"]):
                found = [v for v in self.versions.values() if v["pipeline_id"] == pipeline_id]
                found.sort(key=lambda v: v["created_at"], reverse=r.query.get("sort_by") == "created_at desc")
                return 200, {"pipeline_versions": found[: int(r.query.get("page_size", 100))],
                             "total_size": len(found)}
            case ("POST", ["runs"]):
                return self._create_run(r)
            case ("GET", ["runs", run_id]):
                run = self.runs[run_id]
                poll = self.run_polls[run_id] = self.run_polls.get(run_id, -1) + 1
                run["state"] = self.run_states[min(poll, len(self.run_states) - 1)]
                return 200, run
            case ("POST", ["recurringruns"]):
                return self._create_recurring_run(r)
            case ("GET", ["recurringruns"]):
                return self._list_recurring_runs(r)
            case ("GET", ["recurringruns", recurring_run_id]):
                return 200, self.recurring_runs[recurring_run_id]
            case ("DELETE", ["recurringruns", recurring_run_id]):
                del self.recurring_runs[recurring_run_id]
                return 200, {}
        return 404, {"code": 5, "message": f"fake server has no {r.method} {r.path}"}

    def _upload(self, r: Recorded) -> tuple[int, Any]:
        name = r.query["name"]
        if any(p["display_name"] == name for p in self.pipelines.values()):
            return 409, {"code": 6, "message": f"pipeline {name} already exists"}
        pipeline_id = str(uuid.uuid4())
        self.pipelines[pipeline_id] = {"pipeline_id": pipeline_id, "display_name": name, "name": name,
                                       "description": r.query.get("description", ""),
                                       "namespace": r.query.get("namespace", "")}
        self._add_version(pipeline_id, name, r.files["uploadfile"][1])  # KFP names the first version after it
        return 200, self.pipelines[pipeline_id]

    def _upload_version(self, r: Recorded) -> tuple[int, Any]:
        pipeline_id, name = r.query["pipelineid"], r.query["name"]
        if pipeline_id not in self.pipelines:
            return 404, {"code": 5, "message": f"pipeline {pipeline_id} not found"}
        if any(v["pipeline_id"] == pipeline_id and v["display_name"] == name for v in self.versions.values()):
            return 409, {"code": 6, "message": f"version {name} already exists"}
        return 200, self._add_version(pipeline_id, name, r.files["uploadfile"][1])

    def _add_version(self, pipeline_id: str, name: str, package: bytes) -> dict:
        version_id = str(uuid.uuid4())
        self.versions[version_id] = {"pipeline_id": pipeline_id, "pipeline_version_id": version_id,
                                     "display_name": name, "name": name, "created_at": self._created_at(),
                                     "package": package.decode()}
        return {k: v for k, v in self.versions[version_id].items() if k != "package"}

    def _create_run(self, r: Recorded) -> tuple[int, Any]:
        body = r.json
        if body.get("experiment_id") not in self.experiments:
            return 400, {"code": 3, "message": "run needs an existing experiment_id"}
        if not body.get("pipeline_spec") and not body.get("pipeline_version_reference"):
            return 400, {"code": 3, "message": "run needs pipeline_spec or pipeline_version_reference"}
        run_id = str(uuid.uuid4())
        self.runs[run_id] = {"run_id": run_id, "display_name": body["display_name"],
                             "experiment_id": body["experiment_id"], "state": "PENDING"}
        return 200, self.runs[run_id]

    def _create_recurring_run(self, r: Recorded) -> tuple[int, Any]:
        body = r.json
        if body.get("experiment_id") not in self.experiments:
            return 400, {"code": 3, "message": "recurring run needs an existing experiment_id"}
        reference = body.get("pipeline_version_reference") or {}
        if reference.get("pipeline_version_id") not in self.versions:
            return 400, {"code": 3, "message": "recurring run must reference an uploaded pipeline version"}
        recurring_run_id = str(uuid.uuid4())
        stored = dict(body, recurring_run_id=recurring_run_id, created_at=self._created_at())
        self.recurring_runs[recurring_run_id] = stored
        return 200, stored

    def _list_recurring_runs(self, r: Recorded) -> tuple[int, Any]:
        found = sorted((run for run in self.recurring_runs.values() if _matches(run, r.query.get("filter"))),
                       key=lambda run: run["created_at"])
        start = int(r.query.get("page_token") or 0)
        size = min(int(r.query.get("page_size") or 100), self.max_page_size)
        page = found[start:start + size]
        token = str(start + size) if start + size < len(found) else ""
        return 200, {"recurringRuns": page,  # the one camelCase list key of v2beta1 (proto json_name)
                     "total_size": len(found), "next_page_token": token}
