"""Real peft LoRA adapters for the reliability tests (merge, storage faults, concurrent publishing)."""

from __future__ import annotations

from pathlib import Path


def make_adapter(base_dir: Path, out: Path, seed: int = 1, **lora: object) -> Path:
    """A peft LoRA adapter (r=4, alpha 8, ``lora`` for the rest of its config) for ``base_dir``, saved to ``out``,
    with a non-zero update (peft starts lora_B at zero)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, lora_alpha=8, **lora))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    model.save_pretrained(out)
    return out
