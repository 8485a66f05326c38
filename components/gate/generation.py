"""The candidate's and the baseline's generated answers, paired row by row (what the generation rule reads).

Both ``generations.jsonl`` (:mod:`components.evaluate.generate.results`) must come from the same eval settings (held-out
split, template, cutoff, ``generate_rows``, ``max_new_tokens``, generation version) and answer the same rows.
For each score: both means, the mean of the per-row differences and its paired bootstrap interval
(:func:`components.gate.stats.mean_difference_ci`). For the gated score (``gate.generation_metric``) the exact
sums of the stored scores (integers of 10^-4 points) are kept too, so that the rule compares without rounding
error, and the rows where the two models differ most are kept for the report: the worst regressions first, then
the best improvements (:data:`SIDE_BY_SIDE_ROWS` of each).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from components.evaluate.generate.results import (
    METRICS,
    AnswerScores,
    GeneratedAnswer,
    Generations,
    generation_totals,
    score_units,
)
from configs.errors import StepError

SIDE_BY_SIDE_ROWS = 5  # of each kind: regressions, improvements
METRIC_LABELS = {"chrf": "chrF", "rouge_l": "ROUGE-L", "token_f1": "token F1", "exact_match": "exact match"}


class NotPaired(StepError, ValueError):
    """The two models' answers cannot be paired (other evaluation settings, other rows); names the field."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class MetricComparison(_Record):
    """One score's means for both models and the paired difference (points of 100)."""

    name: str
    candidate: float
    baseline: float
    mean_difference: float
    ci_low: float
    ci_high: float


class SideBySide(_Record):
    """One held-out row as the report shows it: the prompt, the reference, both answers and their scores."""

    row: str
    prompt: str
    history_turns: int
    reference: str
    candidate_answer: str
    baseline_answer: str
    candidate_scores: AnswerScores
    baseline_scores: AnswerScores
    candidate_stopped: bool
    baseline_stopped: bool
    difference: float  # on the gated score, candidate minus baseline


class GenerationComparison(_Record):
    """Both models' answers on the same held-out rows, with paired statistics and the rows that differ most."""

    rows: int
    candidate_eval_key: str
    baseline_eval_key: str
    eval_settings: dict[str, Any]
    metric: str  # gate.generation_metric
    metrics: list[MetricComparison]
    candidate_units: int  # exact sum of the gated score over the rows, in 10^-4 points
    baseline_units: int
    candidate_stopped: int
    baseline_stopped: int
    candidate_answer_tokens: float
    baseline_answer_tokens: float
    max_new_tokens: int
    confidence: float
    bootstrap_samples: int
    seed: int
    regressions: list[SideBySide]
    improvements: list[SideBySide]

    def gated(self) -> MetricComparison:
        """The comparison of the gated score."""
        return next(metric for metric in self.metrics if metric.name == self.metric)


def _side_by_side(candidate: GeneratedAnswer, baseline: GeneratedAnswer, metric: str) -> SideBySide:
    return SideBySide(
        row=candidate.row, prompt=candidate.prompt, history_turns=candidate.history_turns,
        reference=candidate.reference, candidate_answer=candidate.answer, baseline_answer=baseline.answer,
        candidate_scores=candidate.scores, baseline_scores=baseline.scores, candidate_stopped=candidate.stopped,
        baseline_stopped=baseline.stopped,
        difference=getattr(candidate.scores, metric) - getattr(baseline.scores, metric))


def compare_generations(candidate: Generations, baseline: Generations, *, metric: str, samples: int,
                        confidence: float, seed: int) -> GenerationComparison:
    """Pair the two models' answers by row and compute the paired statistics.

    Raises:
        NotPaired: different evaluation settings, or different rows answered.
    """
    from components.gate.stats import mean_difference_ci

    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    cand_settings, base_settings = candidate.header.eval_settings(), baseline.header.eval_settings()
    for field in sorted(cand_settings):
        if cand_settings[field] != base_settings[field]:
            raise NotPaired(f"generated answers: candidate and baseline were generated differently: {field} is "
                            f"{cand_settings[field]!r} vs {base_settings[field]!r}")
    cand, base = candidate.by_row(), baseline.by_row()
    if cand.keys() != base.keys():
        only = sorted(cand.keys() ^ base.keys())[:3]
        raise NotPaired(f"generated answers: candidate ({len(cand)} rows) and baseline ({len(base)}) answered "
                        f"different rows, e.g. {only}")
    keys = sorted(cand)
    # Totals from the paired rows, not the headers: compare may keep only the rows neither model trained on.
    cand_totals = generation_totals([cand[key] for key in keys])
    base_totals = generation_totals([base[key] for key in keys])
    metrics = []
    for name in METRICS:
        cand_scores = [getattr(cand[key].scores, name) for key in keys]
        base_scores = [getattr(base[key].scores, name) for key in keys]
        interval = mean_difference_ci(cand_scores, base_scores, samples=samples, confidence=confidence, seed=seed)
        metrics.append(MetricComparison(
            name=name, candidate=cand_totals["means"][name], baseline=base_totals["means"][name],
            mean_difference=interval.estimate, ci_low=interval.low, ci_high=interval.high))
    pairs = [_side_by_side(cand[key], base[key], metric) for key in keys]
    regressions = sorted((pair for pair in pairs if pair.difference < 0),
                         key=lambda pair: (pair.difference, pair.row))
    improvements = sorted((pair for pair in pairs if pair.difference > 0),
                          key=lambda pair: (-pair.difference, pair.row))
    return GenerationComparison(
        rows=len(keys), candidate_eval_key=candidate.header.eval_key, baseline_eval_key=baseline.header.eval_key,
        eval_settings=cand_settings, metric=metric, metrics=metrics,
        candidate_units=sum(score_units(getattr(cand[key].scores, metric)) for key in keys),
        baseline_units=sum(score_units(getattr(base[key].scores, metric)) for key in keys),
        candidate_stopped=cand_totals["stopped"], baseline_stopped=base_totals["stopped"],
        candidate_answer_tokens=cand_totals["mean_answer_tokens"],
        baseline_answer_tokens=base_totals["mean_answer_tokens"], max_new_tokens=candidate.header.max_new_tokens,
        confidence=confidence, bootstrap_samples=samples, seed=seed,
        regressions=regressions[:SIDE_BY_SIDE_ROWS], improvements=improvements[:SIDE_BY_SIDE_ROWS])


def paired_table(candidate: Generations, baseline: Generations, metric: str) -> dict[str, list]:
    """Every paired row as columns for MLflow's ``log_table`` (the compare run's side-by-side view)."""
    cand, base = candidate.by_row(), baseline.by_row()
    pairs = sorted((_side_by_side(cand[key], base[key], metric) for key in sorted(cand.keys() & base.keys())),
                   key=lambda pair: (pair.difference, pair.row))
    return {"row": [pair.row for pair in pairs], "prompt": [pair.prompt for pair in pairs],
            "reference": [pair.reference for pair in pairs],
            "candidate_answer": [pair.candidate_answer for pair in pairs],
            "baseline_answer": [pair.baseline_answer for pair in pairs],
            f"candidate_{metric}": [getattr(pair.candidate_scores, metric) for pair in pairs],
            f"baseline_{metric}": [getattr(pair.baseline_scores, metric) for pair in pairs],
            f"difference_{metric}": [round(pair.difference, 4) for pair in pairs],
            "candidate_stopped": [pair.candidate_stopped for pair in pairs],
            "baseline_stopped": [pair.baseline_stopped for pair in pairs]}
