"""components.tracking against a real MLflow server on loopback: one parent per pipeline run, child runs
that end FAILED when their step fails, stale runs closed, and a fast, clear failure when the server is down."""

from __future__ import annotations

import socket
import time
import uuid

import pytest

from components import tracking
from configs.schema import load_config


@pytest.fixture
def cfg(mlflow_server):
    return load_config("local", overrides=[f"mlflow.tracking_uri={mlflow_server.uri}",
                                           f"mlflow.experiment=tracking-{uuid.uuid4().hex[:6]}"])


def test_parent_run_is_found_not_duplicated(cfg):
    client = tracking.make_client(cfg)
    first = tracking.parent_run_id(client, cfg, "kfp-1")
    assert tracking.parent_run_id(client, cfg, "kfp-1") == first
    assert tracking.parent_run_id(client, cfg, "kfp-2") != first


def test_step_run_finishes_or_fails_with_the_error(cfg):
    with tracking.step_run(cfg, "kfp-3", "train") as (client, ok_id):
        client.log_metric(ok_id, "loss", 1.0)
    assert client.get_run(ok_id).info.status == "FINISHED"
    parent = tracking.parent_run_id(client, cfg, "kfp-3")
    assert client.get_run(ok_id).data.tags["mlflow.parentRunId"] == parent
    with pytest.raises(ValueError, match="bad"), tracking.step_run(cfg, "kfp-3", "merge") as (client, bad_id):
        raise ValueError("bad hyper-parameter")
    run = client.get_run(bad_id)
    assert run.info.status == "FAILED"
    assert "bad hyper-parameter" in run.data.tags["llmft.error"]


def test_a_killed_attempt_is_closed_by_the_next_one(cfg):
    client = tracking.make_client(cfg)
    parent = tracking.parent_run_id(client, cfg, "kfp-4")
    exp = tracking.experiment_id(client, cfg.mlflow.experiment)
    stale = client.create_run(exp, tags={"mlflow.parentRunId": parent, tracking.KFP_RUN_TAG: "kfp-4",
                                         tracking.STEP_TAG: "train", tracking.ROLE_TAG: "train"}).info.run_id
    with tracking.step_run(cfg, "kfp-4", "train") as (client, second):
        assert client.get_run(stale).info.status == "KILLED"
        assert client.get_run(second).data.tags["llmft.attempt"] == "2"


def test_finalize_marks_a_failed_pipeline(cfg):
    client = tracking.make_client(cfg)
    parent = tracking.parent_run_id(client, cfg, "kfp-5")
    exp = tracking.experiment_id(client, cfg.mlflow.experiment)
    open_child = client.create_run(exp, tags={"mlflow.parentRunId": parent, tracking.KFP_RUN_TAG: "kfp-5",
                                              tracking.STEP_TAG: "evaluate-candidate"}).info.run_id
    summary = tracking.finalize_pipeline_runs(cfg, "kfp-5", "FAILED", "train failed")
    assert summary["closed"] == [open_child]
    assert client.get_run(open_child).info.status == "FAILED"
    assert client.get_run(parent).info.status == "FAILED"
    assert client.get_run(parent).data.tags["llmft.error"] == "train failed"
    tracking.finalize_pipeline_runs(cfg, "kfp-6", "SUCCEEDED")
    assert client.get_run(tracking.parent_run_id(client, cfg, "kfp-6")).info.status == "FINISHED"


def test_unreachable_server_fails_fast_naming_the_uri():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    cfg = load_config("local", overrides=[f"mlflow.tracking_uri={uri}"])
    started = time.monotonic()
    with pytest.raises(tracking.TrackingUnavailable, match=uri):
        tracking.make_client(cfg)
    assert time.monotonic() - started < 30
