"""Stream the rows of one dataset file, hashing its bytes on the way, in constant memory.

Each reader yields ``(row, text, value, error)`` tuples: ``row`` is the 1-based line (JSON Lines,
CSV) or the 1-based element index (JSON array, Parquet); ``text`` is the row's raw text (the key for
exact-duplicate detection); ``value`` is the parsed row; ``error`` is a message when the row could
not be read (then ``value`` is None). ``row`` 0 marks a problem of the whole file. Every reader feeds
every byte of the file to ``digest``, also after an error that stops the parse, so the content hash
is always the hash of the whole file.

JSON arrays are read with :meth:`json.JSONDecoder.raw_decode` over a sliding text buffer rather than
``json.load`` (which holds the whole file) or ``ijson`` (a new dependency, and its pure-Python
backend is slower than the C scanner that ``raw_decode`` uses). Memory stays at one read chunk plus
the largest single row, and a row may not exceed :data:`MAX_ROW_BYTES`: a longer JSON line is reported
and skipped without holding it.

Rows are decoded with the limits of :class:`configs.safe_json.JsonScanner`, which refuses what the
``datasets`` JSON loader (Arrow) refuses or silently changes: duplicate keys in an object, lone
surrogate escapes, nesting deeper than :data:`configs.safe_json.MAX_DEPTH` levels and integers over
:data:`configs.safe_json.MAX_INT_DIGITS` digits. ``NaN`` and ``Infinity`` are read, for the
validator to name their field. A UTF-8 byte-order mark is skipped before JSON
Lines and CSV (the loader reads both), and refused before a JSON array (the loader fails on it).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from configs.safe_json import DocumentError, JsonScanner

CHUNK_BYTES = 1 << 20
# 4x the characters of the largest cutoff_len (2^20 tokens at ~4 characters each): a longer row is no example.
MAX_ROW_BYTES = 16 << 20
# The file types LLaMA-Factory loads for supervised data (its FILEEXT2TYPE minus arrow and txt).
READERS_BY_EXTENSION = {"json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet"}
UTF8_BOM = b"\xef\xbb\xbf"

Row = tuple[int, str | None, Any, str | None]

_WHITESPACE = re.compile(r"[ \t\n\r]*")
# NaN and Infinity pass here so that the validator names their field (components.data.column_types).
_ROWS = JsonScanner(allow_nan=True)
# raw_decode errors this close to the end of the buffer may only mean the row continues in the next chunk.
_TRUNCATION_MARGIN = 8


def iter_rows(path: Path, kind: str, digest: Any) -> Iterator[Row]:
    """Yield the rows of ``path`` read as ``kind`` (json, csv or parquet), updating ``digest`` with its bytes.

    Raises:
        ValueError: ``kind`` is not one of :data:`READERS_BY_EXTENSION`'s values.
    """
    readers = {"json": _json_rows, "csv": _csv_rows, "parquet": _parquet_rows}
    if kind not in readers:
        raise ValueError(f"no reader for {kind!r}; expected one of {sorted(readers)}")
    return readers[kind](path, digest)


def _drain(handle: io.BufferedReader, digest: Any) -> None:
    """Hash the rest of the file after a parse error ended the reading."""
    while chunk := handle.read(CHUNK_BYTES):
        digest.update(chunk)


def _utf8_error(exc: UnicodeDecodeError, offset: int) -> str:
    bad = exc.object[exc.start:exc.start + 1].hex()
    return f"invalid UTF-8 (byte 0x{bad} at file offset {offset + exc.start}); save the file as UTF-8"


def _json_rows(path: Path, digest: Any) -> Iterator[Row]:
    """JSON Lines or a JSON array, decided by the first character (as the ``datasets`` JSON loader does)."""
    with open(path, "rb") as handle:
        head = handle.read(CHUNK_BYTES)
        digest.update(head)
        bom = head.startswith(UTF8_BOM)
        first = head[len(UTF8_BOM) if bom else 0:].lstrip(b" \t\r\n")[:1]
        if not first:
            _drain(handle, digest)
            yield 0, None, None, "the file is empty (no rows)"
            return
        if first == b"[" and bom:
            _drain(handle, digest)
            yield 0, None, None, ("a JSON array after a UTF-8 byte-order mark (BOM): the datasets JSON loader cannot "
                                  "read it; save the file as UTF-8 without BOM")
        elif first == b"[":
            yield from _json_array_rows(handle, head, digest)
        elif first == b"{":
            yield from _json_lines_rows(handle, head[len(UTF8_BOM):] if bom else head, digest,
                                        len(UTF8_BOM) if bom else 0)
        else:
            _drain(handle, digest)
            yield 0, None, None, (f"expected a JSON array of objects or JSON Lines (one object per line), "
                                  f"found {first.decode('latin-1')!r} at the start")


def _json_lines_rows(handle: io.BufferedReader, head: bytes, digest: Any, offset: int = 0) -> Iterator[Row]:
    line_no = 0
    # offset: file offset of the current body, for encoding errors
    carry = b""
    chunk = head
    while chunk or carry:
        data = carry + chunk
        cut = data.rfind(b"\n") + 1 if chunk else len(data)
        body, carry = data[:cut], data[cut:]
        if body:
            try:
                lines = body.decode("utf-8").split("\n")
            except UnicodeDecodeError:
                lines = None
            if lines is None:
                yield from _undecodable_lines(body, line_no, offset)
                line_no += body.count(b"\n") + (not body.endswith(b"\n"))
            else:
                if body.endswith(b"\n"):
                    lines.pop()  # the split's empty string after the final newline
                for raw in lines:
                    line_no += 1
                    try:
                        # The C scanner without json.loads' wrappers: a third of the per-row cost.
                        value, end = _ROWS.scan(raw, 0)
                        if end == len(raw):
                            yield line_no, raw, value, None
                            continue
                    except json.JSONDecodeError:
                        pass
                    except DocumentError as exc:
                        yield line_no, raw, None, str(exc)
                        continue
                    yield from _parse_line(raw, line_no)
            offset += len(body)
        if len(carry) > MAX_ROW_BYTES:  # one line without end in sight: report it, skip to its end, hold nothing
            line_no += 1
            yield line_no, None, None, (f"the line is longer than {MAX_ROW_BYTES >> 20} MiB, the limit per row "
                                        "(far beyond any cutoff_len: LLaMA-Factory would train on its first "
                                        "tokens only); split or shorten it")
            chunk, skipped = _skip_line(handle, digest)
            offset += len(carry) + skipped
            carry = b""
            continue
        chunk = handle.read(CHUNK_BYTES)
        digest.update(chunk)


def _skip_line(handle: io.BufferedReader, digest: Any) -> tuple[bytes, int]:
    """Read (and hash) up to the end of the current line; return what follows it and the bytes skipped."""
    skipped = 0
    while chunk := handle.read(CHUNK_BYTES):
        digest.update(chunk)
        newline = chunk.find(b"\n")
        if newline >= 0:
            rest = chunk[newline + 1:]
            if not rest:
                rest = handle.read(CHUNK_BYTES)
                digest.update(rest)
            return rest, skipped + newline + 1
        skipped += len(chunk)
    return b"", skipped


def _undecodable_lines(body: bytes, line_no: int, offset: int) -> Iterator[Row]:
    """The slow path for a block with invalid UTF-8: decode line by line to name the bad lines."""
    raws = body.split(b"\n")
    if body.endswith(b"\n"):
        raws.pop()
    for raw in raws:
        line_no += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield line_no, None, None, _utf8_error(exc, offset)
        else:
            yield from _parse_line(text, line_no)
        offset += len(raw) + 1


def _parse_line(text: str, line_no: int) -> Iterator[Row]:
    """The careful path for one JSON line: blank lines are skipped, errors get json's message."""
    if not text or text.isspace():
        return
    try:
        yield line_no, text, _ROWS.decode(text), None
    except json.JSONDecodeError as exc:
        yield line_no, text, None, f"invalid JSON: {exc.msg} (column {exc.colno})"
    except DocumentError as exc:
        yield line_no, text, None, str(exc)


