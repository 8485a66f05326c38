"""Task evaluation: LLaMA-Factory's encoding token for token, batched scoring, a trained adapter, task.json, CLI.

Real parts throughout: the tiny Llama built locally, LLaMA-Factory's own dataset pipeline as the reference
encoding, a real LoRA training run (LLaMA-Factory through the train step's trainer worker) for the adapter,
transformers/peft scoring on the CPU. The held-out data is laid out as the split writes it: entry ``N`` ->
``train/N.jsonl`` and entry ``N@test`` -> ``test/N.jsonl``, one original row object per line.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from builders import REPO_ROOT

from components.data.row_keys import entry_spec, row_key
from components.data.split import is_test_row, split_hash
from components.demo.samples import SAMPLES
from components.evaluate.task.data import (
    IGNORE_INDEX,
    TaskDataError,
    encode_examples,
    entries_digest,
    read_dataset_info,
)
from components.evaluate.task.evaluate_task import build_parser, eval_key_for, evaluate_task, main, score_loaded
from components.evaluate.task.results import (
    RESULTS_FILE,
    TaskResults,
    TaskResultsError,
    dump_task_results,
    load_task_results,
    task_eval_key,
)
from components.evaluate.task.scoring import score_examples

SAMPLE = SAMPLES / "sample_data"
TEST_FRACTION = 0.3
LONG = " ".join(f"word{i} and the answer of {i}" for i in range(60))  # far beyond every cutoff used here
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_entries(root: Path, entries: dict[str, tuple[dict, list]]) -> Path:
    """A LLaMA-Factory data directory: each name -> (entry without file_name, rows) as <name>.jsonl."""
    root.mkdir(parents=True, exist_ok=True)
    info = {}
    for name, (entry, rows) in entries.items():
        side, base = ("test", name.removesuffix("@test")) if name.endswith("@test") else ("train", name)
        path = root / side / f"{base}.jsonl"
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        info[name] = {**entry, "file_name": f"{side}/{base}.jsonl"}
    (root / "dataset_info.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory) -> Path:
    """The shipped sample data split by row key: N (train rows) and N@test (held-out rows) per dataset."""
    info = json.loads((SAMPLE / "dataset_info.json").read_text())
    entries = {}
    for name, entry in info.items():
        rows = json.loads((SAMPLE / entry["file_name"]).read_text())
        spec = entry_spec(name, entry)
        entry = {key: value for key, value in entry.items() if key != "file_name"}
        entries[name] = (entry, [row for row in rows if not is_test_row(row_key(row, spec), TEST_FRACTION)])
        entries[f"{name}@test"] = (entry, [row for row in rows if is_test_row(row_key(row, spec), TEST_FRACTION)])
    return write_entries(tmp_path_factory.mktemp("split"), entries)


TEST_NAMES = ["alpaca_sample@test", "sharegpt_sample@test"]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from components.evaluate.mmlu.scoring import load_model

    return load_model(tiny_model_dir, device="cpu")


# --- encoding: LLaMA-Factory's own pipeline is the reference ------------------------------------------------


def _varied_rows(tmp_path: Path) -> Path:
    """Alpaca rows (input, no input, system, history, overlong) and sharegpt rows (multi-turn, system, overlong)."""
    alpaca_entry = {"formatting": "alpaca", "columns": {"prompt": "instruction", "query": "input", "response": "output",
                                                        "system": "system", "history": "history"}}
    alpaca = [
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},
        {"instruction": "Translate to French.", "input": "good morning", "output": "bonjour"},
        {"instruction": "Answer briefly.", "output": "Yes.", "system": "You are terse."},  # no input column at all
        {"instruction": "And the next one?", "input": "", "output": "Three.",
         "history": [["Count to one.", "One."], ["And then?", "Two."]]},
        {"instruction": "Summarise.", "input": LONG, "output": "It lists words."},  # the prompt is cut
        {"instruction": "Write at length.", "input": "", "output": LONG},  # the answer is cut
    ]
    chat_entry = {"formatting": "sharegpt", "columns": {"messages": "conversations"},
                  "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                           "system_tag": "system"}}
    turns = [{"from": "human" if i % 2 == 0 else "gpt", "value": f"turn {i}: {LONG[:90]}"} for i in range(8)]
    chat = [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
        {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Help me."},
                           {"from": "gpt", "value": "Of course."}, {"from": "human", "value": "Thanks."},
                           {"from": "gpt", "value": "You are welcome."}]},
        {"conversations": turns},  # four exchanges: later ones fall beyond a short cutoff
        *json.loads((SAMPLE / "sharegpt_sample.json").read_text())[:6],
    ]
    return write_entries(tmp_path / "varied", {"alpaca_rows@test": (alpaca_entry, alpaca),
                                               "chat@test": (chat_entry, chat)})


def _llamafactory_encoding(model_dir: Path, data_dir: Path, names: list[str], template: str, cutoff_len: int,
                           work: Path) -> list[dict]:
    """What LLaMA-Factory's SFT workflow builds (run_sft: get_train_args, load_tokenizer, template, get_dataset)."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    model_args, data_args, training_args, _, _ = get_train_args({
        "model_name_or_path": str(model_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "dataset": ",".join(names), "dataset_dir": str(data_dir), "template": template, "cutoff_len": cutoff_len,
        "output_dir": str(work / "out"), "cache_dir": str(work / "cache"), "overwrite_cache": True,
        "report_to": "none"})
    module = load_tokenizer(model_args)
    lf_template = get_template_and_fix_tokenizer(module["tokenizer"], data_args)
    dataset = get_dataset(lf_template, model_args, data_args, training_args, stage="sft", **module)["train_dataset"]
    return [{"input_ids": row["input_ids"], "labels": row["labels"]} for row in dataset]


