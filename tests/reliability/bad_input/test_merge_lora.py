"""Hostile adapters and bases for the streaming merge (``components.merge.merge_lora``).

Every adapter is a real peft adapter on a tiny multi-shard Llama (or GPT-2 for Conv1D layers), then
damaged the way a broken training run or a hand edit damages it. The reference for what a legal input
merges to is peft's own ``merge_and_unload`` on the same files. A refused merge leaves nothing behind: no
output directory, no staging directory, no version, ``current`` untouched.

``CASES``: the command line fed truncated, malformed or empty adapters, bases with an empty or non-UTF-8 config or
truncated weights, version names that escape or shadow ``current``, nonsense flags; judged by
:func:`.refusals.assert_refused` against the shared workspace (``conftest.py``). Two merges publishing one version
at once: ``concurrency/test_concurrent_merges.py``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from lora import load_weights, make_adapter

from components.merge.inputs import MergeError
from components.merge.merge_lora import main, merge_and_publish, merge_model
from components.merge.publish import current_version, published_versions

from .refusals import assert_refused, case_ids

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny Llama in several safetensors shards (q_proj square, up_proj not)."""
    from components.demo.tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("merge-base") / "base", shard_size="100KB")


def edit_config(adapter: Path, text: str | None = None, **changes: object) -> None:
    path = adapter / "adapter_config.json"
    if text is not None:
        path.write_text(text)
        return
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def edit_weights(adapter: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    path = adapter / "adapter_model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)




def peft_merged(base_dir: Path, adapter: Path) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload().state_dict()


# --- fan_in_fan_out: the layer decides, as in peft ----------------------------------------------------------


def test_fan_in_fan_out_on_linear_layers_is_ignored_as_peft_ignores_it(base, tmp_path):
    import torch

    adapter = make_adapter(base, tmp_path / "adapter", target_modules=["q_proj", "up_proj"])
    edit_config(adapter, fan_in_fan_out=True)  # peft warns "Setting fan_in_fan_out to False" and merges as Linear
    with pytest.warns(UserWarning, match="fan_in_fan_out is set to True but the target module is `torch.nn.Linear`"):
        reference = peft_merged(base, adapter)
    summary = merge_model(base, adapter, tmp_path / "merged", dtype="fp32")
    mine = load_weights(tmp_path / "merged")
    assert summary["merged"] == 4  # 2 layers x (q_proj, up_proj)
    assert all(torch.equal(mine[name], reference[name]) for name in mine)
    original = load_weights(base)["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.equal(mine["model.layers.0.self_attn.q_proj.weight"], original)


def test_conv1d_layers_are_transposed_even_when_the_config_says_otherwise(tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=256, n_positions=64)).save_pretrained(
        gpt2, max_shard_size="20KB")
    adapter = make_adapter(gpt2, tmp_path / "adapter", target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)
    edit_config(adapter, fan_in_fan_out=False)  # peft: "Setting fan_in_fan_out to True" for Conv1D
    with pytest.warns(UserWarning, match="fan_in_fan_out is set to False but the target module is `Conv1D`"):
        reference = peft_merged(gpt2, adapter)
    merge_model(gpt2, adapter, tmp_path / "merged", dtype="fp32")
    mine = load_weights(tmp_path / "merged")
    assert all(torch.equal(mine[name], reference[name]) for name in mine)


# --- non-finite numbers never reach a published model ----------------------------------------------------------


def _refused_cleanly(base: Path, adapter: Path, tmp_path: Path, words: str, capsys, served: Path) -> None:
    """merge_model raises; the CLI exits 1 without a traceback; nothing is published or left behind."""
    with pytest.raises(MergeError, match=words):
        merge_model(base, adapter, tmp_path / "direct")
    models = tmp_path / "models"
    merge_and_publish(served, None, models, "v0", set_current=True)  # the version being served
    assert main(["--base", str(base), "--adapter", str(adapter), "--publish-to", str(models), "--version", "v1"]) == 1
    assert main(["--base", str(base), "--adapter", str(adapter), "--output", str(tmp_path / "plain")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("merge_lora: error:") == 2 and len(re.findall(words, err)) == 2
    assert published_versions(models) == ["v0"] and current_version(models) == "v0"
    assert sorted(path.name for path in models.iterdir()) == ["CURRENT", "current", "v0"]  # no staging left
    assert not (tmp_path / "plain").exists() and not list(tmp_path.glob(".plain*"))


@pytest.mark.parametrize(("damage", "words"), [
    (lambda adapter: edit_config(adapter, text=(adapter / "adapter_config.json").read_text().replace(
        '"lora_alpha": 8', '"lora_alpha": NaN')), "adapter_config.json is not valid JSON.*NaN"),
    (lambda adapter: edit_config(adapter, lora_alpha=1e308), "gives NaN or infinite weights.*scaling 2.5e\\+307"),
    (lambda adapter: edit_weights(adapter, lambda tensors: tensors[next(k for k in tensors if "lora_B" in k)].view(
        -1)[3:5].fill_(float("nan"))), "lora_B weights hold NaN or infinite values"),
    (lambda adapter: edit_weights(adapter, lambda tensors: tensors[next(k for k in tensors if "lora_A" in k)].view(
        -1)[0:1].fill_(float("inf"))), "lora_A weights hold NaN or infinite values"),
    (lambda adapter: edit_config(adapter, lora_alpha="16"), "lora_alpha must be a finite number, got '16'"),
    (lambda adapter: edit_config(adapter, r=True), "r must be a positive integer"),
    (lambda adapter: edit_config(adapter, alpha_pattern={"q_proj": None}), "alpha_pattern.*must be a finite number"),
    (lambda adapter: edit_config(adapter, rank_pattern={"(q_proj": 4}), "no regular expression"),
])
def test_non_finite_or_non_numeric_adapters_are_refused(base, tmp_path, damage, words, capsys):
    adapter = make_adapter(base, tmp_path / "adapter", target_modules=["q_proj"])
    damage(adapter)
    _refused_cleanly(base, adapter, tmp_path, words, capsys, base)


# --- adapters that do not fit the base, bases that cannot be merged into ----------------------------------------


def test_an_adapter_for_modules_the_base_lacks_is_refused(base, tmp_path, capsys):
    adapter = make_adapter(base, tmp_path / "adapter", target_modules=["q_proj"])
    edit_weights(adapter, lambda tensors: [tensors.__setitem__(key.replace("q_proj", "x_proj"), tensors.pop(key))
                                           for key in list(tensors)])
    _refused_cleanly(base, adapter, tmp_path, "x_proj.weight', which the base checkpoint does not have", capsys,
                     base)


@pytest.mark.parametrize(("damage", "words"), [
    (lambda adapter: edit_config(adapter, r=8), "has rank 4 but adapter_config.json says r=8"),
    (lambda adapter: edit_config(adapter, rank_pattern={"q_proj": 2}), "has rank 4 but adapter_config.json says r=2"),
    (lambda adapter: edit_weights(adapter, lambda tensors: [tensors.__setitem__(key, tensors[key][:2].contiguous())
                                                            for key in list(tensors) if "lora_A" in key]),
     "LoRA factors of shapes \\[2, 64\\] and \\[64, 4\\]"),
])
def test_an_adapter_whose_rank_disagrees_with_its_weights_is_refused(base, tmp_path, damage, words, capsys):
    adapter = make_adapter(base, tmp_path / "adapter", target_modules=["q_proj"])
    damage(adapter)
    _refused_cleanly(base, adapter, tmp_path, words, capsys, base)


def test_a_bin_only_base_is_refused(tmp_path, capsys):
    """A base saved as pytorch_model.bin (older checkpoints; transformers 5 no longer writes them)."""
    import torch

    from components.demo.tiny_model import build_tiny_llama

    source = build_tiny_llama(tmp_path / "source")
    binary = Path(shutil.copytree(source, tmp_path / "binary"))
    torch.save(load_weights(source), binary / "pytorch_model.bin")
    for path in [*binary.glob("*.safetensors"), *binary.glob("*.index.json")]:
        path.unlink()
    adapter = make_adapter(source, tmp_path / "adapter", target_modules=["q_proj"])
    _refused_cleanly(binary, adapter, tmp_path, "has no safetensors weights", capsys, source)


@pytest.mark.parametrize(("damage", "words"), [
    (lambda base: (base / _shards(base)[1]).unlink(), r"-of-\d+\.safetensors is named in .* but missing"),
    (lambda base: _edit_index(base, "../outside.safetensors"), "must name shard files in"),
    (lambda base: _edit_index(base, 7), "must name shard files in"),
])
def test_an_index_naming_a_missing_or_foreign_shard_is_refused(base, tmp_path, damage, words, capsys):
    broken = Path(shutil.copytree(base, tmp_path / "broken"))
    assert len(_shards(broken)) > 1
    adapter = make_adapter(base, tmp_path / "adapter", target_modules=["q_proj"])
    damage(broken)
    _refused_cleanly(broken, adapter, tmp_path, words, capsys, base)


def _shards(base: Path) -> list[str]:
    return sorted(set(json.loads((base / "model.safetensors.index.json").read_text())["weight_map"].values()))


def _edit_index(base: Path, shard: object) -> None:
    index = base / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = next(iter(data["weight_map"]))
    data["weight_map"][first] = shard
    index.write_text(json.dumps(data))


# --- the command line -------------------------------------------------------------------------------------------


def _merge(*args: str, base: str = "{ws}/model") -> list[str]:
    return ["components.merge.merge_lora", "--base", base, *args]


# (case id, argv after `python -m`, words the message must contain, extra environment)
CASES = [
    ("merge-truncated-adapter", _merge("--adapter", "{ws}/adapter_truncated", "--output", "{ws}/out/merged1"),
     ["adapter_model.safetensors"], {}),
    ("merge-malformed-adapter-config", _merge("--adapter", "{ws}/adapter_bad_config", "--output",
                                              "{ws}/out/merged2"), ["adapter_config.json"], {}),
    ("merge-empty-adapter", _merge("--adapter", "{ws}/adapter_empty", "--output", "{ws}/out/merged3"),
     ["adapter_empty"], {}),
    ("merge-missing-base", _merge("--output", "{ws}/out/merged4", base="{ws}/nowhere"), ["nowhere"], {}),
    ("merge-version-escape", _merge("--publish-to", "{ws}/out/models", "--version", "../../escaped"),
     ["../../escaped"], {}),
    ("merge-bad-dtype", _merge("--output", "{ws}/out/merged5", "--dtype", "int3"), ["dtype"], {}),
    ("merge-zero-shard-size", _merge("--output", "{ws}/out/merged", "--max-shard-size-mb", "0"),
     ["--max-shard-size-mb"], {}),
    ("merge-version-named-current", _merge("--publish-to", "{ws}/out/models", "--version", "current"),
     ["'current'"], {}),
    ("merge-version-absolute-path", _merge("--publish-to", "{ws}/out/models", "--version", "{ws}/abs-version"),
     ["{ws}/abs-version"], {}),
    ("merge-output-exists", _merge("--output", "{ws}/out/existing"), ["{ws}/out/existing", "already exists"], {}),
    ("merge-empty-base-config", _merge("--output", "{ws}/out/merged", base="{ws}/model_empty_config"),
     ["model_empty_config/config.json"], {}),
    ("merge-non-utf8-base-config", _merge("--output", "{ws}/out/merged", base="{ws}/model_latin1_config"),
     ["model_latin1_config/config.json"], {}),
    ("merge-truncated-base", _merge("--output", "{ws}/out/merged", base="{ws}/model_truncated"),
     ["model_truncated/model.safetensors", "truncated"], {}),
    ("merge-adapter-without-weights", _merge("--adapter", "{ws}/adapter_rank0", "--output", "{ws}/out/merged"),
     ["adapter_rank0"], {}),
]


@pytest.mark.parametrize(("argv", "words", "extra_env"), [case[1:] for case in CASES], ids=case_ids(CASES))
def test_hostile_input_is_refused_clearly_and_writes_nothing(ws, argv, words, extra_env):
    assert_refused(ws, argv, words, extra_env)
