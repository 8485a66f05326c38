"""CPU benchmark of batched greedy generation vs one row at a time, on the tiny demo model.

The held-out rows of the shipped samples (alpaca and sharegpt, every row, encoded by the real prompt builder)
are answered greedily with up to ``--max-new-tokens`` tokens twice, one thread each:

* ours: :func:`components.evaluate.generate.decoding.generate_greedy` (length-sorted batches of ``--batch-size``,
  left padding, the KV cache, stopping at the template's stop tokens);
* the reference: ``model.generate`` called once per row (the same greedy settings, no padding at all).

Both must give the same tokens (greedy decoding of one model; padding is masked). Prints both times and the ratio;
exits 1 below ``--goal`` (5x, issue 27). Best of ``--repeats``.

    python -m benchmarks.bench_generate
    python -m benchmarks.bench_generate --batch-size 16 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def prompts_and_stops(model_dir: Path) -> tuple[list[list[int]], list[int], int]:
    """Every sample row's prompt ids (as the evaluate step builds them), the stop ids and the pad id."""
    from transformers import AutoTokenizer

    from components.demo.samples import SAMPLE_DATA
    from components.evaluate.generate.prompts import build_prompts, select_rows, stop_token_ids
    from components.evaluate.mmlu.scoring import pad_token_id
    from components.evaluate.task.data import llamafactory_encoding, read_test_rows

    entries, rows = read_test_rows(SAMPLE_DATA, ["alpaca_sample", "sharegpt_sample"])
    encoding = llamafactory_encoding(AutoTokenizer.from_pretrained(model_dir), entries, template="default",
                                     cutoff_len=256)
    prompts, _ = build_prompts(encoding, select_rows(rows, len(rows)), max_prompt_tokens=768)
    return [prompt.prompt_ids for prompt in prompts], stop_token_ids(encoding), pad_token_id(encoding.tokenizer)


def one_at_a_time(model, prompts, *, stop_ids, pad_id, max_new_tokens) -> list[list[int]]:
    """The reference: ``model.generate`` on each row alone."""
    import torch

    from components.evaluate.generate.decoding import generation_config, split_answer

    config = generation_config(max_new_tokens=max_new_tokens, stop_ids=stop_ids, pad_id=pad_id)
    answers = []
    with torch.inference_mode():
        for prompt in prompts:
            out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                                                                                              dtype=torch.long),
                                 generation_config=config)
            answers.append(split_answer(out[0, len(prompt):].tolist(), stop_ids).token_ids)
    return answers


def best_of(repeats: int, run) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return min(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--goal", type=float, default=5.0)
    args = parser.parse_args(argv)

    import torch

    from components.demo.tiny_model import build_tiny_llama
    from components.evaluate.generate.decoding import generate_greedy
    from components.evaluate.mmlu.scoring import load_model

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_llama(Path(tmp) / "tiny", seed=0)
        model, _ = load_model(model_dir, device="cpu")
        prompts, stops, pad = prompts_and_stops(model_dir)
    options = {"stop_ids": stops, "pad_id": pad, "max_new_tokens": args.max_new_tokens}
    ours_s, ours = best_of(args.repeats, lambda: generate_greedy(model, prompts, batch_size=args.batch_size,
                                                                 **options))
    ref_s, ref = best_of(args.repeats, lambda: one_at_a_time(model, prompts, **options))
    same = [answer.token_ids for answer in ours] == ref
    tokens = sum(len(answer) for answer in ref)
    ratio = ref_s / ours_s
    print(f"{len(prompts)} rows, {tokens} tokens generated (max {args.max_new_tokens} per row), batch "
          f"{args.batch_size}, 1 thread, best of {args.repeats}")
    print(f"  ours (batched, left-padded, KV cache): {ours_s:.2f} s ({tokens / ours_s:,.0f} tokens/s)")
    print(f"  model.generate one row at a time:      {ref_s:.2f} s ({tokens / ref_s:,.0f} tokens/s)")
    print(f"  ratio {ratio:.1f}x (goal >= {args.goal:g}x); same answers: {same}")
    return 0 if same and ratio >= args.goal else 1


if __name__ == "__main__":
    sys.exit(main())
