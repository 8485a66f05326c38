"""How one generated answer scores against its reference: four scores, each 0-100 points.

- ``exact_match``: 100 when the two are equal once normalised, else 0;
- ``token_f1``: F1 of the normalised words (bag of words, as SQuAD scores answers);
- ``rouge_l``: ROUGE-L F-measure from ``rouge-score`` (Google's reference implementation), on the same
  normalised words: its own tokenizer keeps only ``[a-z0-9]`` and would score any other script as empty;
- ``chrf``: chrF from ``sacrebleu`` (character 6-grams, beta 2), which needs no tokenisation at all.

Normalisation (:func:`normalise`) is SQuAD's: lower case, punctuation removed (every Unicode punctuation
class), the English articles dropped, whitespace collapsed. An empty answer (one that held only special
tokens) scores 0 on all four. Libraries are imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from functools import lru_cache
from typing import Any

from components.evaluate.generate.results import METRICS, AnswerScores, rounded
from configs.errors import StepError

_ARTICLES = re.compile(r"\b(a|an|the)\b")


class ScoreError(StepError, ValueError):
    """A score came out non-finite or outside 0-100; the message names the metric."""


def normalise(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    lowered = text.lower()
    no_punctuation = "".join(" " if unicodedata.category(char).startswith("P") else char for char in lowered)
    return " ".join(_ARTICLES.sub(" ", no_punctuation).split())


class _Words:
    """A rouge-score tokenizer: the normalised words (rouge-score calls ``tokenize``)."""

    def tokenize(self, text: str) -> list[str]:
        return normalise(text).split()


@lru_cache(maxsize=1)
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Words())


@lru_cache(maxsize=1)
def _chrf() -> Any:
    from sacrebleu.metrics import CHRF

    return CHRF()


def exact_match(answer: str, reference: str) -> float:
    """100.0 when answer and reference are equal once normalised, else 0.0."""
    return 100.0 if normalise(answer) == normalise(reference) else 0.0


def token_f1(answer: str, reference: str) -> float:
    """F1 (0-100) of the normalised words shared by answer and reference, counted with multiplicity."""
    said, wanted = normalise(answer).split(), normalise(reference).split()
    common = sum((Counter(said) & Counter(wanted)).values())
    if not common:
        return 0.0
    precision, recall = common / len(said), common / len(wanted)
    return 100.0 * 2 * precision * recall / (precision + recall)


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F-measure (0-100) of the answer against the reference."""
    return 100.0 * _rouge().score(reference, answer)["rougeL"].fmeasure


def chrf(answer: str, reference: str) -> float:
    """Sentence-level chrF (0-100) of the answer against the one reference."""
    return float(_chrf().sentence_score(answer, [reference]).score)


SCORERS = {"exact_match": exact_match, "token_f1": token_f1, "rouge_l": rouge_l, "chrf": chrf}


def score_answer(answer: str, reference: str) -> AnswerScores:
    """Every score of one answer, rounded as stored.

    Raises:
        ScoreError: a scorer gave a non-finite number or one outside 0-100 (the metric is named).
    """
    values = {}
    for name in METRICS:
        value = 0.0 if not answer.strip() else SCORERS[name](answer, reference)
        if not math.isfinite(value) or not 0.0 <= value <= 100.0:
            raise ScoreError(f"{name} gave {value!r}, not a number of points in [0, 100]")
        values[name] = rounded(value)
    return AnswerScores(**values)