def _json_array_rows(handle: io.BufferedReader, head: bytes, digest: Any) -> Iterator[Row]:
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    buffer = ""
    eof = False
    encoding_error = ""
    consumed_bytes = 0  # bytes before the current chunk, for error offsets
    lines_before = 1  # line number of buffer[0]

    def feed(chunk: bytes) -> None:
        nonlocal buffer, eof, encoding_error, consumed_bytes
        final = not chunk
        try:
            buffer += decoder.decode(chunk, final=final)
        except UnicodeDecodeError as exc:
            # Keep the valid prefix; the row that runs into the bad byte reports it.
            buffer += exc.object[:exc.start].decode("utf-8", errors="ignore")
            encoding_error = _utf8_error(exc, consumed_bytes)
            final = True
            _drain(handle, digest)
        consumed_bytes += len(chunk)
        eof = final

    def read_more() -> None:
        chunk = b"" if encoding_error else handle.read(CHUNK_BYTES)
        digest.update(chunk)
        feed(chunk)

    def location(pos: int) -> str:
        line = lines_before + buffer.count("\n", 0, pos)
        return f"line {line}"

    feed(head)
    pos = _WHITESPACE.match(buffer, 0).end() + 1  # after the '['
    index = 0
    expect_value = True  # after '[' or ','
    while True:
        if pos > CHUNK_BYTES and pos > len(buffer) // 2:
            lines_before += buffer.count("\n", 0, pos)
            buffer = buffer[pos:]
            pos = 0
        pos = _WHITESPACE.match(buffer, pos).end()
        if pos >= len(buffer):
            if eof:
                problem = encoding_error or f"the JSON array is not closed with ']' ({location(pos)})"
                yield index + 1, None, None, problem
                return
            read_more()
            continue
        char = buffer[pos]
        if char == "]" and (index == 0 or not expect_value):
            if index == 0 and expect_value:
                yield 0, None, None, "the JSON array is empty (no rows)"
            rest = buffer[pos + 1:]
            while not eof and not rest.strip():
                read_more()
                rest = buffer[pos + 1:]
            if encoding_error:
                yield 0, None, None, encoding_error
            elif rest.strip():
                yield 0, None, None, f"text after the closing ']' of the JSON array ({location(pos + 1)})"
            return
        if not expect_value:
            if char != ",":
                yield index + 1, None, None, f"invalid JSON: expected ',' or ']' after row {index} ({location(pos)})"
                _drain(handle, digest)
                return
            pos += 1
            expect_value = True
            continue
        try:
            value, end = _ROWS.scan(buffer, pos)
            if end >= len(buffer) and not eof:
                raise json.JSONDecodeError("row continues", buffer, end)
        except DocumentError as exc:
            yield index + 1, None, None, f"{exc} ({location(pos)})"
            _drain(handle, digest)
            return
        except json.JSONDecodeError as exc:
            truncated = exc.pos >= len(buffer) - _TRUNCATION_MARGIN or exc.msg.startswith("Unterminated string")
            if truncated and not eof and len(buffer) - pos > MAX_ROW_BYTES:
                yield index + 1, None, None, (f"the row is longer than {MAX_ROW_BYTES >> 20} MiB, the limit per row "
                                              f"({location(pos)}); split or shorten it")
                _drain(handle, digest)
                return
            if truncated and not eof:
                read_more()
                continue
            if truncated and encoding_error:
                yield index + 1, None, None, encoding_error
            else:
                yield index + 1, None, None, f"invalid JSON: {exc.msg} ({location(exc.pos)})"
            _drain(handle, digest)
            return
        index += 1
        yield index, buffer[pos:end], value, None
        pos = end
        expect_value = False


