"""Find training text that contains MMLU test questions (word n-gram overlap), so a benchmark score
is not inflated by training on the test set. The same index finds held-out answers on the train side
(:mod:`components.data.leakage`).

Text is normalised (lower case, words of letters and digits, punctuation and spacing ignored). A
training text is contaminated when it shares a word n-gram with a test question; a question
shorter than n words must appear whole. Questions under :data:`MIN_QUESTION_WORDS` words ("What is
7 times 8?") are too generic to be evidence and are skipped. Memory depends on the MMLU data only,
never on the training data: the index holds 64-bit hashes of the n-grams.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

MIN_QUESTION_WORDS = 5
_WORD = re.compile(r"[^\W_]+")


def normalise(text: str) -> list[str]:
    """The words of ``text``: lower case, letters and digits only."""
    return _WORD.findall(text.lower())


@dataclass
class ContaminationIndex:
    """Hashed word n-grams of the MMLU test questions.

    ``grams`` maps the hash of each n-gram (or of a whole short question) to the first question's index in
    ``questions``, ``shared`` to the later questions that hold the same gram; ``prefixes`` holds the hashes of
    every gram's first :data:`MIN_QUESTION_WORDS` words, a cheap filter before the longer lookups.
    """

    ngram: int
    questions: list[tuple[str, str]] = field(default_factory=list)  # (file:line, question text)
    grams: dict[int, int] = field(default_factory=dict)
    shared: dict[int, list[int]] = field(default_factory=dict)
    prefixes: set[int] = field(default_factory=set)
    lengths: list[int] = field(default_factory=list)
    files: int = 0

    def add_question(self, ref: str, question: str) -> None:
        """Index one question; questions under MIN_QUESTION_WORDS words are skipped."""
        words = normalise(question)
        if len(words) < MIN_QUESTION_WORDS:
            return
        index = len(self.questions)
        self.questions.append((ref, question))
        size = min(self.ngram, len(words))
        if size not in self.lengths:
            self.lengths.append(size)
            self.lengths.sort()
        for start in range(len(words) - size + 1):
            gram = tuple(words[start:start + size])
            key = hash(gram)
            if self.grams.setdefault(key, index) != index and self.shared.get(key, [None])[-1] != index:
                self.shared.setdefault(key, []).append(index)  # another question holds it too
            self.prefixes.add(hash(gram[:MIN_QUESTION_WORDS]))

    def find(self, text: str) -> tuple[str, str] | None:
        """The first test question ``text`` overlaps, as ``(file:line, question)``, else None."""
        hit = next(self._hits(text), None)
        return None if hit is None else self.questions[hit]

    def find_all(self, text: str) -> set[int]:
        """The index in ``questions`` of every question ``text`` overlaps."""
        return set(self._hits(text))

    def _hits(self, text: str) -> Iterator[int]:
        words = normalise(text)
        if len(words) < MIN_QUESTION_WORDS:
            return
        prefixes, grams, lengths, shared = self.prefixes, self.grams, self.lengths, self.shared
        # The hash of every window of MIN_QUESTION_WORDS words, computed in C (the same as hashing each slice's
        # tuple): most texts share none with the index and are done after one set operation.
        starts = list(map(hash, zip(*(words[offset:] for offset in range(MIN_QUESTION_WORDS)), strict=False)))
        if prefixes.isdisjoint(starts):
            return
        count = len(words)
        for start, prefix in enumerate(starts):
            if prefix not in prefixes:
                continue
            for size in lengths:
                if start + size > count:
                    break
                gram = hash(tuple(words[start:start + size]))
                hit = grams.get(gram)
                if hit is not None:
                    yield hit
                    yield from shared.get(gram, ())


def load_mmlu_questions(split_dir: str | Path, ngram: int) -> ContaminationIndex:
    """Index every question in ``split_dir/*.csv`` (the hendrycks layout: question, A, B, C, D, answer;
    no header).

    Raises:
        FileNotFoundError: ``split_dir`` is not a directory or holds no CSV file.
        ValueError: a CSV file is not UTF-8 or not CSV; the message names the file and line.
    """
    directory = Path(split_dir)
    files = sorted(directory.glob("*.csv")) if os.path.isdir(directory) else []  # a too-long name: no files
    if not files:
        raise FileNotFoundError(f"no MMLU CSV files in {directory}")
    index = ContaminationIndex(ngram=ngram, files=len(files))
    for path in files:
        try:
            with open(path, encoding="utf-8", newline="") as handle:
                reader = csv.reader(handle)
                for record in reader:
                    if record and record[0].strip():
                        index.add_question(f"{path.name}:{reader.line_num}", record[0])
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ValueError(f"{path}: cannot read the MMLU questions: {exc}") from None
    return index
