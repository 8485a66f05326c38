"""The second MMLU backend: an OpenAI-compatible completions endpoint with logprobs.

For example the vLLM that serves a published model.

One request per batch of prompts asks for the first generated token's top log-probabilities; a letter
missing from that top list is scored with an ``echo`` request of ``prompt + " X"`` (the log-probability
of the continuation, as lm-eval-harness does). The server's own prefix caching shares the few-shot prefix.
A bearer token is read from ``OPENAI_API_KEY`` when set; credentials inside the endpoint URL are refused (they
would be printed with every error), and every error names the URL and quotes the server through
:func:`configs.redaction.redact`. Only the standard library is used.

A reply is read through :mod:`configs.safe_json` (at most :data:`MAX_REPLY_BYTES`), and every
log-probability must be a finite number: a served model with broken weights answers ``NaN``, which would
otherwise score as a guess.
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.error
import urllib.request
from typing import Any

from components.evaluate.mmlu.data import LETTERS
from configs.errors import StepError
from configs.redaction import describe_reply, has_credentials, public_uri, redact, secrets_from_env, unsafe_token
from configs.safe_json import DocumentError, JsonScanner, parse_json

RETRIES = 2
API_KEY_ENV = "OPENAI_API_KEY"
MAX_REPLY_BYTES = 64 << 20  # a batch of echoed 4k-token prompts is a few MB
_REPLY = JsonScanner(allow_nan=True)  # NaN is read, then refused with the letter and prompt it belongs to


class BackendError(StepError, RuntimeError):
    """The completions endpoint failed or answered without the log-probabilities we need; names the URL."""


def completions_url(endpoint: str) -> str:
    """``endpoint`` as a completions URL: ``http://host:8000``, ``.../v1`` and ``.../v1/completions`` all work.

    Raises:
        BackendError: the endpoint carries credentials (user info or a token parameter) or is not http(s).
    """
    if has_credentials(endpoint):
        raise BackendError(f"endpoint {public_uri(endpoint)}: credentials in the URL are not sent and would be "
                           f"printed; put the API key in ${API_KEY_ENV} and pass the bare URL")
    if not endpoint.startswith(("http://", "https://")):
        raise BackendError(f"endpoint {public_uri(endpoint)!r} must start with http:// or https://")
    url = endpoint.rstrip("/")
    if url.endswith("/completions"):
        return url
    return url + ("/completions" if url.endswith("/v1") else "/v1/completions")


def request_json(url: str, payload: dict | None, timeout_s: float, *, key_env: str = API_KEY_ENV,
                 retries: int = RETRIES) -> dict:
    """GET (``payload`` None) or POST JSON to an OpenAI-compatible ``url``, with the bearer key from ``$key_env``.

    Server errors (5xx, 429) and network failures are retried ``retries`` times with a back-off; the key never
    appears in an error, even when the server echoes it.

    Raises:
        BackendError: the request failed, or the reply is not a JSON object (the URL named, the server quoted).
    """
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(key_env, "").strip()
    secrets = secrets_from_env([key_env])
    if key:
        reason = unsafe_token(key)
        if reason:  # urllib's own error would quote the whole header, key included
            raise BackendError(f"${key_env} cannot be sent as a bearer token: {reason}")
        headers["Authorization"] = f"Bearer {key}"
    data = None if payload is None else json.dumps(payload).encode()
    last = ""
    for attempt in range(retries + 1):
        request = urllib.request.Request(url, data=data, headers=headers, method="GET" if data is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as reply:
                body = reply.read(MAX_REPLY_BYTES + 1)
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {describe_reply(exc.read(4096), secrets)}"
            if exc.code < 500 and exc.code != 429:
                break
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        else:
            return _parse_reply(body, url, secrets)
        if attempt < retries:
            time.sleep(2**attempt)  # back off before retrying a busy or restarting server
    raise BackendError(redact(f"endpoint {public_uri(url)} failed: {last}", secrets))


def _parse_reply(body: bytes, url: str, secrets: list[str]) -> dict:
    """A reply as a JSON object (no retry: a server that answers garbage answers it again).

    Raises:
        BackendError: too long, not JSON (an HTML page, say), or not an object.
    """
    if len(body) > MAX_REPLY_BYTES:
        raise BackendError(f"endpoint {public_uri(url)} answered more than {MAX_REPLY_BYTES:,} bytes")
    try:
        data = parse_json(body, "the reply", max_bytes=MAX_REPLY_BYTES, scanner=_REPLY)
    except DocumentError as exc:  # a login page or a proxy's page, not the server: no retry
        raise BackendError(f"endpoint {public_uri(url)} did not answer JSON ({exc.reason}): is it an "
                           f"OpenAI-compatible server? It answered {describe_reply(body, secrets)} instead of JSON") \
            from None
    if not isinstance(data, dict):
        raise BackendError(f"endpoint {public_uri(url)} answered a JSON {type(data).__name__}, "
                           "not an object")
    return data


def served_model(endpoint: str, timeout_s: float = 30, *, key_env: str = API_KEY_ENV) -> str:
    """The first model id the server lists at ``/v1/models`` (vLLM serves one).

    Raises:
        BackendError: the server does not answer or lists no model.
    """
    url = completions_url(endpoint).removesuffix("/completions") + "/models"
    models = request_json(url, None, timeout_s, key_env=key_env).get("data") or []
    if not isinstance(models, list) or not models or not isinstance(models[0], dict) \
            or not isinstance(models[0].get("id"), str):
        raise BackendError(f"{url} lists no model")
    return models[0]["id"]


def _logprob(value: Any, url: str, what: str) -> float:
    """A log-probability from a reply, checked to be a finite number.

    Raises:
        BackendError: not a number, NaN or infinite (the message names ``what``: the letter and prompt).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BackendError(f"{url} answered {value!r} as the log-probability of {what}; expected a number")
    if not math.isfinite(value):
        raise BackendError(f"{url} answered the log-probability {value} for {what}: the served model's weights "
                           "hold NaN or inf (or the server is broken); nothing was scored")
    return float(value)


