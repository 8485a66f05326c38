"""The promotion gate's truth table (components.gate.rules), on literal results.

Results come from the shared builders (tests/builders.py): MMLU results from per-question records through
components.evaluate.mmlu.results.results_from_records, task results from per-row losses through the task_results
models and the compare step's own conversion, so every summary number is computed, never typed in. Each case
states which rule decides.
"""

from __future__ import annotations

import random

import pytest
from builders import base_losses as two_decimal_losses
from builders import flags_first_right, mmlu_results, task_scores

from components.evaluate.mmlu.results import MmluResults
from components.gate.rules import KEEP, PROMOTE, NotComparable, TaskScores, compare
from configs.schema import GateConfig

PER_SUBJECT = 40


def mmlu(correct: dict[str, int], *, data_hash: str = "data-1", n_shot: int = 5) -> MmluResults:
    """MMLU results where the first ``correct[subject]`` (default 20) questions of each subject are right."""
    return mmlu_results(flags_first_right(correct, per_subject=PER_SUBJECT, default=20), data_hash=data_hash,
                        n_shot=n_shot, eval_key=f"mmlu-{data_hash}-{sorted(correct.items())}")


def task(losses: list[float | None], **settings: object) -> TaskScores:
    """Task scores for held-out rows 0, 1, ... with the given per-row losses (None: truncated away)."""
    return task_scores(losses, model=f"m-{hash(tuple(losses))}", **settings)


def base_losses(rows: int = 60, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(1.5, 3.0) for _ in range(rows)]


def decide(cand_task: TaskScores, base_task: TaskScores, cand_mmlu: MmluResults | None = None,
           base_mmlu: MmluResults | None = None, **gate: object):
    flat = mmlu({})
    return compare(cand_mmlu or flat, base_mmlu or flat, cand_task, base_task, GateConfig(**gate),
                   baseline_name="champion v1", first_model=False, seed=0)


def failed(comparison) -> set[str]:
    return {rule.rule for rule in comparison.rules if not rule.passed}


def test_task_better_and_mmlu_flat_promotes():
    base = base_losses()
    result = decide(task([value * 0.8 for value in base]), task(base))
    assert result.decision == PROMOTE and not failed(result)
    assert result.task.relative_change == pytest.approx(-0.2)
    assert result.task.candidate_lower == 60 and result.task.ci_high < 0
    assert result.headline.startswith("promote: held-out loss -20.0% vs champion v1")
    assert len(result.headline) <= 100


@pytest.mark.parametrize("min_task_improvement", [0.01, 0.0])
def test_a_tie_never_promotes(min_task_improvement):
    base = base_losses()
    result = decide(task(base), task(base), min_task_improvement=min_task_improvement)
    assert result.decision == KEEP and failed(result) == {"task"}
    assert result.task.relative_change == 0 and result.task.wilcoxon_p == 1.0
    assert result.headline == (f"keep-champion: held-out loss +0.0% vs champion v1 "
                               f"(needs <= {-min_task_improvement:+.1%})")


def test_a_tie_with_the_base_model_does_not_promote_a_first_model():
    base = base_losses()
    flat = mmlu({})
    result = compare(flat, flat, task(base), task(base), GateConfig(min_task_improvement=0.0),
                     baseline_name="base model", first_model=True, seed=0)
    assert result.decision == KEEP and "vs base model" in result.headline


def test_the_improvement_threshold_is_inclusive():
    # Two-decimal losses: the candidate's are exactly 1 % lower, whatever the file's 6-digit rounding.
    base = two_decimal_losses()
    exactly = task([value * 0.99 for value in base])
    assert decide(exactly, task(base), min_task_improvement=0.01).decision == PROMOTE
    kept = decide(exactly, task(base), min_task_improvement=0.011)
    assert kept.decision == KEEP and failed(kept) == {"task"}


def test_a_gain_below_the_threshold_is_kept():
    base = base_losses()
    result = decide(task([value * 0.995 for value in base]), task(base), min_task_improvement=0.01)
    assert result.decision == KEEP and failed(result) == {"task"}
    assert "-0.50%" in result.rules[0].detail


def test_task_better_but_one_category_over_max_regression_is_kept():
    base = base_losses()
    # STEM drops by 10 of 40 questions (-0.25); the others gain so that micro stays flat.
    cand_mmlu = mmlu({"astronomy": 10, "world_religions": 24, "high_school_geography": 23, "nutrition": 23})
    result = decide(task([value * 0.8 for value in base]), task(base), cand_mmlu, mmlu({}), max_regression=0.2,
                    mmlu_max_drop=0.05)
    assert result.decision == KEEP and failed(result) == {"categories"}
    assert "STEM -0.2500" in result.rules[-1].detail
    assert result.mmlu.delta_micro == 0


def test_an_mmlu_drop_over_the_limit_is_kept():
    base = base_losses()
    cand_mmlu = mmlu({"astronomy": 18, "world_religions": 18, "high_school_geography": 18, "nutrition": 18})
    result = decide(task([value * 0.8 for value in base]), task(base), cand_mmlu, mmlu({}), mmlu_max_drop=0.01,
                    max_regression=0.1)
    assert result.decision == KEEP and failed(result) == {"mmlu"}
    assert result.mmlu.delta_micro == pytest.approx(-0.05)


