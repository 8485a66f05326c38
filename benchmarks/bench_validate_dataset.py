"""Benchmark: validate_dataset's speed and memory against LLaMA-Factory's own data path.

    python benchmarks/bench_validate_dataset.py                      # 1,000,000 vs 10,000 rows
    python benchmarks/bench_validate_dataset.py --rows 200000 --workdir /tmp/bench

Writes two alpaca JSON Lines files (deterministic, about 330 bytes a row), then measures, each in
a fresh process so peak RSS is that run's alone:

1. ``validate_datasets`` on the small file and on the large file (peak RSS, seconds; the large file
   is validated before and after the baseline and the faster run counts, the higher RSS);
2. LLaMA-Factory's loading path on the large file: ``datasets.load_dataset("json")`` plus its
   ``AlpacaDatasetConverter`` through ``Dataset.map`` (one process, as ``preprocessing_num_workers``
   unset; the validator is single-threaded too).

Targets (from the issue): peak RSS on the large file <= 1.2x the peak on the small one (streaming,
constant memory), and throughput >= 5x LLaMA-Factory's on the same file. Prints both ratios; exits 1
when a target is missed. Imports are outside the timed region in every process.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RSS_TARGET = 1.2
SPEED_TARGET = 5.0
WORDS = ["the", "model", "data", "train", "answer", "question", "explain", "why", "how", "what", "list", "write",
         "short", "poem", "about", "river", "city", "science", "history", "summary", "table", "value", "number",
         "energy", "water", "light", "garden", "market", "review", "letter", "code"]


def write_alpaca_jsonl(path: Path, rows: int, seed: int = 0) -> None:
    """A deterministic alpaca JSON Lines file with varied lengths, streamed to disk."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(rows):
            row = {
                "instruction": " ".join(rng.choices(WORDS, k=rng.randint(5, 20))) + f" (task {index})",
                "input": " ".join(rng.choices(WORDS, k=rng.randint(0, 15))),
                "output": " ".join(rng.choices(WORDS, k=rng.randint(10, 60))),
            }
            handle.write(json.dumps(row) + "\n")
    (path.parent / "dataset_info.json").write_text(json.dumps({path.stem: {"file_name": path.name}}))


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries the parent's peak into a child
    started with vfork+exec, as subprocess does."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_validate(path: Path) -> dict:
    """Time validate_datasets on one file (runs in a fresh process)."""
    from components.data.validation import validate_datasets

    start = time.perf_counter()
    result = validate_datasets(path.parent, [path.stem], cutoff_len=2048)
    seconds = time.perf_counter() - start
    if not result.ok:
        raise SystemExit(f"the benchmark file is invalid: {result.failure_message()}")
    return {"rows": result.rows, "seconds": seconds, "peak_rss_mb": _peak_rss_mb()}


def child_llamafactory(path: Path, cache_dir: Path) -> dict:
    """Time LLaMA-Factory's load + alpaca conversion of one file (runs in a fresh process)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from datasets import load_dataset
    from datasets.utils.logging import disable_progress_bar
    from llamafactory.data.converter import AlpacaDatasetConverter
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.hparams import DataArguments

    disable_progress_bar()
    attr = get_dataset_list([path.stem], str(path.parent))[0]
    converter = AlpacaDatasetConverter(attr, DataArguments(dataset_dir=str(path.parent)))
    start = time.perf_counter()
    dataset = load_dataset("json", data_files=[str(path)], split="train", cache_dir=str(cache_dir))
    aligned = dataset.map(converter, batched=False, remove_columns=list(dataset.column_names),
                          load_from_cache_file=False)
    seconds = time.perf_counter() - start
    return {"rows": len(aligned), "seconds": seconds, "peak_rss_mb": _peak_rss_mb()}


def _run_child(*args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT)
    if done.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="Rows of the large file.")
    parser.add_argument("--small-rows", type=int, default=10_000, help="Rows of the small file (RSS baseline).")
    parser.add_argument("--workdir", type=Path, help="Where to write the files (default: a temporary directory).")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when both targets are met, 1 otherwise."""
    args = build_parser().parse_args(argv)
    if args.child:
        kind, *paths = args.child
        result = child_validate(Path(paths[0])) if kind == "validate" else \
            child_llamafactory(Path(paths[0]), Path(paths[1]))
        print(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        files = {}
        for label, rows in (("small", args.small_rows), ("large", args.rows)):
            (root / label).mkdir()
            files[label] = root / label / f"{label}.jsonl"
            write_alpaca_jsonl(files[label], rows)
        small = _run_child("validate", str(files["small"]))
        # Validator runs on both sides of the baseline, the faster one counts: the machine may be shared.
        first = _run_child("validate", str(files["large"]))
        baseline = _run_child("llamafactory", str(files["large"]), str(root / "hf-cache"))
        second = _run_child("validate", str(files["large"]))
        large = dict(min(first, second, key=lambda run: run["seconds"]),
                     peak_rss_mb=max(first["peak_rss_mb"], second["peak_rss_mb"]))
        size_mb = files["large"].stat().st_size / 1e6
    print(f"large file: {args.rows:,} rows, {size_mb:,.0f} MB; small file: {args.small_rows:,} rows")
    print(f"{'run':<34}{'rows':>10}{'seconds':>10}{'rows/s':>12}{'peak RSS MB':>13}")
    for label, run in (("validate_datasets, small file", small), ("validate_datasets, large file", large),
                       ("LLaMA-Factory load + convert", baseline)):
        print(f"{label:<34}{run['rows']:>10}{run['seconds']:>10.2f}{run['rows'] / run['seconds']:>12,.0f}"
              f"{run['peak_rss_mb']:>13.1f}")
    rss_ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    speed_ratio = (large["rows"] / large["seconds"]) / (baseline["rows"] / baseline["seconds"])
    rss_ok, speed_ok = rss_ratio <= RSS_TARGET, speed_ratio >= SPEED_TARGET
    print(f"peak RSS ratio large/small: {rss_ratio:.3f} (target <= {RSS_TARGET}) {'PASS' if rss_ok else 'FAIL'}")
    print(f"throughput ratio validate/LLaMA-Factory: {speed_ratio:.1f}x (target >= {SPEED_TARGET}x) "
          f"{'PASS' if speed_ok else 'FAIL'}")
    return 0 if rss_ok and speed_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
