"""Hostile MMLU data and a completions server that answers NaN: refused with the file and line, or scored right.

The data cases edit a copy of the shipped sample (hendrycks layout). The long-question case runs the real
tiny model. The OpenAI-compatible server is a small local HTTP server: vLLM, the real one, needs a GPU
and cannot run here, so this stand-in answers what a vLLM serving a model with broken weights answers
(``NaN`` log-probabilities, which Python's json writes as a bare ``NaN``).

``CASES``: the command line (``components.evaluate.mmlu.evaluate_mmlu``) fed a missing, truncated or rank-0 model or
adapter, malformed, non-UTF-8 or empty MMLU layouts, nonsense flags; judged by :func:`.refusals.assert_refused`
against the shared workspace (``conftest.py``).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from components.demo.samples import SAMPLES
from components.evaluate.mmlu import evaluate_mmlu
from components.evaluate.mmlu.data import MmluDataError, load_subjects

from .refusals import assert_refused, case_ids

SAMPLE = SAMPLES / "sample_mmlu"


@pytest.fixture
def mmlu(tmp_path) -> Path:
    return Path(shutil.copytree(SAMPLE, tmp_path / "mmlu"))


def _cli(mmlu: Path, model: Path, out: Path, *args: str) -> int:
    return evaluate_mmlu.main(["--model", str(model), "--data-dir", str(mmlu), "--output", str(out), *args])


def test_fewer_dev_rows_than_n_shot_is_refused(mmlu, tiny_model_dir, tmp_path, capsys):
    dev = mmlu / "dev" / "nutrition_dev.csv"
    dev.write_text("".join(dev.read_text().splitlines(keepends=True)[:3]))
    with pytest.raises(MmluDataError, match=rf"{dev}: has 3 row\(s\), fewer than n_shot=5: lower n_shot"):
        load_subjects(mmlu, n_shot=5)
    assert [len(subject.shots) for subject in load_subjects(mmlu, ["nutrition"], n_shot=3)] == [3]
    assert _cli(mmlu, tiny_model_dir, tmp_path / "out", "--n-shot", "5") == 1
    assert "fewer than n_shot=5" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("answer", "words"), [("b", "must be one of A, B, C, D (upper case), got 'b'"),
                                               ("E", "must be one of A, B, C, D, got 'E'"),
                                               ("5", "must be one of A, B, C, D, got '5'"),
                                               ("", "must be one of A, B, C, D, got ''"),
                                               (" AB", "must be one of A, B, C, D, got ' AB'")])
def test_a_lowercase_or_out_of_range_answer_letter_is_named_by_file_and_line(mmlu, answer, words):
    test = mmlu / "test" / "astronomy_test.csv"
    lines = test.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + "," + answer
    test.write_text("\n".join(lines) + "\n")
    with pytest.raises(MmluDataError) as refused:
        load_subjects(mmlu)
    assert f"{test}:3: the answer {words}" in str(refused.value)


@pytest.mark.parametrize("content", ["", "\n\n", ",,,,,\n"])
def test_an_empty_test_csv_is_refused(mmlu, tiny_model_dir, tmp_path, content, capsys):
    test = mmlu / "test" / "nutrition_test.csv"
    test.write_text(content)
    with pytest.raises(MmluDataError, match=rf"{test}: holds no question"):
        load_subjects(mmlu)
    assert _cli(mmlu, tiny_model_dir, tmp_path / "out") == 1
    assert "holds no question" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_question_longer_than_the_context_is_scored_on_its_last_tokens(mmlu, tiny_model_dir, caplog):
    """The tiny model's context is 1,024 tokens; a 3,000-word question is cut from the front (as
    lm-eval-harness cuts), with a warning that names it; both scorers agree and every number is finite."""
    test = mmlu / "test" / "astronomy_test.csv"
    lines = test.read_text().splitlines()
    lines[1] = '"' + " ".join(["Long preamble about stars."] * 750) + ' Which planet is red?",Mars,Venus,Earth,Moon,A'
    test.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="llmft.mmlu"):
        cached = evaluate_mmlu.evaluate(tiny_model_dir, mmlu, subjects=["astronomy"], limit=3, progress=False)
    plain = evaluate_mmlu.evaluate(tiny_model_dir, mmlu, subjects=["astronomy"], limit=3, progress=False,
                                   scorer="straightforward")
    assert "astronomy_test.csv:2 is" in caplog.text and "longer than the model's context of 1024" in caplog.text
    assert [q["pred"] for q in cached["questions"]] == [q["pred"] for q in plain["questions"]]
    assert all(math.isfinite(value) for q in cached["questions"] for value in q["logprobs"])
    for mine, reference in zip(cached["questions"], plain["questions"], strict=True):
        assert mine["logprobs"] == pytest.approx(reference["logprobs"], abs=1e-4)


# --- a completions server that answers NaN ----------------------------------------------------------------------


@pytest.fixture
def broken_server():
    """Answers /v1/models, then every completion with ``answers[kind]`` (set by the test)."""
    state = {"kind": "nan", "posts": 0}

    def body(prompts: list) -> bytes:
        top = {" A": -1.2, " B": -0.9, " C": -2.0, " D": -1.6}
        if state["kind"] == "nan":
            top[" B"] = float("nan")
        elif state["kind"] == "null":
            top[" C"] = None
        elif state["kind"] == "html":
            return b"<html><body>Please log in</body></html>"
        choices = [{"index": i, "text": " B", "logprobs": {"top_logprobs": [top], "tokens": [" B"],
                                                          "token_logprobs": [-0.9], "text_offset": [0]}}
                   for i in range(len(prompts))]
        return json.dumps({"choices": choices}).encode()  # NaN written as Python's json writes it: NaN

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, data: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send(json.dumps({"data": [{"id": "served"}]}).encode())

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["posts"] += 1
            self._send(body(request["prompt"]))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.state = state
    server.endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield server
    server.shutdown()
    thread.join()


@pytest.mark.parametrize(("kind", "words"), [
    ("nan", "answered the log-probability nan for the answer 'B' of prompt 0: the served model's weights hold NaN"),
    ("null", "answered None as the log-probability of the answer 'C' of prompt 0; expected a number"),
    ("html", "did not answer JSON (invalid JSON: Expecting value (line 1, column 1)): is it an OpenAI-compatible"),
])
def test_nan_or_missing_logprobs_from_the_server_are_refused(broken_server, tiny_model_dir, tmp_path, kind, words,
                                                             capsys):
    from components.evaluate.mmlu.openai_backend import BackendError

    broken_server.state["kind"] = kind
    with pytest.raises(BackendError, match=words.replace("(", r"\(").replace(")", r"\)")):
        evaluate_mmlu.evaluate(tiny_model_dir, SAMPLE, backend="openai", endpoint=broken_server.endpoint, limit=2,
                               progress=False)
    assert broken_server.state["posts"] == 1  # refused at the first answer, not retried
    assert _cli(SAMPLE, tiny_model_dir, tmp_path / "out", "--backend", "openai", "--endpoint",
                broken_server.endpoint, "--limit", "2") == 1
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and not (tmp_path / "out").exists()


# --- the command line -------------------------------------------------------------------------------------------

EVALUATE = "components.evaluate.mmlu.evaluate_mmlu"


def _evaluate(*args: str, model: str = "{ws}/model", data: str = str(SAMPLE)) -> list[str]:
    """One question per subject (``--limit 1``) into ``{ws}/out/eval``."""
    return [EVALUATE, "--model", model, "--data-dir", data, "--limit", "1", *args, "--output", "{ws}/out/eval"]


# (case id, argv after `python -m`, words the message must contain, extra environment)
CASES = [
    ("eval-missing-model", [EVALUATE, "--model", "{ws}/nowhere", "--data-dir", str(SAMPLE), "--output",
                            "{ws}/out/eval1"], ["nowhere"], {}),
    ("eval-malformed-row", [EVALUATE, "--model", "{ws}/model", "--data-dir", "{ws}/mmlu_bad_row", "--output",
                            "{ws}/out/eval2"], ["astronomy_test.csv"], {}),
    ("eval-non-utf8-csv", [EVALUATE, "--model", "{ws}/model", "--data-dir", "{ws}/mmlu_latin1", "--output",
                           "{ws}/out/eval3"], ["astronomy_test.csv"], {}),
    ("eval-empty-data-dir", [EVALUATE, "--model", "{ws}/model", "--data-dir", "{ws}/mmlu_empty", "--output",
                             "{ws}/out/eval4"], ["mmlu_empty"], {}),
    ("eval-negative-shots", [EVALUATE, "--model", "{ws}/model", "--data-dir", str(SAMPLE), "--n-shot", "-1",
                             "--output", "{ws}/out/eval5"], ["n-shot"], {}),
    ("eval-zero-batch", [EVALUATE, "--model", "{ws}/model", "--data-dir", str(SAMPLE), "--batch-size", "0",
                         "--output", "{ws}/out/eval6"], ["batch"], {}),
    ("eval-truncated-weights", _evaluate(model="{ws}/model_truncated"), ["model_truncated"], {}),
    ("eval-unknown-device", _evaluate("--device", "tpu9"), ["tpu9"], {}),
    # No GPU visible (CUDA_VISIBLE_DEVICES hides any this machine has): a clear refusal, not a CUDA traceback.
    ("eval-cuda-without-gpu", _evaluate("--device", "cuda"), ["device 'cuda' is not available", "no CUDA GPU"],
     {"CUDA_VISIBLE_DEVICES": ""}),
    ("eval-openai-without-endpoint", _evaluate("--backend", "openai"), ["--endpoint"], {}),
    ("eval-empty-dev-file", _evaluate(data="{ws}/mmlu_empty_dev"), ["astronomy_dev.csv"], {}),
    ("eval-answer-not-a-letter", _evaluate(data="{ws}/mmlu_bad_answer"), ["astronomy_test.csv:", "'Z'"], {}),
    ("eval-subject-path-escape", _evaluate("--subjects", "../../etc/passwd"), ["../../etc/passwd"], {}),
    ("eval-negative-limit", _evaluate("--limit", "-1"), ["--limit"], {}),
    ("eval-adapter-rank-zero", _evaluate("--adapter", "{ws}/adapter_rank0"), ["`r`"], {}),
]


@pytest.mark.parametrize(("argv", "words", "extra_env"), [case[1:] for case in CASES], ids=case_ids(CASES))
def test_hostile_input_is_refused_clearly_and_writes_nothing(ws, argv, words, extra_env):
    assert_refused(ws, argv, words, extra_env)
