"""Paired statistics for the promotion gate.

Every function compares two models on the *same* items: MMLU questions (one boolean "answered correctly"
per question and model: McNemar's exact test, a paired bootstrap interval of the accuracy difference) or
held-out rows (one loss per row and model: the Wilcoxon signed-rank test, a paired bootstrap interval of the
relative loss change). Plain functions over sequences; numpy and scipy are imported inside them so that
importing this module stays cheap. The bootstraps are seeded, so a rerun gives the same interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple


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


def _resampling(candidate: Sequence[float], baseline: Sequence[float], samples: int, confidence: float) -> None:
    """Check a paired bootstrap's inputs (raises ValueError, see the callers)."""
    _paired(candidate, baseline)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


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


class WilcoxonResult(NamedTuple):
    """One-sided Wilcoxon signed-rank test that the candidate's per-row losses are lower than the baseline's."""

    candidate_lower: int  # rows where the candidate's loss is lower
    baseline_lower: int  # rows where the baseline's loss is lower
    p_value: float


def wilcoxon_lower(candidate: Sequence[float], baseline: Sequence[float]) -> WilcoxonResult:
    """Wilcoxon signed-rank test of ``candidate - baseline`` with the alternative "the candidate is lower".

    Rows with equal losses carry no evidence either way and are dropped (Wilcoxon's own zero method); with
    no unequal row at all the p-value is 1.0 (nothing favours the candidate).

    Raises:
        ValueError: the sequences differ in length or are empty.
    """
    _paired(candidate, baseline)
    diffs = [float(cand) - float(base) for cand, base in zip(candidate, baseline, strict=True)]
    lower, higher = sum(1 for d in diffs if d < 0), sum(1 for d in diffs if d > 0)
    if lower + higher == 0:
        return WilcoxonResult(0, 0, 1.0)
    from scipy.stats import wilcoxon

    result = wilcoxon(diffs, zero_method="wilcox", alternative="less")
    return WilcoxonResult(lower, higher, float(min(1.0, result.pvalue)))


def relative_change_ci(
    candidate: Sequence[float],
    baseline: Sequence[float],
    *,
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapInterval:
    """Paired bootstrap percentile interval for ``mean(candidate) / mean(baseline) - 1`` (the relative change).

    Rows are resampled with replacement, each row's two losses together. A negative change means the
    candidate's mean loss is lower (-0.05: 5 % lower).

    Raises:
        ValueError: lengths differ, the samples are empty, the baseline's mean loss is not positive,
            ``samples < 1`` or ``confidence`` is not in (0, 1).
    """
    _resampling(candidate, baseline, samples, confidence)
    import numpy as np

    cand, base = np.asarray(candidate, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if base.mean() <= 0:
        raise ValueError(f"the baseline's mean loss must be positive, got {base.mean()}")
    estimate = float(cand.mean() / base.mean() - 1.0)

    def relative_change(rows: Any) -> Any:
        means = base[rows].mean(axis=1)
        return cand[rows].mean(axis=1) / np.where(means > 0, means, np.nan) - 1.0

    resampled = _resample_rows(len(cand), samples, seed, relative_change)
    return _percentile_interval(estimate, resampled, confidence, samples, seed)


def mean_difference_ci(
    candidate: Sequence[float],
    baseline: Sequence[float],
    *,
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapInterval:
    """Paired bootstrap percentile interval for ``mean(candidate - baseline)`` (e.g. per-row answer scores).

    Rows are resampled with replacement, each row's two scores together.

    Raises:
        ValueError: lengths differ, the samples are empty, ``samples < 1`` or ``confidence`` is not in (0, 1).
    """
    _resampling(candidate, baseline, samples, confidence)
    import numpy as np

    diffs = np.asarray(candidate, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    resampled = _resample_rows(len(diffs), samples, seed, lambda rows: diffs[rows].mean(axis=1))
    return _percentile_interval(float(diffs.mean()), resampled, confidence, samples, seed)


def _resample_rows(rows: int, samples: int, seed: int, statistic: Callable[[Any], Any]) -> Any:
    """``statistic`` of ``samples`` seeded resamples of ``rows`` rows with replacement: an array, one value each.

    ``statistic`` gets a (resamples, rows) array of row indices and returns one value per resample; the indices
    come in chunks of about 8 MB whatever the row count (samples x rows at once otherwise).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    resampled = np.empty(samples, dtype=np.float64)
    chunk = max(1, (1 << 20) // rows)
    for start in range(0, samples, chunk):
        indices = rng.integers(0, rows, size=(min(chunk, samples - start), rows))
        resampled[start:start + len(indices)] = statistic(indices)
    return resampled


def _percentile_interval(estimate: float, resampled: Any, confidence: float, samples: int,
                         seed: int) -> BootstrapInterval:
    """The percentile interval of the resampled values (a resample whose statistic is undefined is left out)."""
    import numpy as np

    tail = (1.0 - confidence) / 2.0
    low, high = np.nanquantile(resampled, [tail, 1.0 - tail])
    return BootstrapInterval(estimate, float(low), float(high), confidence, samples, seed)
