"""Loopback stand-in for the Kubernetes API server and a training-job controller (no cluster runs here).

Serves the few endpoints components.train.multinode.training_job and components.train.multinode.trainjob use,
through the real ``kubernetes`` client: create/get/list/watch/delete of the jobs, list pods, a pod's log, a
ClusterTrainingRuntime and a ServiceAccount. It plays the controller's part for either engine
(:data:`PYTORCHJOB`: Training Operator v1; :data:`TRAINJOB`: Kubeflow Trainer v2 with Kueue):

- a created job gets its node pods, node 0 waiting for a GPU node (PodScheduled False, Unschedulable);
  a TrainJob labelled with a Kueue queue is created suspended instead, with no pods, until Kueue admits it;
- each watch request advances a job by one step (Kueue admits it; the pods start);
- serving node 0's whole log ends the job (``outcome``: Succeeded or Failed; the container of node
  ``failed_node`` is OOMKilled first and the others then exit 1).

``drop_log_after`` cuts the first log stream after that many lines while the container still runs;
``interrupt`` sends SIGTERM to the test's main thread mid-log; ``prune`` names spec fields the API server
drops on create (an older CRD); ``fail`` maps "METHOD kind" (kind: job,
pods, log, runtime, serviceaccount) to an HTTP status, or (status, message), returned once.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

NAMESPACE = "llm-training"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
TRAINER_API = "/apis/trainer.kubeflow.org/v1alpha1"


@dataclass(frozen=True)
class Controller:
    """How one engine's controller reports a job and names and labels its pods."""

    api: str
    plural: str
    container: str
    created: tuple[dict, ...]  # conditions of a new job
    running: dict | None  # condition added when the pods start
    succeeded: tuple[str, str, str]  # condition type, reason, message ({name}: the job)
    failed: tuple[str, str, str]
    nodes: Callable[[dict], int]  # node count of a manifest
    pod_name: Callable[[str, int], str]  # (job name, node index)
    pod_labels: Callable[[str, int], dict]


PYTORCHJOB = Controller(
    api="/apis/kubeflow.org/v1", plural="pytorchjobs", container="pytorch",
    created=({"type": "Created", "status": "True", "reason": "PyTorchJobCreated"},),
    running={"type": "Running", "status": "True", "reason": "PyTorchJobRunning"},
    succeeded=("Succeeded", "PyTorchJobSucceeded", "PyTorchJob {name} is successfully completed."),
    failed=("Failed", "PyTorchJobFailed", "PyTorchJob {name} is failed because 1 Master replica(s) failed."),
    nodes=lambda manifest: 1 + manifest["spec"]["pytorchReplicaSpecs"].get("Worker", {}).get("replicas", 0),
    pod_name=lambda name, i: f"{name}-master-0" if i == 0 else f"{name}-worker-{i - 1}",
    pod_labels=lambda name, i: {"training.kubeflow.org/job-name": name,
                                "training.kubeflow.org/replica-type": "master" if i == 0 else "worker"},
)
TRAINJOB = Controller(
    api=TRAINER_API, plural="trainjobs", container="node",
    created=(), running=None,  # Trainer v2.2 reports only Suspended, Complete and Failed
    succeeded=("Complete", "JobSetCompleted", "jobset completed successfully"),
    failed=("Failed", "FailedJobs", "jobset failed due to one or more job failures"),
    nodes=lambda manifest: manifest["spec"]["trainer"]["numNodes"],
    pod_name=lambda name, i: f"{name}-node-0-{i}-x{i}k2p",
    pod_labels=lambda name, i: {"jobset.sigs.k8s.io/jobset-name": name,
                                "jobset.sigs.k8s.io/replicatedjob-name": "node",
                                "jobset.sigs.k8s.io/job-index": "0",
                                "batch.kubernetes.io/job-completion-index": str(i)},
)
# What Trainer v2 installs (manifests/base/runtimes/torch_distributed.yaml), cut to what is checked.
TORCH_DISTRIBUTED = {
    "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "ClusterTrainingRuntime",
    "metadata": {"name": "torch-distributed", "labels": {"trainer.kubeflow.org/framework": "torch"}},
    "spec": {"mlPolicy": {"numNodes": 1, "torch": {"numProcPerNode": "auto"}},
             "template": {"spec": {"replicatedJobs": [{"name": "node", "template": {"spec": {"template": {
                 "spec": {"containers": [{"name": "node", "image": "pytorch/pytorch"}]}}}}}]}}},
}