def test_required_significance_not_reached_is_kept():
    base = base_losses(rows=12, seed=3)
    # Lower on average, but on only 7 of 12 rows: too few and too mixed for p < 0.05.
    cand = [value * (0.85 if index % 12 < 7 else 1.1) for index, value in enumerate(base)]
    loose = decide(task(cand), task(base), min_task_improvement=0.0)
    strict = decide(task(cand), task(base), min_task_improvement=0.0, require_significance=True)
    assert loose.decision == PROMOTE
    assert strict.decision == KEEP and failed(strict) == {"significance"}
    assert strict.task.wilcoxon_p >= 0.05


def test_required_significance_reached_promotes():
    base = base_losses(rows=60)
    result = decide(task([value * 0.9 for value in base]), task(base), require_significance=True)
    assert result.decision == PROMOTE and result.task.wilcoxon_p < 1e-6


@pytest.mark.parametrize("field,change", [("test_split_hash", {"extra_row": True}), ("template", {"template": "qwen"}),
                                          ("cutoff_len", {"cutoff_len": 1024})])
def test_task_results_from_other_eval_settings_are_not_compared(field, change):
    base = base_losses()
    changed = dict(change)
    # Another held-out split: one more row (truncated away, so the scored rows are the same ones).
    other = task([*base, None], **changed) if changed.pop("extra_row", False) else task(base, **changed)
    with pytest.raises(NotComparable, match=f"{field} is "):
        decide(other, task(base))


def test_task_results_on_other_rows_are_not_compared():
    base = base_losses()
    # The same split, but the candidate's last row was truncated away: the scored rows differ.
    with pytest.raises(NotComparable, match="different rows"):
        decide(task([*base[:-1], None]), task(base))


@pytest.mark.parametrize("other", [mmlu({}, data_hash="data-2"), mmlu({}, n_shot=0)])
def test_mmlu_results_from_other_eval_settings_are_not_compared(other):
    base = base_losses()
    with pytest.raises(NotComparable, match="evaluated differently"):
        decide(task(base), task(base), other, mmlu({}))


def test_every_rule_is_a_reason_failed_first():
    base = base_losses()
    cand_mmlu = mmlu({"astronomy": 0})
    result = decide(task(base), task(base), cand_mmlu, mmlu({}))
    assert [rule.rule for rule in result.rules] == ["task", "significance", "mmlu", "categories"]
    assert [not rule.passed for rule in result.rules][:1] == [True]
    reasons = result.reasons
    assert len(reasons) == 4 and reasons[:3] == [r.detail for r in result.rules if not r.passed]


def _reordered_tie(rows: int = 40) -> tuple[list[float], list[float]]:
    """Baseline losses and the same losses on other rows, ordered so that summing them in row order (as numpy
    does) makes the candidate's mean a hair lower: a tie that float summation turns into a gain."""
    import numpy as np

    base = base_losses(rows, seed=11)
    for shift in range(1, rows):
        cand = base[shift:] + base[:shift]
        scored = [task(cand), task(base)]
        keys = sorted(scored[0].losses)
        means = [np.asarray([scores.losses[key] for key in keys]).mean() for scores in scored]
        if means[0] < means[1]:
            return cand, base
    raise AssertionError("no rotation of the losses rounds the candidate's mean below the baseline's")


def test_a_tie_whose_float_sums_differ_never_promotes():
    """The same per-row losses on other rows: the means are equal, though numpy's row-order sum says -1e-16."""
    cand, base = _reordered_tie()
    result = decide(task(cand), task(base), min_task_improvement=0.0)
    assert result.decision == KEEP and failed(result) == {"task"}
    assert result.task.relative_change == 0 and result.task.candidate_mean_nll == result.task.baseline_mean_nll
    assert "strictly lower" in result.rules[0].detail


def test_significance_is_the_one_sided_test_alone():
    """The documented rule (p < alpha, one-sided): fewer rows lower, but by far more, is significant; no
    undocumented "more rows favour the candidate" rule overrides it, and the message agrees with the decision."""
    base = base_losses(rows=30, seed=5)
    # Lower by 40 % on 14 rows, higher by 1 % on 16: the ranks favour the candidate, the row count does not.
    cand = [value * (0.6 if index < 14 else 1.01) for index, value in enumerate(base)]
    result = decide(task(cand), task(base), min_task_improvement=0.0, require_significance=True)
    rule = next(rule for rule in result.rules if rule.rule == "significance")
    assert result.task.candidate_lower < result.task.baseline_lower and result.task.wilcoxon_p < 0.05
    assert rule.passed and result.decision == PROMOTE
    assert "not" not in rule.short and "not" not in rule.detail
    assert rule.short == f"held-out loss change significant (p={result.task.wilcoxon_p:.2g} < alpha 0.05)"


@pytest.mark.parametrize(("p_value", "alpha", "passed", "shown"), [
    (0.0499999, 0.05, True, "p=0.0499999 < alpha 0.05"),
    (0.05, 0.05, False, "p=0.05, needs < alpha 0.05"),
    (0.0076, 0.05, True, "p=0.0076 < alpha 0.05"),
    (0.21, 0.05, False, "p=0.21, needs < alpha 0.05"),
])
def test_the_significance_message_never_contradicts_the_decision(p_value, alpha, passed, shown):
    from components.gate.rules import apply_rules

    base = base_losses()
    comparison = decide(task([value * 0.9 for value in base]), task(base))
    task_part = comparison.task.model_copy(update={"wilcoxon_p": p_value})
    rule = apply_rules(task_part, comparison.mmlu, GateConfig(require_significance=True, alpha=alpha),
                       "champion v1")[1]
    assert rule.passed is passed and shown in rule.short and shown in rule.detail
