"""A full volume while the validate step streams the split snapshot: a storage error that names the path (not
a validation problem blamed on the source file), and nothing left on the volume (a real tmpfs, no simulation)."""

from __future__ import annotations

import json
import os

import pytest

from components.common.storage import StorageError
from components.data.split_writer import validate_and_split


def test_a_full_volume_while_splitting_leaves_nothing_and_names_the_volume(small_volume, tmp_path):
    source = tmp_path / "data"
    source.mkdir()
    (source / "dataset_info.json").write_text(json.dumps({"ds": {"file_name": "ds.jsonl"}}))
    rows = [{"instruction": f"Row {i}: " + "words " * 40, "input": "", "output": f"Answer {i}."} for i in range(2000)]
    (source / "ds.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))  # ~0.6 MB, the volume 256 KiB
    before = (source / "ds.jsonl").read_bytes()
    with pytest.raises(StorageError, match="no space left on the storage volume") as failure:
        validate_and_split(source, ["ds"], small_volume / "run" / "data", test_fraction=0.1, min_test_rows=1,
                           max_test_rows=100, cutoff_len=1024)
    assert str(small_volume) in str(failure.value)
    assert os.listdir(small_volume / "run") == []  # the temporary snapshot is gone
    assert (source / "ds.jsonl").read_bytes() == before
