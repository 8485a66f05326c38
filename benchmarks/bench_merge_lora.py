"""Benchmark: the shard-streaming LoRA merge against peft's merge_and_unload, side by side.

Builds a random Llama of several ~100 MB shards (hidden 1024, 8 layers; nothing downloaded) and a
LoRA adapter on every linear layer, then runs each merge path in its own fresh process and
measures wall time and peak RSS (VmHWM) above that process's baseline (RSS after its imports). Checks
exactness (fp32: max |diff| <= 1e-6; bf16: bit-identical) and prints the ratios.

    python -m benchmarks.bench_merge_lora                    # fp32 and bf16, 3 interleaved runs each
    python -m benchmarks.bench_merge_lora --dtype bf16 --repeats 5 --layers 12 --workdir /tmp/bench
    python -m benchmarks.bench_merge_lora --threads 1       # on a busy, shared CPU

Targets (issue 8): streaming peak RSS above baseline <= 1.5x the largest input shard, while peft's
path needs about the whole model; streaming wall time no worse than peft's.
"""

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def build_inputs(workdir: Path, layers: int, hidden: int, shard_size: str) -> tuple[Path, Path]:
    """Write the base model and a LoRA adapter (all linear layers, r=16, non-zero update)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from components.demo.tiny_model import build_tiny_llama

    base = build_tiny_llama(workdir / "base", hidden_size=hidden, intermediate_size=int(hidden * 2.75),
                            num_layers=layers, num_heads=16, num_kv_heads=4, shard_size=shard_size)
    model = AutoModelForCausalLM.from_pretrained(base)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
    model.save_pretrained(workdir / "adapter")
    return base, workdir / "adapter"


def _status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    """Start the peak-RSS mark (VmHWM) from here. ru_maxrss cannot be used: Linux carries it across
    fork+exec, so a worker would inherit the parent's peak (the parent built the model)."""
    # On older kernels this fails and the peak also covers the imports, which only overstates it.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def worker(path: str, base: Path, adapter: Path, out: Path, dtype: str) -> dict:
    """Run one merge path in this (fresh) process; return seconds and peak RSS above the baseline."""
    if path == "streaming":
        import torch

        from components.merge.merge_lora import merge_and_publish, merge_model
    else:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
    _reset_peak()
    baseline = _status_bytes("VmRSS")
    started = time.perf_counter()
    extra = {}
    if path == "streaming":
        merge_model(base, adapter, out, dtype=dtype)
        extra["merge_only_s"] = time.perf_counter() - started
        shutil.rmtree(out)
        started_publish = time.perf_counter()
        merge_and_publish(base, adapter, out.parent / "published", "v1", dtype=dtype)  # + verify (re-hash) + rename
        extra["merge_publish_s"] = time.perf_counter() - started_publish
        shutil.move(out.parent / "published" / "v1", out)
        seconds = extra["merge_only_s"]
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, DTYPES[dtype]))
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        merged.save_pretrained(out, max_shard_size="100MB")
        seconds = time.perf_counter() - started
    peak = _status_bytes("VmHWM")
    return {"path": path, "seconds": seconds, "baseline_rss": baseline, "peak_above_baseline": peak - baseline,
            **extra}


def run_worker(path: str, base: Path, adapter: Path, out: Path, dtype: str, threads: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.parent / "published", ignore_errors=True)
    command = [sys.executable, "-m", "benchmarks.bench_merge_lora", "--worker", path, "--base", str(base),
               "--adapter", str(adapter), "--out", str(out), "--dtype", dtype]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads)) if threads else None
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{path} worker failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(streaming: Path, peft: Path, dtype: str) -> float:
    """Max |diff| between the two outputs; raises when the tensor sets or (bf16) the bits differ."""
    import torch
    from safetensors import safe_open

    def index(directory: Path) -> dict[str, Path]:
        mapping = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
        return {name: directory / shard for name, shard in mapping.items()}

    mine, theirs = index(streaming), index(peft)
    if set(mine) != set(theirs):
        raise AssertionError(f"tensor sets differ: {sorted(set(mine) ^ set(theirs))[:5]}")
    worst = 0.0
    for name in sorted(mine):
        with safe_open(mine[name], "pt") as left, safe_open(theirs[name], "pt") as right:
            a, b = left.get_tensor(name), right.get_tensor(name)
        if dtype == "bf16" and not torch.equal(a, b):
            raise AssertionError(f"{name}: bf16 rounding differs from peft")
        worst = max(worst, (a.float() - b.float()).abs().max().item())
    return worst


