"""CPU benchmark of the MMLU step: prefix-cached scorer vs a straightforward one vs lm-eval-harness (HF backend).

All three score the same locally built tiny Llama on the same MMLU-format files (the shipped sample,
its test rows repeated ``--copies`` times with a marker so the questions differ), measured side by side
in one process, interleaved, best of ``--repeats``. Each timing is end to end (load the model, read the
data, score, aggregate), as a user would run each tool. lm-eval's task is built from the same local
CSV files with the same prompt (description, first-n dev shots, "Answer:" and " X" continuations).
Exits 1 when the cached and straightforward predictions differ.

    .venv/bin/python benchmarks/bench_evaluate_mmlu.py
    .venv/bin/python benchmarks/bench_evaluate_mmlu.py --copies 8 --hidden-size 128 --layers 4 --repeats 3

lm-eval is a benchmark-only dependency: ``pip install lm-eval==0.4.13``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from components.demo.samples import SAMPLES

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
SAMPLE = SAMPLES / "sample_mmlu"

for _name, _value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                      "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}.items():
    os.environ.setdefault(_name, _value)


def make_data(out: Path, copies: int) -> Path:
    """The sample's dev files, and its test rows repeated ``copies`` times (marked "(set k)" so they differ)."""
    shutil.copytree(SAMPLE / "dev", out / "dev")
    (out / "test").mkdir(parents=True)
    for path in sorted((SAMPLE / "test").glob("*_test.csv")):
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.reader(handle) if row]
        with open(out / "test" / path.name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            for copy in range(copies):
                for row in rows:
                    writer.writerow([row[0] + (f" (set {copy + 1})" if copy else ""), *row[1:]])
    return out


def run_ours(model_dir: Path, data_dir: Path, *, n_shot: int, batch_size: int, scorer: str) -> list[str]:
    """Our step's evaluation; returns the predicted letters in (subject, index) order."""
    from components.evaluate.mmlu.evaluate_mmlu import evaluate

    results = evaluate(model_dir, data_dir, n_shot=n_shot, batch_size=batch_size, scorer=scorer, device="cpu",
                       progress=False)
    return [question["pred"] for question in results["questions"]]


def lm_eval_tasks(data_dir: Path) -> list[dict]:
    """lm-eval task configs equivalent to our prompt, one per subject, read from the local CSV files."""
    tasks = []
    for path in sorted((data_dir / "test").glob("*_test.csv")):
        subject = path.name.removesuffix("_test.csv")
        tasks.append({
            "task": f"bench_mmlu_{subject}",
            "dataset_path": "csv",
            "dataset_kwargs": {"data_files": {"test": str(path), "dev": str(data_dir / "dev" / f"{subject}_dev.csv")},
                               "column_names": ["question", "A", "B", "C", "D", "answer"]},
            "test_split": "test",
            "fewshot_split": "dev",
            "fewshot_config": {"sampler": "first_n"},
            "fewshot_delimiter": "\n\n",
            "target_delimiter": " ",
            "output_type": "multiple_choice",
            "description": f"The following are multiple choice questions (with answers) about "
                           f"{subject.replace('_', ' ')}.\n\n",
            "doc_to_text": "{{question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\nAnswer:",
            "doc_to_choice": ["A", "B", "C", "D"],
            "doc_to_target": "{{['A', 'B', 'C', 'D'].index(answer)}}",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        })
    return tasks


def run_lm_eval(model_dir: Path, data_dir: Path, *, n_shot: int, batch_size: int) -> list[str]:
    """lm-eval-harness with its HF backend on the same files; returns its predictions in (subject, index) order."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    with contextlib.redirect_stderr(io.StringIO()):  # its progress bars ignore TQDM_DISABLE
        out = lm_eval.simple_evaluate(
            model="hf", model_args={"pretrained": str(model_dir), "dtype": "float32"},
            tasks=lm_eval_tasks(data_dir), num_fewshot=n_shot, batch_size=batch_size, device="cpu",
            task_manager=TaskManager(), log_samples=True, bootstrap_iters=0, verbosity="ERROR",
        )
    predictions = []
    for task in sorted(out["samples"]):
        for sample in sorted(out["samples"][task], key=lambda item: item["doc_id"]):
            scores = [response[0][0] for response in sample["resps"]]
            predictions.append("ABCD"[max(range(4), key=scores.__getitem__)])
    return predictions


def timed(function, *args, **kwargs) -> tuple[float, list[str]]:
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - started, result


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options (model size, data size, repeats)."""
    parser = argparse.ArgumentParser(description="MMLU step benchmark on the CPU.")
    parser.add_argument("--copies", type=int, default=4, help="Repeat the sample's test rows (60 questions each).")
    parser.add_argument("--hidden-size", type=int, default=64, help="Tiny model width (default: the test model).")
    parser.add_argument("--layers", type=int, default=2, help="Tiny model depth.")
    parser.add_argument("--n-shot", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="Timed rounds; the best of each is reported.")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 keeps timings steady on a shared, loaded machine).")
    parser.add_argument("--skip-lm-eval", action="store_true", help="Only compare our two scorers.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the three evaluations side by side and print times and ratios; 1 when predictions differ."""
    args = build_parser().parse_args(argv)
    import torch

    from components.demo.tiny_model import build_tiny_llama

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-mmlu-") as tmp:
        model_dir = build_tiny_llama(Path(tmp) / "model", hidden_size=args.hidden_size,
                                     intermediate_size=args.hidden_size * 2, num_layers=args.layers)
        data_dir = make_data(Path(tmp) / "data", args.copies)
        methods = {
            "ours (prefix-cached)": lambda: run_ours(model_dir, data_dir, n_shot=args.n_shot,
                                                     batch_size=args.batch_size, scorer="cached"),
            "straightforward": lambda: run_ours(model_dir, data_dir, n_shot=args.n_shot, batch_size=args.batch_size,
                                                scorer="straightforward"),
        }
        if not args.skip_lm_eval:
            methods["lm-eval 0.4 (hf)"] = lambda: run_lm_eval(model_dir, data_dir, n_shot=args.n_shot,
                                                              batch_size=args.batch_size)
        for method in methods.values():  # warm-up: imports, first-call kernels, lm-eval's dataset cache
            method()
        best: dict[str, float] = {}
        predictions: dict[str, list[str]] = {}
        for _ in range(args.repeats):
            for name, method in methods.items():
                seconds, predictions[name] = timed(method)
                best[name] = min(seconds, best.get(name, float("inf")))
    count = len(predictions["straightforward"])
    print(f"{count} questions, {args.n_shot}-shot, batch {args.batch_size}, tiny Llama hidden {args.hidden_size} x "
          f"{args.layers} layers, {args.threads} CPU threads, best of {args.repeats}")
    ours = best["ours (prefix-cached)"]
    for name, seconds in best.items():
        print(f"  {name:<22} {seconds:8.3f} s   {count / seconds:8.1f} questions/s   ratio {seconds / ours:5.2f}x")
    same = predictions["ours (prefix-cached)"] == predictions["straightforward"]
    print(f"predictions identical to straightforward: {same}")
    if "lm-eval 0.4 (hf)" in predictions:
        agree = sum(a == b for a, b in zip(predictions["ours (prefix-cached)"], predictions["lm-eval 0.4 (hf)"],
                                           strict=True))
        print(f"agreement with lm-eval: {agree}/{count}")
    speedups = [seconds / ours for name, seconds in best.items() if name != "ours (prefix-cached)"]
    print(f"goal (>= 3x faster than each): {'met' if min(speedups) >= 3 else 'NOT met'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
