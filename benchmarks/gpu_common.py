"""What every GPU benchmark shares: the model shapes, the flags and the report file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# Llama 3.2 1B's shape (random weights: no download), and a tiny one for the logic checks on the CPU.
LLAMA_3_2_1B = {"vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
                "max_position_embeddings": 131072, "rope_theta": 500000.0, "tie_word_embeddings": True}
TINY = {"vocab_size": 2048, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 2048,
        "rope_theta": 10000.0, "tie_word_embeddings": False}


def add_run_flags(parser: argparse.ArgumentParser, tiny: str, dtype: bool = True) -> None:
    """``--device``, ``--dtype`` (unless ``dtype`` is false), ``--tiny`` (helped by ``tiny``) and ``--json``."""
    parser.add_argument("--device", default="cuda")
    if dtype:
        parser.add_argument("--dtype", default=None, help="Default: bfloat16 on a GPU, float32 on the CPU.")
    parser.add_argument("--tiny", action="store_true", help=f"{tiny} (logic check).")
    parser.add_argument("--json", default="", help="Also write the numbers to this JSON file.")


def write_report(path: str, report: dict[str, Any]) -> None:
    """Write the numbers to ``path`` as JSON (nothing when ``path`` is empty)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=1) + "\n")
