"""The promotion gate, in one place: when a fine-tuned candidate replaces the model in use.

The candidate and the baseline (the registry's ``champion``, or the base model before the first
promotion) are compared on the *same* items, and every rule below is reported as a reason, passed or
failed. The candidate is promoted only when all of them pass.

1. **Task (held-out loss).** On the same held-out rows of the training data, the candidate's mean
   per-row answer loss must be lower than the baseline's by at least ``gate.min_task_improvement``
   (relative: 0.01 = 1 % lower). A tie never promotes, whatever the threshold, not even against the
   base model: "lower" is decided on the means of correctly rounded sums (:func:`math.fsum`), which are
   equal whenever the two sets of losses sum to the same, in any row order.
2. **Significance** (only when ``gate.require_significance``): a one-sided Wilcoxon signed-rank test
   on the per-row loss differences (the alternative: the candidate's losses are lower) gives
   p < ``gate.alpha``. That is the whole rule: how many rows favour each model is reported, not ruled on
   (a candidate lower on fewer rows, but by far more, can be significantly better).
3. **General knowledge must not get worse.** MMLU micro accuracy drops by at most
   ``gate.mmlu_max_drop`` (absolute), and
4. no MMLU category drops by more than ``gate.max_regression``.
5. **Generated answers must not get worse** (when ``gate.require_generation`` and ``evaluation.generate_rows``
   > 0; :mod:`components.gate.generation`). On the same held-out rows, answered greedily by both models, the mean
   of ``gate.generation_metric`` (chrF by default; every score is 0-100 points per row) drops by at most
   ``gate.generation_max_drop`` points, and the share of answers that stop before ``evaluation.max_new_tokens``
   drops by at most ``gate.generation_max_stop_drop``. Both are decided on exact integers: the sums of the stored
   per-row scores (each rounded to 10^-4 points) and the counts of stopped rows, against the limits as written
   in the config (read as decimals), so a drop exactly at a limit passes and one 10^-4 point beyond fails, with
   no float rounding either way. A tie (no drop) always passes: this rule guards, it does not promote. When the
   rule is off, the scores are still reported.

Also reported, not ruled on: a paired bootstrap interval of the relative loss change and of the MMLU
micro difference (``gate.bootstrap_samples`` resamples, seeded), and McNemar's exact test on MMLU
per-question correctness; for the generated answers, every score's paired bootstrap interval and the rows where
the two models differ most; and, with a judge (``evaluation.judge_endpoint``, :mod:`components.gate.judge`), a
pairwise verdict per row in both orders with a sign test.

Two results are compared only when their evaluation settings agree (task: held-out split hash, template,
cutoff, scoring version; MMLU: data hash, n-shot, subjects, limit, prompt version). Otherwise
:class:`NotComparable` is raised: the pipeline then evaluates the baseline afresh instead.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict

from components.evaluate.generate.results import DIGITS as SCORE_DIGITS
from components.evaluate.generate.results import Generations
from components.evaluate.mmlu.results import MmluResults
from components.gate.generation import METRIC_LABELS, GenerationComparison, NotPaired, compare_generations
from components.gate.judge import JudgeComparison
from configs.errors import StepError
from configs.schema import GateConfig

PROMOTE, KEEP = "promote", "keep-champion"
DECISIONS = (PROMOTE, KEEP)
CATEGORY_ORDER = ("STEM", "humanities", "social sciences", "other")
EPSILON = 1e-12  # thresholds are inclusive: a value exactly at a limit passes
HEADLINE_CHARS = 140


class NotComparable(StepError, ValueError):
    """Two results were not obtained the same way (different data, split, template, shots...); names the field."""


class TaskScores(NamedTuple):
    """What the gate needs of one model's task evaluation."""

    eval_key: str
    eval_settings: dict[str, Any]  # test split hash, template, cutoff, scoring version: must agree to compare
    losses: dict[str, float]  # row key -> mean answer-token negative log-likelihood
    loss: float  # token-weighted mean over every answer token (what the trainer's loss means)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RuleResult(_Record):
    """One gate rule's outcome: ``short`` fits the one-line decision, ``detail`` is the full reason."""

    rule: Literal["task", "significance", "mmlu", "categories", "generation"]
    passed: bool
    short: str
    detail: str


