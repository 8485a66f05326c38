"""Benchmark: a 4-trial sweep's training time against 4 times one trial's, on the CPU with the tiny model.

The trials of a run share one tokenization (``components.train.tokenized``): the first trial tokenizes the data
and saves it, the others load it. This measures what that saves, with the real train step (LLaMA-Factory in its
own process, MLflow on SQLite) on a dataset large enough for tokenizing to count:

- reference: one trial, alone in its run (it tokenizes: there is nothing to share), timed end to end;
- sweep: four trials of a learning-rate sweep in one run, one after the other (as kfp.local runs them, and as a
  cluster does with ``sweep.parallelism: 1``), timed end to end.

It prints the ratio ``sweep time / (4 x one trial's time)``; the target is <= 1.0 (exit 1 when missed).

    python -m benchmarks.bench_sweep                       # 20,000 rows, 4 trials (~4 min on 2 cores)
    python -m benchmarks.bench_sweep --rows 40000 --steps 2 --workdir /tmp/bench-sweep
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

TRIAL_RATES = (1e-3, 2e-3, 5e-3, 1e-2)


def _rows(count: int) -> list[dict]:
    """Deterministic alpaca rows of a few hundred characters each (tokenizing them is most of the data work)."""
    words = ["river", "stone", "lantern", "orchard", "signal", "harbour", "meadow", "engine", "copper", "window"]
    rows = []
    for index in range(count):
        text = " ".join(words[(index * 7 + step * 3) % len(words)] for step in range(40))
        rows.append({"instruction": f"Describe item {index} in a sentence.", "input": text,
                     "output": f"Item {index}: {text[:160]}."})
    return rows


def _storage(workdir: Path, rows: int) -> Path:
    from components.demo.tiny_model import build_tiny_llama

    root = workdir / "storage"
    build_tiny_llama(root / "models" / "base-model", seed=0)
    (root / "data").mkdir(parents=True)
    (root / "data" / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": "bench.jsonl"}}))
    with open(root / "data" / "bench.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in _rows(rows))
    return root


def _config(root: Path, steps: int, *overrides: str):
    from configs.loading import load_config

    return load_config("local", overrides=[
        f"storage.mount_path={root}", f"mlflow.tracking_uri=sqlite:///{root / 'mlflow' / 'mlflow.db'}",
        "dataset.names=[bench]", "dataset.test_fraction=0.02", "dataset.val_fraction=0.02",
        "dataset.max_test_rows=100", "dataset.max_val_rows=100", "dataset.min_test_rows=10",
        "dataset.min_val_rows=10", f"training.max_steps={steps}", f"training.save_steps={steps}",
        "training.logging_steps=1", *overrides])


def _timed_trials(cfg, run_id: str, trials: range) -> float:
    """Validate and split once (as validate-dataset does), then time the train step of each trial in turn."""
    from components.data.validate_dataset import validate_config_data
    from components.train.train import train_model

    result, _ = validate_config_data(cfg, run_id)
    if not result.ok:
        raise SystemExit(result.failure_message())
    started = time.perf_counter()
    for trial in trials:
        train_model(cfg, run_id, trial=trial)
    return time.perf_counter() - started


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="Rows in the generated dataset.")
    parser.add_argument("--steps", type=int, default=2, help="Training steps per trial.")
    parser.add_argument("--workdir", type=Path, help="Where to build the storage root (default: a temp dir).")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the reference and the sweep; print the times and the ratio; 1 when the ratio is above 1.0."""
    import contextlib
    import io

    args = build_parser().parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    root = _storage(workdir, args.rows)
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet):
            one = _timed_trials(_config(root, args.steps), "reference", range(1))
            rates = ",".join(str(rate) for rate in TRIAL_RATES)
            sweep = _timed_trials(_config(root, args.steps, f"sweep.learning_rate=[{rates}]"), "sweep",
                                  range(len(TRIAL_RATES)))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    trials = len(TRIAL_RATES)
    ratio = sweep / (trials * one)
    print(f"{args.rows} rows, {args.steps} steps per trial, tiny model on the CPU")
    print(f"{'one trial alone':<32}: {one:7.1f} s")
    print(f"{f'{trials}-trial sweep, one at a time':<32}: {sweep:7.1f} s  ({sweep / trials:.1f} s per trial)")
    print(f"{f'ratio sweep / ({trials} x one trial)':<32}: {ratio:7.3f}  (target <= 1.0: the trials tokenize once)")
    return 0 if ratio <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
