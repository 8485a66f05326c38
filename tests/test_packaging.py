"""Packaging facts a reviewer checks by hand: the image, its pins, the two README commands, CI."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
import tomllib
from importlib import metadata

import pytest
import yaml
from builders import REPO_ROOT as REPO


def _extras() -> dict[str, list[str]]:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    section = parser["options.extras_require"]
    return {name: [line.strip() for line in section[name].splitlines() if line.strip()] for name in section}


def test_heavy_stack_is_pinned_in_its_own_extra():
    extras = _extras()
    for extra in ("train", "gpu"):
        for requirement in extras[extra]:
            assert "==" in requirement or requirement.startswith("matplotlib"), requirement
    install = configparser.ConfigParser()
    install.read(REPO / "setup.cfg")
    base = install["options"]["install_requires"]
    for heavy in ("torch", "transformers", "llamafactory", "peft"):
        assert heavy not in base


def test_installed_versions_match_the_pins():
    for requirement in _extras()["train"]:
        if "==" in requirement:
            name, version = requirement.split("==")
            assert metadata.version(name) == version, name


def test_dockerfile_installs_the_pinned_extras_and_runs_as_non_root():
    """The venv gets setup.cfg's install_requires and the train and gpu extras, the package goes on top without
    dependencies of its own, and pip check confirms the two agree."""
    text = (REPO / "Dockerfile").read_text()
    assert 'print(cfg["options"]["install_requires"], extras["train"], extras["gpu"]' in text
    assert "pip install -r requirements.txt" in text
    assert "pip install --no-deps --no-index /tmp/wheel/*.whl" in text and "pip check" in text
    user_lines = [line for line in text.splitlines() if line.startswith("USER ")]
    assert user_lines and user_lines[-1].split()[1].split(":")[0] not in ("root", "0")


def test_the_image_gets_cuda_once_from_torchs_wheels_on_a_plain_ubuntu_base():
    """torch's PyPI wheels bring the CUDA runtime and cuDNN (the nvidia-* packages): a CUDA base image would
    hold them twice. The base is a build argument (a stand-in where no registry is reachable)."""
    text = (REPO / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=ubuntu:24.04" in text.splitlines()
    bases = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert bases and set(bases) == {"${BASE_IMAGE}"}
    assert "nvidia/cuda" not in text and "--index-url" not in text  # the default (CUDA) torch wheels
    torch_pin = next(r for r in _extras()["train"] if r.startswith("torch=="))
    assert torch_pin == "torch==2.9.1"  # its wheels: CUDA 12.8, cuDNN 9 (image/smoke.sh prints both)


def test_the_images_user_is_the_one_deploy_runs_as_and_owns_the_working_directory():
    text = (REPO / "Dockerfile").read_text()
    uid, gid = next(line for line in reversed(text.splitlines()) if line.startswith("USER ")).split()[1].split(":")
    webui = yaml.safe_load((REPO / "deploy" / "webui.yaml").read_text().split("\n---", 1)[0])
    context = webui["spec"]["template"]["spec"]["securityContext"]
    assert (str(context["runAsUser"]), str(context["runAsGroup"]), str(context["fsGroup"])) == (uid, gid, gid)
    # whoever holds uid/gid 1000 in the base (ubuntu:24.04's user `ubuntu`) gives them up before useradd
    assert "getent passwd 1000" in text and "getent group 1000" in text
    assert f"useradd --uid {uid} --gid {gid}" in text
    workdir = next(line for line in reversed(text.splitlines()) if line.startswith("WORKDIR ")).split()[1]
    assert workdir == "/home/${USER_NAME}"  # the user's home, made by useradd --create-home


def test_the_installed_dependency_set_is_consistent():
    """pip's resolver once settled on gradio 5.1.0, which crashes at start with huggingface_hub 1.x; the pins in
    setup.cfg are one consistent set, and nothing installed contradicts another's requirements."""
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_make_test_and_ci_install_the_browser_the_browser_tests_need():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^test: .*\bbrowser\b", makefile, re.MULTILINE)
    recipe = makefile.split("\nbrowser:", 1)[1].split("\n\n", 1)[0]
    assert "command -v chromium" in recipe and "apt-get install" in recipe and "chromium" in recipe
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_make_test_runs_whole_files_on_every_core():
    """One pytest-xdist worker per core, each file on one worker (a module fixture, e.g. the two demo runs, is
    built once), the files with a slow test handed out first (tests/conftest.py)."""
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "-m pytest -q -n $(TEST_WORKERS)" in recipe and re.search(r"^TEST_WORKERS \?= auto$", makefile, re.M)
    with open(REPO / "pyproject.toml", "rb") as handle:
        addopts = tomllib.load(handle)["tool"]["pytest"]["ini_options"]["addopts"].split()
    assert "--dist" in addopts and addopts[addopts.index("--dist") + 1] == "loadfile"
    assert "--no-loadscope-reorder" in addopts  # the order of tests/conftest.py, not the number of tests per file
    assert "pytest-xdist==" + metadata.version("pytest-xdist") in _extras()["dev"]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci


CLIS = ["pipelines.compile", "pipelines.run_local", "pipelines.submit", "components.demo.tiny_model",
        "components.run.finalize_runs", "components.data.validate_dataset", "components.train.train",
        "components.evaluate.mmlu.evaluate_mmlu", "components.merge.merge_lora", "components.gate.compare",
        "components.gate.register_model", "components.train.multinode.launch", "components.train.select_trial"]


@pytest.mark.parametrize("module", CLIS)
def test_cli_help(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0
    assert "usage:" in proc.stdout


def test_one_release_number_tags_the_package_the_image_and_the_manifests():
    """A release bumps setup.cfg's version; the default image, the Dockerfile and the kustomization follow it."""
    from configs.schema import DEFAULT_IMAGE

    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    version = parser["metadata"]["version"]
    assert DEFAULT_IMAGE.endswith(f":{version}")
    assert f"llm-finetune:{version} ." in (REPO / "Dockerfile").read_text()
    assert re.search(rf"newTag: {re.escape(version)}\b", (REPO / "deploy" / "kustomization.yaml").read_text())
    assert f"llm-finetune:{version}" in (REPO / "deploy" / "webui.yaml").read_text()
