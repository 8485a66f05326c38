"""Generated answers on held-out rows: prompts as training builds them, batched greedy decoding, stop tokens,
per-row scores, generations.jsonl, and every kind of bad input.

Real parts throughout: the tiny Llama and tokenizer built locally, LLaMA-Factory's own converter and template
(the reference: its ``encode_oneturn``, as its chat engine builds a prompt), transformers' ``generate`` on the
CPU, sacrebleu and rouge-score for the scores. Rows are literal, written in the layout the split writes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from components.evaluate.generate.decoding import Generated, generate_greedy, split_answer
from components.evaluate.generate.generate import GenerationError, generate_loaded, prompt_budget
from components.evaluate.generate.metrics import chrf, exact_match, normalise, rouge_l, score_answer, token_f1
from components.evaluate.generate.prompts import build_prompts, select_rows, stop_token_ids
from components.evaluate.generate.results import (
    GenerationResultsError,
    dump_generations,
    generation_eval_key,
    load_generations,
    parse_generations,
)
from components.evaluate.task.data import TaskDataError, llamafactory_encoding, read_test_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ALPACA = {"formatting": "alpaca", "columns": {"prompt": "instruction", "query": "input", "response": "output"}}
SHAREGPT = {"formatting": "sharegpt", "columns": {"messages": "conversations"},
            "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}}
KEY = "a" * 64


def write_entries(root: Path, entries: dict[str, tuple[dict, list]]) -> Path:
    """A LLaMA-Factory data directory: each name -> (entry without file_name, rows) as test/<name>.jsonl."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "test").mkdir(exist_ok=True)
    info = {}
    for name, (entry, rows) in entries.items():
        path = root / "test" / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        info[name] = {**entry, "file_name": f"test/{name}.jsonl"}
    (root / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return root


def alpaca(count: int, **extra) -> list[dict]:
    return [{"instruction": f"Name one fact about the number {i}.", "input": "", "output": f"{i} is a number.",
             **extra} for i in range(count)]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from components.evaluate.mmlu.scoring import load_model

    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    conversation = {"conversations": [
        {"from": "human", "value": "Plan a day in Lisbon."}, {"from": "gpt", "value": "Alfama, then Belém."},
        {"from": "human", "value": "And where do I eat?"}, {"from": "gpt", "value": "A small tasca near Alfama."}]}
    return write_entries(tmp_path_factory.mktemp("generate-data"), {
        "facts": (ALPACA, alpaca(6)), "chat": (SHAREGPT, [conversation])})


def generate(loaded, data_dir, names, **options):
    settings = {"template": "default", "cutoff_len": 256, "generate_rows": 100, "max_new_tokens": 8,
                "model_dir": "m", "model_id": "id", "task_eval_key": "task-key", "batch_size": 4, "progress": False}
    return generate_loaded(*loaded, data_dir, names, **{**settings, **options})


# ---------------------------------------------------------------- prompts


def test_prompts_are_llamafactorys_own_and_multi_turn_rows_answer_the_last_turn(loaded, data_dir):
    from llamafactory.data.converter import get_dataset_converter  # noqa: F401 - the reference is LF's own

    _, tokenizer = loaded
    entries, rows = read_test_rows(data_dir, ["facts", "chat"])
    encoding = llamafactory_encoding(tokenizer, entries, template="default", cutoff_len=256)
    prompts, skipped = build_prompts(encoding, select_rows(rows, 100), max_prompt_tokens=1000)
    assert not skipped and len(prompts) == 7
    chat = next(prompt for prompt in prompts if prompt.dataset == "chat")
    assert (chat.prompt, chat.reference, chat.history_turns) == ("And where do I eat?", "A small tasca near Alfama.", 1)
    # The reference: LLaMA-Factory's template renders the history and the question, ending where the answer starts.
    messages = [{"role": "user", "content": "Plan a day in Lisbon."},
                {"role": "assistant", "content": "Alfama, then Belém."},
                {"role": "user", "content": "And where do I eat?"}, {"role": "assistant", "content": ""}]
    expected, _ = encoding.template.encode_oneturn(encoding.tokenizer, messages)
    assert chat.prompt_ids == expected
    text = encoding.tokenizer.decode(chat.prompt_ids)
    assert text.endswith("Human: And where do I eat?</s>\nAssistant:") and "Alfama, then Belém." in text
    assert "tasca" not in text  # the answer to give is never in the prompt
    # The default template stops at eos; a template with stop words adds them (qwen's <|im_end|>).
    assert stop_token_ids(encoding) == [tokenizer.eos_token_id]
    qwen = llamafactory_encoding(tokenizer, entries, template="qwen", cutoff_len=256)
    assert qwen.tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(qwen)


def test_rows_are_a_fixed_sample_by_row_key_and_duplicates_count_once(data_dir):
    _, rows = read_test_rows(data_dir, ["facts", "chat"])
    assert [row.key for row in select_rows(rows, 3)] == sorted(row.key for row in rows)[:3]
    assert len(select_rows(rows + rows, 100)) == len(rows)


# ---------------------------------------------------------------- decoding


def test_stop_tokens_end_an_answer_and_max_new_tokens_cuts_one_that_does_not_stop(loaded, data_dir):
    model, tokenizer = loaded
    entries, rows = read_test_rows(data_dir, ["facts"])
    encoding = llamafactory_encoding(tokenizer, entries, template="default", cutoff_len=256)
    prompts, _ = build_prompts(encoding, select_rows(rows, 1), max_prompt_tokens=1000)
    ids = [prompts[0].prompt_ids]
    never = [tokenizer.vocab_size + 7]  # an id the model cannot emit: the answer runs to max_new_tokens
    (free,) = generate_greedy(model, ids, stop_ids=never, pad_id=0, max_new_tokens=12)
    assert len(free.token_ids) == 12 and not free.stopped
    stop = free.token_ids[5]
    cut = free.token_ids.index(stop)
    (stopped,) = generate_greedy(model, ids, stop_ids=[stop], pad_id=0, max_new_tokens=12)
    assert stopped == Generated(free.token_ids[:cut], True)  # the stop token itself is not part of the answer
    assert split_answer([5, 6, 2, 7, 2], [2]) == Generated([5, 6], True)
    assert split_answer([5, 6], [2]) == Generated([5, 6], False)


def test_batching_with_left_padding_gives_the_answers_of_one_row_at_a_time(loaded, data_dir):
    model, tokenizer = loaded
    entries, rows = read_test_rows(data_dir, ["facts", "chat"])
    encoding = llamafactory_encoding(tokenizer, entries, template="default", cutoff_len=256)
    prompts, _ = build_prompts(encoding, select_rows(rows, 100), max_prompt_tokens=1000)
    ids = [prompt.prompt_ids for prompt in prompts]
    assert len({len(row) for row in ids}) > 1  # rows of different lengths share a batch: padding is exercised
    options = {"stop_ids": stop_token_ids(encoding), "pad_id": 0, "max_new_tokens": 10}
    batched = generate_greedy(model, ids, batch_size=4, **options)
    alone = [generate_greedy(model, [row], batch_size=1, **options)[0] for row in ids]
    assert batched == alone


def test_the_same_model_gives_the_same_file_byte_for_byte(loaded, data_dir):
    first = dump_generations(generate(loaded, data_dir, ["facts", "chat"]))
    second = dump_generations(generate(loaded, data_dir, ["facts", "chat"], batch_size=3))
    assert first == second
    generations = parse_generations(first, "generations.jsonl")
    assert generations.header.rows == 7 and generations.header.max_new_tokens == 8
    assert all(0 <= answer.answer_tokens <= 8 for answer in generations.answers)


# ---------------------------------------------------------------- scores


def test_scores_on_literal_answers():
    assert normalise("The  Answer, is: 42!") == "answer is 42"
    assert exact_match("the answer is 42.", "Answer is 42") == 100.0 and exact_match("41", "42") == 0.0
    assert token_f1("a cat sat", "the cat sat down") == pytest.approx(100 * 2 * (2 / 2) * (2 / 3) / (2 / 2 + 2 / 3))
    assert rouge_l("cat sat on mat", "the cat sat on the mat") == pytest.approx(100.0)  # articles normalised away
    assert rouge_l("Гора высокая", "гора высокая") == pytest.approx(100.0)  # not only [a-z0-9]
    assert chrf("identical text", "identical text") == pytest.approx(100.0) and chrf("xyz", "abc") == 0.0
    empty = score_answer("", "reference")  # an answer of only special tokens decodes to ""
    assert empty.model_dump() == {"exact_match": 0.0, "token_f1": 0.0, "rouge_l": 0.0, "chrf": 0.0}


def test_the_eval_key_covers_the_generation_settings():
    key = generation_eval_key(KEY, generate_rows=100, max_new_tokens=256)
    assert key == generation_eval_key(KEY, generate_rows=100, max_new_tokens=256)
    assert len({key, generation_eval_key(KEY, generate_rows=50, max_new_tokens=256),
                generation_eval_key(KEY, generate_rows=100, max_new_tokens=128),
                generation_eval_key("b" * 64, generate_rows=100, max_new_tokens=256)}) == 4


# ---------------------------------------------------------------- bad input


def test_rows_without_a_usable_reference_are_skipped_with_the_reason(loaded, tmp_path):
    rows = [*alpaca(2), {"instruction": "Say nothing.", "input": "", "output": "   "},
            {"instruction": "End.", "input": "", "output": "</s>"}]
    data = write_entries(tmp_path / "data", {"facts": (ALPACA, rows)})
    generations = generate(loaded, data, ["facts"])
    assert generations.header.rows == 2
    assert sorted(row.reason for row in generations.header.skipped) == [
        "the reference answer holds only special tokens", "the reference answer is empty"]

    only_bad = write_entries(tmp_path / "bad", {"facts": (ALPACA, rows[2:])})
    with pytest.raises(GenerationError, match="none of the 2 selected held-out rows has a usable reference answer "
                                              r".*set evaluation.generate_rows=0"):
        generate(loaded, only_bad, ["facts"])


def test_a_prompt_longer_than_the_context_is_cut_from_the_left_with_a_warning(loaded, tmp_path, capsys):
    long = " ".join(f"word{i}" for i in range(1500))
    rows = [{"instruction": long + " Finally: what is two plus two?", "input": "", "output": "Four."}]
    data = write_entries(tmp_path / "data", {"facts": (ALPACA, rows)})
    generations = generate(loaded, data, ["facts"], max_new_tokens=24)
    (answer,) = generations.answers
    assert answer.prompt_tokens == 1024 - 24 and answer.truncated_tokens > 0  # the tiny model's context: 1024
    assert generations.header.truncated_prompts == 1
    assert "1 prompt(s) longer than the 1000 tokens the context leaves beside max_new_tokens=24 were cut from the " \
           "left" in capsys.readouterr().out
    with pytest.raises(GenerationError, match=r"evaluation.max_new_tokens \(1024\) leaves no room for a prompt in "
                                              r"the model's context of 1024 tokens"):
        generate(loaded, data, ["facts"], max_new_tokens=1024)
    assert prompt_budget(1024, 1023) == 1


def test_rows_training_would_refuse_are_named(loaded, tmp_path):
    broken = {"conversations": [{"from": "gpt", "value": "answer first"}, {"from": "human", "value": "then ask"}]}
    data = write_entries(tmp_path / "data", {"chat": (SHAREGPT, [broken])})
    with pytest.raises(TaskDataError, match=r"chat.jsonl:1: LLaMA-Factory drops this row as invalid"):
        generate(loaded, data, ["chat"])


def test_a_non_finite_score_stops_with_the_row_named(loaded, data_dir, monkeypatch):
    from components.evaluate.generate import metrics

    monkeypatch.setitem(metrics.SCORERS, "chrf", lambda answer, reference: math.nan)
    with pytest.raises(GenerationError, match=r"row [0-9a-f]{32} of '(facts|chat)': chrf gave nan, not a number of "
                                              r"points in \[0, 100\]; nothing was written"):
        generate(loaded, data_dir, ["facts", "chat"])


def test_stored_files_that_do_not_validate_are_refused_with_the_line(loaded, data_dir, tmp_path):
    text = dump_generations(generate(loaded, data_dir, ["facts"]))
    path = tmp_path / "generations.jsonl"
    path.write_text(text)
    assert dump_generations(load_generations(path)) == text
    lines = text.splitlines(keepends=True)
    cases = {
        "nan": (lines[0] + lines[1].replace('"chrf": ', '"chrf": NaN, "x": ', 1), ":2 is not a JSON record"),
        "totals": (lines[0] + "".join(lines[2:]), "header rows is 6 but the answers give 5"),
        "empty": ("", "is empty"),
    }
    for name, (bad, message) in cases.items():
        with pytest.raises(GenerationResultsError, match=message):
            parse_generations(bad, name)
    score = json.loads(lines[1])
    score["scores"]["chrf"] = 101.0
    with pytest.raises(GenerationResultsError, match=r":2 is not a generated answer: scores.chrf: Input should be "
                                                     r"less than or equal to 100"):
        parse_generations(lines[0] + json.dumps(score) + "\n" + "".join(lines[2:]), "over")
