"""Untrusted text inside Markdown: the registry page, the comparison report and the Kubeflow UI show it as written.

A run-form value (the base model's path, a run id) or an error message put into Markdown as is can end a code span
with a backtick and then render a link, an image or HTML on the page. :func:`code` makes one code span whatever the
text holds; :func:`text` escapes every character CommonMark could read as markup.
"""

from __future__ import annotations

import re

# The characters that can start or end markup in CommonMark and GitHub's dialect (emphasis, code, links and images,
# HTML and entities, headings, lists, tables, strikethrough); a backslash makes each one literal. Colons, commas and
# slashes stay as they are, so that messages still read well in the Markdown source.
_MARKUP = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>&~^=])")
_BACKTICKS = re.compile(r"`+")
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029\x85]+")


def text(value: str) -> str:
    """``value`` as literal Markdown text: each character that could start markup backslash-escaped (no emphasis,
    link, image, HTML, entity, table cell, heading or list), line breaks made spaces."""
    return _MARKUP.sub(r"\\\1", _LINE_BREAKS.sub(" ", value))


def code(value: str) -> str:
    """``value`` as one inline code span: fenced by one backtick more than its longest run of backticks, and padded
    with a space on each side when it starts or ends with a backtick or a space (CommonMark strips one such pair)."""
    value = _LINE_BREAKS.sub(" ", value)
    fence = "`" * (max((len(run) for run in _BACKTICKS.findall(value)), default=0) + 1)
    padded = value[:1] in ("`", " ") or value[-1:] in ("`", " ")
    return f"{fence} {value} {fence}" if padded else f"{fence}{value}{fence}"


__all__ = ["code", "text"]
