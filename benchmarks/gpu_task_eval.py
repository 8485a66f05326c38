"""GPU benchmark of the task-evaluation scorer on a model with the shape of Llama-3.2-1B.

3,000 synthetic held-out examples (random token ids; prompts ~120 tokens, answers ~180 tokens, both varying
+-60%, truncated at a cutoff of 1024), labels masked on the prompt as LLaMA-Factory's supervised processor
masks them, a randomly initialised Llama-3.2-1B-shaped model (vocab 128,256) in bf16. Times
``components.evaluate.task.scoring.score_examples`` (length-sorted batches, logits only from the first answer column,
float32 cross-entropy in chunks) and checks it in float32 against a plain per-example computation from the
full logits on ``--check`` examples. Goal (issue 13): a few thousand rows in seconds.

    python benchmarks/gpu_task_eval.py --json $OUT/gpu_task_eval.json      # on one GPU, ~1 minute
    python benchmarks/gpu_task_eval.py --tiny --device cpu                   # logic check at a tiny size
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.gpu_common import LLAMA_3_2_1B, TINY, add_run_flags, write_report  # noqa: E402
from benchmarks.gpu_mmlu import build_model, synchronize  # noqa: E402
from components.evaluate.task.data import IGNORE_INDEX, EncodedExample  # noqa: E402


def synthetic_examples(count: int, prompt_tokens: int, answer_tokens: int, cutoff_len: int, vocab: int,
                       seed: int = 0) -> list[EncodedExample]:
    """``count`` encoded examples shaped like SFT rows: BOS + prompt (labels masked) + answer + EOS."""
    rng = random.Random(seed)
    low, high = min(1000, vocab // 4), vocab - min(1000, vocab // 4)
    examples = []
    for index in range(count):
        prompt = [1] + [rng.randrange(low, high) for _ in range(max(2, int(prompt_tokens * rng.uniform(0.4, 1.6))))]
        answer = [rng.randrange(low, high) for _ in range(max(1, int(answer_tokens * rng.uniform(0.4, 1.6))))] + [2]
        ids = (prompt + answer)[:cutoff_len]
        labels = ([IGNORE_INDEX] * len(prompt) + answer)[:cutoff_len]
        examples.append(EncodedExample("synthetic@test", f"{index:032x}", ids, labels))
    return examples


def reference(model, examples: list[EncodedExample]) -> list[float]:
    """Plain: one example at a time, full logits, shifted cross-entropy summed over the labelled tokens."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    sums = []
    with torch.inference_mode():
        for example in examples:
            logits = model(input_ids=torch.tensor([example.input_ids], device=device)).logits[0, :-1].float()
            labels = torch.tensor(example.labels[1:], device=device)
            sums.append(float(F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")))
    return sums


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options; defaults are the issue's "a few thousand rows" on a 1B model."""
    parser = argparse.ArgumentParser(description="Task-evaluation scorer on a Llama-3.2-1B-shaped model.")
    parser.add_argument("--examples", type=int, default=3000)
    parser.add_argument("--prompt-tokens", type=int, default=120, help="Mean prompt tokens per example.")
    parser.add_argument("--answer-tokens", type=int, default=180, help="Mean answer tokens per example.")
    parser.add_argument("--cutoff-len", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--check", type=int, default=64, help="Examples rechecked in float32 against the plain "
                                                              "computation (0: skip).")
    add_run_flags(parser, tiny="Tiny model and 200 short examples")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Time the scorer, check it in float32, print (and optionally save) the numbers; 1 if the check fails."""
    args = build_parser().parse_args(argv)
    import torch

    from components.evaluate.task.scoring import score_examples

    if args.tiny:
        args.examples, args.prompt_tokens, args.answer_tokens = 200, 30, 40
    shape = TINY if args.tiny else LLAMA_3_2_1B
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    examples = synthetic_examples(args.examples, args.prompt_tokens, args.answer_tokens, args.cutoff_len,
                                  shape["vocab_size"])
    started = time.perf_counter()
    model = build_model(shape, args.device, dtype)
    report = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
              "dtype": dtype, "model": "tiny" if args.tiny else "llama-3.2-1b-shape", "examples": len(examples),
              "tokens": sum(len(e.input_ids) for e in examples),
              "answer_tokens": sum(e.answer_tokens for e in examples),
              "build_seconds": round(time.perf_counter() - started, 2), "batch_size": args.batch_size}
    print(json.dumps(report), flush=True)

    score_examples(model, examples[:2 * args.batch_size], batch_size=args.batch_size)  # warm-up, untimed
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    synchronize(args.device)
    started = time.perf_counter()
    losses = score_examples(model, examples, batch_size=args.batch_size)
    synchronize(args.device)
    report["seconds"] = round(time.perf_counter() - started, 3)
    report["examples_per_second"] = round(len(examples) / report["seconds"], 1)
    report["loss"] = round(sum(x.nll_sum for x in losses) / sum(x.answer_tokens for x in losses), 4)
    if args.device.startswith("cuda"):
        report["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    print(f"scored {len(examples)} examples in {report['seconds']:.2f} s", flush=True)

    exact = True
    if args.check:
        torch.backends.cuda.matmul.allow_tf32 = False
        model = model.float()
        checked = examples[:args.check]
        ours = [x.nll_sum for x in score_examples(model, checked, batch_size=args.batch_size)]
        plain = reference(model, checked)
        worst = max(abs(a - b) / max(abs(b), 1e-9) for a, b in zip(ours, plain, strict=True))
        report["fp32_check"] = {"examples": len(checked), "max_relative_gap": float(f"{worst:.3g}")}
        exact = worst < 1e-4
        print(f"float32 check: {json.dumps(report['fp32_check'])}", flush=True)
    report["goal_10s_met"] = report["seconds"] <= 10.0
    print(json.dumps(report, indent=1))
    write_report(args.json, report)
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
