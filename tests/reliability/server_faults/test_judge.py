"""The optional judge (components/gate/judge.py) against an OpenAI-compatible server on loopback.

No judge model can run here, so :class:`FakeJudge` plays one: a real HTTP server on 127.0.0.1 that reads each
chat request, finds answers A and B in the prompt and prefers the one that says "good" (or always "A": a judge
with position bias), or misbehaves: a login page, a 500 that echoes the credential, text that is no verdict, or
no answer at all. Everything on our side is the real code, through the compare step's ``compare_files``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from builders import (
    base_losses,
    flags_first_right,
    generations_results,
    generations_text,
    mmlu_results,
    task_results,
    write_results,
)

from components.gate.compare import ComparisonError, compare_files
from components.gate.judge import KEY_ENV, judge_pairs, outcome
from components.gate.report import render_report
from components.gate.stats import mcnemar_exact_p
from configs.loading import config_from_dict

KEY = "sk-judge-3c9d1e-planted-do-not-print"
LOGIN = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body><form>password</form></body></html>"
ROWS = 10
BOUND_S = 10.0
_ANSWER = re.compile(r"\[Answer A\]\n(.*)\n\n\[Answer B\]\n(.*)\n\nReply with", re.DOTALL)


class FakeJudge:
    """A loopback OpenAI-compatible chat server; ``mode`` picks how it answers (see the module docstring)."""

    def __init__(self, mode: str = "fair"):
        self.mode, self.seen, self.keys = mode, [], []
        self.released = threading.Event()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # /v1/models: the judge's model name when none is configured
                judge.keys.append(self.headers.get("Authorization"))
                self._reply(200, json.dumps({"data": [{"id": "judge-7b"}]}).encode())

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                judge.keys.append(self.headers.get("Authorization"))
                first, second = _ANSWER.search(request["messages"][0]["content"]).groups()
                judge.seen.append((request["model"], first, second))
                if judge.mode == "hang":
                    judge.released.wait()
                    self.close_connection = True
                    return
                if judge.mode == "login":
                    return self._reply(200, LOGIN, "text/html")
                if judge.mode == "500":
                    return self._reply(500, b'{"message": "overloaded, your key was ' +
                                       (self.headers.get("Authorization") or "").encode() + b'"}')
                verdict = {"always-a": "A", "garbage": "Both answers have merit, it depends."}.get(judge.mode)
                if verdict is None:
                    good = ["good" in first, "good" in second]
                    verdict = "A" if good == [True, False] else "B" if good == [False, True] else "TIE"
                self._reply(200, json.dumps({"choices": [{"index": 0, "message": {
                    "role": "assistant", "content": f" {verdict}\n"}}]}).encode())

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def __enter__(self) -> FakeJudge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(autouse=True)
def judge_key(monkeypatch):
    """The planted key in $JUDGE_API_KEY (as the Secret puts it there); no back-off sleeps between retries."""
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setattr("components.evaluate.mmlu.openai_backend.time.sleep", lambda _s: None)


def answers():
    """The candidate says "good" on rows 0-5, the baseline on row 6; neither on the other three."""
    chrf = [40.0] * ROWS
    return (generations_results(chrf, model="cand", answers={i: f"good answer {i}" for i in range(6)}),
            generations_results(chrf, model="base", answers={6: "good answer 6"}))


def test_each_pair_is_asked_in_both_orders_and_the_wins_get_a_sign_test():
    candidate, baseline = answers()
    with FakeJudge() as judge:
        result = judge_pairs(judge.url, "", candidate, baseline, timeout_s=5)
    assert (result.model, result.rows) == ("judge-7b", ROWS)  # no model configured: the one the server lists
    assert (result.candidate_wins, result.baseline_wins, result.ties) == (6, 1, 3)
    assert result.sign_test_p == pytest.approx(mcnemar_exact_p(6, 1))
    assert len(judge.seen) == 2 * ROWS and all(model == "judge-7b" for model, _, _ in judge.seen)
    for row in range(ROWS):  # every row once with the candidate as A, once as B
        mine, theirs = candidate.answers[row].answer, baseline.answers[row].answer
        orders = [(first, second) for _, first, second in judge.seen if mine in (first, second)]
        assert sorted(orders) == sorted([(mine, theirs), (theirs, mine)])
    assert set(judge.keys) == {f"Bearer {KEY}"}
    assert [(v.candidate_first, v.candidate_second) for v in result.verdicts if v.outcome == "candidate"] == [
        ("A", "B")] * 6


def test_a_judge_that_always_picks_the_first_answer_gives_ties_not_wins():
    with FakeJudge("always-a") as judge:
        result = judge_pairs(judge.url, "judge-7b", *answers(), timeout_s=5)
    assert (result.candidate_wins, result.baseline_wins, result.ties) == (0, 0, ROWS)
    assert result.sign_test_p == 1.0
    assert [outcome(*pair) for pair in (("A", "A"), ("A", "TIE"), ("TIE", "A"), ("B", "A"))] == [
        "tie", "candidate", "baseline", "baseline"]


@pytest.mark.parametrize(("mode", "words"), [
    ("login", "did not answer JSON"),
    ("500", "HTTP 500"),
    ("garbage", "answered 'Both answers have merit, it depends.' for row alpaca_sample@test/"),
    ("hang", "timed out"),
])
def test_a_failing_judge_stops_the_comparison_cleanly_in_bounded_time_and_never_shows_the_key(mode, words,
                                                                                             tmp_path):
    cfg = config_from_dict({}, "judge", ["gate.bootstrap_samples=200", "evaluation.judge_model=judge-7b",
                                         "evaluation.judge_timeout_s=1"])
    files = _files(tmp_path)
    with FakeJudge(mode) as judge:
        cfg.evaluation.judge_endpoint = judge.url
        started = time.monotonic()
        with pytest.raises(ComparisonError) as info:
            compare_files(*files[:4], cfg, baseline_version="", generations=files[4:])
        elapsed = time.monotonic() - started
    message = str(info.value)
    assert words in message and judge.url in message and "row alpaca_sample@test/" in message, message
    assert KEY not in message and "nothing was written" in message
    assert "<html" not in message.lower()
    assert elapsed < BOUND_S
    if mode == "500":
        assert "Bearer ****" in message  # the server echoed the key; it is masked
    if mode == "login":
        assert "HTML page titled 'Sign in'" in message


def test_through_compare_the_verdicts_are_reported_and_the_key_is_stored_nowhere(tmp_path):
    cfg = config_from_dict({}, "judge", ["gate.bootstrap_samples=200"])
    files = _files(tmp_path)
    with FakeJudge() as judge:
        cfg.evaluation.judge_endpoint = judge.url
        comparison = compare_files(*files[:4], cfg, baseline_version="", generations=files[4:])
    assert comparison.judge.candidate_wins == 6 and comparison.judge.endpoint == judge.url
    report = render_report(comparison)
    assert (f"Judge judge-7b on {ROWS} rows, each asked in both orders: the candidate wins 6, the baseline 1, 3 ties; "
            f"two-sided sign test p={mcnemar_exact_p(6, 1):.3g}.") in report
    for text in (report, comparison.model_dump_json(), cfg.model_dump_json()):
        assert KEY not in text


def test_credentials_in_the_endpoint_are_refused_at_load():
    from configs.schema import ConfigError

    with pytest.raises(ConfigError, match="evaluation.judge_endpoint: .*must not carry credentials.*judge_secret") \
            as info:
        config_from_dict({}, "judge", [f"evaluation.judge_endpoint=http://user:{KEY}@judge:8000/v1"])
    assert KEY not in str(info.value)


def _files(tmp_path):
    """Results files of two models (equal but for their answers), and their generations.jsonl."""
    flags = flags_first_right({}, per_subject=4, default=2)
    paths = []
    for role, generated in zip(("candidate", "baseline"), answers(), strict=True):
        paths += write_results(tmp_path / role, mmlu_results(flags, model=role),
                               task_results(base_losses(), model=role))
        (tmp_path / role / "generations.jsonl").write_text(generations_text(generated), encoding="utf-8")
    return (*paths, tmp_path / "candidate" / "generations.jsonl", tmp_path / "baseline" / "generations.jsonl")
