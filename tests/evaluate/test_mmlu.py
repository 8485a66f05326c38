"""MMLU evaluation: data checks, prompt, scorers, results file, CLI, OpenAI-compatible backend.

The pipeline step that runs this evaluator (with the held-out task, on one loaded model) is
components.evaluate.evaluate, tested in tests/evaluate/test_evaluate.py.

Real parts throughout: tiny Llama models built locally (some with edited weights so that the right
answer is known in advance), real transformers/peft scoring on the CPU. The only stand-in is the
OpenAI-compatible completions server (vLLM cannot run here): a stdlib HTTP server that computes its
log-probabilities with the same real tiny model.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from builders import REPO_ROOT

from components.demo.samples import SAMPLES
from components.evaluate.mmlu import evaluate_mmlu as step
from components.evaluate.mmlu.data import (
    CATEGORIES,
    LETTERS,
    SUBJECT_CATEGORIES,
    MmluDataError,
    Question,
    eval_config_key,
    load_subjects,
    model_identity,
    prompt_prefix,
    prompt_suffix,
)
from components.evaluate.mmlu.results import MmluResults, ResultsFileError

SAMPLE = SAMPLES / "sample_mmlu"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gold(data_dir: Path, limit: int = 0) -> dict[str, list[str]]:
    """Gold letters per subject, read straight from the CSV files (the expected values of the tests)."""
    gold = {}
    for path in sorted((data_dir / "test").glob("*_test.csv")):
        with open(path, newline="", encoding="utf-8") as handle:
            letters = [row[5] for row in csv.reader(handle) if row]
        gold[path.name.removesuffix("_test.csv")] = letters[:limit or None]
    return gold


def _flat(rows: list[list[float]]) -> list[float]:
    return [value for row in rows for value in row]


def _edited_copy(src: Path, dst: Path, edit) -> Path:
    """Save a copy of the tiny model after ``edit(model, tokenizer)`` changed its weights in place."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src)
    with torch.no_grad():
        edit(model, tokenizer)
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    return dst


def _letter_ids(tokenizer) -> list[int]:
    from components.evaluate.mmlu.scoring import answer_token_ids

    return answer_token_ids(tokenizer)


def _constant_feature(model) -> None:
    """Make hidden dimension 0 a large constant: embeddings set it, no layer writes to it.

    After the final RMSNorm that dimension is then about sqrt(hidden) and the rest is near zero, so the
    lm_head column 0 acts as a per-token bias.
    """
    model.model.embed_tokens.weight[:, 0] = 1000.0
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight[0, :] = 0.0
        layer.mlp.down_proj.weight[0, :] = 0.0
    model.lm_head.weight[:, 0] = 0.0


@pytest.fixture(scope="module")
def biased_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A tiny model whose next token after any prompt is " C" by a wide margin (a bias in the LM head)."""
    def prefer_c(model, tokenizer):
        _constant_feature(model)
        model.lm_head.weight[_letter_ids(tokenizer)[2], 0] = 10.0

    return _edited_copy(tiny_model_dir, tmp_path_factory.mktemp("biased") / "model", prefer_c)


@pytest.fixture(scope="module")
def varied_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A tiny model whose letter choice depends on the question: the four letter rows of the LM head point
    along +-the two main directions in which the final hidden states of the sample prompts vary."""
    import torch

    def spread_letters(model, tokenizer):
        hidden = []
        for subject in load_subjects(SAMPLE, n_shot=5):
            for question in subject.questions:
                ids = tokenizer.encode(prompt_prefix(subject.subject, subject.shots) + prompt_suffix(question))
                hidden.append(model.model(torch.tensor([ids])).last_hidden_state[0, -1])
        spread = torch.stack(hidden)
        _, _, directions = torch.linalg.svd(spread - spread.mean(0), full_matrices=False)
        for token, direction in zip(_letter_ids(tokenizer), [directions[0], -directions[0], directions[1],
                                                             -directions[1]], strict=True):
            model.lm_head.weight[token] = direction * 20.0

    return _edited_copy(tiny_model_dir, tmp_path_factory.mktemp("varied") / "model", spread_letters)


