"""The held-out test split: each row's side fixed by its content, stable under appends, capped by the smallest
keys, refused when too small, published atomically, read back by LLaMA-Factory's own loader, and a real
training run that never sees a test row."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from builders import write_dataset

from components.common.storage import StorageError, run_dir
from components.data.leakage import Leak, answers, find_leaks
from components.data.result import render_report
from components.data.row_keys import entry_spec, row_key
from components.data.split import (
    MANIFEST_FILE,
    SplitError,
    heldout_entry_name,
    is_test_row,
    read_manifest,
    read_verified_test_rows,
    row_side,
    snapshot_dir,
    split_hash,
    validation_entry_name,
    verify_snapshot,
)
from components.data.split_writer import validate_and_split
from components.demo.samples import SAMPLES
from configs.loading import load_config
from configs.schema import ConfigError, DatasetConfig

ALPACA = entry_spec("ds", {"file_name": "ds.jsonl"})  # the default alpaca columns


def _key(row: dict) -> str:
    return row_key(row, ALPACA)


def _row(index: int, topic: str = "number") -> dict:
    return {"instruction": f"Say the {topic} {index} in words.", "input": "", "output": f"It is {topic} {index}."}


def _split(source: Path, names: list[str], destination: Path, *, fraction: float = 0.25, minimum: int = 1,
           cap: int = 10_000, **checks: Any):
    return validate_and_split(source, names, destination, test_fraction=fraction, min_test_rows=minimum,
                              max_test_rows=cap, cutoff_len=1024, **checks)


def _three_way(source: Path, names: list[str], destination: Path, **options: Any):
    """A split with a validation side: 20 % test, the next 20 % validation."""
    return _split(source, names, destination, fraction=0.2, val_fraction=0.2, min_val_rows=1, max_val_rows=10_000,
                  **options)


def _lines(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _set(example: dict) -> dict:
    """An aligned LLaMA-Factory example without its unset (None) fields."""
    return {key: value for key, value in example.items() if value is not None}


def _sides(snapshot: Path, name: str) -> dict[str, str]:
    """key -> 'train', 'test' or 'val' for every row in the snapshot's files of dataset ``name`` (each row in
    exactly one file)."""
    split = read_manifest(snapshot).dataset(name)
    sides: dict[str, str] = {}
    for side, (file, _) in split.side_files().items():
        for row in _lines(snapshot / file):
            assert sides.setdefault(_key(row), side) == side, f"{row} is on two sides"
    return sides


# -- the rule ------------------------------------------------------------------------------------------------


def test_appending_rows_moves_no_earlier_row_across_and_identical_rows_share_a_side(tmp_path):
    rows = [_row(i) for i in range(300)]
    rows[250] = rows[10]  # a duplicate inside the dataset
    shared = [rows[i] for i in range(0, 300, 3)] + [_row(i, "word") for i in range(60)]  # a second dataset
    info = {"ds": {"file_name": "ds.jsonl"}, "other": {"file_name": "other.json"}}
    source = write_dataset(tmp_path / "data", info, {"ds.jsonl": rows, "other.json": shared})
    before, manifest = _split(source, ["ds", "other"], tmp_path / "before")
    assert before.ok and manifest is not None, before.failure_message()

    with open(source / "ds.jsonl", "a", encoding="utf-8") as handle:  # append 200 rows
        handle.writelines(json.dumps(_row(i, "colour")) + "\n" for i in range(200))
    after, appended = _split(source, ["ds", "other"], tmp_path / "after")
    assert after.ok and appended is not None

    old, new = _sides(tmp_path / "before", "ds"), _sides(tmp_path / "after", "ds")
    assert len(old) == 299 and len(new) == 499  # distinct rows (one duplicate)
    assert {key: new[key] for key in old} == old  # no earlier row changed side
    # The files only grew: every earlier line is still there, in order, followed by the new ones.
    for side in ("train", "test"):
        assert (tmp_path / "after" / side / "ds.jsonl").read_bytes().startswith(
            (tmp_path / "before" / side / "ds.jsonl").read_bytes())
    # The side is the rule's and nothing else's, and both datasets agree on every shared row.
    assert all(side == ("test" if is_test_row(key, 0.25) else "train") for key, side in new.items())
    other = _sides(tmp_path / "after", "other")
    assert {key: other[key] for key in other if key in new} == {key: new[key] for key in other if key in new}
    assert len(set(other) & set(new)) == 100
    # The duplicate is held out or trained on as a whole, and scored once.
    duplicate = _key(rows[10])
    split = appended.dataset("ds")
    assert split.test_keys.count(duplicate) == (1 if new[duplicate] == "test" else 0)
    assert split.rows == 500 and split.train_rows + split.held_out_rows == 500
    assert 0.18 < split.held_out_rows / split.rows < 0.32


def test_the_cap_scores_the_smallest_keys_and_stays_stable_under_appends(tmp_path):
    source = write_dataset(tmp_path / "data", {"ds": {"file_name": "ds.jsonl"}},
                           {"ds.jsonl": [_row(i) for i in range(300)]})
    _, first = _split(source, ["ds"], tmp_path / "first", fraction=0.5, cap=10)
    held = sorted(key for key in map(_key, (_row(i) for i in range(300))) if is_test_row(key, 0.5))
    split = first.dataset("ds")
    assert split.held_out_rows == len(held) > 100  # well past twice the cap: the candidate set was trimmed
    assert sorted(split.test_keys) == held[:10] and split.scored_rows == 10
    assert split.test_split_hash == split_hash(held[:10])
    # In test-file order (source order), and no held-out row is trained on, scored or not.
    assert [key for key, _ in read_verified_test_rows(tmp_path / "first", split)] == split.test_keys
    train_keys = {_key(row) for row in _lines(tmp_path / "first" / split.train_file)}
    assert not train_keys & set(held) and len(train_keys) == 300 - len(held)

    with open(source / "ds.jsonl", "a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(_row(i, "letter")) + "\n" for i in range(300))
    _, second = _split(source, ["ds"], tmp_path / "second", fraction=0.5, cap=10)
    later = second.dataset("ds")
    held_now = sorted(key for key, side in _sides(tmp_path / "second", "ds").items() if side == "test")
    all_held = sorted({key for key in map(_key, [_row(i) for i in range(300)] + [_row(i, "letter")
                                                                                    for i in range(300)])
                       if is_test_row(key, 0.5)})
    assert sorted(later.test_keys) == all_held[:10] == held_now
    # A row that stopped being scored did so only because smaller new keys came; it is still not trained on.
    dropped = set(split.test_keys) - set(later.test_keys)
    assert all(key > max(later.test_keys) for key in dropped)
    assert not dropped & {_key(row) for row in _lines(tmp_path / "second" / later.train_file)}


def test_a_dataset_too_small_to_hold_out_the_minimum_fails_naming_it(tmp_path):
    info = {"big": {"file_name": "big.jsonl"}, "small": {"file_name": "small.jsonl"}}
    source = write_dataset(tmp_path / "data", info, {"big.jsonl": [_row(i) for i in range(400)],
                                              "small.jsonl": [_row(i, "word") for i in range(30)]})
    destination = tmp_path / "out" / "data"
    result, manifest = _split(source, ["big", "small"], destination, fraction=0.1, minimum=10)
    assert manifest is None and not result.ok
    (problem,) = result.problems
    assert problem.file == "small.jsonl"
    assert "dataset 'small' (30 rows, dataset.test_fraction 0.1) holds out only" in problem.message
    assert "at least 10 are needed (dataset.min_test_rows): raise dataset.test_fraction or add rows" in problem.message
    assert "small" in result.failure_message()
    assert not destination.exists() and list(destination.parent.iterdir()) == []  # not even a temporary copy

    # Every row held out leaves nothing to train on: also a problem that names the dataset.
    tiny = write_dataset(tmp_path / "tiny", {"t": {"file_name": "t.jsonl"}}, {"t.jsonl": [_row(1), _row(2)]})
    result, manifest = _split(tiny, ["t"], tmp_path / "tiny-out", fraction=0.999999, minimum=1)
    assert manifest is None and "dataset 't' (2 rows" in str(result.problems[0])
    assert "leaves no row for training" in str(result.problems[0])


def test_split_settings_are_bounded_and_described():
    fields = DatasetConfig.model_fields
    assert all(fields[name].description for name in ("test_fraction", "min_test_rows", "max_test_rows",
                                                     "val_fraction", "min_val_rows", "max_val_rows"))
    assert (DatasetConfig().test_fraction, DatasetConfig().min_test_rows, DatasetConfig().max_test_rows) == (
        0.05, 20, 2000)
    assert (DatasetConfig().val_fraction, DatasetConfig().min_val_rows, DatasetConfig().max_val_rows) == (
        0.05, 20, 1000)
    for override, words in (("dataset.test_fraction=0", "dataset.test_fraction"),
                            ("dataset.test_fraction=1", "dataset.test_fraction"),
                            ("dataset.min_test_rows=0", "dataset.min_test_rows"),
                            ("dataset.max_test_rows=10", "min_test_rows (20) must not exceed max_test_rows (10)"),
                            ("dataset.val_fraction=-0.1", "dataset.val_fraction"),
                            ("dataset.min_val_rows=0", "dataset.min_val_rows"),
                            ("dataset.max_val_rows=10", "min_val_rows (20) must not exceed max_val_rows (10)"),
                            ("dataset.val_fraction=0.46", r"dataset: test_fraction \+ val_fraction (0.05 \+ 0.46) "
                                                          "must be at most 0.5"),
                            ("training.val_size=0.1", "training: training.val_size was removed: .* set "
                                                      "dataset.val_fraction instead")):
        with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
            load_config("lora", overrides=[override])
    assert load_config("lora", overrides=["dataset.val_fraction=0.45"]).dataset.val_fraction == 0.45
    assert load_config("lora", overrides=["dataset.val_fraction=0"]).dataset.val_fraction == 0  # no validation side


# -- the validation side -------------------------------------------------------------------------------------


def test_validation_rows_are_the_next_band_of_the_same_hash_disjoint_and_stable_under_appends(tmp_path):
    """The validation side is ``[test_fraction, test_fraction + val_fraction)`` of the one position that decides
    the test side: disjoint from test and train by construction, the test side exactly what it is without a
    validation side, stable when rows are appended, and a duplicate on one side as a whole."""
    rows = [_row(i) for i in range(400)]
    rows[300] = rows[7]  # a duplicate inside the dataset
    info = {"ds": {"file_name": "ds.jsonl", "num_samples": 200}}
    source = write_dataset(tmp_path / "data", info, {"ds.jsonl": rows})
    result, manifest = _three_way(source, ["ds"], tmp_path / "before")
    assert result.ok and manifest is not None, result.failure_message()
    _, without = _split(source, ["ds"], tmp_path / "no-validation", fraction=0.2)

    split = manifest.dataset("ds")
    sides = _sides(tmp_path / "before", "ds")
    assert all(side == row_side(key, 0.2, 0.2) for key, side in sides.items())
    assert set(split.val_keys) == {key for key, side in sides.items() if side == "val"}
    assert split.val_rows == sum(row_side(_key(row), 0.2, 0.2) == "val" for row in rows) > 40
    assert split.train_rows + split.held_out_rows + split.val_rows == 400
    assert 0.12 < split.val_rows / 400 < 0.28
    # Adding a validation side moves no test row: the gate's rows are the same with or without it.
    assert split.test_keys == without.dataset("ds").test_keys and split.test_sha256 == without.dataset("ds").test_sha256
    assert split.val_split_hash == split_hash(split.val_keys) and manifest.val_split_hash
    assert manifest.validation_entries() == [validation_entry_name("ds")] == ["ds@val"]
    written = json.loads((tmp_path / "before" / "dataset_info.json").read_text())
    assert written["ds@val"] == {"file_name": "val/ds.jsonl"}  # every scored validation row is evaluated
    assert written["ds"] == {"file_name": "train/ds.jsonl", "num_samples": 200}
    assert verify_snapshot(tmp_path / "before") == manifest

    with open(source / "ds.jsonl", "a", encoding="utf-8") as handle:  # append 200 rows
        handle.writelines(json.dumps(_row(i, "colour")) + "\n" for i in range(200))
    _, appended = _three_way(source, ["ds"], tmp_path / "after")
    after = _sides(tmp_path / "after", "ds")
    assert {key: after[key] for key in sides} == sides  # no earlier row changed side
    for side in ("train", "test", "val"):  # the files only grew
        assert (tmp_path / "after" / side / "ds.jsonl").read_bytes().startswith(
            (tmp_path / "before" / side / "ds.jsonl").read_bytes())
    duplicate = _key(rows[7])
    assert appended.dataset("ds").val_keys.count(duplicate) == (1 if after[duplicate] == "val" else 0)


def test_the_validation_cap_scores_the_smallest_keys_and_a_small_side_fails_naming_the_dataset(tmp_path):
    source = write_dataset(tmp_path / "data", {"big": {"file_name": "big.jsonl"}, "small": {"file_name": "s.jsonl"}},
                           {"big.jsonl": [_row(i) for i in range(400)],
                            "s.jsonl": [_row(i, "word") for i in range(30)]})
    _, manifest = _three_way(source, ["big"], tmp_path / "capped")
    uncapped = manifest.dataset("big").val_keys
    _, capped = _split(source, ["big"], tmp_path / "cap", fraction=0.2, val_fraction=0.2, min_val_rows=1,
                       max_val_rows=10)
    split = capped.dataset("big")
    assert sorted(split.val_keys) == sorted(uncapped)[:10] and split.scored_val_rows == 10
    assert split.val_rows == len(uncapped)  # the rest of the band: never trained on, never scored
    train = {_key(row) for row in _lines(tmp_path / "cap" / split.train_file)}
    assert not train & set(uncapped)

    destination = tmp_path / "out" / "data"
    result, refused = _split(source, ["big", "small"], destination, fraction=0.2, val_fraction=0.1, min_val_rows=10,
                             max_val_rows=100)
    assert refused is None and not destination.exists()
    (problem,) = result.problems
    assert problem.file == "s.jsonl"
    assert "dataset 'small' (30 rows, dataset.val_fraction 0.1) holds out only" in problem.message
    assert "validation; at least 10 are needed (dataset.min_val_rows): raise dataset.val_fraction" in problem.message


def _chat(*texts: str, system: str | None = None) -> dict:
    turns = [{"from": "human" if number % 2 == 0 else "gpt", "value": text} for number, text in enumerate(texts)]
    return {"conversations": ([{"from": "system", "value": system}] if system is not None else []) + turns}


def test_copies_the_trainer_cannot_tell_apart_share_a_side(tmp_path):
    """Issue 23, first "Why": keyed on the whole JSON row, copies of one example landed on both sides (60-80 % of
    the scored test rows of such datasets had a trained twin). Each example here comes as seven rows: with
    unmapped ids, a trailing space, a missing versus an empty ``input``, a sharegpt copy, a system-prompt
    variant and a multi-turn extension. Every example's rows share one side, and its alpaca copies are scored
    once."""
    alpaca, chats = [], []
    for i in range(40):
        question, answer = f"Which colour do you get by mixing paint pair {i}?", f"Mixing pair {i} gives a brown shade."
        alpaca += [{"id": f"a-{i}", "instruction": question, "input": "", "output": answer},
                   {"id": f"b-{i}", "instruction": question, "input": "", "output": answer},
                   {"instruction": question + " ", "output": answer + "\n"}]  # trailing space; no input at all
        chats += [_chat(question, answer), _chat(question, answer, system="You are a painter."),
                  _chat(question, answer, "And with white?", f"A lighter shade {i}.")]
    info = {"paint": {"file_name": "paint.jsonl"},
            "chat": {"file_name": "chat.jsonl", "formatting": "sharegpt", "columns": {"messages": "conversations"},
                     "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                              "system_tag": "system"}}}
    source = write_dataset(tmp_path / "data", info, {"paint.jsonl": alpaca, "chat.jsonl": chats})
    result, manifest = _split(source, ["paint", "chat"], tmp_path / "snapshot", fraction=0.3)
    assert result.ok and manifest is not None, result.failure_message()

    def trained(name: str) -> list[bool]:
        kept = {json.dumps(row, sort_keys=True) for row in _lines(tmp_path / "snapshot" / "train" / f"{name}.jsonl")}
        return [json.dumps(row, sort_keys=True) in kept for row in (alpaca if name == "paint" else chats)]

    paint, chat = trained("paint"), trained("chat")
    sides = [{*paint[3 * i:3 * i + 3], *chat[3 * i:3 * i + 3]} for i in range(40)]
    assert all(len(side) == 1 for side in sides), [i for i, side in enumerate(sides) if len(side) > 1]
    held = sum(side == {False} for side in sides)
    assert 4 <= held <= 24  # both sides are used
    assert manifest.dataset("paint").held_out_rows == 3 * held and manifest.dataset("paint").scored_rows == held
    assert manifest.dataset("chat").scored_rows == 3 * held  # three different conversations per example


def test_normalisation_equal_rows_have_one_key_and_an_example_one_position():
    chat_spec = entry_spec("chat", {"file_name": "c.jsonl", "formatting": "sharegpt"})
    mapped = entry_spec("mapped", {"file_name": "m.jsonl", "columns": {"prompt": "q", "response": "a",
                                                                       "system": "sys"}})
    row = {"instruction": "Caf\u00e9 opening  hours?", "input": "", "output": "From 8 to 5."}
    same = [{**row, "id": 7}, {"instruction": " Cafe\u0301 opening hours?\n", "output": "From 8 to 5.  "},
            {**row, "input": None}]
    assert {_key(other) for other in same} == {_key(row)}  # an unmapped id, NFC, whitespace, missing = empty
    assert row_key({"q": row["instruction"], "a": row["output"], "instruction": "ignored"}, mapped) == _key(row)

    example = _key(row)[:16]
    variants = [(row_key({**row, "input": "at the station"}, ALPACA), False),
                (row_key({"q": row["instruction"], "a": row["output"], "sys": "Be brief."}, mapped), True),
                (row_key(_chat(row["instruction"], row["output"]), chat_spec), True),
                (row_key(_chat(row["instruction"], row["output"], system="Be brief."), chat_spec), True),
                (row_key(_chat(row["instruction"], row["output"], "And Sundays?", "Closed."), chat_spec), True),
                (row_key({**row, "output": "From 9 to 5."}, ALPACA), False)]
    assert [key[:16] == example for key, _ in variants] == [shares for _, shares in variants]
    # The sharegpt copy is the same row to the trainer (the same turns); every other variant is another row.
    assert [key == _key(row) for key, _ in variants] == [False, False, True, False, False, False]


# -- the leak check ------------------------------------------------------------------------------------------


def test_find_leaks_matches_answers_across_prompts_datasets_and_formats():
    chat_spec = entry_spec("chat", {"file_name": "c.jsonl", "formatting": "sharegpt"})
    answer = "The tide comes in twice a day because the moon pulls on the oceans of the turning earth."
    held_out = [("test.jsonl:1", ALPACA, {"instruction": "Why are there tides?", "output": answer}),
                ("test.jsonl:2", ALPACA, {"instruction": "Short?", "output": "Yes, it is."}),  # too short to tell
                ("test.jsonl:3", ALPACA, {"instruction": "Name the pulling body.", "output": "the moon pulls on"}),
                ("test.jsonl:4", ALPACA, {"instruction": "Unrelated.", "output": "Bread rises when yeast makes gas."})]
    trained = [("train.jsonl:9", ALPACA, {"instruction": "Other prompt", "output": "Yes, it is."}),
               ("chat.jsonl:2", chat_spec, _chat("Explain tides to a child.", "Well! " + answer.upper() + " See?")),
               ("chat.jsonl:5", chat_spec, _chat("Hi", "Hello there, how are you today my friend?"))]
    def side(rows: list) -> list:
        return [(ref, answers(row, spec)) for ref, spec, row in rows]

    report = find_leaks(side(held_out), side(trained), ngram=13)
    assert (report.held_out_rows, report.leaked_rows) == (4, 1)
    assert report.leaks == [Leak("test.jsonl:1", "chat.jsonl:2", answer[:77] + "...")]
    # A short answer (5 words or more, under the n-gram) leaks when it appears whole in a train answer.
    short = [("test.jsonl:5", ALPACA, {"instruction": "Q", "output": "The moon pulls on the oceans"})]
    assert find_leaks(side(short), side(trained), ngram=13).leaked_rows == 1
    assert find_leaks(side(held_out + short), side(trained), ngram=13, listed=1).leaked_rows == 2  # one named
    assert find_leaks(side(held_out), [], ngram=13).leaked_rows == 0


def test_near_duplicate_answers_across_the_split_fail_validation_naming_the_rows(tmp_path):
    """Different prompts, one long answer: a different example each (so the split may part them), and a
    near-duplicate the leak check finds when one is held out and the other trained on."""
    import random

    words = [f"w{number}" for number in range(500)]
    rows, pairs = [], []
    for i in range(40):
        answer = " ".join(random.Random(i).choices(words, k=20)) + "."  # no run of 13 words shared with another
        first, second = ({"instruction": f"How do I cook dish {i}?", "output": answer},
                         {"instruction": f"Give me the steps for meal number {i}.", "output": answer + " Enjoy!"})
        rows += [first, second]
        pairs.append((is_test_row(_key(first), 0.25), is_test_row(_key(second), 0.25)))
    rows += [_row(i) for i in range(40)]
    source = write_dataset(tmp_path / "data", {"ds": {"file_name": "ds.jsonl"}}, {"ds.jsonl": rows})
    expected = sum(one != other for one, other in pairs)
    assert expected >= 5

    result, manifest = _split(source, ["ds"], tmp_path / "refused")
    assert manifest is None and not (tmp_path / "refused").exists()
    assert result.leaked_rows == expected and result.leak_checked_rows > 0
    message = result.failure_message()
    assert (f"{expected} held-out row(s) have a near-duplicate answer on the train side (a run of 13 words, or "
            "the whole answer); at most 0 allowed (dataset.max_leaked_rows)") in message
    first_leak = next(2 * i + (0 if one else 1) + 1 for i, (one, other) in enumerate(pairs) if one != other)
    assert f"ds.jsonl:{first_leak}: held out, but its answer 'w" in message  # named by source file and row
    assert "near-duplicate on the train side: ds.jsonl:" in message

    result, manifest = _split(source, ["ds"], tmp_path / "kept", max_leaked=-1)
    assert result.ok and manifest is not None and result.leaked_rows == expected
    assert len(result.warnings) == expected and result.metrics()["leaked_rows"] == expected
    assert f"near-duplicates across the split: {expected} of {result.leak_checked_rows} scored held-out rows" in \
        render_report(result, manifest)
    assert sorted(path.name for path in (tmp_path / "kept" / "train").iterdir()) == ["ds.jsonl"]  # no side files
    assert _split(source, ["ds"], tmp_path / "allowed", max_leaked=expected)[1] is not None

    # The validation side is checked too: a validation row whose twin is trained on leaks (a twin on the test side
    # does not: neither is trained on).
    sides = [(row_side(_key(rows[2 * i]), 0.2, 0.2), row_side(_key(rows[2 * i + 1]), 0.2, 0.2)) for i in range(40)]
    both_sides = sum((one == "train") != (other == "train") for one, other in sides)
    from_val = sum("val" in pair and "train" in pair for pair in sides)
    assert from_val >= 3
    result, manifest = _three_way(source, ["ds"], tmp_path / "three", max_leaked=-1)
    assert result.ok and result.leaked_rows == both_sides


# -- the snapshot --------------------------------------------------------------------------------------------


def test_every_source_format_round_trips_and_llamafactory_reads_both_sides(tmp_path, tiny_model_dir):
    """Rows come back as parsed (``row_key(json.loads(line), spec)`` is the key) in source order, from JSON,
    JSON Lines, CSV, Parquet and a folder of shards; LLaMA-Factory's own loader reads each train entry and
    each ``@test`` entry exactly as the source's rows convert."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from llamafactory.data.converter import get_dataset_converter
    from llamafactory.data.loader import _get_merged_dataset
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.hparams import get_train_args

    chats = [{"conversations": [{"from": "human", "value": f"Question {i}?"}, {"from": "gpt", "value": f"Answer {i}."}],
              "meta": {"id": i, "tags": ["a", "ü"]}} for i in range(40)]
    csv_text = "instruction,input,output\n" + "".join(f'"Say ""{i}""",,"{i},\nin digits"\n' for i in range(40))
    info = {
        "array": {"file_name": "array.json", "num_samples": 25, "split": "train", "file_sha1": "ignored"},
        "lines": {"file_name": "lines.jsonl", "formatting": "sharegpt", "columns": {"messages": "conversations"}},
        "table": {"file_name": "table.csv"},
        "columnar": {"file_name": "columnar.parquet"},
        "shards": {"file_name": "shards"},
    }
    source = write_dataset(tmp_path / "data", info, {
        "array.json": [_row(i) for i in range(40)], "lines.jsonl": chats, "table.csv": csv_text,
        "shards/part-1.jsonl": [_row(i, "shard") for i in range(20)],
        "shards/part-2.jsonl": [_row(i, "shard") for i in range(20, 40)],
    })
    pq.write_table(pa.Table.from_pylist([_row(i, "column") for i in range(40)]), source / "columnar.parquet")
    names = list(info)
    snapshot = tmp_path / "snapshot"
    result, manifest = _split(source, names, snapshot, fraction=0.3)
    assert result.ok and manifest is not None, result.failure_message()

    originals = {
        "array": [_row(i) for i in range(40)], "lines": chats,
        "table": [{"instruction": f'Say "{i}"', "input": "", "output": f"{i},\nin digits"} for i in range(40)],
        "columnar": [_row(i, "column") for i in range(40)],
        "shards": [_row(i, "shard") for i in range(40)],
    }
    written = json.loads((snapshot / "dataset_info.json").read_text())
    assert list(written) == [entry for name in names for entry in (name, heldout_entry_name(name))]
    assert written["array"] == {"file_name": "train/array.jsonl", "num_samples": 25}  # no source-only keys
    assert written["array@test"] == {"file_name": "test/array.jsonl"}  # every scored row is evaluated
    assert written["lines@test"]["columns"] == {"messages": "conversations"}
    assert verify_snapshot(snapshot) == manifest

    args = dict(model_name_or_path=str(tiny_model_dir), stage="sft", do_train=True, finetuning_type="lora",
                dataset=",".join(names), dataset_dir=str(snapshot), template="default", cutoff_len=256,
                output_dir=str(tmp_path / "out"), overwrite_cache=True, preprocessing_num_workers=1, report_to="none")
    model_args, data_args, training_args, _, _ = get_train_args(args)
    every_entry = [entry for name in names for entry in (name, heldout_entry_name(name))]
    loaded = _get_merged_dataset(every_entry, model_args, data_args, training_args, "sft", return_dict=True)
    attrs = dict(zip(every_entry, get_dataset_list(every_entry, str(snapshot)), strict=True))
    for name in names:
        split = manifest.dataset(name)
        train, test = _lines(snapshot / split.train_file), _lines(snapshot / split.test_file)
        spec = entry_spec(name, info[name])
        keyed = [(row_key(row, spec), row) for row in originals[name]]
        assert train == [row for key, row in keyed if not is_test_row(key, 0.3)]
        assert test == [row for key, row in keyed if is_test_row(key, 0.3)]
        assert [row_key(row, spec) for row in test] == split.test_keys and len(train) == split.train_rows
        convert = get_dataset_converter(attrs[name].formatting, attrs[name], data_args)
        for entry, rows in ((name, train), (heldout_entry_name(name), test)):
            examples, expected = [_set(example) for example in loaded[entry]], [_set(convert(row)) for row in rows]
            if entry == "array":  # num_samples: LLaMA-Factory draws 25 of the train rows
                assert len(examples) == 25 and all(example in expected for example in examples)
            else:
                assert examples == expected, entry


