"""Shared fixtures: a tiny locally built model, a real MLflow server on loopback, a storage root.

Nothing here downloads anything: the model and tokenizer are built by ``components.demo.tiny_model``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from builders import SAMPLE_DATA, SAMPLE_MMLU

from configs.loading import load_config
from configs.schema import PipelineConfig

# Keep the two CPU cores for the test at hand; tokenizers and torch otherwise oversubscribe.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: threads only add overhead
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DISABLE_VERSION_CHECK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # the tests' trainings last seconds


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files that hold a ``slow`` test first, in their usual order, then the rest.

    ``make test`` hands whole files to its workers (``--dist loadfile``: a module fixture such as the demo runs is
    built once) in collection order (``--no-loadscope-reorder``); a long file handed out last would leave the other
    worker idle while it runs.
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: each file's tests stay together, in order


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama (hidden 64, 2 layers) with a locally trained tokenizer, built once per session."""
    from components.demo.tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-model") / "base-model", seed=0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    the tiny models gain nothing from two, and on a shared, loaded machine OpenMP's spinning threads made the
    evaluation tests up to 4x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout_s: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200; fail early when ``process`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


class MlflowServer:
    """A real ``mlflow server`` on loopback with a SQLite store; can be stopped and restarted."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = root
        self.port = port or _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        self.log = open(self.root / "server.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--workers", "1", "--host", "127.0.0.1",
             "--port", str(self.port), "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--serve-artifacts"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        wait_for_http(self.uri + "/health", timeout_s=90, process=self.process)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        self.process = None
        if getattr(self, "log", None):
            self.log.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1, shared by the session (~10 s start)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


def make_storage(root: Path, model_dir: Path) -> Path:
    """Lay out a storage root like the NFS volume: base model, sample data, MMLU sample."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(model_dir, root / "models" / "base-model", dirs_exist_ok=True)
    shutil.copytree(SAMPLE_DATA, root / "data", dirs_exist_ok=True)
    shutil.copytree(SAMPLE_MMLU, root / "eval" / "mmlu", dirs_exist_ok=True)
    return root


@pytest.fixture
def storage_root(tmp_path, tiny_model_dir) -> Path:
    """A fresh storage root per test with the tiny base model and the shipped sample data."""
    return make_storage(tmp_path / "storage", tiny_model_dir)


@pytest.fixture
def local_config(storage_root) -> PipelineConfig:
    """The CPU demo preset pointed at this test's storage root and a SQLite MLflow store inside it."""
    db = storage_root / "mlflow" / "mlflow.db"
    return load_config("local", overrides=[
        f"storage.mount_path={storage_root}",
        f"mlflow.tracking_uri=sqlite:///{db}",
    ])