def _letter_from_top(top: Any, letter: str, url: str, prompt: int) -> float | None:
    if not isinstance(top, dict):
        raise BackendError(f"{url} answered top_logprobs that are not a token -> log-probability object")
    for token in (f" {letter}", letter):
        if token in top:
            return _logprob(top[token], url, f"the answer {letter!r} of prompt {prompt}")
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
        reply = request_json(url, {"model": model, "prompt": batch, "max_tokens": 1, "temperature": 0,
                               "logprobs": top_logprobs}, timeout_s)
        for choice in _choices(reply, len(batch), url):
            try:
                top = choice["logprobs"]["top_logprobs"][0]
            except (KeyError, IndexError, TypeError):
                raise BackendError(f"{url} answered without top_logprobs; is logprobs supported?") from None
            scores.append([_letter_from_top(top, letter, url, len(scores)) for letter in LETTERS])
    missing = [(i, j) for i, row in enumerate(scores) for j, value in enumerate(row) if value is None]
    for start in range(0, len(missing), batch_size):
        batch = missing[start:start + batch_size]
        texts = [prompts[i] + " " + LETTERS[j] for i, j in batch]
        reply = request_json(url, {"model": model, "prompt": texts, "max_tokens": 1, "temperature": 0, "logprobs": 1,
                               "echo": True}, timeout_s)
        for (i, j), choice in zip(batch, _choices(reply, len(batch), url), strict=True):
            scores[i][j] = _continuation_logprob(choice, len(prompts[i]), len(prompts[i]) + 2, url)
    return scores  # type: ignore[return-value]


def _choices(reply: dict, count: int, url: str) -> list[dict[str, Any]]:
    choices = reply.get("choices") or []
    if not isinstance(choices, list) or not all(isinstance(choice, dict) for choice in choices) \
            or not all(isinstance(choice.get("index", 0), int) for choice in choices):
        raise BackendError(f"{url} answered 'choices' that are not a list of completion objects")
    choices = sorted(choices, key=lambda choice: choice.get("index", 0))
    if len(choices) != count:
        raise BackendError(f"{url} returned {len(choices)} choices for {count} prompts")
    return choices


def _continuation_logprob(choice: dict, start: int, end: int, url: str) -> float:
    """Sum of the echoed prompt tokens' log-probabilities whose text starts in ``[start, end)``."""
    try:
        logprobs = choice["logprobs"]
        pairs = list(zip(logprobs["text_offset"], logprobs["token_logprobs"], strict=True))
        values = [_logprob(value, url, f"the echoed answer at offset {offset}") for offset, value in pairs
                  if isinstance(offset, int) and start <= offset < end and value is not None]
    except (KeyError, TypeError, ValueError) as exc:
        raise BackendError(f"{url} answered an echo request without token logprobs ({exc})") from None
    if not values:
        raise BackendError(f"{url} echoed no token for the answer letter")
    return sum(values)