class TaskComparison(_Record):
    """Held-out loss of candidate and baseline on the same rows, with paired statistics."""

    rows: int
    candidate_eval_key: str
    baseline_eval_key: str
    eval_settings: dict[str, Any]
    candidate_mean_nll: float  # mean over rows of each row's mean answer-token NLL (the gated number)
    baseline_mean_nll: float
    candidate_loss: float  # token-weighted
    baseline_loss: float
    relative_change: float  # candidate / baseline - 1 of the mean NLL; negative is better
    mean_difference: float  # mean of per-row (candidate - baseline)
    ci_low: float
    ci_high: float
    confidence: float
    bootstrap_samples: int
    seed: int
    candidate_lower: int
    baseline_lower: int
    wilcoxon_p: float
    left_out_rows: int = 0  # scored held-out rows not compared: the baseline may have trained on them
    left_out_reason: str = ""


class CategoryComparison(_Record):
    """MMLU accuracy of one category for both models, with McNemar's test on its questions."""

    name: str
    questions: int
    candidate: float
    baseline: float
    delta: float
    candidate_only: int
    baseline_only: int
    p_value: float


class MmluComparison(_Record):
    """MMLU accuracy of candidate and baseline on the same questions, with paired statistics."""

    questions: int
    candidate_eval_key: str
    baseline_eval_key: str
    eval_settings: dict[str, Any]
    candidate_micro: float
    baseline_micro: float
    delta_micro: float
    candidate_macro: float
    baseline_macro: float
    delta_macro: float
    candidate_only: int
    baseline_only: int
    mcnemar_p: float
    ci_low: float
    ci_high: float
    categories: list[CategoryComparison]


class Comparison(_Record):
    """The gate's whole verdict (``comparison.json``): both comparisons, every rule, the decision."""

    decision: Literal["promote", "keep-champion"]
    headline: str
    baseline_name: str
    first_model: bool
    rules: list[RuleResult]
    task: TaskComparison
    mmlu: MmluComparison
    gate: dict[str, Any]
    generation: GenerationComparison | None = None  # None: evaluation.generate_rows was 0
    judge: JudgeComparison | None = None  # None: no evaluation.judge_endpoint

    @property
    def reasons(self) -> list[str]:
        """Every rule's full reason, failed ones first."""
        return [rule.detail for rule in sorted(self.rules, key=lambda rule: rule.passed)]


def _require_same_settings(what: str, candidate: dict[str, Any], baseline: dict[str, Any]) -> None:
    for field in sorted(candidate.keys() | baseline.keys()):
        if candidate.get(field) != baseline.get(field):
            raise NotComparable(f"{what}: candidate and baseline were evaluated differently: {field} is "
                                f"{candidate.get(field)!r} vs {baseline.get(field)!r}")


def compare_task(candidate: TaskScores, baseline: TaskScores, gate: GateConfig, *, seed: int) -> TaskComparison:
    """Pair the two task evaluations row by row and compute the paired statistics.

    Raises:
        NotComparable: different evaluation settings, or different held-out rows.
    """
    from components.gate.stats import relative_change_ci, wilcoxon_lower

    _require_same_settings("held-out task", candidate.eval_settings, baseline.eval_settings)
    if candidate.losses.keys() != baseline.losses.keys():
        only = sorted(candidate.losses.keys() ^ baseline.losses.keys())[:3]
        raise NotComparable(f"held-out task: candidate ({len(candidate.losses)} rows) and baseline "
                            f"({len(baseline.losses)}) were scored on different rows, e.g. {only}")
    keys = sorted(candidate.losses)
    if not keys:
        raise NotComparable("held-out task: no scored rows to compare")
    cand = [candidate.losses[key] for key in keys]
    base = [baseline.losses[key] for key in keys]
    interval = relative_change_ci(cand, base, samples=gate.bootstrap_samples, confidence=1 - gate.alpha, seed=seed)
    test = wilcoxon_lower(cand, base)
    # Correctly rounded sums: equal losses in another row order give equal means, so a tie stays a tie.
    cand_mean, base_mean = math.fsum(cand) / len(keys), math.fsum(base) / len(keys)
    return TaskComparison(
        rows=len(keys), candidate_eval_key=candidate.eval_key, baseline_eval_key=baseline.eval_key,
        eval_settings=candidate.eval_settings, candidate_mean_nll=cand_mean, baseline_mean_nll=base_mean,
        candidate_loss=candidate.loss, baseline_loss=baseline.loss, relative_change=cand_mean / base_mean - 1.0,
        mean_difference=cand_mean - base_mean, ci_low=interval.low, ci_high=interval.high,
        confidence=interval.confidence, bootstrap_samples=interval.samples, seed=seed,
        candidate_lower=test.candidate_lower, baseline_lower=test.baseline_lower, wilcoxon_p=test.p_value)