def test_values_json_lines_cannot_hold_are_named_or_kept_readable(tmp_path):
    """NaN is a problem of its row and field; so is a lone surrogate (Arrow, LLaMA-Factory's loader, refuses
    it even escaped); Parquet timestamps become text, and the line reads back to the row whose key the
    manifest records."""
    import datetime
    import io

    import pyarrow as pa
    import pyarrow.json as pa_json
    import pyarrow.parquet as pq

    lines = [json.dumps(_row(i)) for i in range(12)] + ['{"instruction": "a", "output": "b", "score": NaN}']
    source = write_dataset(tmp_path / "data", {"nan": {"file_name": "nan.jsonl"}, "odd": {"file_name": "odd.jsonl"},
                                        "stamped": {"file_name": "stamped.parquet"}},
                    {"nan.jsonl": "\n".join(lines) + "\n",
                     "odd.jsonl": "".join(json.dumps({**_row(i), "input": "\ud800 lone"}) + "\n" for i in range(12))})
    stamp = datetime.datetime(2025, 3, 14, 9, 26, 53)
    pq.write_table(pa.Table.from_pylist([{**_row(i), "created": stamp} for i in range(12)]),
                   source / "stamped.parquet")
    result, _ = _split(source, ["nan"], tmp_path / "nan", fraction=0.5)
    assert [(p.file, p.row, p.field) for p in result.problems] == [("nan.jsonl", 13, "score")]
    assert "NaN or Infinity" in result.problems[0].message
    result, _ = _split(source, ["odd"], tmp_path / "odd", fraction=0.5)
    assert [(p.file, p.row) for p in result.problems] == [("odd.jsonl", row) for row in range(1, 13)]
    assert "lone surrogate" in result.problems[0].message and not (tmp_path / "odd").exists()
    with pytest.raises(pa.ArrowInvalid, match="surrogate"):  # what LLaMA-Factory's loader would have said
        pa_json.read_json(io.BytesIO(json.dumps({"input": "\ud800 lone"}).encode()))
    result, manifest = _split(source, ["stamped"], tmp_path / "kept", fraction=0.5)
    assert result.ok, result.failure_message()
    split = manifest.dataset("stamped")
    test = _lines(tmp_path / "kept" / split.test_file)
    read_back = _lines(tmp_path / "kept" / split.train_file) + test
    assert len(read_back) == 12 and [_key(row) for row in test] == split.test_keys
    assert {row["created"] for row in read_back} == {str(stamp)}