@pytest.mark.parametrize(("template", "cutoff_len"), [("default", 40), ("default", 256), ("qwen", 64)])
def test_encoding_equals_llamafactory_training_token_for_token(tiny_model_dir, tokenizer, tmp_path, monkeypatch,
                                                              template, cutoff_len):
    """Alpaca (with system and history columns) and sharegpt rows, multi-turn and overlong; ``qwen`` replaces
    the EOS token with one the tokenizer lacks, so the tokenizer fix matters too."""
    monkeypatch.setenv("LLAMAFACTORY_VERBOSITY", "WARN")  # else get_train_args turns on INFO logs for the session
    data_dir = _varied_rows(tmp_path)
    names = ["alpaca_rows@test", "chat@test"]
    ours = encode_examples(tokenizer, data_dir, names, template, cutoff_len)
    theirs = _llamafactory_encoding(tiny_model_dir, data_dir, names, template, cutoff_len, tmp_path)
    assert [{"input_ids": e.input_ids, "labels": e.labels} for e in ours] == theirs
    assert len(ours) == 15
    assert all(len(example.input_ids) <= cutoff_len for example in ours)
    if cutoff_len == 40:
        assert max(len(example.input_ids) for example in ours) == cutoff_len  # truncation happened
        multi_turn = ours[8]  # the four-exchange conversation: only what fits is kept, each answer labelled
        chat_spec = entry_spec("chat@test", json.loads((data_dir / "dataset_info.json").read_text())["chat@test"])
        assert multi_turn.key == row_key(json.loads((data_dir / "test" / "chat.jsonl").read_text().splitlines()[2]),
                                         chat_spec)
    # Prompt tokens are masked, answer tokens are not, and the caller's tokenizer was left as loaded.
    assert all(IGNORE_INDEX in example.labels and example.answer_tokens > 0 for example in ours)
    assert tokenizer.eos_token == "</s>" and len(tokenizer) == 1024


def test_multi_turn_rows_train_on_every_answer(tokenizer, tmp_path):
    """As the trainer does (mask_history off): each assistant turn is labelled, each user turn masked."""
    data_dir = _varied_rows(tmp_path)
    examples = encode_examples(tokenizer, data_dir, ["chat@test"], "default", 1024)
    two_turns = examples[1]
    labelled = [label for label in two_turns.labels if label != IGNORE_INDEX]
    answers = [*tokenizer.encode("Of course.", add_special_tokens=False), tokenizer.eos_token_id,
               *tokenizer.encode("\n", add_special_tokens=False)]
    assert labelled[:len(answers)] == answers
    assert tokenizer.decode(labelled).count("You are welcome.") == 1 and "Thanks" not in tokenizer.decode(labelled)


# --- scoring --------------------------------------------------------------------------------------------------


def _reference_losses(model, examples) -> list[tuple[float, int]]:
    """Plain, unbatched: the full logits of one example, shifted cross-entropy over its labelled tokens."""
    import torch
    import torch.nn.functional as F

    out = []
    with torch.inference_mode():
        for example in examples:
            logits = model(input_ids=torch.tensor([example.input_ids])).logits[0, :-1].float()
            labels = torch.tensor(example.labels[1:])
            nll = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
            mask = labels != IGNORE_INDEX
            out.append((float(nll), int((logits.argmax(-1)[mask] == labels[mask]).sum())))
    return out


