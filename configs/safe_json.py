"""One reader for untrusted JSON and YAML: bounded size, depth and integer length; no NaN, no duplicate keys.

Everything the pipeline reads from a user or from the shared volume goes through here: datasets and
``dataset_info.json``, adapter configs and safetensors headers, results files, configs. Python's own
parsers fail on hostile input in ways their callers never catch: deep nesting raises ``RecursionError``,
a 5,000-digit integer raises a bare ``ValueError`` (the interpreter's 4,300-digit limit), a YAML alias
bomb expands exponentially once the data is copied, and JSON's ``NaN``, duplicate keys and lone surrogate
escapes are accepted silently although the next reader (Arrow, a strict JSON parser) refuses them or
keeps only one of the values.

Every refusal here is a :class:`DocumentError` (a ``ValueError``) whose message names the source and,
where known, the line and column. The limits (:data:`MAX_BYTES`, :data:`MAX_DEPTH`,
:data:`MAX_INT_DIGITS`, :data:`MAX_YAML_NODES`) are far above anything a real file of ours holds.

    data = read_json(path, "adapter config")            # a file
    data = parse_json(text, "the config parameter")     # text in hand
    value, end = JsonScanner().scan(text, pos)          # one value at a position (the dataset reader's hot path)
"""

from __future__ import annotations

import json
import json.scanner
import math
import re
from pathlib import Path
from typing import Any

import yaml

from configs.errors import StepError

MAX_BYTES = 64 << 20  # one document; results and manifests are a few MB at most
MAX_YAML_BYTES = 1 << 20  # configs are a few KB, and the YAML parser is pure Python (about 1 MB/s)
MAX_DEPTH = 64  # our deepest files (results, configs, adapter configs) nest 4 levels
MAX_INT_DIGITS = 100  # int64 has 19 digits; the interpreter itself stops at 4,300
MAX_YAML_NODES = 100_000  # nodes after alias expansion: an alias bomb stops here, not in memory
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # \ud800-\udfff: only valid as a high + low pair
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_WHITESPACE = re.compile(r"[ \t\n\r]*")


class DocumentError(StepError, ValueError):
    """JSON or YAML text that cannot be read safely; the message names the source and where in it.

    ``reason`` is the message without the source's name, ``line`` the 1-based line when known.
    """

    def __init__(self, message: str, *, reason: str | None = None, line: int | None = None):
        super().__init__(message)
        self.reason = reason or message
        self.line = line