def compare_mmlu(candidate: MmluResults, baseline: MmluResults, gate: GateConfig, *, seed: int) -> MmluComparison:
    """Pair the two MMLU results question by question; every number is computed from the question records.

    Raises:
        NotComparable: different evaluation settings, different question sets, or a question with two gold answers.
    """
    from components.evaluate.mmlu.results import tallies
    from components.gate.stats import mcnemar_exact, paired_bootstrap_ci

    _require_same_settings("MMLU", candidate.eval_settings(), baseline.eval_settings())
    cand = {(q.subject, q.index): q for q in candidate.questions}
    base = {(q.subject, q.index): q for q in baseline.questions}
    if cand.keys() != base.keys():
        only_cand, only_base = sorted(cand.keys() - base.keys())[:3], sorted(base.keys() - cand.keys())[:3]
        raise NotComparable(f"MMLU: candidate ({len(cand)} questions) and baseline ({len(base)}) were not evaluated "
                            f"on the same questions; only candidate: {only_cand}, only baseline: {only_base}")
    keys = sorted(cand)
    for key in keys:
        if cand[key].gold != base[key].gold:
            raise NotComparable(f"MMLU question {key[0]}#{key[1]} has answer {cand[key].gold!r} for the candidate "
                                f"but {base[key].gold!r} for the baseline: different MMLU data")
    category_of = {name: row.category for name, row in baseline.subjects.items()}
    if category_of != {name: row.category for name, row in candidate.subjects.items()}:
        raise NotComparable("MMLU: candidate and baseline file the subjects under different categories")
    cand_flags, base_flags = [cand[key].correct for key in keys], [base[key].correct for key in keys]
    overall = mcnemar_exact(cand_flags, base_flags)
    interval = paired_bootstrap_ci(cand_flags, base_flags, samples=gate.bootstrap_samples,
                                   confidence=1 - gate.alpha, seed=seed)
    cand_subjects, cand_categories = tallies(candidate.questions, category_of)
    base_subjects, base_categories = tallies(baseline.questions, category_of)
    categories = []
    for name in sorted(base_categories, key=_category_order):
        members = [key for key in keys if category_of[key[0]] == name]
        test = mcnemar_exact([cand[key].correct for key in members], [base[key].correct for key in members])
        cand_acc, base_acc = _ratio(cand_categories[name]), _ratio(base_categories[name])
        categories.append(CategoryComparison(
            name=name, questions=len(members), candidate=cand_acc, baseline=base_acc, delta=cand_acc - base_acc,
            candidate_only=test.candidate_only, baseline_only=test.baseline_only, p_value=test.p_value))
    cand_micro, base_micro = sum(cand_flags) / len(keys), sum(base_flags) / len(keys)
    cand_macro = sum(map(_ratio, cand_subjects.values())) / len(cand_subjects)
    base_macro = sum(map(_ratio, base_subjects.values())) / len(base_subjects)
    return MmluComparison(
        questions=len(keys), candidate_eval_key=candidate.eval_key, baseline_eval_key=baseline.eval_key,
        eval_settings=candidate.eval_settings(), candidate_micro=cand_micro, baseline_micro=base_micro,
        delta_micro=cand_micro - base_micro, candidate_macro=cand_macro, baseline_macro=base_macro,
        delta_macro=cand_macro - base_macro, candidate_only=overall.candidate_only,
        baseline_only=overall.baseline_only, mcnemar_p=overall.p_value, ci_low=interval.low, ci_high=interval.high,
        categories=categories)


def _ratio(tally: tuple[int, int]) -> float:
    return tally[0] / tally[1]


def _category_order(name: str) -> tuple[int, str]:
    """MMLU's usual order (STEM, humanities, social sciences, other), then any other name alphabetically."""
    return (CATEGORY_ORDER.index(name) if name in CATEGORY_ORDER else len(CATEGORY_ORDER), name)


