"""GPU benchmark of the MMLU scorers at full MMLU scale on a model with the shape of Llama-3.2-1B.

14,042 synthetic questions over 57 subjects, 5-shot-length prompts (~610 tokens: a ~510-token shared
prefix of header + five shots, a ~100-token question), random token ids, a randomly initialised
Llama-3.2-1B-shaped model (hidden 2048, 16 layers, 32/8 heads, vocab 128,256, tied embeddings) in bf16.
Times the production scorers from components.evaluate.mmlu.scoring side by side:

* reference: ``score_straightforward`` (whole prompt per question, full-vocabulary logits, batch 16);
  issue 10 measured about 89 s for this on one H200;
* ours: ``score_prefix_cached`` (prefix KV cache once per subject, length-sorted batches, vocabulary
  projection at the last token only); goal: 10 s or less with the same predictions.

bf16 kernels round differently for different batch shapes, so predictions whose top-two letters are
within bf16 noise can flip; the script counts them and prints their margins. ``--fp32-check N`` then
rescores N questions in float32 (TF32 off), where the two methods must agree exactly.

    python benchmarks/gpu_mmlu.py --json $OUT/gpu_mmlu.json          # on one GPU, ~2-3 minutes
    python benchmarks/gpu_mmlu.py --tiny --device cpu                   # logic check at a tiny size
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

# Llama 3's " A", " B", " C", " D" and "Answer", ":" (any distinct ids would do for random weights);
# the tiny shape's vocabulary is smaller, so it uses low ids.
LLAMA_IDS = {"answers": [362, 426, 356, 423], "answer_prompt": [16533, 25]}
TINY_IDS = {"answers": [10, 11, 12, 13], "answer_prompt": [20, 21]}
ANSWER_IDS = LLAMA_IDS["answers"]


def synthetic_subjects(questions: int, subjects: int, shot_tokens: int, question_tokens: int, vocab: int,
                       ids: dict, seed: int = 0) -> list[tuple[list[int], list[list[int]]]]:
    """``subjects`` (prefix ids, [suffix ids]) pairs with ``questions`` suffixes in all, MMLU-shaped.

    Prefix: BOS, a 20-token header, then five shots of about ``shot_tokens`` each; suffix lengths vary
    uniformly within +-40% of ``question_tokens``; every suffix ends with "Answer:".
    """
    rng = random.Random(seed)
    low, high = min(1000, vocab // 4), vocab - min(1000, vocab // 4)
    answer_prompt, answers = ids["answer_prompt"], ids["answers"]

    def words(count: int) -> list[int]:
        return [rng.randrange(low, high) for _ in range(count)]

    data = []
    for index in range(subjects):
        count = questions // subjects + (index < questions % subjects)
        prefix = [1, *words(20)]
        for _ in range(5):
            shot = words(max(4, int(shot_tokens * rng.uniform(0.6, 1.4)) - 3))
            prefix += [*shot, *answer_prompt, rng.choice(answers)]
        suffixes = [[*words(max(4, int(question_tokens * rng.uniform(0.6, 1.4)) - 2)), *answer_prompt]
                    for _ in range(count)]
        data.append((prefix, suffixes))
    return data


def build_model(shape: dict, device: str, dtype: str):
    """A randomly initialised Llama of the given shape (seeded), in ``dtype`` on ``device``, SDPA attention."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=0, attn_implementation="sdpa")
    with torch.device(device):
        model = LlamaForCausalLM(config)
    return model.to(getattr(torch, dtype)).eval()


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_ours(model, data, batch_size: int, answers: list[int]) -> list[list[float]]:
    from components.evaluate.mmlu.scoring import score_prefix_cached

    scores = []
    for prefix, suffixes in data:
        scores += score_prefix_cached(model, prefix, suffixes, answers, batch_size=batch_size)
    return scores


def run_reference(model, data, batch_size: int, answers: list[int]) -> list[list[float]]:
    from components.evaluate.mmlu.scoring import score_straightforward

    scores = []
    for prefix, suffixes in data:
        scores += score_straightforward(model, [prefix + suffix for suffix in suffixes], answers,
                                        batch_size=batch_size)
    return scores


def timed(device: str, function, *args) -> tuple[float, list[list[float]]]:
    synchronize(device)
    started = time.perf_counter()
    result = function(*args)
    synchronize(device)
    return round(time.perf_counter() - started, 3), result


