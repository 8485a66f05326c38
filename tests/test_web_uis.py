"""What a user opens in a browser, opened in a real one: the LLaMA-Factory WebUI (``llamafactory-cli webui``)
started for real in a storage-layout directory on loopback, and MLflow's UI on the runs the pipeline logs.

The browser is Debian's ``chromium``, headless, driven by Playwright (the ``playwright`` wheel of the dev extra;
no browser is downloaded: ``executable_path`` is the system chromium). ``make test`` and ``.ci/run`` install
chromium with apt where it is missing; without it these tests fail, naming the package.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import _free_port, make_storage, wait_for_http

from components.common.mlflow_client import make_client
from components.common.pipeline_runs import parent_run_id
from components.common.tags import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
from configs.loading import load_config
from pipelines import local_summary

WEBUI_START_TIMEOUT_S = 240  # torch, transformers and gradio imported on a loaded 2-core machine
UI_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium (as root it needs --no-sandbox)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is needed for the browser tests: apt-get install chromium "
                    "(make test installs it when run as root)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh page that records the page's uncaught script errors in ``page.errors``."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.set_default_timeout(UI_TIMEOUT_MS)
    yield page
    context.close()


@pytest.fixture(scope="module")
def webui(tmp_path_factory, tiny_model_dir):
    """``llamafactory-cli webui`` as the deployment runs it: in a storage root (data/, models/base-model), on
    127.0.0.1 and a free port. Returns (URL, storage root)."""
    storage = make_storage(tmp_path_factory.mktemp("webui") / "storage", tiny_model_dir)
    port = _free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False")
    log = open(storage.parent / "webui.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen([str(Path(sys.executable).parent / "llamafactory-cli"), "webui"], cwd=storage,
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_http(url, timeout_s=WEBUI_START_TIMEOUT_S, process=process)
    except (RuntimeError, TimeoutError) as exc:
        raise AssertionError(f"{exc}:\n{(storage.parent / 'webui.log').read_text()[-3000:]}") from None
    yield url, storage
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)
    log.close()


def test_the_webui_lists_the_datasets_and_accepts_the_base_models_path(webui, page):
    """The page loads without script errors; the Dataset list is dataset_info.json's; a custom model with the
    volume's base model path is remembered (in the working directory) and reaches the training command."""
    from playwright.sync_api import expect

    url, storage = webui
    base_model = str(storage / "models" / "base-model")
    page.goto(url)
    model_name = page.get_by_label("Model name")
    model_name.click()
    model_name.fill("Custom")
    page.get_by_role("option", name="Custom", exact=True).click()
    page.get_by_label("Model path").fill(base_model)

    page.get_by_label("Dataset", exact=True).first.click()  # the Train tab's; its choices are read on focus
    options = page.get_by_role("option")
    datasets = sorted(json.loads((storage / "data" / "dataset_info.json").read_text()))
    expect(options).to_have_text([re.compile(rf"^\W*{re.escape(name)}\s*$") for name in datasets])  # "✓ name"
    options.first.click()
    page.get_by_role("button", name="Preview command").click()
    command = page.get_by_text("llamafactory-cli train")
    expect(command).to_contain_text(f"--model_name_or_path {base_model}")
    expect(command).to_contain_text(f"--dataset {datasets[0]}")

    remembered = yaml.safe_load((storage / "llamaboard_cache" / "user_config.yaml").read_text())
    assert remembered["path_dict"] == {"Custom": base_model}
    assert page.errors == []


def test_mlflow_opens_the_pipelines_runs_in_its_model_training_view(mlflow_server, page):
    """The link the demo prints opens the experiment's runs table in MLflow's model-training view. The
    experiment says it holds model training (``mlflow.experimentKind``), but MLflow 3.17's UI ignores that and
    follows its GenAI / Model training switch: the same page without the link's ``workflowType`` opens GenAI."""
    from playwright.sync_api import expect

    cfg = load_config("local", overrides=[f"mlflow.tracking_uri={mlflow_server.uri}",
                                          "mlflow.experiment=opened-in-the-browser"])
    client = make_client(cfg)
    parent = client.get_run(parent_run_id(client, cfg, "kfp-browser"))
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND

    page.goto(local_summary.runs_page(mlflow_server.uri, experiment.experiment_id))
    expect(page.get_by_role("link", name=parent.info.run_name)).to_be_visible()
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()

    page.goto(f"{mlflow_server.uri}/#/experiments/{experiment.experiment_id}")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()  # GenAI's landing page
    assert page.errors == []