def _position(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    column = pos - text.rfind("\n", 0, pos)
    return f"line {line}, column {column}"


class JsonScanner:
    """JSON values decoded by the C scanner with the limits enforced (one instance serves any number of calls).

    Args:
        max_depth: Deepest nesting of arrays and objects allowed.
        max_int_digits: Longest integer literal allowed (digits).
        allow_nan: Accept ``NaN``, ``Infinity`` and numbers too large for a float (which read as infinity).
        allow_duplicate_keys: Accept an object that names a key twice (JSON keeps the last value).
        allow_lone_surrogates: Accept ``\\ud800``-style escapes that are no Unicode character.
    """

    def __init__(self, *, max_depth: int = MAX_DEPTH, max_int_digits: int = MAX_INT_DIGITS, allow_nan: bool = False,
                 allow_duplicate_keys: bool = False, allow_lone_surrogates: bool = False):
        self.max_depth = max_depth
        self.allow_lone_surrogates = allow_lone_surrogates
        decoder = json.JSONDecoder(
            object_pairs_hook=None if allow_duplicate_keys else _object_without_duplicates,
            parse_int=_int_parser(max_int_digits),
            parse_float=float if allow_nan else _finite_float,
            parse_constant=float if allow_nan else _refuse_constant,
        )
        self._scan = json.scanner.make_scanner(decoder)

    def scan(self, text: str, pos: int = 0) -> tuple[Any, int]:
        """Decode the JSON value that starts at ``text[pos]``; return it and the index after it.

        Raises:
            json.JSONDecodeError: the text is not JSON there (it may only be cut short: callers reading
                in chunks try again with more text).
            DocumentError: the value breaks a limit or a rule (too deep, NaN, a duplicate key...); the
                message says what and where, without the source's name.
        """
        try:
            value, end = self._scan(text, pos)
        except StopIteration as exc:
            raise json.JSONDecodeError("Expecting value", text, exc.value) from None
        except RecursionError:
            raise DocumentError(f"nested deeper than {self.max_depth} levels") from None
        except _Refused as exc:
            raise DocumentError(str(exc)) from None
        if text.count("[", pos, end) + text.count("{", pos, end) > self.max_depth and _depth(value) > self.max_depth:
            raise DocumentError(f"nested deeper than {self.max_depth} levels")
        if not self.allow_lone_surrogates and text.find("\\", pos, end) >= 0 \
                and _SURROGATE_ESCAPE.search(text, pos, end) is not None:
            bad = _lone_surrogate(value)
            if bad is not None:
                raise DocumentError(f"the string {bad!r} holds a lone surrogate escape, which is no Unicode "
                                    "character (UTF-8 readers such as Arrow refuse it)")
        return value, end

    def decode(self, text: str) -> Any:
        """The one JSON value ``text`` holds (whitespace around it allowed), as ``json.loads`` reads it.

        Raises:
            json.JSONDecodeError: not JSON, or text after the value.
            DocumentError: see :meth:`scan`.
        """
        start = _WHITESPACE.match(text, 0).end()
        value, end = self.scan(text, start)
        end = _WHITESPACE.match(text, end).end()
        if end != len(text):
            raise json.JSONDecodeError("Extra data", text, end)
        return value


class _Refused(Exception):
    """Raised inside the scanner's hooks; not a ValueError, so json's own handlers never swallow it."""


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise _Refused(f"the key {twice!r} appears twice in one object (JSON readers keep only one of the values)")
    return value


def _int_parser(max_digits: int) -> Any:
    def parse_int(text: str) -> int:
        if len(text.lstrip("-")) > max_digits:
            raise _Refused(f"an integer of {len(text.lstrip('-'))} digits (at most {max_digits} are read)")
        return int(text)

    return parse_int


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Refused(f"the number {text[:40]} is too large for a 64-bit float (it would read as infinity)")
    return value


def _refuse_constant(name: str) -> float:
    raise _Refused(f"{name} is not a number JSON allows; use null or a string")


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _lone_surrogate(value: Any) -> str | None:
    """The first string (key or value) holding a lone surrogate, else None (a valid pair decodes to one character)."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if _LONE_SURROGATE.search(node):
                return node if len(node) <= 40 else node[:37] + "..."
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


_DEFAULT_SCANNER = JsonScanner()


def _text_of(data: str | bytes, source: str, max_bytes: int) -> str:
    if len(data) > max_bytes:
        reason = f"is {len(data):,} bytes, more than the {max_bytes:,} allowed"
        raise DocumentError(f"{source} {reason}", reason=reason)
    if isinstance(data, bytes):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            reason = f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
            raise DocumentError(f"{source} {reason}", reason=reason) from None
    return data


def parse_json(data: str | bytes, source: str, *, max_bytes: int = MAX_BYTES,
               scanner: JsonScanner | None = None) -> Any:
    """Parse one JSON document with the limits of ``scanner`` (default: :class:`JsonScanner` defaults).

    Args:
        data: The document (bytes are decoded as UTF-8).
        source: Names the document in messages (a file path, "the config parameter").
        max_bytes: Longest document allowed.
        scanner: Limits and rules; the default refuses NaN, duplicate keys and lone surrogates.

    Raises:
        DocumentError: too long, not UTF-8, not JSON, or breaks a limit; the message names ``source`` and
            the line and column.
    """
    text = _text_of(data, source, max_bytes)
    scanner = scanner or _DEFAULT_SCANNER
    try:
        return scanner.decode(text)
    except json.JSONDecodeError as exc:
        reason = f"invalid JSON: {exc.msg} ({_position(text, exc.pos)})"
        raise DocumentError(f"{source}: {reason}", reason=reason, line=exc.lineno) from None
    except DocumentError as exc:
        raise DocumentError(f"{source}: {exc}", reason=str(exc)) from None


def read_bytes(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of ``path``, refused when longer than ``max_bytes`` (checked before and while reading).

    Raises:
        FileNotFoundError: ``path`` does not exist (callers word this one themselves).
        DocumentError: ``path`` is too long, a directory, or unreadable (a name too long for the filesystem,
            permissions); the message names the path.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        reason = f"cannot be read: {exc.strerror or exc}"
        raise DocumentError(f"{_short(path)} {reason}", reason=reason) from None
    if len(data) > max_bytes:
        reason = f"is larger than the {max_bytes:,} bytes allowed"
        raise DocumentError(f"{_short(path)} {reason}", reason=reason)
    return data


def _short(path: Path) -> str:
    """A path for a message: over-long names are shortened (a 100,000-character name would flood the log)."""
    text = str(path)
    return text if len(text) <= 300 else f"{text[:150]}...{text[-100:]} ({len(text)} characters)"


def read_json(path: str | Path, source: str | None = None, *, max_bytes: int = MAX_BYTES,
              scanner: JsonScanner | None = None) -> Any:
    """Read and parse a JSON file safely (see :func:`parse_json`); ``source`` defaults to the path.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DocumentError: unreadable, too long, not UTF-8, not JSON, or breaks a limit.
    """
    data = read_bytes(path, max_bytes)
    return parse_json(data, source or _short(Path(path)), max_bytes=max_bytes, scanner=scanner)


# --- YAML -------------------------------------------------------------------------------------------------------


class _LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with depth, size-after-aliases and integer-length limits, and no duplicate keys."""

    max_depth = MAX_DEPTH
    max_nodes = MAX_YAML_NODES
    max_int_digits = MAX_INT_DIGITS

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)  # the anchored node again: counts again once expanded
        else:
            self._depth += 1
            if self._depth > self.max_depth:
                mark = self.peek_event().start_mark
                raise DocumentError(f"nested deeper than {self.max_depth} levels (line {mark.line + 1})")
            try:
                node = super().compose_node(parent, index)
            finally:
                self._depth -= 1
        size = self._sizes.get(id(node))
        if size is None:
            size = 1
            if isinstance(node, yaml.SequenceNode):
                size += sum(self._sizes.get(id(child), 1) for child in node.value)
            elif isinstance(node, yaml.MappingNode):
                size += sum(self._sizes.get(id(key), 1) + self._sizes.get(id(value), 1) for key, value in node.value)
            self._sizes[id(node)] = size
        if size > self.max_nodes:
            raise DocumentError(f"holds more than {self.max_nodes:,} values once its aliases are expanded "
                                f"(line {node.start_mark.line + 1})")
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # "<<: *base" merges another mapping; its keys may be overridden here
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise DocumentError(f"the key {key!r} appears twice in one mapping (line "
                                            f"{key_node.start_mark.line + 1}; YAML would keep only the last value)")
                    seen[key] = True
                except TypeError:
                    pass  # an unhashable key: the base class reports it
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Any) -> int:
        digits = sum(char.isalnum() for char in str(node.value))
        if digits > self.max_int_digits:
            raise DocumentError(f"an integer of {digits} digits at line {node.start_mark.line + 1} (at most "
                                f"{self.max_int_digits} are read)")
        return super().construct_yaml_int(node)


