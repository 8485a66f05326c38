"""Packaging facts a reviewer checks by hand: the image, its pins, the two README commands, CI."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from importlib import metadata

import pytest
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
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r'pip install "\.\[train,gpu\]"', text)
    user_lines = [line for line in text.splitlines() if line.startswith("USER ")]
    assert user_lines and user_lines[-1].split()[1].split(":")[0] not in ("root", "0")
    torch_pin = next(r for r in _extras()["train"] if r.startswith("torch=="))
    assert "cuda:12.8" in text, f"the CUDA base must match the CUDA build of {torch_pin}"


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
