"""MLflow lineage (components.common: mlflow_client, pipeline_runs, run_name, local_runs) against a real MLflow
server on loopback: one parent per pipeline run, child runs that end FAILED when their step fails, stale runs
closed, and a fast, clear failure when the server is down."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid

import pytest
from builders import REPO_ROOT

from components.common import local_runs
from components.common.local_launcher import LAUNCHER_ENV, launcher_tags, local_launcher_env, process_start
from components.common.mlflow_client import (
    TrackingUnavailable,
    check_credentials,
    client_environment,
    make_client,
    tracking_secrets,
)
from components.common.pipeline_runs import experiment_id, finalize_pipeline_runs, parent_run_id, step_run
from components.common.run_data import public_params
from components.common.run_name import run_name, write_run_name
from components.common.system_metrics import system_metrics_env
from components.common.tags import KFP_RUN_TAG, LAUNCHER_PID_TAG, ROLE_TAG, STEP_TAG
from configs.loading import load_config


@pytest.fixture
def cfg(mlflow_server):
    return load_config("local", overrides=[f"mlflow.tracking_uri={mlflow_server.uri}",
                                           f"mlflow.experiment=tracking-{uuid.uuid4().hex[:6]}"])


def test_parent_run_is_found_not_duplicated(cfg):
    client = make_client(cfg)
    first = parent_run_id(client, cfg, "kfp-1")
    assert parent_run_id(client, cfg, "kfp-1") == first
    assert parent_run_id(client, cfg, "kfp-2") != first


def test_step_run_finishes_or_fails_with_the_error(cfg):
    with step_run(cfg, "kfp-3", "train") as (client, ok_id):
        client.log_metric(ok_id, "loss", 1.0)
    assert client.get_run(ok_id).info.status == "FINISHED"
    parent = parent_run_id(client, cfg, "kfp-3")
    assert client.get_run(ok_id).data.tags["mlflow.parentRunId"] == parent
    with pytest.raises(ValueError, match="bad"), step_run(cfg, "kfp-3", "merge") as (client, bad_id):
        raise ValueError("bad hyper-parameter")
    run = client.get_run(bad_id)
    assert run.info.status == "FAILED"
    assert "bad hyper-parameter" in run.data.tags["llmft.error"]
    # Ctrl-C (or SIGTERM raised as KeyboardInterrupt) is no failure of the step: its run ends KILLED.
    with pytest.raises(KeyboardInterrupt), step_run(cfg, "kfp-3", "evaluate") as (client, stopped_id):
        raise KeyboardInterrupt
    assert client.get_run(stopped_id).info.status == "KILLED"


def test_a_killed_attempt_is_closed_by_the_next_one(cfg):
    client = make_client(cfg)
    parent = parent_run_id(client, cfg, "kfp-4")
    exp = experiment_id(client, cfg.mlflow.experiment)
    stale = client.create_run(exp, tags={"mlflow.parentRunId": parent, KFP_RUN_TAG: "kfp-4",
                                         STEP_TAG: "train", ROLE_TAG: "train"}).info.run_id
    with step_run(cfg, "kfp-4", "train") as (client, second):
        assert client.get_run(stale).info.status == "KILLED"
        assert client.get_run(second).data.tags["llmft.attempt"] == "2"


def test_finalize_marks_a_failed_pipeline(cfg):
    client = make_client(cfg)
    parent = parent_run_id(client, cfg, "kfp-5")
    exp = experiment_id(client, cfg.mlflow.experiment)
    open_child = client.create_run(exp, tags={"mlflow.parentRunId": parent, KFP_RUN_TAG: "kfp-5",
                                              STEP_TAG: "evaluate-candidate"}).info.run_id
    summary = finalize_pipeline_runs(cfg, "kfp-5", "FAILED", "train failed")
    assert summary["closed"] == [open_child]
    assert client.get_run(open_child).info.status == "FAILED"
    assert client.get_run(parent).info.status == "FAILED"
    assert client.get_run(parent).data.tags["llmft.error"] == "train failed"
    finalize_pipeline_runs(cfg, "kfp-6", "SUCCEEDED")
    assert client.get_run(parent_run_id(client, cfg, "kfp-6")).info.status == "FINISHED"


def test_settings_are_returned_and_only_make_client_changes_the_environment(monkeypatch, mlflow_server):
    """The MLflow settings, credentials check, monitor settings and launcher tags read the environment they are
    given and return what they decide; make_client alone applies the client's settings to this process (MLflow's
    HTTP layer reads them there), and drops an experiment name that would start a second run."""
    cfg = load_config("local", overrides=[f"mlflow.tracking_uri={mlflow_server.uri}", "mlflow.request_timeout_s=7",
                                           "mlflow.request_max_retries=2"])
    settings = client_environment(cfg)
    for key in (*settings, "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(key, raising=False)  # restored after the test
    before = dict(os.environ)
    assert settings == {"MLFLOW_TRACKING_URI": cfg.mlflow.tracking_uri, "MLFLOW_HTTP_REQUEST_TIMEOUT": "7",
                        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5"}
    check_credentials({"MLFLOW_TRACKING_USERNAME": "ann", "MLFLOW_TRACKING_PASSWORD": "two words"})
    with pytest.raises(TrackingUnavailable, match=r"\$MLFLOW_TRACKING_TOKEN cannot be sent") as refused:
        check_credentials({"MLFLOW_TRACKING_TOKEN": "tok\nen"})
    assert "tok" not in str(refused.value)
    assert tracking_secrets({"MLFLOW_TRACKING_PASSWORD": " pw ", "OTHER": "x"}) == ["pw"]
    assert system_metrics_env({"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}) == {
        "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1", "MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING": "1"}
    assert launcher_tags({}) == {} and launcher_tags({LAUNCHER_ENV: "not json"}) == {}
    assert launcher_tags({LAUNCHER_ENV: json.dumps({"host": "h", "pid": 7, "start": "s"})})[LAUNCHER_PID_TAG] == "7"
    assert dict(os.environ) == before  # nothing above wrote to the process environment

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "somewhere-else")
    make_client(cfg)
    assert {key: os.environ[key] for key in settings} == settings
    assert "MLFLOW_EXPERIMENT_NAME" not in os.environ


def test_unreachable_server_fails_fast_naming_the_uri():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    cfg = load_config("local", overrides=[f"mlflow.tracking_uri={uri}"])
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=uri):
        make_client(cfg)
    assert time.monotonic() - started < 30


def test_runs_left_running_by_a_dead_local_launcher_are_closed_and_no_others(cfg, monkeypatch):
    """A SIGKILLed run_local leaves its parent and its running step RUNNING; the next local run ends them
    KILLED. A live launcher's runs, a pid now used by another process, other hosts and cluster runs (no
    launcher tags) are told apart."""
    client = make_client(cfg)
    exp = experiment_id(client, cfg.mlflow.experiment)
    # A real launcher process that has exited: its identity, as run_local puts it in its tasks' environment.
    dead = subprocess.run([sys.executable, "-c", "from components.common.local_launcher import LAUNCHER_ENV, "
                           "local_launcher_env; print(local_launcher_env()[LAUNCHER_ENV])"], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=True).stdout.strip()
    alive = json.loads(local_launcher_env()[LAUNCHER_ENV])
    assert alive["start"] == process_start(os.getpid()) and alive["start"]
    assert process_start(json.loads(dead)["pid"]) != json.loads(dead)["start"]

    def pipeline_run(kfp_run_id: str, launcher: dict | str | None) -> tuple[str, str]:
        if launcher is None:
            monkeypatch.delenv(LAUNCHER_ENV, raising=False)
        else:
            monkeypatch.setenv(LAUNCHER_ENV, launcher if isinstance(launcher, str) else json.dumps(launcher))
        parent = parent_run_id(client, cfg, kfp_run_id)
        child = client.create_run(exp, tags={"mlflow.parentRunId": parent, KFP_RUN_TAG: kfp_run_id,
                                             STEP_TAG: "train", ROLE_TAG: "train"}).info.run_id
        return parent, child

    killed = pipeline_run("kfp-dead", dead)
    reused = pipeline_run("kfp-reused", {**alive, "start": "an-earlier-boot:12345"})  # the pid is now ours
    kept = [pipeline_run("kfp-live", alive), pipeline_run("kfp-elsewhere", {**alive, "host": "another-host"}),
            pipeline_run("kfp-cluster", None)]
    assert client.get_run(killed[0]).data.tags[LAUNCHER_PID_TAG] == str(json.loads(dead)["pid"])

    closed = local_runs.close_orphaned_local_runs(client, cfg)
    assert sorted(closed) == sorted([*killed, *reused])
    for run_id in closed:
        assert client.get_run(run_id).info.status == "KILLED"
    assert f"process {json.loads(dead)['pid']} on" in client.get_run(killed[0]).data.tags["llmft.error"]
    for run_id in (run_id for pair in kept for run_id in pair):
        assert client.get_run(run_id).info.status == "RUNNING"
    assert local_runs.close_orphaned_local_runs(client, cfg) == []


# ---------------------------------------------------------------- names and params of the pipeline run's page


@pytest.fixture
def run_cfg(tmp_path, mlflow_server):
    """The local preset on a fresh storage root (the run's name is kept in its run directory)."""
    return load_config("local", overrides=[f"storage.mount_path={tmp_path / 'storage'}",
                                           f"mlflow.tracking_uri={mlflow_server.uri}",
                                           f"mlflow.experiment=names-{uuid.uuid4().hex[:6]}",
                                           "training.learning_rate=0.001", "gate.alpha=0.1"])


def test_the_run_name_is_the_kfp_run_name_or_a_readable_stand_in(run_cfg):
    assert run_name(run_cfg, "kfp-7") == "llm-finetune-local-kfp-7"  # nothing decided yet
    assert write_run_name(run_cfg, "kfp-7", " nightly lora ") == "nightly lora"
    assert run_name(run_cfg, "kfp-7") == "nightly lora"
    # kfp.local names a run after the pipeline and the time; an empty name is no name either.
    for given in ("llm-finetune-local-2026-11-29-17-34-55-123456", "  "):
        name = write_run_name(run_cfg, "kfp-8", given)
        assert re.fullmatch(r"llm-finetune-local-lora-\d{8}-\d{6}", name), name
        assert run_name(run_cfg, "kfp-8") == name
    write_run_name(run_cfg, "kfp-9", "x" * 300)
    assert run_name(run_cfg, "kfp-9") == "x" * 250  # MLflow's limit on a run name


def test_the_parent_is_named_after_the_run_with_its_params_and_children_after_their_step(run_cfg):
    from configs.form import by_path

    write_run_name(run_cfg, "kfp-10", "lr-sweep-3")
    client = make_client(run_cfg)
    parent = client.get_run(parent_run_id(client, run_cfg, "kfp-10"))
    assert parent.info.run_name == "lr-sweep-3"
    params = parent.data.params
    assert params == public_params(run_cfg)
    # Every run-form field, and every other field that differs from its default; nothing else.
    assert set(by_path()) <= set(params)
    assert params["training.learning_rate"] == "0.001" and params["gate.alpha"] == "0.1"
    assert params["dataset.names"] == '["alpaca_sample"]' and params["training.method"] == "lora"
    assert params["dataset.test_fraction"] == "0.25"  # the local preset's, not the default
    assert "gate.bootstrap_samples" in params and "merge.max_shard_size_mb" not in params  # changed / default
    with step_run(run_cfg, "kfp-10", "train") as (client, first):
        pass
    with step_run(run_cfg, "kfp-10", "train") as (client, second):
        pass
    assert client.get_run(first).info.run_name == "train · lr-sweep-3"
    assert client.get_run(second).info.run_name == "train · lr-sweep-3 (attempt 2)"


def test_experiments_open_in_mlflows_model_training_view(cfg):
    """MLflow 3's UI reads an experiment's kind from the tag ``mlflow.experimentKind`` and, without it, opens the
    GenAI view (traces, prompts). An experiment the pipeline creates says it holds model training; one made
    before (or by hand without a kind) gets the tag when a step uses it; a kind somebody chose stays."""
    client = make_client(cfg)
    created = experiment_id(client, cfg.mlflow.experiment)
    assert client.get_experiment(created).tags["mlflow.experimentKind"] == "custom_model_development"
    older = client.create_experiment(f"{cfg.mlflow.experiment}-older")
    assert experiment_id(client, f"{cfg.mlflow.experiment}-older") == older
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"
    chosen = client.create_experiment(f"{cfg.mlflow.experiment}-genai",
                                      tags={"mlflow.experimentKind": "genai_development"})
    experiment_id(client, f"{cfg.mlflow.experiment}-genai")
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"
