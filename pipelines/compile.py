"""Compile the pipeline for every preset in ``configs/`` into KFP IR YAML under ``compiled/``.

    python -m pipelines.compile                        # all presets -> compiled/<preset>.yaml
    python -m pipelines.compile --config configs/lora.yaml --set training.lora_rank=32 --output /tmp/x.yaml
    python -m pipelines.compile --check                # exit 1 when compiled/ is stale (CI)

The output is deterministic (same bytes on every run) and compiling imports neither torch,
transformers nor LLaMA-Factory.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import tempfile
from pathlib import Path

from configs.errors import StepError, UsageError
from configs.loading import CONFIG_DIR, load_config
from configs.schema import ConfigError, PipelineConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPILED_DIR = REPO_ROOT / "compiled"


# The CPU demo runs through kfp.local (python -m pipelines.run_local); a cluster cannot mount ./storage.
LOCAL_ONLY = ("local",)


def presets() -> dict[str, Path]:
    """The shipped presets a cluster can run: ``{name: configs/<name>.yaml}``."""
    return {path.stem: path for path in sorted(CONFIG_DIR.glob("*.yaml")) if path.stem not in LOCAL_ONLY}


def compile_config(cfg: PipelineConfig, output: Path, changes: list[str] | None = None) -> Path:
    """Compile the pipeline for ``cfg`` into ``output`` (KFP IR YAML) and return the path.

    ``changes`` are the ``--set`` values ``cfg`` was made with: they give the pipeline its own name.

    The IR is staged in a temporary directory and renamed into place, so an interrupted compile never
    leaves a truncated file that a later upload would read.

    Raises:
        ConfigError: ``output`` does not end with .yaml or .yml.
        StorageError: ``output`` cannot be written (the message names the path).
    """
    from kfp import compiler

    from components.common.storage import atomic_write_text
    from pipelines.finetune import build_pipeline

    if output.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"--output {output} must be a .yaml file (KFP writes IR only as YAML)")
    if not cfg.storage.mount_path.startswith("/"):
        raise ConfigError(f"storage.mount_path: {cfg.storage.mount_path!r} is not absolute, and Kubernetes mounts "
                          "volumes only at absolute paths; the local preset is for python -m pipelines.run_local")
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(build_pipeline(cfg, changes), package_path=str(staged))
        atomic_write_text(output, _stable_header(staged.read_text(encoding="utf-8")))
    return output


_HEADER_DEFAULT = re.compile(r"^(#\s+\w+: \w+ \[Default: )(.*)(\])$")


def _stable_header(text: str) -> str:
    """Render dict/list defaults in the compiler's comment header with sorted keys.

    The compiler prints them from protobuf maps, whose order changes between processes; the IR
    body itself is already ordered. Sorting makes the file byte-identical on every compile.
    """
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if not line.startswith("#"):
            break
        match = _HEADER_DEFAULT.match(line)
        if match and match.group(2)[:1] in "[{":
            value = ast.literal_eval(match.group(2))
            lines[index] = f"{match.group(1)}{json.dumps(value, sort_keys=True)}{match.group(3)}"
    return "\n".join(lines)


def compile_presets(output_dir: Path = COMPILED_DIR) -> list[Path]:
    """Compile every preset into ``output_dir/<preset>.yaml``."""
    return [compile_config(load_config(path), output_dir / f"{name}.yaml") for name, path in presets().items()]


def stale_files(output_dir: Path = COMPILED_DIR) -> list[str]:
    """Names of checked-in IR files that differ from a fresh compile (or are missing/extra)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {path.name: path.read_bytes() for path in compile_presets(Path(tmp))}
    current = {path.name: path.read_bytes() for path in output_dir.glob("*.yaml")}
    return sorted(name for name in fresh.keys() | current.keys() if fresh.get(name) != current.get(name))


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags of ``python -m pipelines.compile``."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.compile",
                                     description="Compile the fine-tuning pipeline to KFP IR YAML.")
    parser.add_argument("--config", help="One config (path or preset name); default: every preset.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="Override a config value (repeatable); only with --config.")
    parser.add_argument("--output", type=Path, help="Output file (with --config) or directory (default compiled/).")
    parser.add_argument("--check", action="store_true", help="Fail when compiled/ differs from a fresh compile.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 on success, 1 when --check finds stale IR or the output cannot be written, 2 on a bad
    config or usage."""
    from components.common.cli import fail

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.check:
            stale = stale_files(args.output or COMPILED_DIR)
            if stale:
                raise StepError(f"compiled/ is stale: {', '.join(stale)}; run python -m pipelines.compile")
            print("compiled/ is current")
            return 0
        if args.config:
            cfg = load_config(args.config, overrides=args.overrides)
            output = args.output or COMPILED_DIR / f"{Path(args.config).stem}.yaml"
            print(compile_config(cfg, output, args.overrides))
            return 0
        if args.overrides:
            raise UsageError("--set needs --config")
        for path in compile_presets(args.output or COMPILED_DIR):
            print(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path)
    except StepError as exc:
        return fail(parser, exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
