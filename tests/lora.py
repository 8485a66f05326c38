"""Real peft LoRA adapters and merged weights, for the merge tests and the reliability tests that merge."""

from __future__ import annotations

from pathlib import Path


def make_adapter(base_dir: Path, out: Path, seed: int = 1, **lora: object) -> Path:
    """A peft LoRA adapter (r=4, alpha 8, ``lora`` for the rest of its config) for ``base_dir``, saved to ``out``,
    with a non-zero update."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, lora_alpha=8, **lora))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            # peft starts lora_B (and lora_embedding_A) at zero; randomise them so the update is not zero
            if "lora_B" in name or "lora_embedding" in name or "modules_to_save" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    model.save_pretrained(out)
    return out


def load_weights(model_dir: Path) -> dict:
    """Every tensor of a safetensors model directory, by name."""
    from safetensors.torch import load_file

    weights = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        weights.update(load_file(shard))
    return weights
