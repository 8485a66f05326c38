"""Near-duplicates across the split: held-out rows whose answer the train side also holds.

The split keeps every copy of an *example* on one side (:mod:`components.data.row_keys`). This check casts a wider
and cheaper net than any key: a held-out row *leaks* when one of its answers (its assistant and function turns)
shares a run of ``ngram`` words with an answer of a row on the train side, whatever the prompts, datasets or
formats, or, when it is shorter than that, appears whole inside one. Words are read as the MMLU contamination check
reads them (lower case, letters and digits; :mod:`components.data.contamination`, whose index this reuses), and
answers under :data:`components.data.contamination.MIN_QUESTION_WORDS` words ("Yes.", "It is 4.") are too generic
to be evidence. A leaked row's loss measures memorisation, not generalisation.

:func:`find_leaks` works on any held-out side against any train side (the test side today; a validation side
the same way). Memory depends on the held-out rows only (the scored ones: at most ``dataset.max_test_rows`` per
dataset); the train rows stream past the index.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from components.data.checks import DatasetSpec
from components.data.contamination import ContaminationIndex
from components.data.row_keys import Conversation, conversation

ANSWER_ROLES = ("assistant", "function")
SNIPPET_CHARS = 80

# (where the row is, as shown to people; its answer texts: :func:`answers`)
SideRow = tuple[str, list[str]]


@dataclass(frozen=True)
class Leak:
    """One held-out row and the first train row found with a near-duplicate answer."""

    held_out: str
    trained: str
    answer: str  # the held-out answer, shortened to SNIPPET_CHARS


@dataclass
class LeakReport:
    """What :func:`find_leaks` found: every leaked held-out row is counted, the first ``listed`` named."""

    held_out_rows: int = 0
    leaked_rows: int = 0
    leaks: list[Leak] = field(default_factory=list)


def answers(row: Any, spec: DatasetSpec) -> list[str]:
    """The texts of a row's answer turns, as the trainer sees them (columns mapped)."""
    return answers_of(conversation(row, spec))


def answers_of(seen: Conversation) -> list[str]:
    """The answer texts of a row whose :func:`components.data.row_keys.conversation` is ``seen``."""
    return [text for role, text in seen.turns if role in ANSWER_ROLES and text]


def find_leaks(held_out: Iterable[SideRow], trained: Iterable[SideRow], *, ngram: int,
               listed: int = 10) -> LeakReport:
    """Count the held-out rows with an answer that a train row's answer shares (see the module docstring).

    Args:
        held_out: The held-out side's rows with their answers (:func:`answers`; indexed: keep it bounded).
        trained: The train side's rows with their answers (streamed once).
        ngram: Words in a shared run (``dataset.contamination_ngram``).
        listed: Leaks named in the report; the rest are counted.
    """
    index = ContaminationIndex(ngram=ngram)
    owners: list[int] = []  # index entry -> held-out row number
    refs: list[str] = []
    for number, (ref, texts) in enumerate(held_out):
        refs.append(ref)
        for text in texts:
            before = len(index.questions)
            index.add_question(ref, text)
            owners += [number] * (len(index.questions) - before)
    report = LeakReport(held_out_rows=len(refs))
    found: dict[int, Leak] = {}
    if index.questions:
        for ref, texts in trained:
            for text in texts:
                for hit in index.find_all(text):
                    owner = owners[hit]
                    if owner not in found:
                        answer = index.questions[hit][1]
                        shown = answer if len(answer) <= SNIPPET_CHARS else answer[:SNIPPET_CHARS - 3] + "..."
                        found[owner] = Leak(refs[owner], ref, shown)
    report.leaked_rows = len(found)
    report.leaks = [found[owner] for owner in sorted(found)[:listed]]
    return report
