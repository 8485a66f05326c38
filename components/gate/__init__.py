"""The gate: compare the candidate with the baseline, and the registry steps that act on the decision.

- :mod:`.find_baseline`: the find-baseline step;
- :mod:`.reuse_baseline_scores`: the reuse-baseline-scores step;
- :mod:`.compare`: the compare step (and the offline comparison of four results files);
- :mod:`.register_model`: the register-model step;
- :mod:`.promote_model`: the promote-model step;
- :mod:`.mark_challenger`: the mark-challenger step;
- :mod:`.rules`: the promotion rules, in one place (:class:`~.rules.Comparison`, ``comparison.json``);
- :mod:`.stats`: paired statistics (Wilcoxon, McNemar, bootstrap intervals);
- :mod:`.generation`: the two models' generated answers, paired row by row;
- :mod:`.judge`: the optional judge model (pairwise, both orders, sign test);
- :mod:`.report`: the Markdown and HTML report, the loss curve;
- :mod:`.registry`: aliases and ``pvc://`` sources;
- :mod:`.served_baseline`: the baseline is what ``current`` serves, which must be the registry's champion;
- :mod:`.held_out`: the held-out rows neither the candidate nor the baseline trained on.
"""

__all__ = [
    "compare",
    "find_baseline",
    "generation",
    "held_out",
    "judge",
    "mark_challenger",
    "promote_model",
    "register_model",
    "registry",
    "report",
    "reuse_baseline_scores",
    "rules",
    "served_baseline",
    "stats",
]
