"""What ``run_local`` shows: the console reads the step records the tasks log (``components.common.logs``), written
by the steps' own loggers and read back by the one parser, on literal kfp.local output (no pipeline run)."""

from __future__ import annotations

import ast
import io
import logging
from collections.abc import Iterator

from builders import REPO_ROOT

from components.common.logs import StepLine, parse_line, step_logger
from pipelines.console import TaskConsole


def _logged(capsys, step: str, level: int, message: str) -> str:
    """What ``step``'s logger writes for one record, as a task's output holds it."""
    capsys.readouterr()
    step_logger(step).log(level, message)
    return capsys.readouterr().out


def test_what_a_step_logs_is_what_the_parser_reads(capsys):
    assert _logged(capsys, "train", logging.INFO, "starting from scratch") == "[train] starting from scratch\n"
    assert _logged(capsys, "generate", logging.WARNING, "2 prompts cut") == "[generate] warning: 2 prompts cut\n"
    assert parse_line("[train] starting from scratch") == StepLine("train", "info", "starting from scratch")
    assert parse_line("  [generate] warning: 2 prompts cut  ") == StepLine("generate", "warning", "2 prompts cut")
    two_lines = _logged(capsys, "select-trial", logging.INFO, "trial-1 wins\ntrial-0 4.87")
    assert [parse_line(line) for line in two_lines.splitlines()] == [
        StepLine("select-trial", "info", "trial-1 wins"), StepLine("select-trial", "info", "trial-0 4.87")]
    for foreign in ("[INFO|2025-01-01 10:00:00] llamafactory.data.loader:143 >> Loading dataset",
                    "[rank0]: Traceback (most recent call last):", "{'loss': '6.921', 'epoch': '0.07'}",
                    "[KFP Executor 2025-01-01 10:00:00,000 INFO]: Looking for component `train`"):
        assert parse_line(foreign) is None, foreign


def test_the_console_shows_the_tasks_own_results_and_nothing_else(tmp_path, capsys):
    """A task's own INFO records reach the console under the task's name (evaluate-candidate runs the evaluate
    step); its tools' records, its warnings and everything else stay in the task's log."""
    stream = [
        "Executing task 'evaluate-candidate'",
        _logged(capsys, "mmlu", logging.INFO, "1/5 astronomy: 2/4 correct (50.0%) in 0.10 s"),
        _logged(capsys, "generate", logging.WARNING, "1 answer(s) held only special tokens"),
        _logged(capsys, "evaluate", logging.INFO, "candidate: held-out loss 4.9082 on 18 rows, MMLU 0.2500 on 60 "
                                                  "questions"),
        _logged(capsys, "compare", logging.INFO, "another step's line, printed in this task"),
        "Task 'evaluate-candidate' finished with status SUCCESS",
        "Executing task 'train'",
        _logged(capsys, "train", logging.INFO, "starting from scratch"),
        *["{'loss': '6.9', 'grad_norm': '1.2', 'epoch': '0.1'}"] * 4,
        _logged(capsys, "train", logging.WARNING, "not resuming from checkpoint-4: another training"),
        "Task 'train' finished with status SUCCESS",
    ]
    shown = io.StringIO()
    console = TaskConsole(shown, tmp_path, logging_steps=2, loss_every=2)
    console.write("".join(line if line.endswith("\n") else line + "\n" for line in stream))
    console.close()
    lines = shown.getvalue().splitlines()
    assert lines[0] == ("  evaluate-candidate       candidate: held-out loss 4.9082 on 18 rows, MMLU 0.2500 on 60 "
                        "questions")
    assert lines[1].startswith("✓ evaluate-candidate ")
    assert lines[2:5] == ["  train                    starting from scratch",
                          "  train                    step     4  loss 6.9",
                          "  train                    step     8  loss 6.9"]
    assert lines[5].startswith("✓ train ") and len(lines) == 6
    whole = (tmp_path / "01-evaluate-candidate.log").read_text()
    assert "[mmlu] 1/5 astronomy" in whole and "[generate] warning: 1 answer(s)" in whole  # kept in the task's log


def _calls(node: ast.AST) -> Iterator[tuple[str, ast.Call]]:
    for call in ast.walk(node):
        if isinstance(call, ast.Call):
            yield getattr(call.func, "id", getattr(call.func, "attr", "")), call


def test_only_the_formatter_writes_step_lines():
    """No print or write spells a step line by hand (``print(f"[train] ...")``): a step logs, the formatter writes
    the line, and every step's entry point sets that up first."""
    run_steps = 0
    for path in sorted((REPO_ROOT / "components").rglob("*.py")) + sorted((REPO_ROOT / "pipelines").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for name, call in _calls(tree):
            if name in ("print", "write") and call.args:
                first = call.args[0]
                head = first.values[0] if isinstance(first, ast.JoinedStr) and first.values else first
                text = head.value if isinstance(head, ast.Constant) and isinstance(head.value, str) else ""
                assert not text.startswith("["), f"{path.relative_to(REPO_ROOT)}:{call.lineno}: a hand-made step line"
        for function in (node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "run_step"):
            run_steps += 1
            assert "configure_step_logging" in {name for name, _ in _calls(function)}, path
    assert run_steps == 13  # every step of the pipeline