def main(argv: list[str] | None = None) -> int:
    """Benchmark entry point (and the per-path worker with --worker)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", choices=["streaming", "peft"], help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--adapter", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", choices=[*DTYPES, "both"], default="both")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--shard-size", default="100MB")
    parser.add_argument("--repeats", type=int, default=3, help="Interleaved runs per path; medians are reported.")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch/OpenMP threads in both workers (0: the environment's). On a busy shared machine "
                             "use 1: spinning OpenMP threads otherwise dominate both timings.")
    parser.add_argument("--workdir", type=Path, help="Where to build the model (default: a temp dir, removed).")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        print(json.dumps(worker(args.worker, args.base, args.adapter, args.out, args.dtype)))
        return 0

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-merge-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        base, adapter = build_inputs(workdir, args.layers, args.hidden, args.shard_size)
        shards = sorted(base.glob("*.safetensors"))
        largest = max(path.stat().st_size for path in shards)
        model_bytes = sum(path.stat().st_size for path in shards)
        print(f"model: {len(shards)} shards, {model_bytes / 2**20:.0f} MiB, largest shard {largest / 2**20:.0f} MiB")
        failed = False
        for dtype in DTYPES if args.dtype == "both" else [args.dtype]:
            # Interleaved runs and medians: on shared CPUs a quiet or busy moment should not favour one path.
            runs: dict[str, list[dict]] = {"streaming": [], "peft": []}
            for _ in range(args.repeats):
                for path in runs:
                    runs[path].append(run_worker(path, base, adapter, workdir / f"out-{path}", dtype, args.threads))
            results = {path: {key: statistics.median(run[key] for run in done) for key in done[0] if key != "path"}
                       for path, done in runs.items()}
            for path, done in runs.items():
                results[path]["peak_above_baseline"] = max(run["peak_above_baseline"] for run in done)
            diff = compare(workdir / "out-streaming", workdir / "out-peft", dtype)
            stream, peft = results["streaming"], results["peft"]
            memory_ratio = stream["peak_above_baseline"] / largest
            time_ratio = stream["seconds"] / peft["seconds"]
            print(f"[{dtype}] max |streaming - peft| = {diff:.3g}" + (" (bit-identical)" if diff == 0 else ""))
            for name, run in results.items():
                print(f"[{dtype}] {name:9s} {run['seconds']:7.2f} s   peak RSS above baseline "
                      f"{run['peak_above_baseline'] / 2**20:8.1f} MiB = {run['peak_above_baseline'] / largest:5.2f}x "
                      f"largest shard = {run['peak_above_baseline'] / model_bytes:5.2f}x model")
            print(f"[{dtype}] streaming merge+verify+publish {stream['merge_publish_s']:.2f} s "
                  f"({stream['merge_publish_s'] / peft['seconds']:.2f}x peft)")
            print(f"[{dtype}] ratios: memory {memory_ratio:.2f}x largest shard (target <= 1.5), "
                  f"time {time_ratio:.2f}x peft (target <= 1.0)")
            exact = diff <= 1e-6 if dtype == "fp32" else True  # bf16 equality is checked in compare()
            failed |= not (exact and memory_ratio <= 1.5 and time_ratio <= 1.0)
        return 1 if failed else 0
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
