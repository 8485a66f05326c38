"""The held-out test split of the training data, fixed per *example* by a hash of what the trainer sees.

The rule. Every row is keyed by :func:`components.data.row_keys.row_key`: the content after the entry's column
mapping and normalisation (Unicode NFC, whitespace runs as one space, a missing field equal to an empty one).
The key's first 16 hex digits are its *example's*: the normalised first user turn and its answer. A row goes to
the test side when that example hash, read as a number in [0, 1) (:func:`key_position`), is below
``dataset.test_fraction``, and to the validation side when it falls in the next band,
``[test_fraction, test_fraction + val_fraction)`` (:func:`row_side`). So the side depends on nothing but the
example: appending rows never moves an existing row across, and every copy the trainer cannot tell apart (an
unmapped ``id``, a trailing space, a missing versus an empty ``input``), every system-prompt variant, every
conversation that begins with the example's exchange, and the same example in another dataset or format (alpaca
and sharegpt) land on one side: no copy of a test example is trained on or chosen by. The bands are disjoint by
construction: one position, two intervals that do not overlap. Rows whose example differs and whose answer is
still alike are the leakage check's (:mod:`components.data.leakage`).

Validation rows are what training and the sweep choose by (the best checkpoint, the winning trial); test rows
are what the gate judges by, and nothing reads them before it: a choice made on the test rows would make the
gate's evidence look stronger than it is.

The whole key is also the key under which an example's evaluation is recorded, so per-row scores of two models
pair up by key. Keys and split hashes carry :data:`SPLIT_VERSION`: changing the rule changes every key and every
split hash, so scores stored under an older rule stop matching instead of being compared with the wrong rows.

The validate step writes the split as a snapshot in the run directory (:func:`.split_writer.validate_and_split`,
in the same streaming pass that validates the rows), and training reads only that snapshot:

- ``dataset_info.json``: entry ``N`` -> ``train/N.jsonl``, entry ``N@test`` -> ``test/N.jsonl`` and, with
  ``dataset.val_fraction`` > 0, entry ``N@val`` -> ``val/N.jsonl`` for every dataset ``N``, each a copy of the
  original entry with the source-only keys dropped (:data:`.split_writer.SOURCE_ONLY_KEYS`; ``num_samples`` stays on the
  train entry only);
- the rows as parsed from the source, one JSON object per line in canonical form, in source order, so
  ``row_key(json.loads(line), spec of the entry)`` is the row's key;
- ``split.json``: the :class:`SplitManifest` (counts, file hashes, the scored test keys).

At most ``dataset.max_test_rows`` rows per dataset are scored (``dataset.max_val_rows`` on the validation
side): those with the smallest keys, so the choice is as stable as the split. The other held-out rows are in
no file: never trained on, never scored. Memory stays bounded: rows stream to their files, and at most twice the cap of
candidate keys is held per dataset.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components.common.storage import run_dir
from components.data.checks import DATA_CONFIG
from components.data.row_keys import EXAMPLE_HEX_CHARS, KEY_HEX_CHARS, KEY_SCHEME, entry_spec, row_key
from configs.errors import StepError
from configs.safe_json import DocumentError, JsonScanner, read_json

SPLIT_VERSION = KEY_SCHEME  # part of every key and split hash
SNAPSHOT_DIR = "data"  # <run dir>/data
MANIFEST_FILE = "split.json"
TEST_SUFFIX = "@test"
VAL_SUFFIX = "@val"
_HEX64 = r"^[0-9a-f]{64}$"
_KEY = re.compile(rf"^[0-9a-f]{{{KEY_HEX_CHARS}}}$")
# The snapshot's rows were written as strict JSON, lone surrogates escaped (see _json_line): read them back so.
_SNAPSHOT_ROWS = JsonScanner(allow_lone_surrogates=True)


def key_position(key: str) -> float:
    """Where a row's example falls in [0, 1): the key's first 64 bits (its example's) as a fraction."""
    return int(key[:EXAMPLE_HEX_CHARS], 16) / float(1 << 64)


def is_test_row(key: str, test_fraction: float) -> bool:
    """True when the row with this key belongs to the held-out test side: the one side decision."""
    return key_position(key) < test_fraction


def row_side(key: str, test_fraction: float, val_fraction: float = 0.0) -> Literal["test", "val", "train"]:
    """The side of the row with this key: ``test`` below ``test_fraction``, ``val`` in the band
    ``[test_fraction, test_fraction + val_fraction)``, else ``train``.

    One position (:func:`key_position`) decides both held-out sides, so whatever decides a row's position (and
    keeps rows that belong together at one position) holds for the validation side exactly as for the test side.
    """
    position = key_position(key)
    if position < test_fraction:
        return "test"
    return "val" if position < test_fraction + val_fraction else "train"


def split_hash(keys: list[str]) -> str:
    """The identity of a set of test rows: sha256 over their sorted keys (order and duplicates do not matter)."""
    digest = hashlib.sha256(SPLIT_VERSION.encode())
    for key in sorted(set(keys)):
        digest.update(key.encode() + b"\n")
    return digest.hexdigest()


def heldout_entry_name(name: str) -> str:
    """The snapshot's dataset_info.json entry with the scored test rows of dataset ``name``."""
    return f"{name}{TEST_SUFFIX}"


def validation_entry_name(name: str) -> str:
    """The snapshot's dataset_info.json entry with the scored validation rows of dataset ``name``."""
    return f"{name}{VAL_SUFFIX}"


def snapshot_dir(cfg: Any, kfp_run_id: str) -> Path:
    """Where the validated split of this run lives: ``<output_root>/<kfp run id>/data``."""
    return run_dir(cfg, kfp_run_id) / SNAPSHOT_DIR


# The manifest ------------------------------------------------------------------------------------------------


class SplitError(StepError, ValueError):
    """The split snapshot cannot be used (missing, invalid manifest, a file changed); the message names the file."""


class DatasetSplit(BaseModel):
    """One dataset's sides in the snapshot: train, test and (with ``dataset.val_fraction`` > 0) validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., min_length=1, description="The dataset's name in dataset.names and dataset_info.json.")
    source_sha256: str = Field(..., pattern=_HEX64, description="sha256 of the source file(s), as validated.")
    rows: int = Field(..., ge=1, description="Rows in the source.")
    train_rows: int = Field(..., ge=1, description="Rows on the train side (in the train file).")
    held_out_rows: int = Field(..., ge=1, description="Rows on the test side, copies included; never trained on.")
    scored_rows: int = Field(..., ge=1, description="Distinct test rows in the test file (at most max_test_rows).")
    train_file: str = Field(..., pattern=r"^train/[^/]+\.jsonl$", description="The train rows, JSON Lines.")
    train_sha256: str = Field(..., pattern=_HEX64, description="sha256 of the train file.")
    test_file: str = Field(..., pattern=r"^test/[^/]+\.jsonl$", description="The scored test rows, JSON Lines.")
    test_sha256: str = Field(..., pattern=_HEX64, description="sha256 of the test file.")
    test_split_hash: str = Field(..., pattern=_HEX64, description="split_hash of the scored test keys.")
    test_keys: list[str] = Field(..., description="The scored test rows' keys, in test-file order.")
    val_rows: int = Field(0, ge=0, description="Rows on the validation side, copies included; never trained on.")
    scored_val_rows: int = Field(0, ge=0, description="Distinct validation rows in the validation file (at most "
                                 "max_val_rows).")
    val_file: str | None = Field(None, pattern=r"^val/[^/]+\.jsonl$", description="The scored validation rows, "
                                 "JSON Lines (None without a validation side).")
    val_sha256: str | None = Field(None, pattern=_HEX64, description="sha256 of the validation file.")
    val_split_hash: str | None = Field(None, pattern=_HEX64, description="split_hash of the scored validation keys.")
    val_keys: list[str] = Field(default_factory=list, description="The scored validation rows' keys, in file order.")

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSplit:
        if self.train_rows + self.held_out_rows + self.val_rows != self.rows:
            raise ValueError(f"train_rows + held_out_rows + val_rows must equal rows ({self.rows})")
        if not self.scored_rows == len(self.test_keys) <= self.held_out_rows:
            raise ValueError("scored_rows must equal the number of test_keys and not exceed held_out_rows")
        if not self.scored_val_rows == len(self.val_keys) <= self.val_rows:
            raise ValueError("scored_val_rows must equal the number of val_keys and not exceed val_rows")
        for side, keys in (("test_keys", self.test_keys), ("val_keys", self.val_keys)):
            if len(set(keys)) != len(keys) or not all(map(_KEY.match, keys)):
                raise ValueError(f"{side} must be distinct {KEY_HEX_CHARS}-digit hex keys")
        if set(self.test_keys) & set(self.val_keys):
            raise ValueError("a key is both a test and a validation row")
        if split_hash(self.test_keys) != self.test_split_hash:
            raise ValueError("test_split_hash does not match test_keys")
        validation = (self.val_file, self.val_sha256, self.val_split_hash)
        if (self.val_keys and None in validation) or (not self.val_keys and validation != (None, None, None)):
            raise ValueError("val_file, val_sha256 and val_split_hash go with val_keys, all or none")
        if self.val_keys and split_hash(self.val_keys) != self.val_split_hash:
            raise ValueError("val_split_hash does not match val_keys")
        return self

    def side_files(self) -> dict[str, tuple[str, str]]:
        """``{side: (file, sha256)}`` for each side this dataset has in the snapshot (train, test, val)."""
        files = {"train": (self.train_file, self.train_sha256), "test": (self.test_file, self.test_sha256)}
        if self.val_file and self.val_sha256:
            files["val"] = (self.val_file, self.val_sha256)
        return files


class SplitManifest(BaseModel):
    """``split.json``: how the snapshot was split and what each of its files holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = Field(1, description="Version of this manifest's layout.")
    key_scheme: Literal["llmft-split-v2"] = Field(SPLIT_VERSION, description="How row keys are computed "
                                                  "(components.data.row_keys.KEY_SCHEME).")
    test_fraction: float = Field(..., gt=0, lt=1, description="dataset.test_fraction of the split.")
    min_test_rows: int = Field(..., ge=1, description="dataset.min_test_rows of the split.")
    max_test_rows: int = Field(..., ge=1, description="dataset.max_test_rows of the split.")
    val_fraction: float = Field(0.0, ge=0, lt=1, description="dataset.val_fraction of the split (0: no validation "
                                "side).")
    min_val_rows: int = Field(0, ge=0, description="dataset.min_val_rows of the split.")
    max_val_rows: int = Field(0, ge=0, description="dataset.max_val_rows of the split.")
    dataset_hash: str = Field(..., pattern=_HEX64, description="Combined sha256 of the validated source data.")
    dataset_info_sha256: str = Field(..., pattern=_HEX64, description="sha256 of the snapshot's dataset_info.json.")
    test_split_hash: str = Field(..., pattern=_HEX64, description="Identity of all test sides (combined_test_hash).")
    val_split_hash: str | None = Field(None, pattern=_HEX64, description="Identity of all validation sides "
                                       "(combined_val_hash); None without a validation side.")
    datasets: list[DatasetSplit] = Field(..., min_length=1, description="One entry per dataset, in training order.")

    @model_validator(mode="after")
    def _consistent(self) -> SplitManifest:
        if len({split.name for split in self.datasets}) != len(self.datasets):
            raise ValueError("a dataset is listed twice")
        if combined_test_hash(self.datasets) != self.test_split_hash:
            raise ValueError("test_split_hash does not match the datasets' test_split_hash values")
        if combined_val_hash(self.datasets) != self.val_split_hash:
            raise ValueError("val_split_hash does not match the datasets' val_split_hash values")
        if any(bool(split.val_keys) != (self.val_fraction > 0) for split in self.datasets):
            raise ValueError("every dataset has validation rows exactly when val_fraction > 0")
        return self

    def validation_entries(self) -> list[str]:
        """The snapshot's ``N@val`` entries, in training order (empty without a validation side)."""
        return [validation_entry_name(split.name) for split in self.datasets if split.val_keys]

    def dataset(self, name: str) -> DatasetSplit:
        """The split of dataset ``name``.

        Raises:
            SplitError: the snapshot has no dataset of that name.
        """
        for split in self.datasets:
            if split.name == name:
                return split
        raise SplitError(f"the split snapshot has no dataset {name!r} (it has {[s.name for s in self.datasets]})")


def combined_test_hash(datasets: list[DatasetSplit]) -> str:
    """sha256 over each dataset's name and test_split_hash, in order: the identity of the whole test side."""
    pairs = [[split.name, split.test_split_hash] for split in datasets]
    return hashlib.sha256(json.dumps([SPLIT_VERSION, pairs], separators=(",", ":")).encode()).hexdigest()


def combined_val_hash(datasets: list[DatasetSplit]) -> str | None:
    """sha256 over each dataset's name and val_split_hash, in order (the identity of the whole validation side);
    None when no dataset has a validation side."""
    if not any(split.val_split_hash for split in datasets):
        return None
    pairs = [[split.name, split.val_split_hash] for split in datasets]
    return hashlib.sha256(json.dumps([SPLIT_VERSION, "val", pairs], separators=(",", ":")).encode()).hexdigest()


def read_manifest(directory: str | Path) -> SplitManifest:
    """The manifest of the snapshot in ``directory``.

    Raises:
        SplitError: ``split.json`` is missing, unreadable or invalid; the message names the file and each field.
    """
    path = Path(directory) / MANIFEST_FILE
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise SplitError(f"{path} does not exist: {directory} is not a split snapshot (validate-dataset "
                         "writes it)") from None
    except DocumentError as exc:  # the same wording as a field that fails validation
        reason = exc.reason[:1].upper() + exc.reason[1:]
        raise SplitError(f"{path} is not a valid split manifest: field '(top level)': {reason}") from None
    try:
        return SplitManifest.model_validate(data)
    except ValidationError as exc:
        fields = "; ".join(f"field '{'.'.join(map(str, item['loc'])) or '(top level)'}': "
                           f"{item['msg'].removeprefix('Value error, ')}" for item in exc.errors())
        raise SplitError(f"{path} is not a valid split manifest: {fields}") from None


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


ALL_SIDES = ("train", "test", "val")


def verify_snapshot(directory: str | Path, sides: tuple[str, ...] = ALL_SIDES) -> SplitManifest:
    """Check the snapshot is exactly what validation wrote: the manifest, dataset_info.json and the data files of
    ``sides``.

    The train step checks ``("train", "val")`` only: it never opens a test file, so no test row is read before
    the gate.

    Raises:
        SplitError: the manifest is invalid, or a file is missing or changed after validation (the message
            names the file).
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    expected = [(DATA_CONFIG, manifest.dataset_info_sha256)]
    for split in manifest.datasets:
        expected += [entry for side, entry in split.side_files().items() if side in sides]
    for relative, sha256 in expected:
        path = directory / relative
        try:
            actual = file_sha256(path)
        except OSError as exc:
            raise SplitError(f"{path} cannot be read ({exc.strerror or exc}); it was written by validation "
                             "and must not be touched") from None
        if actual != sha256:
            raise SplitError(f"{path} changed after validation: its sha256 is {actual[:16]}..., "
                             f"{MANIFEST_FILE} records {sha256[:16]}...")
    return manifest


def read_verified_test_rows(directory: str | Path, split: DatasetSplit) -> list[tuple[str, Any]]:
    """The scored test rows of one dataset as (key, row), in file order, each checked against the manifest.

    Raises:
        SplitError: the test file or the snapshot's dataset_info.json is unreadable, or a row's key is not the
            manifest's key at that line.
    """
    path = Path(directory) / split.test_file
    spec = _heldout_spec(Path(directory), split.name)
    rows = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    row = _SNAPSHOT_ROWS.decode(line)
                except ValueError as exc:  # JSONDecodeError or DocumentError
                    raise SplitError(f"{path}:{number}: not a JSON row ({exc}); the file changed after "
                                     "validation") from None
                key = row_key(row, spec)
                if number > len(split.test_keys) or split.test_keys[number - 1] != key:
                    raise SplitError(f"{path}:{number}: the row's key {key} is not the manifest's key for "
                                     "this line; the file changed after validation")
                rows.append((key, row))
    except (OSError, ValueError) as exc:
        if isinstance(exc, SplitError):
            raise
        raise SplitError(f"{path} cannot be read: {exc}") from None
    if len(rows) != len(split.test_keys):
        raise SplitError(f"{path} has {len(rows)} rows, {MANIFEST_FILE} records {len(split.test_keys)}")
    return rows


def _heldout_spec(directory: Path, name: str) -> Any:
    """How the snapshot's ``name@test`` entry maps the columns (its rows' keys follow the mapping)."""
    info_path = directory / DATA_CONFIG
    try:
        info = read_json(info_path)
        return entry_spec(heldout_entry_name(name), info[heldout_entry_name(name)])
    except (OSError, ValueError, KeyError, TypeError) as exc:  # DocumentError is a ValueError
        raise SplitError(f"{info_path} has no usable entry {heldout_entry_name(name)!r} ({exc}); it was written "
                         "by validation and must not be touched") from None
