"""McNemar's exact test and the paired bootstrap, checked against hand-computed small cases."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.gate.stats import discordant_counts, mcnemar_exact, mcnemar_exact_p, paired_bootstrap_ci


def _binomial_two_sided(b: int, c: int) -> float:
    """Reference: 2 * P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), capped at 1 (exact fractions)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


@pytest.mark.parametrize(("b", "c", "expected"), [
    (0, 5, 2 / 32),  # all five discordant pairs favour the baseline: 2 * (1/2)^5
    (1, 6, 2 * (1 + 7) / 128),  # 2 * (C(7,0) + C(7,1)) / 2^7 = 0.125
    (2, 8, 2 * (1 + 10 + 45) / 1024),  # 0.109375
    (12, 1, 2 * (1 + 13) / 8192),  # 0.00341796875
    (3, 3, 1.0),  # a tie is no evidence at all
    (0, 0, 1.0),  # no discordant pair
])
def test_mcnemar_exact_hand_computed(b, c, expected):
    assert mcnemar_exact_p(b, c) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_counts_only_discordant_pairs():
    candidate = [True, True, False, False, True, False, True]
    baseline = [True, False, False, True, False, False, False]
    # both right: 1, both wrong: 2, only candidate: 3 (positions 1, 4, 6), only baseline: 1 (position 3)
    assert discordant_counts(candidate, baseline) == (3, 1)
    result = mcnemar_exact(candidate, baseline)
    assert (result.candidate_only, result.baseline_only) == (3, 1)
    assert result.p_value == pytest.approx(2 * (1 + 4) / 16)  # 0.625


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 60), st.integers(0, 60))
def test_mcnemar_matches_exact_binomial_reference(b, c):
    assert mcnemar_exact_p(b, c) == pytest.approx(_binomial_two_sided(b, c), rel=1e-9, abs=1e-15)
    assert mcnemar_exact_p(b, c) == mcnemar_exact_p(c, b)


def test_mcnemar_rejects_bad_input():
    with pytest.raises(ValueError, match="equal lengths"):
        mcnemar_exact([True], [True, False])
    with pytest.raises(ValueError, match="empty"):
        mcnemar_exact([], [])
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar_exact_p(-1, 2)


def test_bootstrap_of_identical_differences_has_no_width():
    # Every question: candidate right, baseline wrong -> every resample has difference exactly 1.
    interval = paired_bootstrap_ci([True] * 7, [False] * 7, samples=500, seed=3)
    assert (interval.estimate, interval.low, interval.high) == (1.0, 1.0, 1.0)


def test_bootstrap_two_questions_hand_computed():
    # Differences (1, 0): a resample of two has mean 0 (p 1/4), 0.5 (p 1/2) or 1 (p 1/4).
    wide = paired_bootstrap_ci([True, False], [False, False], samples=4000, confidence=0.95, seed=1)
    assert wide.estimate == 0.5
    assert (wide.low, wide.high) == (0.0, 1.0)  # 2.5% and 97.5% quantiles fall in the outer atoms
    narrow = paired_bootstrap_ci([True, False], [False, False], samples=4000, confidence=0.4, seed=1)
    assert (narrow.low, narrow.high) == (0.5, 0.5)  # 30% and 70% quantiles both fall in the middle atom


def test_bootstrap_three_questions_hand_computed():
    # Differences (1, 0, 0): means 0, 1/3, 2/3, 1 with p 8/27, 12/27, 6/27, 1/27 (cumulative .296, .741, .963, 1).
    interval = paired_bootstrap_ci([True, False, False], [False, False, False], samples=20000, confidence=0.6,
                                   seed=7)
    assert interval.estimate == pytest.approx(1 / 3)
    assert interval.low == 0.0  # the 20% quantile lies in the first atom
    assert interval.high == pytest.approx(2 / 3)  # the 80% quantile lies in the third atom


def test_bootstrap_macro_resamples_within_strata():
    # Stratum "a": one question the candidate wins; stratum "b": four ties. The macro difference is the
    # mean of the per-stratum differences, (1 + 0) / 2, in every resample; the micro one (1/5) varies.
    candidate, baseline = [True, True, False, True, False], [False, True, False, True, False]
    strata = ["a", "b", "b", "b", "b"]
    macro = paired_bootstrap_ci(candidate, baseline, samples=1000, seed=0, strata=strata)
    assert (macro.estimate, macro.low, macro.high) == (0.5, 0.5, 0.5)
    micro = paired_bootstrap_ci(candidate, baseline, samples=1000, seed=0)
    assert micro.estimate == pytest.approx(0.2)
    assert micro.low == 0.0 and micro.high > 0.2


def test_bootstrap_agrees_with_the_normal_approximation_on_many_questions():
    # 1000 questions: 150 only-candidate, 90 only-baseline. Difference 0.06, sd of a difference
    # sqrt(E[d^2] - 0.06^2) = sqrt(0.24 - 0.0036); 95% half-width 1.96 * sd / sqrt(1000) = 0.0301.
    candidate = [True] * 150 + [False] * 90 + [True] * 400 + [False] * 360
    baseline = [False] * 150 + [True] * 90 + [True] * 400 + [False] * 360
    interval = paired_bootstrap_ci(candidate, baseline, samples=4000, seed=11)
    half_width = 1.96 * math.sqrt(0.24 - 0.06**2) / math.sqrt(1000)
    assert interval.estimate == pytest.approx(0.06)
    assert interval.low == pytest.approx(0.06 - half_width, abs=0.004)
    assert interval.high == pytest.approx(0.06 + half_width, abs=0.004)


def test_bootstrap_is_deterministic_per_seed():
    candidate = [i % 3 == 0 for i in range(200)]
    baseline = [i % 4 == 0 for i in range(200)]
    first = paired_bootstrap_ci(candidate, baseline, samples=300, seed=42)
    assert paired_bootstrap_ci(candidate, baseline, samples=300, seed=42) == first
    assert paired_bootstrap_ci(candidate, baseline, samples=300, seed=43)[1:3] != first[1:3]


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="samples"):
        paired_bootstrap_ci([True], [False], samples=0)
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap_ci([True], [False], confidence=1.0)
    with pytest.raises(ValueError, match="strata"):
        paired_bootstrap_ci([True, False], [False, False], strata=["a"])
