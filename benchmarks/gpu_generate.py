"""GPU benchmark of batched greedy generation on a model with the shape of Llama-3.2-1B: tokens per second.

``--rows`` synthetic prompts (random token ids, ~``--prompt-tokens`` long, varying +-60%), answered greedily with
:func:`components.evaluate.generate.decoding.generate_greedy` (length-sorted batches of ``--batch-size``, left
padding, the KV cache) for exactly ``--max-new-tokens`` tokens (no stop token can occur: the stop id is out of
the vocabulary, so every row costs the same), by a randomly initialised Llama-3.2-1B-shaped model in bf16.
The reference: ``model.generate`` one row at a time on the first ``--reference-rows`` rows; the ratio compares
tokens per second. It also plans the placement of the model on the visible GPUs
(:mod:`components.evaluate.placement`) and reports it.

    python benchmarks/gpu_generate.py --json $OUT/gpu_generate.json      # on one GPU, ~1 minute
    python benchmarks/gpu_generate.py --tiny --device cpu                  # logic check at a tiny size
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.gpu_common import LLAMA_3_2_1B, TINY, add_run_flags, write_report  # noqa: E402
from benchmarks.gpu_mmlu import build_model, synchronize  # noqa: E402


def synthetic_prompts(count: int, tokens: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """``count`` prompts of random ids (BOS first), lengths ``tokens`` +-60%."""
    rng = random.Random(seed)
    low, high = min(1000, vocab // 4), vocab - min(1000, vocab // 4)
    return [[1] + [rng.randrange(low, high) for _ in range(max(2, int(tokens * rng.uniform(0.4, 1.6))))]
            for _ in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_flags(parser, "A 2-layer model, 32 rows, 16 new tokens")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--reference-rows", type=int, default=16)
    args = parser.parse_args(argv)
    if args.tiny:
        args.rows, args.max_new_tokens, args.reference_rows, args.batch_size = 32, 16, 4, 8
    import torch

    from components.evaluate.generate.decoding import generate_greedy
    from components.evaluate.placement import gpu_budgets, plan_placement

    shape = TINY if args.tiny else LLAMA_3_2_1B
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    model = build_model(shape, args.device, dtype)
    placement = "cpu"
    if args.device.startswith("cuda"):
        planned = plan_placement(model, gpu_budgets(torch.cuda.device_count(), 0.9), getattr(torch, dtype))
        placement = f"{planned.weights_bytes / 2**30:.2f} GiB of weights -> {planned.device}" + (
            f" split over GPUs {planned.gpus_used}" if planned.device_map else " (fits one GPU)")
    prompts = synthetic_prompts(args.rows, args.prompt_tokens, shape["vocab_size"])
    never = [shape["vocab_size"] + 1]  # no stop: every row generates max_new_tokens
    options = {"stop_ids": never, "pad_id": 0, "max_new_tokens": args.max_new_tokens}
    generate_greedy(model, prompts[:args.batch_size], batch_size=args.batch_size, **options)  # warm-up
    synchronize(args.device)
    started = time.perf_counter()
    ours = generate_greedy(model, prompts, batch_size=args.batch_size, **options)
    synchronize(args.device)
    ours_s = time.perf_counter() - started
    ours_tokens = sum(len(answer.token_ids) for answer in ours)
    started = time.perf_counter()
    alone = [generate_greedy(model, [prompt], batch_size=1, **options)[0]
             for prompt in prompts[:args.reference_rows]]
    synchronize(args.device)
    ref_s = time.perf_counter() - started
    ref_tokens = sum(len(answer.token_ids) for answer in alone)
    same = sum(a.token_ids == b.token_ids for a, b in zip(ours, alone, strict=False))
    report = {"device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
              "dtype": dtype, "shape": "tiny" if args.tiny else "llama-3.2-1b", "rows": args.rows,
              "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "placement": placement,
              "batched_seconds": round(ours_s, 3), "batched_tokens_per_s": round(ours_tokens / ours_s, 1),
              "one_row_tokens_per_s": round(ref_tokens / ref_s, 1),
              "ratio": round((ours_tokens / ours_s) / (ref_tokens / ref_s), 2),
              "same_answers_as_one_row": f"{same}/{len(alone)}"}
    for key, value in report.items():
        print(f"{key:>24}: {value}")
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
