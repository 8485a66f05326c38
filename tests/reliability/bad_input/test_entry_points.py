"""The command-line cases of ``bad_input/``, taken together: every entry point has its cases, in its own file, and
no two cases share a name (they were two tables, written in two rounds, before they were sorted by entry point)."""

from __future__ import annotations

from . import (
    test_evaluate_mmlu,
    test_evaluate_task,
    test_finalize_runs,
    test_gate,
    test_merge_lora,
    test_pipelines,
    test_tiny_model,
    test_train,
    test_validate_dataset,
)
from .refusals import case_ids

# Each file of command-line cases, and the entry points (``python -m`` modules) its cases may run.
ENTRY_POINTS = {
    test_validate_dataset: {"components.data.validate_dataset"},
    test_train: {"components.train.train", "components.train.multinode.launch"},
    test_evaluate_mmlu: {"components.evaluate.mmlu.evaluate_mmlu"},
    test_evaluate_task: {"components.evaluate.task.evaluate_task"},
    test_merge_lora: {"components.merge.merge_lora"},
    test_gate: {"components.gate.compare", "components.gate.register_model"},
    test_finalize_runs: {"components.run.finalize_runs"},
    test_tiny_model: {"components.demo.tiny_model"},
    test_pipelines: {"pipelines.compile", "pipelines.submit", "pipelines.run_local"},
}
CASES = [case for module in ENTRY_POINTS for case in module.CASES]


def test_the_tables_are_big_enough_to_count():
    assert len(CASES) >= 120
    case_ids(CASES)  # distinct across files too


def test_every_entry_point_has_cases_in_its_own_file():
    for module, entry_points in ENTRY_POINTS.items():
        run = {case[1][0] for case in module.CASES}
        assert run == entry_points, f"{module.__name__}: {sorted(run ^ entry_points)}"
    assert len(set().union(*ENTRY_POINTS.values())) == 13  # every entry point of the project