def apply_rules(task: TaskComparison, mmlu: MmluComparison, gate: GateConfig, baseline_name: str) -> list[RuleResult]:
    """Every gate rule's outcome, in the order of the module docstring."""
    change, needed = task.relative_change, -gate.min_task_improvement
    # A tie never promotes: the mean loss must be strictly lower (compared on the means themselves, not on a
    # rounded ratio), and lower by at least the configured share.
    better = task.candidate_mean_nll < task.baseline_mean_nll and change <= needed + EPSILON
    rules = [RuleResult(
        rule="task", passed=better,
        short=f"held-out loss {change:+.1%} vs {baseline_name} (needs <= {needed:+.1%})",
        detail=(f"held-out loss {task.baseline_mean_nll:.4f} -> {task.candidate_mean_nll:.4f} ({change:+.2%}) vs "
                f"{baseline_name} on {task.rows} rows; needs <= {needed:+.2%} and strictly lower "
                f"(interval [{task.ci_low:+.2%}, {task.ci_high:+.2%}])"))]
    test = (f"Wilcoxon p={task.wilcoxon_p:.3g} (candidate lower on {task.candidate_lower}, baseline lower on "
            f"{task.baseline_lower} of {task.rows} rows)")
    if gate.require_significance:
        significant = task.wilcoxon_p < gate.alpha  # one-sided: a small p is already in the candidate's favour
        p_value = _p_text(task.wilcoxon_p, gate.alpha)
        verdict = f"p={p_value} < alpha {gate.alpha}" if significant else f"p={p_value}, needs < alpha {gate.alpha}"
        rules.append(RuleResult(
            rule="significance", passed=significant,
            short=f"held-out loss change {'significant' if significant else 'not significant'} ({verdict})",
            detail=(f"one-sided Wilcoxon signed-rank test {verdict} (candidate lower on {task.candidate_lower}, "
                    f"baseline lower on {task.baseline_lower} of {task.rows} rows)")))
    else:
        rules.append(RuleResult(rule="significance", passed=True, short="significance not required",
                                detail=f"{test}; significance not required"))
    drop_ok = mmlu.delta_micro >= -gate.mmlu_max_drop - EPSILON
    rules.append(RuleResult(
        rule="mmlu", passed=drop_ok,
        short=f"MMLU {mmlu.delta_micro:+.3f} (may drop <= {gate.mmlu_max_drop:.3f})",
        detail=(f"MMLU micro {mmlu.baseline_micro:.4f} -> {mmlu.candidate_micro:.4f} ({mmlu.delta_micro:+.4f}) on "
                f"{mmlu.questions} questions; may drop by at most {gate.mmlu_max_drop:.4f} (McNemar p="
                f"{mmlu.mcnemar_p:.3g}, interval [{mmlu.ci_low:+.4f}, {mmlu.ci_high:+.4f}])")))
    worst = min(mmlu.categories, key=lambda row: row.delta)
    regressed = [row for row in mmlu.categories if row.delta < -gate.max_regression - EPSILON]
    listed = ", ".join(f"{row.name} {row.delta:+.4f}" for row in regressed)
    rules.append(RuleResult(
        rule="categories", passed=not regressed,
        short=(f"MMLU {regressed[0].name} {regressed[0].delta:+.3f} (limit -{gate.max_regression:.3f})" if regressed
               else f"no MMLU category drop > {gate.max_regression:.3f}"),
        detail=(f"MMLU categories dropped more than {gate.max_regression:.4f}: {listed}" if regressed
                else f"no MMLU category drops more than {gate.max_regression:.4f} (worst {worst.name} "
                     f"{worst.delta:+.4f})")))
    return rules


def _p_text(p_value: float, alpha: float) -> str:
    """``p_value`` with as few significant digits (at least 2) as keep its order against ``alpha`` visible: 0.0499999
    is never shown as 0.05 next to alpha 0.05."""
    for digits in range(2, 18):
        text = f"{p_value:.{digits}g}"
        if (float(text) < alpha) == (p_value < alpha) and (float(text) == alpha) == (p_value == alpha):
            return text
    return repr(p_value)


