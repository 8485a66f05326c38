"""An optional judge model: which of two answers to the same held-out prompt is better, asked in both orders.

With ``evaluation.judge_endpoint`` set (an OpenAI-compatible server, e.g. a vLLM serving a judge model), the
compare step asks it, for every row both models answered, to choose between the candidate's and the baseline's
answer: once with the candidate as answer A, once with it as answer B (judges favour a position). Each order
gives A, B or TIE; the row's outcome is the sum of the two votes (candidate +1, baseline -1, tie 0): a judge
that always picks "A" gives a tie, never a win. The wins are tested with a two-sided sign test
(:func:`components.gate.stats.mcnemar_exact_p`: the binomial test on the rows that were not ties).

The judge reports; it does not rule. Its API key comes from ``$JUDGE_API_KEY``, which the pipeline fills from the
Kubernetes Secret ``evaluation.judge_secret`` (key ``api_key``); it is never in the config, the IR, a log or an
error (:func:`components.evaluate.mmlu.openai_backend.request_json` masks it, even when a server echoes it).
A judge that fails (no answer in ``evaluation.judge_timeout_s``, a login page, a 500, text that is no verdict)
stops the comparison with a message naming the URL and the row: a half-judged comparison is never reported.
"""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

from components.evaluate.generate.results import Generations
from components.evaluate.mmlu.openai_backend import BackendError, completions_url, request_json, served_model
from configs.errors import StepError
from configs.redaction import public_uri

KEY_ENV = "JUDGE_API_KEY"
SECRET_KEY = "api_key"  # the key inside the Kubernetes Secret evaluation.judge_secret
MAX_VERDICT_CHARS = 200
PROMPT = """You are judging two answers to the same request. Decide which answer is better: more correct, more \
helpful and closer to the reference answer. Length alone is not a merit.

[Request]
{prompt}

[Reference answer]
{reference}

[Answer A]
{first}

[Answer B]
{second}

Reply with exactly one word: A if answer A is better, B if answer B is better, TIE if they are equally good."""
_VERDICT = re.compile(r"^\W*(A|B|TIE)\b", re.IGNORECASE)


class JudgeError(StepError, RuntimeError):
    """The judge failed or answered something that is no verdict; names the URL and the row, never the key."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class JudgeVerdict(_Record):
    """One row: the judge's choice with the candidate as A, then as B, and what the two add up to."""

    row: str
    candidate_first: Literal["A", "B", "TIE"]
    candidate_second: Literal["A", "B", "TIE"]
    outcome: Literal["candidate", "baseline", "tie"]


class JudgeComparison(_Record):
    """The judge's verdicts over the generated rows, and the sign test on the wins."""

    endpoint: str
    model: str
    rows: int
    candidate_wins: int
    baseline_wins: int
    ties: int
    sign_test_p: float
    verdicts: list[JudgeVerdict]


def chat_url(endpoint: str) -> str:
    """``endpoint`` as a chat completions URL (``http://host:8000``, ``.../v1``, ``.../v1/chat/completions``).

    Raises:
        JudgeError: credentials in the URL, or not http(s).
    """
    try:
        url = completions_url(endpoint)
    except BackendError as exc:
        raise JudgeError(str(exc).replace("$OPENAI_API_KEY", f"the Secret evaluation.judge_secret (${KEY_ENV})")) \
            from None
    return url if url.endswith("/chat/completions") else url.removesuffix("/completions") + "/chat/completions"


def parse_verdict(text: str, url: str, row: str) -> Literal["A", "B", "TIE"]:
    """The verdict a judge's reply starts with.

    Raises:
        JudgeError: the reply does not start with A, B or TIE (quoted, shortened).
    """
    match = _VERDICT.match(text.strip())
    if not match:
        shown = text.strip()[:MAX_VERDICT_CHARS]
        raise JudgeError(f"judge {public_uri(url)} answered {shown!r} for row {row}, not A, B or TIE; is "
                         "evaluation.judge_model an instruction-following model?")
    return match.group(1).upper()  # type: ignore[return-value]


def _ask(url: str, model: str, prompt: str, row: str, timeout_s: float) -> Literal["A", "B", "TIE"]:
    try:
        reply = request_json(url, {"model": model, "messages": [{"role": "user", "content": prompt}],
                                   "temperature": 0, "max_tokens": 8}, timeout_s, key_env=KEY_ENV, retries=1)
    except BackendError as exc:
        hint = "" if os.environ.get(KEY_ENV, "").strip() else (
            f" (${KEY_ENV} is empty: evaluation.judge_secret names the Secret whose api_key it reads)")
        raise JudgeError(f"judge failed on row {row}: {exc}{hint}") from None
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise JudgeError(f"judge {public_uri(url)} answered row {row} without choices[0].message.content: is it an "
                         "OpenAI-compatible chat completions server?") from None
    if not isinstance(content, str):
        raise JudgeError(f"judge {public_uri(url)} answered a {type(content).__name__} as the message for row {row}")
    return parse_verdict(content, url, row)


def outcome(candidate_first: str, candidate_second: str) -> Literal["candidate", "baseline", "tie"]:
    """The row's outcome from the two orders: the candidate was answer A first, answer B second."""
    votes = {"A": 1, "B": -1, "TIE": 0}[candidate_first] + {"A": -1, "B": 1, "TIE": 0}[candidate_second]
    return "candidate" if votes > 0 else "baseline" if votes < 0 else "tie"


def judge_pairs(endpoint: str, model: str, candidate: Generations, baseline: Generations, *,
                timeout_s: float) -> JudgeComparison:
    """Ask the judge about every row both models answered, in both orders; return the verdicts and the sign test.

    Raises:
        JudgeError: the judge failed, timed out or answered no verdict (URL and row named, the key masked).
    """
    from components.gate.stats import mcnemar_exact_p

    url = chat_url(endpoint)
    if not model:
        try:
            model = served_model(endpoint, timeout_s, key_env=KEY_ENV)
        except BackendError as exc:
            raise JudgeError(f"judge: {exc}") from None
    cand, base = candidate.by_row(), baseline.by_row()
    verdicts = []
    for row in sorted(cand.keys() & base.keys()):
        mine, theirs = cand[row], base[row]
        asked = [_ask(url, model, PROMPT.format(prompt=mine.prompt, reference=mine.reference, first=first,
                                                second=second), row, timeout_s)
                 for first, second in ((mine.answer, theirs.answer), (theirs.answer, mine.answer))]
        verdicts.append(JudgeVerdict(row=row, candidate_first=asked[0], candidate_second=asked[1],
                                     outcome=outcome(*asked)))
    wins = sum(verdict.outcome == "candidate" for verdict in verdicts)
    losses = sum(verdict.outcome == "baseline" for verdict in verdicts)
    return JudgeComparison(endpoint=public_uri(endpoint), model=model, rows=len(verdicts), candidate_wins=wins,
                           baseline_wins=losses, ties=len(verdicts) - wins - losses,
                           sign_test_p=mcnemar_exact_p(wins, losses), verdicts=verdicts)
