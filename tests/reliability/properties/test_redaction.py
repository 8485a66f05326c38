"""Property-based tests (hypothesis) of the one redaction function (``configs.redaction``).

A named secret (a token of one line or several) never survives redaction of any text it is embedded in, raw,
``repr``-ed or with its newlines escaped; the user info of any URI never survives ``redact`` or ``public_uri``.
The literal cases, and every path a planted credential could take, are in ``secret_leaks/test_secrets.py``.
"""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from configs.redaction import public_uri, redact

_TOKEN_CHARS = st.text(alphabet=st.sampled_from(string.ascii_letters + string.digits + "-._~+/="), min_size=3,
                       max_size=40)


# Context around a planted secret: characters that no token piece holds, so a piece found after redaction can
# only be the secret itself, not an accident of the surrounding text.
_CONTEXT = st.text(alphabet=st.sampled_from(" ,;!?()[]{}<>'\"\n|#*"), max_size=30)


@settings(max_examples=300, deadline=None)
@given(st.lists(_TOKEN_CHARS, min_size=1, max_size=4), _CONTEXT, _CONTEXT, st.sampled_from(["raw", "repr", "escaped"]))
def test_property_a_named_secret_never_survives_redaction(lines, before, after, form):
    """Any token, of one line or several, is gone from any text it is embedded in, however it is shown."""
    token = "\n".join(lines)
    shown = {"raw": token, "repr": repr(token), "escaped": token.replace("\n", "\\n")}[form]
    result = redact(f"{before}{shown}{after}", [token])
    for piece in [token, *lines]:
        assert piece not in result


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["http", "https", "postgresql", "s3", "ftp"]),
       st.text(alphabet=st.characters(whitelist_categories=("Ll", "Lu", "Nd")), min_size=1, max_size=12),
       st.text(alphabet=st.characters(blacklist_characters="/?#@", blacklist_categories=("Cs", "Z", "Cc")),
               min_size=1, max_size=20),
       _CONTEXT)
def test_property_uri_user_info_never_survives(scheme, user, password, context):
    uri = f"{scheme}://{user}:{password}@host.example.com/path"
    assert f"{user}:{password}@" not in redact(f"{context} {uri} {context}")
    assert f"{user}:{password}@" not in public_uri(uri)
