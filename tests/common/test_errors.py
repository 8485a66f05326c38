"""The one error contract (``configs/errors.py``): every exception class the project defines is a ``StepError``
with an exit code, every command line ends an error through ``components.common.cli.fail``, and a broad
``except`` says what raises what it catches. Static checks over the source, plus ``fail`` itself."""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect

import pytest
from builders import REPO_ROOT

from components.common.cli import fail
from configs.errors import StepError, UsageError

PACKAGES = ("components", "configs", "pipelines")
# Defined on purpose outside the contract: control flow that never leaves its module.
NOT_STEP_ERRORS = {
    "configs.safe_json._Refused": "the JSON reader's signal to stop parsing; caught in the same function",
    "components.data.split_writer._Invalid": "the split writer's signal that a row is invalid; caught in the module",
}
USAGE_ERRORS = {"configs.errors.UsageError", "configs.schema.ConfigError", "pipelines.schedule.CronError"}
# Entry points that do not end through fail(), and why.
NOT_FAIL_MAINS = {
    "configs.form": "prints the run-form table of the shipped lora preset (the README embeds it); reads no input",
    "components.train.worker": "the trainer process: LLaMA-Factory's traceback is its log, which the train step reads",
}
CLI_HANDLERS = {"StepError", "SystemExit", "KeyboardInterrupt"}  # argparse's exit and Ctrl-C are not errors


def _modules() -> list[str]:
    return sorted(".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
                  for package in PACKAGES for path in (REPO_ROOT / package).rglob("*.py"))


def _exception_classes() -> dict[str, type[BaseException]]:
    found = {}
    for name in _modules():
        module = importlib.import_module(name)
        for attribute, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == name:
                found[f"{name}.{attribute}"] = value
    return found


def _trees() -> dict[str, ast.Module]:
    return {name: ast.parse((REPO_ROOT / (name.replace(".", "/") + ".py")).read_text(), name)
            for name in _modules() if (REPO_ROOT / (name.replace(".", "/") + ".py")).is_file()}


def test_every_project_exception_is_a_step_error_with_its_exit_code():
    classes = _exception_classes()
    assert len(classes) > 40  # every package's errors were found
    outside = {name for name, cls in classes.items() if not issubclass(cls, StepError)}
    assert outside == set(NOT_STEP_ERRORS)
    codes = {name: cls.exit_code for name, cls in classes.items() if name not in NOT_STEP_ERRORS}
    assert {name for name, code in codes.items() if code == 2} == USAGE_ERRORS
    assert set(codes.values()) == {1, 2}
    assert all(issubclass(classes[name], UsageError) for name in USAGE_ERRORS)


def test_every_command_line_ends_its_errors_through_fail():
    mains = {name: node for name, tree in _trees().items() for node in tree.body
             if isinstance(node, ast.FunctionDef) and node.name == "main"}
    assert len(mains) >= 19  # every python -m entry point
    for name, main in mains.items():
        if name in NOT_FAIL_MAINS:
            continue
        calls = {node.func.id for node in ast.walk(main)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
        assert "fail" in calls, f"{name}.main does not end its errors through fail()"
        for handler in (node for node in ast.walk(main) if isinstance(node, ast.ExceptHandler)):
            caught = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            names = {getattr(item, "id", ast.unparse(item) if item else "bare") for item in caught}
            assert names <= CLI_HANDLERS, f"{name}.main catches {sorted(names - CLI_HANDLERS)} (line {handler.lineno})"


def test_a_broad_except_says_what_raises_what_it_catches():
    """``except Exception`` or ``except RuntimeError`` hides bugs and the project's own errors unless it is aimed at a
    foreign library's failures: its line names them in a comment (a project error is caught as itself). A handler
    that cleans up and raises everything again hides nothing."""
    for path in sorted(path for package in PACKAGES for path in (REPO_ROOT / package).rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                caught = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
                broad = {getattr(item, "id", "") for item in caught} & {"Exception", "RuntimeError", "BaseException"}
                reraises = isinstance(node.body[-1], ast.Raise) and node.body[-1].exc is None
                if broad and not reraises:
                    line = lines[node.lineno - 1]
                    assert "#" in line, f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {line.strip()}"


@pytest.mark.parametrize(("error", "code", "shown"), [
    (StepError("the volume is full"), 1, "the volume is full"),
    (UsageError("--set needs --config"), 2, "--set needs --config"),
    (StepError("cannot reach https://bot:hunter2@kfp.example.com with Bearer abcdefghijkl"), 1,
     "cannot reach https://****@kfp.example.com with Bearer ****"),
])
def test_fail_prints_one_masked_line_and_returns_the_errors_code(capsys, error, code, shown):
    parser = argparse.ArgumentParser(prog="python -m some.tool")
    assert fail(parser, error) == code
    assert fail(parser, error, code=2) == 2  # a command whose contract gives every error one code
    err = capsys.readouterr().err
    assert err.splitlines() == [f"python -m some.tool: error: {shown}"] * 2


def test_fail_masks_the_secrets_a_command_knows(capsys):
    fail(argparse.ArgumentParser(prog="p"), StepError("the server echoed s3cr3t-t0ken back"), secrets=["s3cr3t-t0ken"])
    assert capsys.readouterr().err == "p: error: the server echoed **** back\n"