class _HashingReader(io.RawIOBase):
    """A binary stream that feeds what it reads to a digest (so a text parser can hash as it reads)."""

    def __init__(self, raw: io.BufferedReader, digest: Any):
        self._raw = raw
        self._digest = digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self._raw.readinto(buffer)
        if count:
            self._digest.update(memoryview(buffer)[:count])
        return count or 0


def _csv_rows(path: Path, digest: Any) -> Iterator[Row]:
    """CSV with a header row; ``row`` is the file line where the record starts.

    A field may be as long as a whole row may (:data:`MAX_ROW_BYTES`): the datasets CSV loader (pandas' C parser)
    has no field limit, while the csv module stops at 128 KiB unless told otherwise. The limit is process-wide;
    it is only ever raised here.
    """
    csv.field_size_limit(max(csv.field_size_limit(), MAX_ROW_BYTES))
    with open(path, "rb") as raw:
        # utf-8-sig: a byte-order mark is skipped (pandas, which the datasets CSV loader uses, skips it too).
        text = io.TextIOWrapper(io.BufferedReader(_HashingReader(raw, digest)), encoding="utf-8-sig", newline="")
        reader = csv.reader(text, strict=True)
        try:
            header = next(reader, None)
            if header is None:
                yield 0, None, None, "the file is empty (no header, no rows)"
                return
            if len(set(header)) != len(header) or not all(header):
                yield 1, None, None, f"the CSV header must name each column once, got {header}"
                _drain(raw, digest)
                return
            rows = 0
            start = reader.line_num + 1
            for record in reader:
                if record:
                    rows += 1
                    if len(record) != len(header):
                        yield start, None, None, f"has {len(record)} fields, the header has {len(header)}"
                    else:
                        yield start, "\x1f".join(record), dict(zip(header, record, strict=True)), None
                start = reader.line_num + 1
            if rows == 0:
                yield 0, None, None, "the file has a header but no rows"
        except UnicodeDecodeError as exc:
            yield reader.line_num + 1, None, None, f"invalid UTF-8 (byte 0x{exc.object[exc.start:exc.start + 1].hex()})"
            _drain(raw, digest)
        except csv.Error as exc:
            reason = (f"a field is longer than {MAX_ROW_BYTES >> 20} MiB, more than any example" if
                      "field larger than field limit" in str(exc) else f"malformed CSV: {exc}")
            yield reader.line_num, None, None, reason
            _drain(raw, digest)


def _parquet_rows(path: Path, digest: Any) -> Iterator[Row]:
    """Parquet read batch by batch (pyarrow, imported here: it is heavy); hashed in a separate pass
    because Parquet is read by seeking."""
    import pyarrow.parquet as pq

    with open(path, "rb") as handle:
        _drain(handle, digest)
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        yield 0, None, None, f"not a readable Parquet file: {exc}"
        return
    if parquet.metadata.num_rows == 0:
        yield 0, None, None, "the file has no rows"
        return
    index = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for value in batch.to_pylist():
            index += 1
            yield index, json.dumps(value, sort_keys=True, default=str), value, None
