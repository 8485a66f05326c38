"""Models larger than one GPU: the placement plan (components/evaluate/placement.py) for given per-GPU budgets.

The plan is made on a meta-device model (transformers' real architecture, accelerate's real
``infer_auto_device_map``), so it runs on the CPU: no GPU is needed to check which layers go where. Loading with
the plan needs GPUs and is checked by benchmarks/gpu_generate.py when a device is lent.
"""

from __future__ import annotations

import pytest

from components.evaluate.placement import PlacementError, meta_model, plan_placement

LAYERS = 8


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """An 8-layer Llama's architecture (about 11 MB in bf16) on the meta device."""
    import torch
    from transformers import LlamaConfig

    folder = tmp_path_factory.mktemp("llama-8-layers")
    LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=LAYERS, num_attention_heads=4,
                num_key_value_heads=4, vocab_size=1024).save_pretrained(folder)
    return meta_model(folder, torch.bfloat16)


def sizes(model):
    import torch
    from accelerate.utils import compute_module_sizes

    return compute_module_sizes(model, dtype=torch.bfloat16)


def test_a_model_that_fits_one_gpu_goes_there_whole(model):
    import torch

    total = sizes(model)[""]
    placement = plan_placement(model, {0: total, 1: total}, torch.bfloat16)
    assert (placement.device, placement.device_map, placement.weights_bytes) == ("cuda:0", None, total)
    assert placement.gpus_used == [0]


@pytest.mark.parametrize("gpus", [2, 3])
def test_a_larger_model_is_split_in_whole_layers_within_each_budget(model, gpus):
    import torch

    table = sizes(model)
    budget = int(table[""] * 0.7) if gpus == 2 else int(table[""] * 0.45)
    placement = plan_placement(model, dict.fromkeys(range(gpus), budget), torch.bfloat16)
    device_map = placement.device_map
    assert placement.gpus_used == list(range(gpus)) and placement.device == "cuda:0"
    layers = [f"model.layers.{index}" for index in range(LAYERS)]
    assert set(layers) <= set(device_map)  # every decoder layer whole, none split across GPUs
    assert device_map["model.embed_tokens"] == 0 and device_map["lm_head"] == gpus - 1
    assert [device_map[layer] for layer in layers] == sorted(device_map[layer] for layer in layers)  # in order
    for gpu in range(gpus):
        assert sum(table[name] for name, device in device_map.items() if device == gpu) <= budget


def test_a_model_too_large_for_all_gpus_names_its_size_and_the_budget(model):
    import torch

    total = sizes(model)[""]
    with pytest.raises(PlacementError) as info:
        plan_placement(model, {0: total // 4, 1: total // 4}, torch.bfloat16)
    message = str(info.value)
    gib = f"{total / 2**30:.2f} GiB"
    assert f"the model's weights take {gib}" in message and f"on 2 GPU(s) ({total // 4 * 2 / 2**30:.2f} GiB in all)" \
        in message
    assert "h_eval_accelerator_count" in message and "evaluation.gpu_memory_fraction" in message
    # Enough bytes in all, but not in whole layers: still refused, naming where a layer would have gone.
    with pytest.raises(PlacementError, match="split into whole layers they do not fit .* would go to disk"):
        plan_placement(model, dict.fromkeys(range(4), int(total * 0.3)), torch.bfloat16)
    with pytest.raises(PlacementError, match="no GPU budget"):
        plan_placement(model, {}, torch.bfloat16)