class FakeKubernetes:
    """The fake API server's state; ``handler()`` serves it. Mutate state under ``lock``."""

    def __init__(self, controller: Controller, outcome: str = "Succeeded", lines: int = 5):
        self.controller = controller
        self.outcome = outcome
        self.failed_node = 0
        # Two lines per second with fractions of different lengths (as the kubelet writes RFC 3339 nano):
        # "00.5Z" sorts after "00.55Z" as text, so resuming must compare parsed times.
        self.log = [f"2026-03-01T10:00:{i // 2:02d}.{'5' * (i % 9 + 1)}Z step {i} loss {1.0 / (i + 1):.3f}"
                    for i in range(lines)]
        self.drop_log_after: int | None = None
        self.interrupt = False
        self.fail: dict[str, int | tuple[int, str]] = {}
        self.jobs: dict[str, dict] = {}
        self.pods: dict[str, dict] = {}
        self.started: set[str] = set()
        self.kueue_watches = 1  # watch requests a queued TrainJob waits before Kueue admits it
        self.runtimes: dict[str, dict] = {"torch-distributed": json.loads(json.dumps(TORCH_DISTRIBUTED))}
        self.service_accounts: dict[str, dict] = {"llm-trainer": {
            "apiVersion": "v1", "kind": "ServiceAccount", "automountServiceAccountToken": False,
            "metadata": {"name": "llm-trainer", "namespace": NAMESPACE}}}
        self.prune: set[str] = set()  # spec fields an older CRD does not know (the API server drops them)
        self.created: list[dict] = []
        self.deleted: list[str] = []
        self.auth: set[str] = set()
        self.log_requests: list[dict] = []
        self.released = threading.Event()
        self.lock = threading.Lock()
        self.version = 0
        self.main_thread = threading.main_thread().ident

    # -- state changes (under self.lock)
    def _bump(self, obj: dict) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)

    def add_job(self, manifest: dict, conditions: list[dict] | None = None) -> dict:
        """Store a job as the controller would after creating it (conditions default: a new job's)."""
        job = json.loads(json.dumps(manifest))
        job["metadata"]["uid"] = f"uid-{len(self.created) + len(self.jobs)}"
        job["metadata"]["namespace"] = NAMESPACE
        job["status"] = {"conditions": list(self.controller.created if conditions is None else conditions)}
        queued = self.controller is TRAINJOB and QUEUE_LABEL in job["metadata"].get("labels", {})
        if queued and conditions is None:  # Kueue's webhook suspends it; the Trainer reports that
            job["spec"]["suspend"] = True
            job["status"]["conditions"].append({"type": "Suspended", "status": "True", "reason": "Suspended",
                                                "message": "TrainJob is suspended"})
        self._bump(job)
        self.jobs[job["metadata"]["name"]] = job
        if not job["spec"].get("suspend"):
            self._create_pods(job)
        return job

    def _create_pods(self, job: dict) -> None:
        """The node pods, waiting for a GPU node."""
        name = job["metadata"]["name"]
        for index in range(self.controller.nodes(job)):
            pod_name = self.controller.pod_name(name, index)
            self.pods[pod_name] = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": NAMESPACE, "uid": f"pod-{job['metadata']['uid']}-{index}",
                             "creationTimestamp": f"2026-03-01T10:00:0{index % 10}Z",
                             "labels": self.controller.pod_labels(name, index)},
                "status": {"phase": "Pending", "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                     "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]},
            }

    def _job_pods(self, name: str) -> list[dict]:
        return [self.pods[pod] for pod in sorted(self.pods)
                if pod in {self.controller.pod_name(name, i) for i in range(self.controller.nodes(self.jobs[name]))}]

    def _advance(self, name: str) -> None:
        """One controller step: Kueue admits a suspended job, or the pods of a waiting job start."""
        job = self.jobs[name]
        if job["spec"].get("suspend"):
            self.kueue_watches -= 1
            if self.kueue_watches <= 0:
                job["spec"]["suspend"] = False
                for condition in job["status"]["conditions"]:
                    if condition["type"] == "Suspended":
                        condition.update(status="False", reason="Resumed", message="TrainJob is resumed")
                self._create_pods(job)
                self._bump(job)
            return
        if name in self.started or job_done(self.controller, job):
            return
        self.started.add(name)
        if self.controller.running:
            job["status"]["conditions"].append(dict(self.controller.running))
        self._bump(job)
        for pod in self._job_pods(name):
            pod["status"] = {"phase": "Running", "containerStatuses": [
                {"name": self.controller.container, "ready": True, "restartCount": 0, "image": "img", "imageID": "",
                 "state": {"running": {"startedAt": "2026-03-01T10:00:00Z"}}}]}

    def _finish(self, name: str) -> None:
        job = self.jobs.get(name)
        if job is None:
            return
        failed = self.outcome == "Failed"
        if self.controller.running:
            job["status"]["conditions"][-1]["status"] = "False"
        kind, reason, message = self.controller.failed if failed else self.controller.succeeded
        job["status"]["conditions"].append({"type": kind, "status": "True", "reason": reason,
                                            "message": message.format(name=name)})
        self._bump(job)
        for index, pod in enumerate(self._job_pods(name)):
            if not failed:
                ended = {"exitCode": 0, "reason": "Completed", "finishedAt": "2026-03-01T10:05:00Z"}
            elif index == self.failed_node:
                ended = {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-03-01T10:05:00Z"}
            else:  # the others lose their peer a few seconds later
                ended = {"exitCode": 1, "reason": "Error", "finishedAt": "2026-03-01T10:05:07Z",
                         "message": "torch.distributed.DistNetworkError: Connection reset by peer"}
            pod["status"]["phase"] = "Failed" if ended["exitCode"] else "Succeeded"
            pod["status"]["containerStatuses"][0]["state"] = {"terminated": ended}

    # -- HTTP
    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self
        jobs = f"{fake.controller.api}/namespaces/{NAMESPACE}/{fake.controller.plural}"
        pods = f"/api/v1/namespaces/{NAMESPACE}/pods"
        runtimes = f"{TRAINER_API}/clustertrainingruntimes/"
        accounts = f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/"

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _json(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str = "") -> None:
                self._json(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                                  "reason": reason, "message": message or f"fake: {reason}"})

            def _route(self, method: str):
                fake.auth.add(self.headers.get("Authorization", ""))
                url = urlsplit(self.path)
                query = {key: values[0] for key, values in parse_qs(url.query).items()}
                kind = ("log" if url.path.endswith("/log") else "job" if url.path.startswith(jobs)
                        else "runtime" if url.path.startswith(runtimes)
                        else "serviceaccount" if url.path.startswith(accounts) else "pods")
                failure = fake.fail.pop(f"{method} {kind}", None)
                if failure:
                    code, message = failure if isinstance(failure, tuple) else (failure, "")
                    return self._status(code, {403: "Forbidden", 404: "NotFound"}.get(code, "ServiceUnavailable"),
                                        message)
                if url.path == jobs and method == "POST":
                    return self._create()
                if url.path == jobs and query.get("watch", "").lower() == "true":
                    return self._watch(query)
                if url.path == jobs:
                    return self._list(fake.jobs.values(), query, "List", fake.controller.api.removeprefix("/apis/"))
                if url.path.startswith(jobs + "/"):
                    return self._one_job(method, url.path.rsplit("/", 1)[1])
                if url.path == pods:
                    return self._list(fake.pods.values(), query, "PodList", "v1")
                if url.path.startswith(pods + "/") and url.path.endswith("/log"):
                    return self._log(url.path.split("/")[-2], query)
                if url.path.startswith(runtimes):
                    return self._object(fake.runtimes, url.path.removeprefix(runtimes), "clustertrainingruntimes")
                if url.path.startswith(accounts):
                    return self._object(fake.service_accounts, url.path.removeprefix(accounts), "serviceaccounts")
                return self._status(404, "NotFound", "the server could not find the requested resource")

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

            def do_DELETE(self):
                self._route("DELETE")

            def _object(self, store: dict, name: str, plural: str):
                with fake.lock:
                    found = json.loads(json.dumps(store.get(name))) if name in store else None
                if found is None:
                    return self._status(404, "NotFound", f'{plural} "{name}" not found')
                self._json(200, found)

            def _create(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                name = body["metadata"]["name"]
                with fake.lock:
                    if name in fake.jobs:
                        return self._status(409, "AlreadyExists")
                    fake.created.append(body)
                    job = fake.add_job({**body, "spec": {k: v for k, v in body["spec"].items() if k not in fake.prune}})
                self._json(201, job)

            def _one_job(self, method: str, name: str):
                with fake.lock:
                    job = fake.jobs.get(name)
                    if job is None:
                        return self._status(404, "NotFound")
                    if method == "DELETE":
                        for pod in fake._job_pods(name):
                            del fake.pods[pod["metadata"]["name"]]
                        del fake.jobs[name]
                        fake.deleted.append(name)
                        fake.released.set()
                        return self._json(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
                    return self._json(200, job)

            def _list(self, items, query: dict, kind: str, api_version: str):
                wanted = dict(pair.split("=", 1) for pair in query.get("labelSelector", "").split(",") if pair)
                with fake.lock:
                    chosen = [item for item in items
                              if all(item["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())]
                    body = {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": str(fake.version)},
                            "items": json.loads(json.dumps(chosen))}
                self._json(200, body)

            def _stream_start(self):
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()

            def _watch(self, query: dict):
                name = query.get("fieldSelector", "").removeprefix("metadata.name=")
                with fake.lock:
                    before = fake.jobs.get(name, {}).get("metadata", {}).get("resourceVersion")
                    if name in fake.jobs:
                        fake._advance(name)
                    job = fake.jobs.get(name)
                    event = job and job["metadata"]["resourceVersion"] != before and json.dumps(
                        {"type": "MODIFIED", "object": job})
                self._stream_start()
                if event:  # no change: the stream ends at once, as a watch does at its timeout
                    self.wfile.write(event.encode() + b"\n")

            def _log(self, pod: str, query: dict):
                fake.log_requests.append(query)
                with fake.lock:
                    cut = fake.drop_log_after if len(fake.log_requests) == 1 else None
                    labels = fake.pods.get(pod, {}).get("metadata", {}).get("labels", {})
                    name = next((job for job in fake.jobs if labels == fake.controller.pod_labels(job, 0)), None)
                self._stream_start()
                for line in fake.log[:cut]:
                    self.wfile.write(line.encode() + b"\n")
                self.wfile.flush()
                if fake.interrupt:
                    signal.pthread_kill(fake.main_thread, signal.SIGTERM)
                    fake.released.wait(timeout=30)  # hold the stream open until the job is deleted
                    return
                if cut is None and name is not None:
                    with fake.lock:
                        fake._finish(name)

        return Handler


def job_done(controller: Controller, job: dict) -> bool:
    """Whether the job has a true Succeeded/Complete or Failed condition."""
    return any(condition["type"] in (controller.succeeded[0], controller.failed[0]) and condition["status"] == "True"
               for condition in job["status"]["conditions"])


def serve(fake: FakeKubernetes, tmp_path: Path, monkeypatch: Any) -> Iterator[FakeKubernetes]:
    """Run ``fake`` on 127.0.0.1 and point the real kubernetes client at it (kubeconfig, POD_NAMESPACE);
    a fixture's body: ``yield from serve(FakeKubernetes(TRAINJOB), tmp_path, monkeypatch)``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "users": [{"name": "fake", "user": {"token": "test-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("POD_NAMESPACE", NAMESPACE)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    try:
        yield fake
    finally:
        fake.released.set()
        server.shutdown()
        server.server_close()


def lead_lines(output: str, lead: str) -> list[str]:
    """The lines of node 0's log the step printed (``[<lead>] ...``), without the prefix."""
    return [line.removeprefix(f"[{lead}] ") for line in output.splitlines() if line.startswith(f"[{lead}] ")]


def expected_lines(fake: FakeKubernetes) -> list[str]:
    """Node 0's log as the step should print it (timestamps stripped)."""
    return [line.split("Z ", 1)[1] for line in fake.log]