def test_batching_changes_no_number_and_matches_the_plain_computation(tiny_model, split_dir):
    model, tokenizer = tiny_model
    examples = encode_examples(tokenizer, split_dir, TEST_NAMES, "default", 96)
    one = score_examples(model, examples, batch_size=1, pad_id=tokenizer.pad_token_id)
    many = score_examples(model, examples, batch_size=5, pad_id=tokenizer.pad_token_id)
    other_pad = score_examples(model, examples, batch_size=len(examples), pad_id=7)
    reference = _reference_losses(model, examples)
    assert len({len(e.input_ids) for e in examples}) > 5  # padding really happens
    for example, a, b, c, (nll, correct) in zip(examples, one, many, other_pad, reference, strict=True):
        assert a.answer_tokens == b.answer_tokens == c.answer_tokens == example.answer_tokens > 0
        assert b.nll_sum == pytest.approx(a.nll_sum, rel=1e-5) and c.nll_sum == pytest.approx(a.nll_sum, rel=1e-5)
        assert a.nll_sum == pytest.approx(nll, rel=1e-5)
        assert a.correct_tokens == b.correct_tokens == c.correct_tokens == correct


def test_rows_truncated_away_are_reported_and_skipped(tiny_model, tiny_model_dir, split_dir):
    """cutoff_len=2 keeps an answer token only where the answer is at least as long as the prompt."""
    model, tokenizer = tiny_model
    results = score_loaded(model, tokenizer, split_dir, TEST_NAMES, template="default", cutoff_len=2,
                           model_dir=tiny_model_dir, progress=False)
    assert results.truncated_away and results.records
    assert all(record.answer_tokens == 1 and record.tokens == 2 for record in results.records)
    assert results.examples + len(results.truncated_away) == results.rows
    with pytest.raises(TaskDataError, match="raise cutoff_len"):
        score_loaded(model, tokenizer, split_dir, TEST_NAMES, template="default", cutoff_len=1,
                     model_dir=tiny_model_dir, progress=False)


def test_duplicate_rows_are_scored_once(tiny_model, tiny_model_dir, tmp_path):
    model, tokenizer = tiny_model
    rows = json.loads((SAMPLE / "alpaca_sample.json").read_text())[:4]
    entry = {"formatting": "alpaca"}
    data_dir = write_entries(tmp_path, {"a@test": (entry, [*rows, rows[1]]), "b@test": (entry, rows[:1])})
    results = score_loaded(model, tokenizer, data_dir, ["a@test", "b@test"], template="default", cutoff_len=256,
                           model_dir=tiny_model_dir, progress=False)
    assert (results.rows, results.duplicate_rows, results.examples) == (6, 1, 5)
    spec = entry_spec("a@test", entry)
    assert results.test_split_hash == split_hash([row_key(row, spec) for row in rows])
    same_row = (results.by_example()[("a@test", row_key(rows[0], spec))],
                results.by_example()[("b@test", row_key(rows[0], spec))])
    assert same_row[0].nll_sum == pytest.approx(same_row[1].nll_sum, rel=1e-6)


# --- a trained adapter beats the base model on held-out rows -----------------------------------------------


