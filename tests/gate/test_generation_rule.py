"""The generation rule (components/gate/rules.py, rule 5) at every boundary, and the pairing it reads.

Both models' answers come from tests/builders.py (every header total computed from the rows); a test states only
each row's chrF and whether it stopped. The held-out task and MMLU are equal for both, so the generation rule
alone decides.
"""

from __future__ import annotations

import pytest
from builders import base_losses, flags_first_right, generations_results, mmlu_results, task_scores

from components.gate.rules import KEEP, PROMOTE, NotComparable, compare
from configs.loading import config_from_dict


def decide(candidate_chrf: list[float], baseline_chrf: list[float], *overrides: str,
           candidate_stopped: list[bool] | None = None, baseline_stopped: list[bool] | None = None,
           baseline_options: dict | None = None):
    """The gate on a candidate whose held-out loss is 10 % lower and MMLU equal: only generation can keep it."""
    gate = config_from_dict({}, "gate", ["gate.bootstrap_samples=200", *overrides]).gate
    flags = flags_first_right({}, per_subject=10, default=5)
    answers = (generations_results(candidate_chrf, stopped=candidate_stopped, model="cand"),
               generations_results(baseline_chrf, stopped=baseline_stopped, model="base", **(baseline_options or {})))
    return compare(mmlu_results(flags), mmlu_results(flags), task_scores([v * 0.9 for v in base_losses()]),
                   task_scores(base_losses()), gate, baseline_name="champion v2", first_model=False, seed=0,
                   generations=answers)


def rule(comparison):
    (found,) = [item for item in comparison.rules if item.rule == "generation"]
    return found


def test_a_tie_passes_and_the_promotion_line_names_the_rule():
    result = decide([50.0] * 20, [50.0] * 20)
    assert result.decision == PROMOTE and rule(result).passed
    assert result.headline == ("promote: held-out loss -10.0% vs champion v2 (needs <= -1.0%), MMLU +0.000 (may "
                               "drop <= 0.010), chrF +0.0 (may drop <= 1)")


@pytest.mark.parametrize(("candidate", "limit", "passes"), [
    # 10.0 - 9.71 is 0.29000000000000092 in floats: an exact comparison lets a drop of exactly the limit pass ...
    (9.71, "0.29", True),
    # ... and fails one 10^-4 point (the stored precision) beyond it.
    (9.7099, "0.29", False),
    (9.0, "1.0", True),
    (8.9999, "1.0", False),
    (10.5, "0", True),  # an improvement always passes, even with no drop allowed
    (9.9999, "0", False),
])
def test_the_score_may_drop_by_exactly_the_limit(candidate, limit, passes):
    result = decide([candidate] * 100, [10.0] * 100, f"gate.generation_max_drop={limit}")
    assert rule(result).passed is passes and result.decision == (PROMOTE if passes else KEEP)
    if not passes:
        assert result.headline.startswith("keep-champion: chrF -") and f"(may drop <= {float(limit):g})" in \
            result.headline


def test_the_mean_over_rows_is_compared_exactly_not_row_by_row():
    # One row drops by 30 points, 29 rows gain 1 point: the mean drops by 1/30 point, within a 0.04 limit.
    candidate = [20.0] + [51.0] * 29
    result = decide(candidate, [50.0] * 30, "gate.generation_max_drop=0.04")
    assert rule(result).passed
    assert result.generation.baseline_units - result.generation.candidate_units == 1 * 10**4
    assert not rule(decide(candidate, [50.0] * 30, "gate.generation_max_drop=0.03")).passed


@pytest.mark.parametrize(("stopped", "passes"), [(71, True), (70, False)])
def test_the_stop_rate_may_drop_by_exactly_its_limit(stopped, passes):
    # 0.29 * 100 is 28.999999999999996 in floats; 29 fewer answers stopping is exactly the limit and passes.
    result = decide([50.0] * 100, [50.0] * 100, "gate.generation_max_stop_drop=0.29",
                    candidate_stopped=[index < stopped for index in range(100)])
    assert rule(result).passed is passes
    if not passes:
        assert result.headline == "keep-champion: answers stopping 70% vs 100% (may drop <= 29%)"
    assert "stopped before 64 tokens 100 -> " + str(stopped) + " of 100" in rule(result).detail


def test_switched_off_the_rule_still_reports_but_does_not_keep():
    result = decide([0.0] * 10, [90.0] * 10, "gate.require_generation=false")
    assert result.decision == PROMOTE and rule(result).passed
    assert rule(result).short == "generated answers not ruled on"
    assert "chrF of the generated answers 90.00 -> 0.00 (-90.00 points" in rule(result).detail
    assert "not required (gate.require_generation is false)" in rule(result).detail
    assert "chrF" not in result.headline  # it did not rule, so the one-line decision does not quote it


def test_the_gated_metric_is_a_setting():
    # builders: ROUGE-L is half the chrF; a 1.6 chrF drop is a 0.8 ROUGE-L drop.
    assert not rule(decide([48.4] * 10, [50.0] * 10)).passed
    result = decide([48.4] * 10, [50.0] * 10, "gate.generation_metric=rouge_l")
    assert rule(result).passed and rule(result).short == "ROUGE-L -0.8 (may drop <= 1)"


def test_answers_generated_differently_or_on_other_rows_are_not_compared():
    with pytest.raises(NotComparable, match="generated differently: max_new_tokens is 64 vs 128"):
        decide([1.0] * 5, [1.0] * 5, baseline_options={"max_new_tokens": 128})
    with pytest.raises(NotComparable, match="generated differently: test_split_hash"):
        decide([1.0] * 5, [1.0] * 6)


def test_the_rows_that_differ_most_are_kept_worst_first():
    base = [50.0] * 12
    cand = [50.0 - index if index < 7 else 50.0 + index for index in range(12)]
    generation = decide(cand, base, "gate.require_generation=false").generation
    assert [pair.difference for pair in generation.regressions] == [-6.0, -5.0, -4.0, -3.0, -2.0]
    assert [pair.difference for pair in generation.improvements] == [11.0, 10.0, 9.0, 8.0, 7.0]
    assert generation.regressions[0].candidate_answer == "cand says 6"
