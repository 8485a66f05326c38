"""The held-out test split of the training data, fixed per example by a hash of its content.

A row goes to the test side when its content hash, read as a number in [0, 1), is below
``dataset.test_fraction``. The side depends on nothing but the row's own content, so appending rows
to a dataset never moves an existing row across, and identical rows (in one dataset or in two) always
land on the same side: a duplicate of a test row can never be trained on.

The content hash is also the key under which an example's evaluation is recorded
(:func:`row_key`), so per-example scores of two models pair up by key.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Part of every key: changing how rows are keyed (or split) must change every key, never reuse one.
SPLIT_VERSION = "llmft-split-v1"
KEY_HEX_CHARS = 32  # 128 bits: no two distinct rows of any real dataset share a key


def canonical_row(row: Any) -> str:
    """The row as canonical JSON (sorted keys, no whitespace): the same content gives the same text."""
    return json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def row_key(row: Any) -> str:
    """The content hash of one dataset row (hex): its identity in the split and in per-example results."""
    digest = hashlib.sha256(f"{SPLIT_VERSION}\0{canonical_row(row)}".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:KEY_HEX_CHARS]


def key_position(key: str) -> float:
    """Where a key falls in [0, 1): its first 64 bits as a fraction (uniform for a good hash)."""
    return int(key[:16], 16) / float(1 << 64)


def is_test_row(key: str, test_fraction: float) -> bool:
    """True when the row with this key belongs to the held-out test side."""
    return key_position(key) < test_fraction


def split_hash(keys: list[str]) -> str:
    """The identity of a set of test rows: sha256 over their sorted keys (order and duplicates do not matter)."""
    digest = hashlib.sha256(SPLIT_VERSION.encode())
    for key in sorted(set(keys)):
        digest.update(key.encode() + b"\n")
    return digest.hexdigest()


__all__ = ["SPLIT_VERSION", "canonical_row", "is_test_row", "key_position", "row_key", "split_hash"]
