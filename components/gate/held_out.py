"""The held-out rows a comparison may use: only rows neither the candidate nor the baseline trained on.

The candidate never trained on this run's test side. A champion trained in an earlier run, on the split of that
run: with the same key scheme (:data:`components.data.split.SPLIT_VERSION`) a row's side depends on its example
alone (:func:`components.data.split.key_position`), so whatever data that run had, the champion held out every
example below *its* ``dataset.test_fraction``. The rows held out for both are this run's scored test rows below
the smaller of the two fractions: :func:`held_out_bound`. register-model records each version's training split as
version tags (:func:`training_split_tags`); find-baseline reads them from the champion and refuses, naming why,
when the champion's split is unknown (registered before the tags existed, or by hand) or another scheme's, unless
``gate.allow_unknown_baseline_split``, or when fewer than ``dataset.min_test_rows`` rows are held out for both.
The base model trained on none of the data: every scored row counts.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from components.common.tags import SPLIT_SCHEME_TAG, TEST_FRACTION_TAG
from components.data.split import SPLIT_VERSION, SplitManifest, key_position
from components.gate.registry import BaselineError
from configs.schema import PipelineConfig


class HeldOutRows(NamedTuple):
    """Which of this run's scored test rows the comparison uses."""

    below: float  # rows whose key position is below this were held out for both models (1.0: every scored row)
    rows: int  # scored test rows below it
    scored: int  # scored test rows in this run
    note: str  # why rows are left out ("" when none are)


def training_split_tags(manifest: SplitManifest) -> dict[str, str]:
    """The version tags that record which rows a model was trained without (its run's split)."""
    return {SPLIT_SCHEME_TAG: manifest.key_scheme, TEST_FRACTION_TAG: repr(manifest.test_fraction)}


def recorded_fraction(tags: dict[str, str]) -> float | None:
    """The ``dataset.test_fraction`` a version was trained with, when recorded under this key scheme; else None."""
    if tags.get(SPLIT_SCHEME_TAG) != SPLIT_VERSION:
        return None
    try:
        fraction = float(tags.get(TEST_FRACTION_TAG, ""))
    except ValueError:
        return None
    return fraction if math.isfinite(fraction) and 0 < fraction < 1 else None


def held_out_bound(cfg: PipelineConfig, run_split: SplitManifest, label: str,
                   baseline_tags: dict[str, str] | None) -> HeldOutRows:
    """This run's scored test rows that the baseline never trained on (see the module docstring).

    ``baseline_tags`` are the champion's version tags; None for the base model. Reads
    ``gate.allow_unknown_baseline_split`` and ``dataset.min_test_rows``.

    Raises:
        BaselineError: the champion's training split is not known (and not allowed), or fewer than
            ``dataset.min_test_rows`` scored rows are held out for both.
    """
    keys = [key for split in run_split.datasets for key in split.test_keys]
    own = run_split.test_fraction
    if baseline_tags is None:
        return HeldOutRows(1.0, len(keys), len(keys), "")
    fraction = recorded_fraction(baseline_tags)
    if fraction is None:
        recorded = baseline_tags.get(SPLIT_SCHEME_TAG)
        why = (f"was trained with split scheme {recorded!r}, not {SPLIT_VERSION!r}" if recorded else
               "does not record which rows it was trained without (registered before version tag "
               f"{SPLIT_SCHEME_TAG} existed, or by hand)")
        if not cfg.gate.allow_unknown_baseline_split:
            raise BaselineError(
                f"the {label} {why}: it may have trained on this run's held-out rows, which would favour it. "
                "Compare anyway on every held-out row with gate.allow_unknown_baseline_split=true (once: the next "
                "champion records its split), or retire it (remove the alias champion and models/<name>/current)")
        return HeldOutRows(1.0, len(keys), len(keys), f"the {label} {why}; compared on every held-out row "
                                                      "(gate.allow_unknown_baseline_split)")
    if fraction >= own:
        return HeldOutRows(1.0, len(keys), len(keys), "")
    rows = sum(key_position(key) < fraction for key in keys)
    note = (f"{len(keys) - rows} of {len(keys)} scored held-out rows left out: the {label} was trained with "
            f"dataset.test_fraction {fraction:g} (this run {own:g}), so rows at hash positions >= {fraction:g} may "
            f"be its training data; {rows} rows held out for both are compared")
    if rows < cfg.dataset.min_test_rows:
        raise BaselineError(f"only {rows} of this run's {len(keys)} scored held-out rows were held out for the "
                            f"{label} too (it was trained with dataset.test_fraction {fraction:g}, this run "
                            f"{own:g}); at least dataset.min_test_rows={cfg.dataset.min_test_rows} are needed to "
                            "compare on rows neither model trained on: add rows, or lower dataset.min_test_rows")
    return HeldOutRows(fraction, rows, len(keys), note)