def test_the_snapshot_is_published_atomically(tmp_path):
    rows = [_row(i) for i in range(500)] + [{"instruction": "", "output": "x"}]  # the last row is invalid
    source = write_dataset(tmp_path / "data", {"ds": {"file_name": "ds.jsonl"}}, {"ds.jsonl": rows})
    destination = tmp_path / "run" / "data"
    result, manifest = _split(source, ["ds"], destination)
    assert manifest is None and result.problems[0].row == 501
    assert list((tmp_path / "run").iterdir()) == []  # 500 rows were streamed to a temporary copy, now gone

    (source / "ds.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[:500]))
    _, first = _split(source, ["ds"], destination)
    assert first is not None and verify_snapshot(destination) == first
    with pytest.raises(StorageError, match="already exists"):
        _split(source, ["ds"], destination)  # a snapshot is never overwritten by accident
    assert verify_snapshot(destination) == first
    with open(source / "ds.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(_row(1000)) + "\n")
    _, second = validate_and_split(source, ["ds"], destination, replace=True, test_fraction=0.25, min_test_rows=1,
                                   max_test_rows=10_000, cutoff_len=1024)  # a retried validate step
    assert second.dataset("ds").rows == 501 and verify_snapshot(destination) == second
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == ["data"]


def test_manifest_and_file_changes_are_named(tmp_path):
    source = write_dataset(tmp_path / "data", {"ds": {"file_name": "ds.jsonl"}},
                           {"ds.jsonl": [_row(i) for i in range(80)]})
    snapshot = tmp_path / "snapshot"
    _, manifest = _split(source, ["ds"], snapshot)
    split = manifest.dataset("ds")

    test_file = snapshot / split.test_file
    original = test_file.read_bytes()
    test_file.write_bytes(original.replace(b"It is", b"It was", 1))
    with pytest.raises(SplitError, match=r"test/ds\.jsonl changed after validation"):
        verify_snapshot(snapshot)
    with pytest.raises(SplitError, match=r"test/ds\.jsonl:1: the row's key"):
        read_verified_test_rows(snapshot, split)
    test_file.write_bytes(original)
    assert [row for _, row in read_verified_test_rows(snapshot, split)] == _lines(test_file)

    info = snapshot / "dataset_info.json"
    info.write_text(info.read_text().replace("train/ds.jsonl", "test/ds.jsonl"))  # train on the test rows
    with pytest.raises(SplitError, match=r"dataset_info\.json changed after validation"):
        verify_snapshot(snapshot)

    data = json.loads((snapshot / MANIFEST_FILE).read_text())
    data["datasets"][0]["train_rows"] = -1
    (snapshot / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(SplitError, match=r"split\.json is not a valid split manifest: field 'datasets\.0\.train_rows'"):
        read_manifest(snapshot)
    (snapshot / MANIFEST_FILE).write_text("{")
    with pytest.raises(SplitError, match=r"split\.json is not a valid split manifest: field '\(top level\)': Invalid"):
        read_manifest(snapshot)
    (snapshot / MANIFEST_FILE).unlink()
    with pytest.raises(SplitError, match=r"split\.json does not exist"):
        read_manifest(snapshot)


def test_contamination_is_checked_on_both_sides(tmp_path):
    question = "Which river flows through the old mill town of Ashbury in the valley story?"
    (tmp_path / "mmlu" / "test").mkdir(parents=True)
    (tmp_path / "mmlu" / "test" / "story_test.csv").write_text(f'"{question}",a,b,c,d,A\n')
    candidates = [{**_row(i), "input": question} for i in range(40)]
    on_test = next(row for row in candidates if is_test_row(_key(row), 0.25))
    on_train = next(row for row in candidates if not is_test_row(_key(row), 0.25))
    rows = [_row(i) for i in range(60)] + [on_test, on_train]
    source = write_dataset(tmp_path / "data", {"ds": {"file_name": "ds.jsonl"}}, {"ds.jsonl": rows})
    result, manifest = _split(source, ["ds"], tmp_path / "snapshot", eval_data_dir=tmp_path / "mmlu")
    assert manifest is not None and result.contaminated_rows == 2
    assert sorted(warning.row for warning in result.warnings) == [61, 62]
    failed, none = _split(source, ["ds"], tmp_path / "refused", eval_data_dir=tmp_path / "mmlu", max_contaminated=1)
    assert none is None and "2 training row(s) contain MMLU test questions" in failed.failure_message()


# -- training ------------------------------------------------------------------------------------------------


def test_a_training_run_by_hand_splits_first_and_the_trainer_never_sees_a_test_row(local_config):
    """A real LoRA run on the tiny model (train run by hand: it validates and splits the data itself), then
    LLaMA-Factory's own loader on the train.yaml the trainer used: it holds exactly the train rows."""
    from llamafactory.data.converter import get_dataset_converter
    from llamafactory.data.loader import _get_merged_dataset
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.hparams import get_train_args

    from components.train.train import train_model

    cfg = load_config("local", overrides=[f"storage.mount_path={local_config.storage.mount_path}",
                                          f"mlflow.tracking_uri={local_config.mlflow.tracking_uri}",
                                          "training.max_steps=2", "training.save_steps=2"])
    result = train_model(cfg, "by-hand")
    assert result.metrics["global_step"] == 2
    snapshot = snapshot_dir(cfg, "by-hand")
    manifest = verify_snapshot(snapshot)
    split = manifest.dataset("alpaca_sample")
    assert split.scored_rows >= 10 and split.train_rows >= 2 * split.scored_rows  # the demo: 25 % test, 15 % validation

    rendered = yaml.safe_load((run_dir(cfg, "by-hand") / "train.yaml").read_text())
    assert rendered["dataset"] == "alpaca_sample" and rendered["dataset_dir"] == str(snapshot)
    rendered.update(output_dir=str(Path(cfg.storage.mount_path) / "loader-check"), report_to="none")
    rendered.pop("resume_from_checkpoint", None)
    model_args, data_args, training_args, _, _ = get_train_args(rendered)
    (seen,) = _get_merged_dataset(data_args.dataset, model_args, data_args, training_args, "sft",
                                  return_dict=True).values()

    (attr,) = get_dataset_list(["alpaca_sample"], str(SAMPLES / "sample_data"))
    convert = get_dataset_converter(attr.formatting, attr, data_args)
    source = json.loads((Path(cfg.storage.mount_path) / "data" / "alpaca_sample.json").read_text())

    def text(example: dict) -> str:
        return json.dumps([example["_prompt"], example["_response"], example["_system"]])

    data = cfg.dataset
    sides = [row_side(_key(row), data.test_fraction, data.val_fraction) for row in source]
    train = [text(convert(row)) for row, side in zip(source, sides, strict=True) if side == "train"]
    held_out = {text(convert(row)) for row, side in zip(source, sides, strict=True) if side == "test"}
    validation = {text(convert(row)) for row, side in zip(source, sides, strict=True) if side == "val"}
    assert [text(example) for example in seen] == train and len(train) == split.train_rows
    assert not held_out & {text(example) for example in seen} and len(held_out) == split.held_out_rows
    assert not validation & {text(example) for example in seen} and len(validation) == split.val_rows


def test_the_split_is_the_same_for_every_run_and_each_run_keeps_its_own(local_config):
    """The same data and settings give the same manifest; snapshots are run-scoped, one can go without the other."""
    from components.data.validate_dataset import validate_config_data

    _, first = validate_config_data(local_config, "run-a")
    _, second = validate_config_data(local_config, "run-b")
    assert first == second  # same data, same settings: the same split
    shutil.rmtree(snapshot_dir(local_config, "run-a"))
    assert verify_snapshot(snapshot_dir(local_config, "run-b")) == second
