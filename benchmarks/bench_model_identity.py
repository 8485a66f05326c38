"""Benchmark: what an exact model identity costs (every byte hashed) against reading the same bytes.

    python -m benchmarks.bench_model_identity                  # 4 shards of 256 MiB
    python -m benchmarks.bench_model_identity --shards 8 --mib 512 --workdir /mnt/nfs/bench

Writes a model directory (config.json and ``--shards`` weight files of ``--mib`` MiB each, pseudo-random bytes),
then times, best of ``--repeats``:

1. the reference: reading every byte in 1 MiB chunks, nothing else (the same files, one thread per file as the
   identity uses, so the ratio is the hashing's share alone);
2. :func:`components.evaluate.mmlu.data.model_identity` without a manifest: every file hashed in full (a base
   model);
3. the same with the merge's ``checksums.sha256`` beside the files: the digests are read from it.

Prints bytes/s for each and the ratio of (2) to (1). The files sit in the page cache after writing, so this is
the CPU side; on a network volume the first read of a cold base model is bounded by the volume instead.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CHUNK = 1 << 20


def write_model(directory: Path, shards: int, mib: int) -> int:
    """A model directory of ``shards`` weight files, ``mib`` MiB each; returns the bytes written."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text('{"model_type": "llama"}')
    block = os.urandom(CHUNK)
    for number in range(shards):
        with open(directory / f"model-{number + 1:05d}-of-{shards:05d}.safetensors", "wb") as handle:
            for index in range(mib):
                handle.write(block[index % 251:] + block[:index % 251])  # no two chunks alike
    return shards * mib * CHUNK


def read_all(directory: Path) -> None:
    """Read every weight file in 1 MiB chunks (as many threads as the identity's hashing uses)."""
    def read(path: Path) -> None:
        with open(path, "rb", buffering=0) as handle:
            buffer = bytearray(CHUNK)
            while handle.readinto(buffer):
                pass

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        list(pool.map(read, sorted(directory.glob("*.safetensors"))))


def best(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    from components.evaluate.mmlu.data import model_identity
    from components.merge.verify import write_manifest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--mib", type=int, default=256, help="MiB per shard")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        model = Path(tmp) / "model"
        total = write_model(model, args.shards, args.mib)
        reference = best(lambda: read_all(model), args.repeats)
        full = best(lambda: model_identity(model), args.repeats)
        identity = model_identity(model)
        write_manifest(model)
        manifested = best(lambda: model_identity(model), args.repeats)
        assert model_identity(model) == identity, "the manifest's digests must give the same identity"
    gib = total / (1 << 30)
    print(f"model: {args.shards} shards, {gib:.2f} GiB, {os.cpu_count()} CPUs")
    print(f"read only (reference)        {reference:8.3f} s  {total / reference / 1e9:6.2f} GB/s")
    print(f"identity, hashed in full     {full:8.3f} s  {total / full / 1e9:6.2f} GB/s  "
          f"({full / reference:.2f}x the read)")
    print(f"identity, from the manifest  {manifested:8.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