@pytest.fixture(scope="module")
def adapter_dir(biased_model_dir, tmp_path_factory) -> Path:
    """A real peft LoRA adapter on lm_head that overrides the base model's " C" with " B"."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(biased_model_dir)
    letter_b = _letter_ids(AutoTokenizer.from_pretrained(biased_model_dir))[1]
    peft_model = get_peft_model(model, LoraConfig(r=1, lora_alpha=1, target_modules=["lm_head"]))
    import torch

    with torch.no_grad():
        lora = peft_model.base_model.model.lm_head
        lora.lora_A["default"].weight.zero_()
        lora.lora_A["default"].weight[0, 0] = 1.0
        lora.lora_B["default"].weight.zero_()
        lora.lora_B["default"].weight[letter_b, 0] = 20.0
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    peft_model.save_pretrained(out, save_embedding_layers=False)
    return out


# --- data, categories, prompt -------------------------------------------------------------------------------


def test_categories_cover_the_57_standard_subjects():
    counts = {category: list(SUBJECT_CATEGORIES.values()).count(category) for category in CATEGORIES}
    assert len(SUBJECT_CATEGORIES) == 57
    assert counts == {"STEM": 18, "humanities": 13, "social sciences": 12, "other": 14}
    sample = {subject.subject: subject.category for subject in load_subjects(SAMPLE)}
    assert set(sample.values()) == set(CATEGORIES), "the shipped sample spans the four categories"
    assert all(SUBJECT_CATEGORIES[name] == category for name, category in sample.items())


def test_sample_data_has_five_shots_and_balanced_gold_letters():
    for subject, letters in _gold(SAMPLE).items():
        assert len(letters) >= 12 and {letters.count(letter) for letter in LETTERS} == {len(letters) // 4}, subject
    assert all(len(subject.shots) == 5 for subject in load_subjects(SAMPLE, n_shot=5))


def test_prompt_is_the_standard_mmlu_prompt():
    shot = Question("high_school_physics", 0, "What is 1+1?", ("1", "2", "3", "4"), "B", 1)
    question = Question("high_school_physics", 0, "  Pick C.  ", ("w", "x", "y", "z"), "C", 1)
    loaded = load_subjects(SAMPLE, ["astronomy"], n_shot=1)[0]
    assert loaded.questions[0].question == "Which planet is known as the Red Planet?"
    assert prompt_prefix("high_school_physics", [shot]) + prompt_suffix(question) == (
        "The following are multiple choice questions (with answers) about high school physics.\n\n"
        "What is 1+1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
        "  Pick C.  \nA. w\nB. x\nC. y\nD. z\nAnswer:"
    )


def test_malformed_rows_are_reported_with_file_and_line(tmp_path, capsys):
    data = shutil.copytree(SAMPLE, tmp_path / "mmlu")
    bad_test = data / "test" / "nutrition_test.csv"
    rows = bad_test.read_text(encoding="utf-8").splitlines()
    # Line 1 becomes a quoted two-line question, so the broken row (4th record) starts on text line 5.
    rows[0] = '"Which vitamin,\nin citrus fruits?",B12,D,C,K,C'
    rows[3] = "Which nutrient repairs tissues?,Fibre,Water,Protein,D"
    bad_test.write_text("\n".join(rows) + "\n", encoding="utf-8")
    bad_dev = data / "dev" / "astronomy_dev.csv"
    bad_dev.write_text(bad_dev.read_text(encoding="utf-8").replace(",B\n", ",E\n", 1), encoding="utf-8")

    with pytest.raises(MmluDataError) as error:
        load_subjects(data, n_shot=5)
    message = str(error.value)
    assert f"{bad_test}:5: expected 6 columns (question,A,B,C,D,answer), got 5" in message
    assert f"{bad_dev}:1: the answer must be one of A, B, C, D, got 'E'" in message

    assert step.main(["--model", str(data), "--data-dir", str(data), "--output", str(tmp_path / "out")]) == 1
    assert f"{bad_test}:5:" in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.json").exists()


def test_missing_subject_and_dev_file_are_named(tmp_path):
    data = shutil.copytree(SAMPLE, tmp_path / "mmlu")
    (data / "dev" / "nutrition_dev.csv").unlink()
    with pytest.raises(MmluDataError, match=r"nutrition_dev.csv: missing; it holds the few-shot examples"):
        load_subjects(data, ["nutrition"], n_shot=5)
    assert load_subjects(data, ["nutrition"], n_shot=0)[0].shots == []
    with pytest.raises(MmluDataError, match=r"virology_test.csv: missing \(subject 'virology' was requested\)"):
        load_subjects(data, ["virology"], n_shot=0)


def test_unknown_subject_counts_as_other_with_a_warning(tmp_path, caplog):
    data = tmp_path / "mmlu"
    for split in ("dev", "test"):
        (data / split).mkdir(parents=True)
        shutil.copy(SAMPLE / split / f"astronomy_{split}.csv", data / split / f"rocketry_{split}.csv")
    with caplog.at_level(logging.WARNING, logger="llmft.mmlu"):
        (subject,) = load_subjects(data)
    assert (subject.subject, subject.category) == ("rocketry", "other")
    assert "'rocketry' is not one of the 57 standard subjects" in caplog.text


def test_answer_letters_with_and_without_a_leading_space():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from components.evaluate.mmlu.scoring import answer_token_ids

    words = ["[UNK]", "Answer", ":", *LETTERS]
    vocab = {word: i for i, word in enumerate(words)}
    plain = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    plain.pre_tokenizer = pre_tokenizers.Whitespace()  # " A" -> "A": the space is dropped
    assert answer_token_ids(PreTrainedTokenizerFast(tokenizer_object=plain)) == [3, 4, 5, 6]
    spaced = {word: i for i, word in enumerate(["[UNK]", "▁Answer", ":", "▁A", "▁B", "▁C", "▁D", "A", "B", "C", "D"])}
    metaspace = Tokenizer(models.WordLevel(spaced, unk_token="[UNK]"))
    metaspace.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
    assert answer_token_ids(PreTrainedTokenizerFast(tokenizer_object=metaspace)) == [3, 4, 5, 6]


# --- scoring ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, 5])
def test_biased_model_accuracy_equals_the_share_of_its_letter(biased_model_dir, limit):
    results = step.evaluate(biased_model_dir, SAMPLE, n_shot=5, limit=limit, batch_size=4, progress=False)
    gold = _gold(SAMPLE, limit)
    assert {record["pred"] for record in results["questions"]} == {"C"}
    for subject, letters in gold.items():
        entry = results["subjects"][subject]
        assert (entry["correct"], entry["total"]) == (letters.count("C"), len(letters))
        assert entry["accuracy"] == round(letters.count("C") / len(letters), 6)
    every = [letter for letters in gold.values() for letter in letters]
    assert results["micro"] == round(every.count("C") / len(every), 6)
    shares = [letters.count("C") / len(letters) for letters in gold.values()]
    assert results["macro"] == pytest.approx(sum(shares) / len(shares), abs=1e-6)
    stem = [letter for subject, letters in gold.items() if SUBJECT_CATEGORIES[subject] == "STEM" for letter in letters]
    assert results["categories"]["STEM"] == {"correct": stem.count("C"), "total": len(stem),
                                             "accuracy": round(stem.count("C") / len(stem), 6)}


def test_adapter_is_applied_without_merging(biased_model_dir, adapter_dir):
    results = step.evaluate(biased_model_dir, SAMPLE, adapter_dir=adapter_dir, limit=6, progress=False)
    gold = _gold(SAMPLE, 6)
    every = [letter for letters in gold.values() for letter in letters]
    assert {record["pred"] for record in results["questions"]} == {"B"}
    assert results["micro"] == round(every.count("B") / len(every), 6)
    assert results["adapter"] == str(adapter_dir)
    base_id, adapted_id = model_identity(biased_model_dir), model_identity(biased_model_dir, adapter_dir)
    assert base_id != adapted_id == results["model_id"]
    assert "model.safetensors" in {path.name for path in biased_model_dir.iterdir()}, "the base stays unmerged"


def test_prefix_cached_scores_equal_straightforward_scores(varied_model_dir):
    from components.evaluate.mmlu.scoring import (
        answer_token_ids,
        load_model,
        pad_token_id,
        score_groups,
        tokenize_subject,
    )

    model, tokenizer = load_model(varied_model_dir, device="cpu")
    letters, pad = answer_token_ids(tokenizer), pad_token_id(tokenizer)
    predictions, shot_counts = [], set()
    for subject in load_subjects(SAMPLE, n_shot=5):
        # 330 tokens forces some questions to drop early shots, 120 pushes long ones past even zero shots.
        for max_length in (1024, 330, 120):
            groups = tokenize_subject(tokenizer, subject, max_length)
            shot_counts |= {prefix.count(tokenizer.encode("\nAnswer:", add_special_tokens=False)[-1]) if prefix
                            else -1 for prefix, _ in groups}
            assert all(len(prefix) + len(suffix) <= max_length for prefix, items in groups for _, suffix in items)
            count = len(subject.questions)
            cached = score_groups(model, groups, letters, count, batch_size=5, pad_id=pad)
            plain = score_groups(model, groups, letters, count, batch_size=3, pad_id=pad, cached=False)
            assert [max(range(4), key=row.__getitem__) for row in cached] == \
                   [max(range(4), key=row.__getitem__) for row in plain]
            assert _flat(cached) == pytest.approx(_flat(plain), abs=1e-4)
            predictions += [max(range(4), key=row.__getitem__) for row in cached]
    assert {5, -1} < shot_counts, "full, shortened and overflowing prompts were all compared"
    assert len(set(predictions)) >= 3, "the model's choice depends on the question, so the comparison means something"


def test_shots_are_dropped_from_the_front_when_the_prompt_is_too_long(varied_model_dir):
    from transformers import AutoTokenizer

    from components.evaluate.mmlu.scoring import tokenize_subject

    tokenizer = AutoTokenizer.from_pretrained(varied_model_dir)
    subject = load_subjects(SAMPLE, ["astronomy"], n_shot=5)[0]
    full = tokenizer.encode(prompt_prefix("astronomy", subject.shots))
    last_two = tokenizer.encode(prompt_prefix("astronomy", subject.shots[3:]))
    suffix_lengths = [len(tokenizer.encode(prompt_suffix(q), add_special_tokens=False)) for q in subject.questions]
    max_length = len(last_two) + max(suffix_lengths)
    groups = tokenize_subject(tokenizer, subject, max_length)
    assert groups[-1][0] == last_two, "the longest questions keep the last two shots"
    assert all(prefix in (full, *(tokenizer.encode(prompt_prefix("astronomy", subject.shots[k:])) for k in range(1, 4)))
               for prefix, _ in groups)
    assert sorted(position for _, items in groups for position, _ in items) == list(range(len(subject.questions)))


# --- results file, key, CLI ---------------------------------------------------------------------------------


def test_two_runs_give_byte_identical_results(varied_model_dir, tmp_path, capsys):
    argv = ["--model", str(varied_model_dir), "--data-dir", str(SAMPLE), "--n-shot", "3", "--batch-size", "4",
            "--subjects", "nutrition,astronomy"]
    assert step.main([*argv, "--output", str(tmp_path / "one")]) == 0
    assert step.main([*argv, "--output", str(tmp_path / "two")]) == 0
    first = (tmp_path / "one" / "results.json").read_bytes()
    assert first == (tmp_path / "two" / "results.json").read_bytes()
    out = capsys.readouterr().out
    assert "[mmlu] 1/2 astronomy:" in out and "[mmlu] 2/2 nutrition:" in out

    results = step.load_results(tmp_path / "one" / "results.json")  # validated: every summary from the records
    assert set(results) == set(MmluResults.model_fields)
    assert (results["correct"], results["total"]) == (sum(q["correct"] for q in results["questions"]), 24)
    assert [(q["subject"], q["index"]) for q in results["questions"]] == sorted(
        (q["subject"], q["index"]) for q in results["questions"])
    assert results["questions"][0] == {
        "subject": "astronomy", "index": 0, "gold": "A", "pred": results["questions"][0]["pred"],
        "correct": results["questions"][0]["pred"] == "A", "logprobs": results["questions"][0]["logprobs"]}
    assert len(results["questions"]) == 24 and all(len(q["logprobs"]) == 4 for q in results["questions"])
    assert results["eval_key"] == eval_config_key(SAMPLE, n_shot=3, subjects=["astronomy", "nutrition"], limit=0,
                                                  model_id=model_identity(varied_model_dir))
    straight = tmp_path / "straight"
    assert step.main([*argv, "--output", str(straight), "--scorer", "straightforward"]) == 0
    assert [q["pred"] for q in step.load_results(straight / "results.json")["questions"]] == \
           [q["pred"] for q in results["questions"]]


def test_eval_key_changes_with_data_shots_limit_and_model(tmp_path, tiny_model_dir, varied_model_dir):
    data = shutil.copytree(SAMPLE, tmp_path / "mmlu")
    model_id = model_identity(tiny_model_dir)
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    assert model_identity(copy) == model_id, "the identity is content, not path"

    def key(**changes):
        args = {"n_shot": 5, "subjects": [], "limit": 0, "model_id": model_id, **changes}
        return eval_config_key(data, **args)

    base = key()
    assert key() == base
    assert len({base, key(n_shot=4), key(limit=3), key(subjects=["nutrition"]),
                key(model_id=model_identity(varied_model_dir))}) == 5
    with open(data / "dev" / "nutrition_dev.csv", "a", encoding="utf-8") as handle:
        handle.write("Which is a fruit?,Apple,Stone,Iron,Glass,A\n")
    assert key() != base


def test_a_one_byte_change_anywhere_in_a_large_shard_changes_the_identity(tmp_path):
    """Issue 23, third "Why": weights over 64 MiB were identified by 32 samples of 64 KiB, so two models that differ
    between the samples had one identity, hence one eval key, and a candidate could be handed another model's
    stored scores. Now every byte counts: hashed in full without a manifest, the merge's full digests with one
    (a file changed after its manifest is hashed afresh)."""
    import os

    from components.evaluate.task.results import task_eval_key
    from components.merge.verify import write_manifest

    size = 65 * 1024 * 1024 + 12_345
    one, other = tmp_path / "one", tmp_path / "other"
    for model in (one, other):
        model.mkdir()
        (model / "config.json").write_text('{"model_type": "llama"}')
    block = bytes(range(256)) * 4096  # 1 MiB
    with open(one / "model.safetensors", "wb") as handle:
        for _ in range(size // len(block)):
            handle.write(block)
        handle.write(block[:size % len(block)])
    shutil.copyfile(one / "model.safetensors", other / "model.safetensors")
    offset = (size - 65536) // 31 // 2 + 1000  # between the first two of the 32 samples the old identity read
    with open(other / "model.safetensors", "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" if block[offset % len(block)] != 0xFF else b"\x00")

    unmanifested = model_identity(one), model_identity(other)
    assert unmanifested[0] != unmanifested[1]
    assert len({task_eval_key(model_id, "0" * 64, "default", 256) for model_id in unmanifested}) == 2
    for model in (one, other):
        write_manifest(model)  # what the merge leaves: the full digest of every file it wrote
    assert (model_identity(one), model_identity(other)) == unmanifested  # the same identity, read from the manifest

    manifest_written = (one / "checksums.sha256").stat().st_mtime_ns
    with open(one / "model.safetensors", "r+b") as handle:  # changed in place after its manifest
        handle.seek(size - 1)
        handle.write(b"\x01")
    os.utime(one / "model.safetensors", ns=(manifest_written + 10**9, manifest_written + 10**9))
    assert model_identity(one) not in unmanifested


def test_load_results_rejects_foreign_files(tmp_path):
    (tmp_path / "a.json").write_text('{"micro": 0.5}')
    with pytest.raises(ResultsFileError, match=r"a.json: eval_key: Field required"):
        step.load_results(tmp_path / "a.json")
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(ResultsFileError, match=r"b.json is not valid JSON"):
        step.load_results(tmp_path / "b.json")
    (tmp_path / "c.json").write_text('{"micro": NaN}')
    with pytest.raises(ResultsFileError, match=r"c.json is not valid JSON: NaN is not a number JSON allows"):
        step.load_results(tmp_path / "c.json")
    with pytest.raises(ResultsFileError, match=r"d.json does not exist"):
        step.load_results(tmp_path / "d.json")


def test_cli_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as missing:
        step.main(["--model", "m"])
    assert missing.value.code == 2
    # Values the schema refuses are named by their field and flag; the defaults are the config's.
    assert step.main(["--model", "m", "--data-dir", "d", "--output", "o", "--batch-size", "0"]) == 2
    assert "evaluation.batch_size (--batch-size): Input should be greater than or equal to 1" in capsys.readouterr().err
    assert step.main(["--model", "m", "--output", "o", "--config", "local", "--set", "evaluation.n_shot=99"]) == 2
    assert "evaluation.n_shot" in capsys.readouterr().err


@pytest.mark.parametrize("kfp_runtime", ["", "true"])
def test_module_import_stays_light_and_works_inside_a_task(kfp_runtime):
    """Also with _KFP_RUNTIME=true, as the KFP executor runs the wrapper (kfp.dsl then lacks `component`)."""
    code = ("import sys, components.evaluate.mmlu.evaluate_mmlu; "
            "heavy = ('torch', 'transformers', 'peft', 'mlflow', 'datasets'); "
            "print([name for name in heavy if name in sys.modules])")
    env = {**os.environ, "_KFP_RUNTIME": kfp_runtime} if kfp_runtime else None
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


# --- the OpenAI-compatible backend --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def completions_server(varied_model_dir):
    """A stand-in for an external vLLM server (none can run here): /v1/models and /v1/completions with
    top logprobs and echo, answered by the real tiny model through transformers, one prompt at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(varied_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(varied_model_dir)
    requests: list[dict] = []

    def complete(index: int, prompt: str, request: dict) -> dict:
        encoded = tokenizer(prompt, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        with torch.inference_mode():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
        following = int(logprobs[-1].argmax())
        top = {tokenizer.decode([token]): float(logprobs[-1, token])
               for token in logprobs[-1].topk(min(request["logprobs"], logprobs.shape[-1])).indices.tolist()}
        answer = {"tokens": [tokenizer.decode([following])], "token_logprobs": [float(logprobs[-1, following])],
                  "top_logprobs": [top], "text_offset": [len(prompt)]}
        if request.get("echo"):
            answer = {"tokens": [tokenizer.decode([token]) for token in ids] + answer["tokens"],
                      "token_logprobs": [None] + [float(logprobs[i - 1, ids[i]]) for i in range(1, len(ids))]
                      + answer["token_logprobs"],
                      "top_logprobs": None,
                      "text_offset": [start for start, _ in encoded["offset_mapping"]] + [len(prompt)]}
        return {"index": index, "text": answer["tokens"][-1], "logprobs": answer, "finish_reason": "length"}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._send({"object": "list", "data": [{"id": "tiny-llama", "object": "model"}]})

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append(request)
            prompts = request["prompt"] if isinstance(request["prompt"], list) else [request["prompt"]]
            self._send({"choices": [complete(i, prompt, request) for i, prompt in enumerate(prompts)]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.requests = requests
    yield server
    server.shutdown()
    thread.join()


def test_openai_backend_gives_the_same_scores_as_the_hf_backend(varied_model_dir, completions_server):
    endpoint = f"http://127.0.0.1:{completions_server.server_address[1]}/v1"
    remote = step.evaluate(varied_model_dir, SAMPLE, backend="openai", endpoint=endpoint, limit=3, batch_size=4,
                           progress=False)
    local = step.evaluate(varied_model_dir, SAMPLE, limit=3, batch_size=4, progress=False)
    assert set(remote) == set(local) and remote["backend"] == "openai"
    assert [q["pred"] for q in remote["questions"]] == [q["pred"] for q in local["questions"]]
    assert _flat([q["logprobs"] for q in remote["questions"]]) == pytest.approx(
        _flat([q["logprobs"] for q in local["questions"]]), abs=1e-4)
    assert all(request["model"] == "tiny-llama" for request in completions_server.requests)


def test_openai_backend_scores_letters_outside_the_top_list_by_echo(completions_server):
    from components.evaluate.mmlu.openai_backend import score_prompts

    endpoint = f"http://127.0.0.1:{completions_server.server_address[1]}"
    subject = load_subjects(SAMPLE, ["nutrition"], n_shot=2, limit=2)[0]
    prompts = [prompt_prefix("nutrition", subject.shots) + prompt_suffix(q) for q in subject.questions]
    completions_server.requests.clear()
    narrow = score_prompts(endpoint, prompts, top_logprobs=1, batch_size=8)
    assert any(request.get("echo") for request in completions_server.requests)
    completions_server.requests.clear()
    wide = score_prompts(endpoint, prompts, top_logprobs=100_000, batch_size=8)  # every token: no echo needed
    assert not any(request.get("echo") for request in completions_server.requests)
    assert _flat(narrow) == pytest.approx(_flat(wide), abs=1e-4)


def test_openai_backend_refuses_an_adapter(adapter_dir, biased_model_dir):
    with pytest.raises(ValueError, match="merge the adapter first"):
        step.evaluate(biased_model_dir, SAMPLE, adapter_dir=adapter_dir, backend="openai", endpoint="http://x")

