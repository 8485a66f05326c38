"""components.demo.tiny_model: deterministic bytes, loads with transformers, shards on request."""

from __future__ import annotations

import hashlib

from components.demo.tiny_model import build_tiny_llama


def _digest(directory) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_same_arguments_same_bytes(tmp_path, tiny_model_dir):
    again = build_tiny_llama(tmp_path / "again", seed=0)
    assert _digest(again) == _digest(tiny_model_dir)
    other = build_tiny_llama(tmp_path / "other", seed=1)
    assert _digest(other)["model.safetensors"] != _digest(tiny_model_dir)["model.safetensors"]


def test_loads_and_runs_with_transformers(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = tokenizer("Answer: A", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert tokenizer.chat_template and tokenizer.eos_token == "</s>"
    sharded = build_tiny_llama(tmp_path / "sharded", seed=0, shard_size="100KB")
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    assert (sharded / "model.safetensors.index.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(sharded)
    assert torch.equal(reloaded.model.embed_tokens.weight, model.model.embed_tokens.weight)