@pytest.fixture(scope="module")
def trained_adapter(tiny_model_dir, split_dir, tmp_path_factory) -> Path:
    """Real LoRA training on the train rows only, with the CPU preset's settings, through the train step's worker."""
    from components.train.render import flatten_sections, render_sections
    from configs.loading import load_config

    work = tmp_path_factory.mktemp("train")
    cfg = load_config("local", overrides=[f"storage.mount_path={work}"])
    args = flatten_sections(render_sections(cfg, model_dir=tiny_model_dir, dataset_dir=split_dir,
                                            output_dir=work / "adapter", run_name="task-eval-test", gpu=False))
    args.update(dataset="alpaca_sample,sharegpt_sample", max_steps=60, report_to="none", save_strategy="no",
                logging_steps=10)
    for key in ("save_steps", "save_total_limit", "eval_dataset", "per_device_eval_batch_size", "eval_strategy",
                "eval_steps", "load_best_model_at_end", "metric_for_best_model", "greater_is_better"):
        args.pop(key, None)  # no checkpoints: nothing to evaluate or pick
    (work / "train.yaml").write_text(yaml.safe_dump(args))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("MLFLOW_RUN_ID", None)
    done = subprocess.run([sys.executable, "-m", "components.train.worker", str(work / "train.yaml")],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return work / "adapter"


def _cli_reply(capsys) -> dict:
    """The CLI's JSON summary: its last stdout line (a progress line may come first)."""
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_trained_adapter_has_lower_held_out_loss_than_the_base_model(tiny_model_dir, split_dir, trained_adapter,
                                                                     tmp_path, capsys):
    template, cutoff = "default", 256
    specs = {name: entry_spec(name, entry) for name, entry in json.loads((SAMPLE / "dataset_info.json").read_text())
             .items()}
    held_out = [row_key(json.loads(line), specs[name]) for name in ("alpaca_sample", "sharegpt_sample")
                for line in (split_dir / "test" / f"{name}.jsonl").read_text().splitlines()]
    trained_on = [row_key(json.loads(line), specs[name]) for name in ("alpaca_sample", "sharegpt_sample")
                  for line in (split_dir / "train" / f"{name}.jsonl").read_text().splitlines()]
    assert len(held_out) >= 10 and not set(held_out) & set(trained_on)

    # The baseline through the CLI, the candidate through the convenience function (the adapter unmerged).
    argv = ["--model", str(tiny_model_dir), "--data-dir", str(split_dir), "--dataset", ",".join(TEST_NAMES),
            "--template", template, "--cutoff-len", str(cutoff), "--batch-size", "4", "--output", str(tmp_path)]
    assert main(argv) == 0
    assert _cli_reply(capsys)["reused"] is False
    baseline = load_task_results(tmp_path / RESULTS_FILE)
    candidate = evaluate_task(tiny_model_dir, split_dir, TEST_NAMES, template=template, cutoff_len=cutoff,
                              adapter_dir=trained_adapter, batch_size=8, device="cpu", progress=False)

    assert candidate.loss < baseline.loss - 0.05, (candidate.loss, baseline.loss)
    assert candidate.perplexity < baseline.perplexity
    assert candidate.mean_example_nll < baseline.mean_example_nll
    pairs = [(baseline.by_example()[example].nll_mean, record.nll_mean)
             for example, record in candidate.by_example().items()]
    assert all(baseline.by_example()[example].answer_tokens == record.answer_tokens  # same tokens, paired
               for example, record in candidate.by_example().items())
    assert len(pairs) == baseline.examples == len(set(held_out))
    assert sum(after < before for before, after in pairs) >= 0.8 * len(pairs)
    # Same rows, same split hash; different model, different key.
    assert candidate.test_split_hash == baseline.test_split_hash == split_hash(held_out)
    assert candidate.model_id != baseline.model_id and candidate.eval_key != baseline.eval_key
    assert candidate.adapter == str(trained_adapter) and baseline.adapter == ""

    # Memoised: the same model on the same rows reuses task.json; --force rescores to identical bytes.
    before = (tmp_path / RESULTS_FILE).read_bytes()
    assert main(argv) == 0 and _cli_reply(capsys)["reused"] is True
    assert main([*argv, "--force"]) == 0 and _cli_reply(capsys)["reused"] is False
    assert (tmp_path / RESULTS_FILE).read_bytes() == before


# --- task.json ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def results(tiny_model, tiny_model_dir, split_dir) -> TaskResults:
    model, tokenizer = tiny_model
    return score_loaded(model, tokenizer, split_dir, TEST_NAMES, template="default", cutoff_len=256,
                        model_dir=tiny_model_dir, progress=False)


def test_results_round_trip_and_totals(results, tmp_path):
    path = tmp_path / RESULTS_FILE
    path.write_text(dump_task_results(results))
    loaded = load_task_results(path)
    assert loaded == results and dump_task_results(loaded) == path.read_text()
    tokens = sum(record.answer_tokens for record in results.records)
    assert results.loss == pytest.approx(sum(record.nll_sum for record in results.records) / tokens, abs=1e-6)
    assert results.perplexity == pytest.approx(math.exp(results.loss), rel=1e-6)
    assert results.mean_example_nll == pytest.approx(
        sum(record.nll_mean for record in results.records) / results.examples, abs=1e-6)
    assert 0 <= results.token_accuracy <= 1 and results.datasets == TEST_NAMES
    assert [(r.dataset, r.key) for r in results.records] == sorted((r.dataset, r.key) for r in results.records)


def _tampered(results: TaskResults, tmp_path: Path, edit) -> Path:
    data = json.loads(dump_task_results(results))
    edit(data)
    path = tmp_path / RESULTS_FILE
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(("edit", "named"), [
    (lambda d: d.update(loss=d["loss"] * 0.9), "loss"),
    (lambda d: d["records"][0].update(nll_sum=d["records"][0]["nll_sum"] + 1.0), "nll_mean"),
    (lambda d: d["records"][1].update(answer_tokens=d["records"][1]["answer_tokens"] + 1), "nll_mean"),
    (lambda d: d["records"].pop(), "examples"),
    (lambda d: d["records"][0].update(key="0" * 32), "test_split_hash"),
    (lambda d: d["records"].reverse(), "sorted"),
    (lambda d: d.pop("eval_key"), "eval_key"),
    (lambda d: d["records"][2].update(correct_tokens=10 ** 6), "correct_tokens"),
])
def test_tampered_results_are_refused_naming_the_field(results, tmp_path, edit, named):
    path = _tampered(results, tmp_path, edit)
    with pytest.raises(TaskResultsError, match=named) as refused:
        load_task_results(path)
    assert str(path) in str(refused.value)


def test_nan_and_infinity_are_refused(results, tmp_path):
    for bad in ("NaN", "Infinity"):
        path = _tampered(results, tmp_path, lambda d: d["records"][0].update(nll_sum="@"))
        path.write_text(path.read_text().replace('"@"', bad))
        with pytest.raises(TaskResultsError, match=bad):
            load_task_results(path)
    path.write_text("{not json")
    with pytest.raises(TaskResultsError, match="not a JSON"):
        load_task_results(path)


def test_eval_key_covers_model_split_template_cutoff_and_entries(tiny_model_dir, split_dir, trained_adapter):
    def key(**changes):
        args = {"model_dir": tiny_model_dir, "data_dir": split_dir, "names": TEST_NAMES, "template": "default",
                "cutoff_len": 256, "adapter_dir": None, **changes}
        return eval_key_for(args.pop("model_dir"), args.pop("data_dir"), args.pop("names"), **args)

    base = key()
    assert key() == base and len(base) == 64
    assert len({base, key(adapter_dir=trained_adapter), key(names=TEST_NAMES[:1]), key(template="alpaca"),
                key(cutoff_len=128)}) == 5
    entries = read_dataset_info(split_dir, TEST_NAMES)
    renamed = {name: {**entry, "file_name": "elsewhere.jsonl"} for name, entry in entries.items()}
    remapped = {**entries, TEST_NAMES[0]: {**entries[TEST_NAMES[0]], "columns": {"prompt": "input"}}}
    assert entries_digest(renamed) == entries_digest(entries) != entries_digest(remapped)
    assert task_eval_key("a" * 64, "b" * 64, "default", 256) != task_eval_key("a" * 64, "b" * 64, "default", 256,
                                                                               entries_digest(remapped))


# --- bad input ----------------------------------------------------------------------------------------------


def _bad_dir(tmp_path: Path, entry: dict, lines: list[str], name: str = "x@test") -> Path:
    (tmp_path / "test").mkdir(parents=True, exist_ok=True)
    (tmp_path / "test" / "x.jsonl").write_text("".join(line + "\n" for line in lines))
    (tmp_path / "dataset_info.json").write_text(json.dumps({name: {"file_name": "test/x.jsonl", **entry}}))
    return tmp_path


GOOD = json.dumps({"instruction": "Say hi.", "input": "", "output": "Hi."})


@pytest.mark.parametrize(("entry", "lines", "names", "message"), [
    ({"ranking": True, "columns": {"chosen": "c", "rejected": "r"}}, [GOOD], ["x@test"], "ranking"),
    ({"columns": {"kto_tag": "label"}}, [GOOD], ["x@test"], "KTO"),
    ({"columns": {"images": "images"}}, [GOOD], ["x@test"], "multimodal"),
    ({}, [GOOD], ["y@test"], "no entry 'y@test'"),
    ({}, [GOOD], [], "no dataset entry"),
    ({"formatting": "parquet"}, [GOOD], ["x@test"], "formatting"),
    ({}, [GOOD, "[1, 2]"], ["x@test"], r"x\.jsonl:2: a row must be a JSON object"),
    ({}, [GOOD, "{broken"], ["x@test"], r"x\.jsonl:2: invalid JSON"),
    ({}, [], ["x@test"], "empty"),
    ({}, ["[]"], ["x@test"], "array is empty"),
    ({"formatting": "sharegpt"}, [json.dumps({"conversations": [{"from": "gpt", "value": "first?"},
                                                                {"from": "human", "value": "no"}]})],
     ["x@test"], r"x\.jsonl:1: LLaMA-Factory drops this row"),
    ({"formatting": "sharegpt"}, [json.dumps({"conversations": [{"from": "human", "value": None},
                                                                {"from": "gpt", "value": "yes"}]})],
     ["x@test"], r"x\.jsonl:1: LLaMA-Factory cannot encode this row"),
])
def test_bad_held_out_data_is_refused_naming_entry_file_and_row(tokenizer, tmp_path, entry, lines, names, message):
    data_dir = _bad_dir(tmp_path, entry, lines)
    with pytest.raises(TaskDataError, match=message):
        encode_examples(tokenizer, data_dir, names, "default", 256)


def test_hub_entries_missing_files_and_unknown_templates_are_refused(tokenizer, tmp_path):
    (tmp_path / "dataset_info.json").write_text(json.dumps({"hub@test": {"hf_hub_url": "org/data"},
                                                            "gone@test": {"file_name": "test/gone.jsonl"},
                                                            "csv@test": {"file_name": "rows.csv"}}))
    (tmp_path / "rows.csv").write_text("instruction,output\na,b\n")
    for name, message in (("hub@test", "only local files"), ("gone@test", "does not exist"), ("csv@test", "JSON")):
        with pytest.raises(TaskDataError, match=message):
            encode_examples(tokenizer, tmp_path, [name], "default", 256)
    good = _bad_dir(tmp_path / "good", {}, [GOOD])
    with pytest.raises(TaskDataError, match="not a LLaMA-Factory template"):
        encode_examples(tokenizer, good, ["x@test"], "no-such-template", 256)
    with pytest.raises(TaskDataError, match="does not exist"):
        encode_examples(tokenizer, tmp_path / "nowhere", ["x@test"], "default", 256)


# --- CLI --------------------------------------------------------------------------------------------------------


def test_cli_help_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as shown:
        main(["--help"])
    assert shown.value.code == 0 and "--cutoff-len" in capsys.readouterr().out
    assert build_parser().prog
    with pytest.raises(SystemExit) as usage:
        main(["--model", "m"])
    assert usage.value.code == 2
    # --template and --cutoff-len are the training fields of the config, checked by the schema.
    assert main(["--model", "m", "--data-dir", "d", "--dataset", "x", "--template", "default", "--cutoff-len", "0",
                 "--output", "o"]) == 2
    assert "training.cutoff_len (--cutoff-len)" in capsys.readouterr().err
    assert main(["--model", "m", "--data-dir", "d", "--dataset", "x", "--template", "nope", "--output", "o"]) == 2
    assert "training.template (--template): unknown LLaMA-Factory template 'nope'" in capsys.readouterr().err


def test_cli_failures_exit_1_without_traceback_and_write_nothing(tiny_model_dir, split_dir, tmp_path):
    """In a fresh interpreter, as a user runs it: a bad data dir, a bad model dir, a bad entry."""
    empty = tmp_path / "empty"  # not tmp_path itself: an --output inside an input is refused before anything
    empty.mkdir()
    cases = [(["--model", str(tiny_model_dir), "--data-dir", str(tmp_path / "missing")], "dataset_info.json"),
             (["--model", str(empty), "--data-dir", str(split_dir)], "not a model directory"),
             (["--model", str(tiny_model_dir), "--data-dir", str(split_dir), "--adapter", str(empty)],
              "not a PEFT adapter directory")]
    for argv, message in cases:
        out = subprocess.run([sys.executable, "-m", "components.evaluate.task.evaluate_task", *argv,
                              "--dataset", TEST_NAMES[0], "--template", "default", "--cutoff-len", "256",
                              "--output", str(tmp_path / "out")],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 1, out.stderr[-2000:]
        assert message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "out").exists()


def test_module_import_stays_light():
    code = ("import sys, components.evaluate.task.evaluate_task, components.evaluate.task.results, "
            "components.evaluate.task.data, components.evaluate.task.scoring; "
            "heavy = ('torch', 'transformers', 'peft', 'llamafactory', 'datasets', 'mlflow'); "
            "print([name for name in heavy if name in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
