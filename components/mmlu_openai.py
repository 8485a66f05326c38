"""The second MMLU backend: an OpenAI-compatible completions endpoint with logprobs (an external vLLM, ADR-002).

One request per batch of prompts asks for the first generated token's top log-probabilities; a letter
missing from that top list is scored with an ``echo`` request of ``prompt + " X"`` (the log-probability
of the continuation, as lm-eval-harness does). The server's own prefix caching shares the few-shot prefix.
A bearer token is read from ``OPENAI_API_KEY`` when set. Only the standard library is used.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

from components.mmlu_data import LETTERS

RETRIES = 2


class BackendError(RuntimeError):
    """The completions endpoint failed or answered without the log-probabilities we need; names the URL."""


def completions_url(endpoint: str) -> str:
    """``endpoint`` as a completions URL: ``http://host:8000``, ``.../v1`` and ``.../v1/completions`` all work."""
    url = endpoint.rstrip("/")
    if url.endswith("/completions"):
        return url
    return url + ("/completions" if url.endswith("/v1") else "/v1/completions")


def _request(url: str, payload: dict | None, timeout_s: float) -> dict:
    headers = {"Content-Type": "application/json"}
    if os.environ.get("OPENAI_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
    data = None if payload is None else json.dumps(payload).encode()
    last = ""
    for attempt in range(RETRIES + 1):
        request = urllib.request.Request(url, data=data, headers=headers, method="GET" if data is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            body = exc.read()[:500].decode(errors="replace")
            last = f"HTTP {exc.code}: {body}"
            if exc.code < 500 and exc.code != 429:
                break
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
            last = str(getattr(exc, "reason", exc))
        if attempt < RETRIES:
            time.sleep(2**attempt)  # back off before retrying a busy or restarting server
    raise BackendError(f"completions endpoint {url} failed: {last}")


def served_model(endpoint: str, timeout_s: float = 30) -> str:
    """The first model id the server lists at ``/v1/models`` (vLLM serves one).

    Raises:
        BackendError: the server does not answer or lists no model.
    """
    url = completions_url(endpoint).removesuffix("/completions") + "/models"
    models = _request(url, None, timeout_s).get("data") or []
    if not models:
        raise BackendError(f"{url} lists no model")
    return models[0]["id"]


def _letter_from_top(top: dict[str, float], letter: str) -> float | None:
    for token in (f" {letter}", letter):
        if token in top:
            return float(top[token])
    return None


def score_prompts(endpoint: str, prompts: list[str], *, model: str | None = None, batch_size: int = 16,
                  top_logprobs: int = 20, timeout_s: float = 300) -> list[list[float]]:
    """Log-probabilities of " A".." D" after each prompt, from an OpenAI-compatible completions server.

    Raises:
        BackendError: the endpoint fails, or an answer lacks logprobs (the message names the URL).
    """
    url = completions_url(endpoint)
    model = model or served_model(endpoint)
    scores: list[list[float | None]] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        reply = _request(url, {"model": model, "prompt": batch, "max_tokens": 1, "temperature": 0,
                               "logprobs": top_logprobs}, timeout_s)
        for choice in _choices(reply, len(batch), url):
            try:
                top = choice["logprobs"]["top_logprobs"][0]
            except (KeyError, IndexError, TypeError):
                raise BackendError(f"{url} answered without top_logprobs; is logprobs supported?") from None
            scores.append([_letter_from_top(top, letter) for letter in LETTERS])
    missing = [(i, j) for i, row in enumerate(scores) for j, value in enumerate(row) if value is None]
    for start in range(0, len(missing), batch_size):
        batch = missing[start:start + batch_size]
        texts = [prompts[i] + " " + LETTERS[j] for i, j in batch]
        reply = _request(url, {"model": model, "prompt": texts, "max_tokens": 1, "temperature": 0, "logprobs": 1,
                               "echo": True}, timeout_s)
        for (i, j), choice in zip(batch, _choices(reply, len(batch), url), strict=True):
            scores[i][j] = _continuation_logprob(choice, len(prompts[i]), len(prompts[i]) + 2, url)
    return scores  # type: ignore[return-value]


def _choices(reply: dict, count: int, url: str) -> list[dict[str, Any]]:
    choices = sorted(reply.get("choices") or [], key=lambda choice: choice.get("index", 0))
    if len(choices) != count:
        raise BackendError(f"{url} returned {len(choices)} choices for {count} prompts")
    return choices


def _continuation_logprob(choice: dict, start: int, end: int, url: str) -> float:
    """Sum of the echoed prompt tokens' log-probabilities whose text starts in ``[start, end)``."""
    try:
        logprobs = choice["logprobs"]
        pairs = zip(logprobs["text_offset"], logprobs["token_logprobs"], strict=True)
        values = [float(value) for offset, value in pairs if start <= offset < end and value is not None]
    except (KeyError, TypeError) as exc:
        raise BackendError(f"{url} answered an echo request without token logprobs ({exc})") from None
    if not values:
        raise BackendError(f"{url} echoed no token for the answer letter")
    return sum(values)