_LimitedLoader.add_constructor("tag:yaml.org,2002:int", _LimitedLoader.construct_yaml_int)


def parse_yaml(data: str | bytes, source: str, *, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Parse one YAML document with PyYAML's safe loader and the limits (JSON is YAML too).

    Raises:
        DocumentError: too long, not UTF-8, not YAML (the line and column named), nested too deep, too
            many values after alias expansion, an over-long integer or a duplicate key; the message names
            ``source``.
    """
    text = _text_of(data, source, max_bytes)
    loader = None
    try:
        loader = _LimitedLoader(text)  # its reader refuses non-printable characters right away
        return loader.get_single_data()
    except DocumentError as exc:
        reason = f"not valid YAML: {exc}"
        raise DocumentError(f"{source} is {reason}", reason=reason) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = f"not valid YAML{where}: {getattr(exc, 'problem', None) or str(exc).splitlines()[0]}"
        raise DocumentError(f"{source} is {reason}", reason=reason, line=mark.line + 1 if mark else None) from None
    except RecursionError:
        raise DocumentError(f"{source} is not valid YAML: nested too deeply", reason="not valid YAML: nested too "
                            "deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: str | Path, source: str | None = None, *, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Read and parse a YAML file safely (see :func:`parse_yaml`); ``source`` defaults to the path.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DocumentError: unreadable, too long, not UTF-8, not YAML, or breaks a limit.
    """
    data = read_bytes(path, max_bytes)
    return parse_yaml(data, source or _short(Path(path)), max_bytes=max_bytes)