def generation_rule(generation: GenerationComparison, gate: GateConfig) -> RuleResult:
    """Rule 5: the generated answers' gated score and stop rate may drop by at most their limits (exact integers)."""
    label, gated = METRIC_LABELS[generation.metric], generation.gated()
    rows = generation.rows
    drop_units = generation.baseline_units - generation.candidate_units  # > 0: the candidate scores lower
    score_ok = drop_units <= Decimal(str(gate.generation_max_drop)).scaleb(SCORE_DIGITS) * rows
    stop_drop = generation.baseline_stopped - generation.candidate_stopped
    stop_ok = stop_drop <= Decimal(str(gate.generation_max_stop_drop)) * rows
    cand_rate, base_rate = generation.candidate_stopped / rows, generation.baseline_stopped / rows
    detail = (f"{label} of the generated answers {gated.baseline:.2f} -> {gated.candidate:.2f} "
              f"({gated.mean_difference:+.2f} points, interval [{gated.ci_low:+.2f}, {gated.ci_high:+.2f}]) on {rows} "
              f"rows, may drop by at most {gate.generation_max_drop:g}; stopped before {generation.max_new_tokens} "
              f"tokens {generation.baseline_stopped} -> {generation.candidate_stopped} of {rows}, the rate may drop by "
              f"at most {gate.generation_max_stop_drop:g}")
    if not gate.require_generation:
        return RuleResult(rule="generation", passed=True, short="generated answers not ruled on",
                          detail=f"{detail}; not required (gate.require_generation is false)")
    if not score_ok:
        short = f"{label} {gated.mean_difference:+.1f} (may drop <= {gate.generation_max_drop:g})"
    elif not stop_ok:
        short = f"answers stopping {cand_rate:.0%} vs {base_rate:.0%} (may drop <= {gate.generation_max_stop_drop:.0%})"
    else:
        short = f"{label} {gated.mean_difference:+.1f} (may drop <= {gate.generation_max_drop:g})"
    return RuleResult(rule="generation", passed=score_ok and stop_ok, short=short, detail=detail)


def headline(decision: str, rules: list[RuleResult], shown_on_promotion: tuple[str, ...] = ("task", "mmlu")) -> str:
    """The one-line decision: the first failed rule, or for a promotion the rules ``shown_on_promotion`` (the task
    gain, the MMLU change and, when it ruled, the generated answers' score)."""
    failed = [rule for rule in rules if not rule.passed]
    shown = failed[:1] if failed else [rule for rule in rules if rule.rule in shown_on_promotion]
    line = f"{decision}: " + ", ".join(rule.short for rule in shown)
    return line if len(line) <= HEADLINE_CHARS else line[:HEADLINE_CHARS - 1] + "…"


def compare(candidate_mmlu: MmluResults, baseline_mmlu: MmluResults, candidate_task: TaskScores,
            baseline_task: TaskScores, gate: GateConfig, *, baseline_name: str, first_model: bool,
            seed: int, generations: tuple[Generations, Generations] | None = None) -> Comparison:
    """Compare the candidate with the baseline on the held-out task, on MMLU and (``generations``: the candidate's
    and the baseline's answers) on generated answers, and decide.

    Raises:
        NotComparable: the two models' results were not obtained the same way (see the module docstring).
    """
    task = compare_task(candidate_task, baseline_task, gate, seed=seed)
    mmlu = compare_mmlu(candidate_mmlu, baseline_mmlu, gate, seed=seed)
    generation = None
    if generations is not None:
        try:
            generation = compare_generations(*generations, metric=gate.generation_metric,
                                             samples=gate.bootstrap_samples, confidence=1 - gate.alpha, seed=seed)
        except NotPaired as exc:
            raise NotComparable(str(exc)) from None
    rules = apply_rules(task, mmlu, gate, baseline_name)
    if generation is not None:  # no answers generated (evaluation.generate_rows 0): no rule to report
        rules.append(generation_rule(generation, gate))
    decision = PROMOTE if all(rule.passed for rule in rules) else KEEP
    for number in (task.ci_low, task.ci_high, mmlu.ci_low, mmlu.ci_high):
        if not math.isfinite(number):
            raise NotComparable("the paired bootstrap gave a non-finite interval: the losses are degenerate")
    ruled = ("task", "mmlu", "generation") if generation is not None and gate.require_generation else ("task", "mmlu")
    return Comparison(decision=decision, headline=headline(decision, rules, ruled), baseline_name=baseline_name,
                      first_model=first_model, rules=rules, task=task, mmlu=mmlu, gate=gate.model_dump(),
                      generation=generation)
