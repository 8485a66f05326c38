"""Paired statistics for the promotion gate: McNemar's exact test and a paired bootstrap interval.

Both compare two models on the *same* questions, one boolean "answered correctly" per question and
model. Plain functions over sequences; numpy and scipy are imported inside them so that importing
this module stays cheap. The bootstrap is seeded, so a rerun gives the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class McNemarResult(NamedTuple):
    """Discordant pairs and the exact two-sided p-value of McNemar's test."""

    candidate_only: int  # b: the candidate is right, the baseline wrong
    baseline_only: int  # c: the baseline is right, the candidate wrong
    p_value: float


class BootstrapInterval(NamedTuple):
    """Percentile confidence interval of the accuracy difference (candidate minus baseline)."""

    estimate: float
    low: float
    high: float
    confidence: float
    samples: int
    seed: int


def _paired(candidate: Sequence[bool], baseline: Sequence[bool]) -> None:
    if len(candidate) != len(baseline):
        raise ValueError(f"paired samples need equal lengths, got {len(candidate)} and {len(baseline)}")
    if not candidate:
        raise ValueError("paired samples are empty: there is nothing to compare")


def discordant_counts(candidate: Sequence[bool], baseline: Sequence[bool]) -> tuple[int, int]:
    """Count ``(b, c)``: questions only the candidate got right, and only the baseline got right.

    Raises:
        ValueError: the sequences differ in length or are empty.
    """
    _paired(candidate, baseline)
    b = sum(1 for cand, base in zip(candidate, baseline, strict=True) if cand and not base)
    c = sum(1 for cand, base in zip(candidate, baseline, strict=True) if base and not cand)
    return b, c


def mcnemar_exact_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts ``b`` and ``c``.

    Under the null hypothesis (both models equally accurate) each discordant pair is a fair coin,
    so ``b ~ Binomial(b + c, 1/2)``; the p-value is the two-sided binomial test (``1.0`` when there
    is no discordant pair).

    Raises:
        ValueError: a count is negative.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(min(1.0, binomtest(b, b + c, 0.5, alternative="two-sided").pvalue))


def mcnemar_exact(candidate: Sequence[bool], baseline: Sequence[bool]) -> McNemarResult:
    """McNemar's exact test on per-question correctness of two models (same questions, same order).

    Raises:
        ValueError: the sequences differ in length or are empty.
    """
    b, c = discordant_counts(candidate, baseline)
    return McNemarResult(b, c, mcnemar_exact_p(b, c))


def paired_bootstrap_ci(
    candidate: Sequence[bool],
    baseline: Sequence[bool],
    *,
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    strata: Sequence[str] | None = None,
) -> BootstrapInterval:
    """Paired bootstrap percentile interval for ``accuracy(candidate) - accuracy(baseline)``.

    Questions are resampled with replacement, keeping each question's pair together. Without
    ``strata`` the statistic is the micro accuracy difference; with ``strata`` (e.g. the subject of
    each question) questions are resampled within their stratum and the statistic is the mean of
    the per-stratum differences (the macro accuracy difference).

    Each paired difference is -1, 0 or +1, so a resample is fully described by how many of each it
    draws: the counts are drawn from a multinomial with the observed shares, which is the same
    distribution as resampling indices, in O(samples) per stratum instead of O(samples * n).

    Raises:
        ValueError: lengths differ, the samples are empty, ``samples < 1``, ``confidence`` is not
            in (0, 1) or ``strata`` has the wrong length.
    """
    _paired(candidate, baseline)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if strata is not None and len(strata) != len(candidate):
        raise ValueError(f"strata has {len(strata)} labels for {len(candidate)} questions")
    import numpy as np

    groups: dict[str, list[int]] = {}
    for position, label in enumerate(strata if strata is not None else [""] * len(candidate)):
        groups.setdefault(str(label), []).append(position)

    rng = np.random.default_rng(seed)
    resampled = np.zeros(samples, dtype=np.float64)
    estimate = 0.0
    for label in sorted(groups):  # a fixed order keeps the random stream, hence the interval, reproducible
        diffs = [int(bool(candidate[i])) - int(bool(baseline[i])) for i in groups[label]]
        n = len(diffs)
        shares = np.array([diffs.count(1), diffs.count(0), diffs.count(-1)], dtype=np.float64) / n
        counts = rng.multinomial(n, shares, size=samples)
        resampled += (counts[:, 0] - counts[:, 2]) / n
        estimate += (diffs.count(1) - diffs.count(-1)) / n
    resampled /= len(groups)
    estimate /= len(groups)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled, [tail, 1.0 - tail])
    return BootstrapInterval(float(estimate), float(low), float(high), confidence, samples, seed)


__all__ = [
    "BootstrapInterval",
    "McNemarResult",
    "discordant_counts",
    "mcnemar_exact",
    "mcnemar_exact_p",
    "paired_bootstrap_ci",
]
