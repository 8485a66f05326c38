"""The one place secrets are masked before anything is printed, logged, raised or stored.

Every printer and logger that can show a URI, a token or a server's reply passes its text through
:func:`redact` (or :func:`public_uri` for one URI, :func:`describe_reply` for a reply body). What is masked:

- user info in any URI (``https://user:pass@host`` -> ``https://****@host``), and a bare ``user:pass@host``;
- ``Bearer``/``Basic``/``Token`` credentials (``Authorization: Bearer abc`` -> ``Authorization: Bearer ****``);
- the values of credential-like query or form parameters (``?token=``, ``&password=``, ``api_key=``, ...);
- every secret string the caller names (a token read from the environment), also as Python's ``repr`` writes it
  and line by line, so a token holding a newline is masked however it is shown.

It lives in ``configs`` (imported by the pipeline code and by every task) so that run-time code never imports
``pipelines/``. Only the standard library is used.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

MASK = "****"
# Query or form parameters whose value is a credential (matched case-insensitively, as whole names).
SECRET_PARAMETERS = ("token", "access_token", "id_token", "refresh_token", "auth", "password", "passwd", "pwd",
                     "secret", "client_secret", "api_key", "apikey", "key", "sig", "signature", "credential",
                     "credentials", "x-amz-signature", "x-amz-credential", "x-amz-security-token")
# A secret piece shorter than this is not searched for on its own (it would mask unrelated text).
_MIN_PIECE = 3
_URI_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s@]*@")
_BARE_USERINFO = re.compile(r"(?<![\w/@.:-])(?P<user>[\w.\-~%!$&*+,;=]+):[^\s/?#@]+@(?=[\w\[])")
# A credential after an auth scheme is at least 8 characters: "bearer token from $KFP_TOKEN" stays readable.
_SCHEME_AUTH = re.compile(r"\b(?P<scheme>Bearer|Basic|Token|Digest)(?P<gap>\s+)[A-Za-z0-9._~+/=\-:]{8,}",
                          re.IGNORECASE)
_PARAMETER = re.compile(
    r"(?P<name>(?<![A-Za-z0-9_.\-])(?:" + "|".join(re.escape(name) for name in SECRET_PARAMETERS) + r"))"
    r"(?P<sep>=|%3D)(?P<value>[^&;#\s\"'<>]+)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def _pieces(secret: str) -> list[str]:
    """The forms a secret can take in text: itself, its ``repr`` escaping, and each of its lines."""
    forms = {secret, repr(secret)[1:-1], secret.encode("unicode_escape").decode("ascii")}
    forms.update(part.strip() for part in re.split(r"[\r\n]+", secret))
    return sorted((form for form in forms if len(form) >= _MIN_PIECE), key=len, reverse=True)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with URI user info, bearer/basic credentials, credential query values and ``secrets`` masked.

    Args:
        text: Anything about to be printed, logged, raised or stored (an error, a URL, a server's reply).
        secrets: Secret values known to the caller (tokens from the environment); empty values are ignored.

    Returns:
        The text with every credential replaced by :data:`MASK`.
    """
    text = str(text)
    for secret in secrets:
        if secret:
            for piece in _pieces(str(secret)):
                text = text.replace(piece, MASK)
    text = _URI_USERINFO.sub(lambda match: f"{match['scheme']}{MASK}@", text)
    text = _BARE_USERINFO.sub(f"{MASK}@", text)
    text = _SCHEME_AUTH.sub(lambda match: f"{match['scheme']}{match['gap']}{MASK}", text)
    return _PARAMETER.sub(lambda match: f"{match['name']}{match['sep']}{MASK}", text)


def public_uri(uri: str) -> str:
    """``uri`` without user info and with credential query values masked, safe to print and to name in errors.

    ``https://user:secret@kfp/pipeline?token=x`` -> ``https://kfp/pipeline?token=****``. Text that does not
    parse as a URI is passed through :func:`redact`.
    """
    try:
        parts = urlsplit(uri)
        netloc = parts.netloc.rpartition("@")[2]
        return redact(urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)))
    except ValueError:  # e.g. an unbalanced '[' in the host
        return redact(uri)


def has_credentials(uri: str) -> bool:
    """Whether ``uri`` carries credentials: user info, or a credential-like query parameter."""
    try:
        parts = urlsplit(uri)
        userinfo = "@" in parts.netloc
    except ValueError:
        userinfo = "@" in uri
    return userinfo or bool(_BARE_USERINFO.search(uri)) or bool(_PARAMETER.search(uri))


def unsafe_token(value: str, allow_spaces: bool = False) -> str | None:
    """Why ``value`` cannot be sent in an HTTP header (a newline, a control character, inner whitespace), or None.

    A header value with a newline is refused by the HTTP library with an error that quotes the whole header,
    token included; callers check first and name the variable instead. ``allow_spaces`` is for a user name or
    password, which travel base64-encoded.
    """
    if _CONTROL.search(value):
        return "it contains a newline or another control character"
    if not allow_spaces and any(char.isspace() for char in value.strip()):
        return "it contains whitespace"
    return None


def secrets_from_env(names: Iterable[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """The non-empty values of the environment variables ``names`` (credentials to mask in output)."""
    environ = os.environ if environ is None else environ
    return [value for name in names if (value := environ.get(name, "").strip())]


def describe_reply(body: bytes | str | None, secrets: Iterable[str | None] = (), limit: int = 300) -> str:
    """A short, printable account of what a server answered: an HTML page is named as such (with its title),
    anything else is cut to ``limit`` characters; credentials are masked either way.

    A login page or a proxy's error page is HTML; quoting it whole would flood the terminal and could echo a
    token the server reflected back.
    """
    if body is None:
        return "an empty reply"
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else str(body)
    stripped = text.lstrip()
    if not stripped:
        return "an empty reply"
    if looks_like_html(stripped):
        title = re.search(r"<title[^>]*>(.*?)</title>", stripped, re.IGNORECASE | re.DOTALL)
        name = " ".join(title.group(1).split())[:80] if title else ""
        return "an HTML page" + (f" titled {redact(name, secrets)!r}" if name else "")
    flat = " ".join(stripped.split())
    return redact(flat[:limit] + ("..." if len(flat) > limit else ""), secrets)


def looks_like_html(text: str) -> bool:
    """Whether a reply body is an HTML document rather than the JSON an API answers."""
    head = text.lstrip()[:200].lower()
    return head.startswith(("<!doctype html", "<html", "<head", "<body", "<meta", "<title", "<!--", "<script"))


__all__ = ["MASK", "SECRET_PARAMETERS", "describe_reply", "has_credentials", "looks_like_html", "public_uri",
           "redact", "secrets_from_env", "unsafe_token"]