def compare(ours: list[list[float]], reference: list[list[float]]) -> dict:
    """Prediction agreement, the reference's top-two margins where they disagree, the largest logprob gap."""
    def argmax(row):
        return max(range(4), key=row.__getitem__)

    flips = []
    for mine, theirs in zip(ours, reference, strict=True):
        if argmax(mine) != argmax(theirs):
            top = sorted(theirs)
            flips.append(round(top[-1] - top[-2], 5))
    gap = max(abs(a - b) for mine, theirs in zip(ours, reference, strict=True) for a, b in zip(mine, theirs,
                                                                                               strict=True))
    return {"questions": len(ours), "identical": len(ours) - len(flips), "flipped": len(flips),
            "flip_margins": sorted(flips)[:50], "max_logprob_gap": float(f"{gap:.3g}")}


def subset(data, count: int):
    """The first ``count`` questions, keeping the subject structure."""
    picked = []
    for prefix, suffixes in data:
        if count <= 0:
            break
        picked.append((prefix, suffixes[:count]))
        count -= len(picked[-1][1])
    return picked


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options; defaults are the issue's full-size run."""
    parser = argparse.ArgumentParser(description="MMLU scorers at full scale on a Llama-3.2-1B-shaped model.")
    parser.add_argument("--questions", type=int, default=14042)
    parser.add_argument("--subjects", type=int, default=57)
    parser.add_argument("--shot-tokens", type=int, default=100, help="Mean tokens per few-shot example.")
    parser.add_argument("--question-tokens", type=int, default=105, help="Mean tokens per scored question.")
    parser.add_argument("--batch-size", type=int, default=64, help="Questions per forward pass (ours).")
    parser.add_argument("--reference-batch-size", type=int, default=16)
    parser.add_argument("--skip-reference", action="store_true", help="Time ours only.")
    parser.add_argument("--fp32-check", type=int, default=512, help="Questions rescored in float32 (0: skip).")
    add_run_flags(parser, tiny="Tiny model and 228 short questions")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Time both scorers, compare predictions, print (and optionally save) the numbers; 1 if fp32 disagrees."""
    args = build_parser().parse_args(argv)
    import torch

    if args.tiny:
        args.questions, args.shot_tokens, args.question_tokens = 228, 30, 30
    shape, ids = (TINY, TINY_IDS) if args.tiny else (LLAMA_3_2_1B, LLAMA_IDS)
    answers = ids["answers"]
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    data = synthetic_subjects(args.questions, args.subjects, args.shot_tokens, args.question_tokens,
                              shape["vocab_size"], ids)
    prompt_tokens = [len(prefix) + len(suffix) for prefix, suffixes in data for suffix in suffixes]
    started = time.perf_counter()
    model = build_model(shape, args.device, dtype)
    report = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
              "dtype": dtype, "model": "tiny" if args.tiny else "llama-3.2-1b-shape", "questions": args.questions,
              "mean_prompt_tokens": round(sum(prompt_tokens) / len(prompt_tokens), 1),
              "mean_prefix_tokens": round(sum(len(p) for p, _ in data) / len(data), 1),
              "build_seconds": round(time.perf_counter() - started, 2),
              "batch_size": args.batch_size, "reference_batch_size": args.reference_batch_size}
    print(json.dumps(report), flush=True)

    # Warm-up, untimed: CUDA context, cuBLAS handles, kernel choice per shape (a full pass of ours is cheap).
    run_ours(model, data, args.batch_size, answers)
    if not args.skip_reference:
        run_reference(model, subset(data, 4 * args.reference_batch_size), args.reference_batch_size, answers)

    report["ours_seconds"], ours = timed(args.device, run_ours, model, data, args.batch_size, answers)
    print(f"ours (prefix-cached): {report['ours_seconds']:.2f} s", flush=True)
    if not args.skip_reference:
        report["reference_seconds"], reference = timed(args.device, run_reference, model, data,
                                                       args.reference_batch_size, answers)
        report["speedup"] = round(report["reference_seconds"] / report["ours_seconds"], 2)
        report["agreement_" + dtype] = compare(ours, reference)
        print(f"reference (straightforward): {report['reference_seconds']:.2f} s, speedup {report['speedup']}x; "
              f"{json.dumps(report['agreement_' + dtype])}", flush=True)
    exact = True
    if args.fp32_check:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        model = model.float()
        checked = subset(data, args.fp32_check)
        agreement = compare(run_ours(model, checked, args.batch_size, answers),
                            run_reference(model, checked, args.reference_batch_size, answers))
        report["agreement_fp32_check"] = agreement
        exact = agreement["flipped"] == 0
        print(f"float32 check: {json.dumps(agreement)}", flush=True)
    report["goal_10s_met"] = report["ours_seconds"] <= 10.0
    print(json.dumps(report, indent=1))
    write_report(args.json, report)
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
