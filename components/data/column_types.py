"""One type per field, as the ``datasets`` JSON loader (Arrow) needs: the check that finds the row that breaks it.

LLaMA-Factory loads a JSON dataset with ``datasets.load_dataset("json")``, which infers one Arrow type
per column, nested fields and array elements included, across every row and every file of the dataset.
A field that is a number in one row and a string in another (``meta.score``, ``conversations[].weight``,
an array mixing numbers and strings) fails the whole load with an Arrow error that names neither file
nor row. :class:`ColumnTypes` applies Arrow's inference rules row by row and names the first row that
disagrees:

- ``null`` fits any type; integers and floats are one type (Arrow widens integers to double);
- booleans, numbers, strings, arrays and objects do not mix;
- arrays unify their elements; objects unify field by field, and a field missing from a row is null.

The same walk finds ``NaN`` and ``Infinity`` (the row reader lets them through so that they can be named
here, by field): JSON has no such numbers, and the training snapshot, written as strict JSON Lines,
cannot hold them.
"""

from __future__ import annotations

import math
from typing import Any

from configs.errors import StepError

# A type is one of these names, ("array", element type) or ("object", ((field, type), ...)) sorted by field.
NULL, BOOLEAN, NUMBER, STRING = "null", "boolean", "number", "string"
ColumnType = Any


class NotFinite(StepError, ValueError):
    """A NaN or infinite number; ``path`` names the field."""

    def __init__(self, path: str, value: float):
        super().__init__(f"{path}: {value}")
        self.path = path
        self.value = value


class TypeConflict(StepError, ValueError):
    """Two values of one field have types Arrow cannot unify; ``path`` names the field (``meta.tags[]``)."""

    def __init__(self, path: str, first: ColumnType, second: ColumnType):
        super().__init__(f"{path}: {describe(first)} and {describe(second)}")
        self.path, self.first, self.second = path, first, second


def describe(kind: ColumnType) -> str:
    """A type in words: ``string``, ``array``, ``object``."""
    return kind if isinstance(kind, str) else kind[0]


def infer(value: Any, path: str) -> ColumnType:
    """The Arrow-style type of one parsed JSON value.

    Raises:
        TypeConflict: an array inside ``value`` mixes types Arrow cannot unify.
        NotFinite: ``value`` holds NaN or an infinite number.
    """
    if value is None:
        return NULL
    kind = type(value)
    if kind is str:
        return STRING
    if kind is bool:
        return BOOLEAN
    if kind is int:
        return NUMBER
    if kind is float:
        if not math.isfinite(value):
            raise NotFinite(path, value)
        return NUMBER
    if kind is list:
        element: ColumnType = NULL
        inner = path + "[]"
        for item in value:
            element = unify(element, infer(item, inner), inner)
        return ("array", element)
    if kind is dict:
        return ("object", tuple(sorted((key, infer(item, f"{path}.{key}")) for key, item in value.items())))
    return type(value).__name__  # Parquet values (dates, bytes): already typed by their column


def unify(first: ColumnType, second: ColumnType, path: str) -> ColumnType:
    """The one type both fit (Arrow's rules, see the module docstring).

    Raises:
        TypeConflict: no such type; ``path`` and the two types are in the exception.
    """
    if first == second or second == NULL:
        return first
    if first == NULL:
        return second
    if isinstance(first, tuple) and isinstance(second, tuple) and first[0] == second[0]:
        if first[0] == "array":
            return ("array", unify(first[1], second[1], path + "[]"))
        fields = dict(first[1])
        for key, kind in second[1]:
            fields[key] = unify(fields.get(key, NULL), kind, f"{path}.{key}")
        return ("object", tuple(sorted(fields.items())))
    raise TypeConflict(path, first, second)


class ColumnTypes:
    """The types seen so far in one dataset (all its files), and the row where each field got its type."""

    def __init__(self) -> None:
        self._types: dict[str, ColumnType] = {}  # column -> its type so far
        self._origins: dict[str, tuple[str, int]] = {}  # field path -> (file, row) that gave it a type

    def check(self, row: dict[str, Any], file: str, number: int) -> list[tuple[str, str]]:
        """Add one row's types; return ``(field, message)`` for each field whose type disagrees.

        ``file`` and ``number`` name the row (messages about later rows point back at it). A row whose
        type disagrees does not change what later rows are compared with.
        """
        problems = []
        types = self._types
        for column, value in row.items():
            if value is None:
                continue
            try:
                kind = STRING if type(value) is str else infer(value, column)
            except TypeConflict as conflict:
                problems.append((conflict.path, f"mixes {describe(conflict.first)} and {describe(conflict.second)} "
                                                "values in one array; the datasets JSON loader (Arrow) needs one "
                                                "type per field"))
                continue
            except NotFinite as bad:
                word = "NaN" if math.isnan(bad.value) else "Infinity" if bad.value > 0 else "-Infinity"
                problems.append((bad.path, f"is {word}: JSON has no NaN or Infinity, and the training snapshot is "
                                           "strict JSON Lines; use null or a string"))
                continue
            known = types.get(column)
            if known is kind or known == kind:
                continue
            try:
                types[column] = kind if known is None else unify(known, kind, column)
            except TypeConflict as conflict:
                origin_file, origin_row = self._origins.get(conflict.path, (file, 0))
                where = f"row {origin_row}" + ("" if origin_file == file else f" of {origin_file}")
                problems.append((conflict.path, f"is {_article(conflict.second)} here but {_article(conflict.first)} "
                                                f"in {where}; the datasets JSON loader (Arrow) needs one type per "
                                                "field"))
                continue
            for path in _paths(kind, column):
                self._origins.setdefault(path, (file, number))
        return problems


def _paths(kind: ColumnType, path: str) -> list[str]:
    """Every field path with a type other than null in ``kind`` (``m``, ``m.k``, ``m.tags[]``)."""
    if kind == NULL:
        return []
    found = [path]
    if isinstance(kind, tuple):
        if kind[0] == "array":
            found += _paths(kind[1], path + "[]")
        else:
            for key, inner in kind[1]:
                found += _paths(inner, f"{path}.{key}")
    return found


def _article(kind: ColumnType) -> str:
    word = describe(kind)
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"
