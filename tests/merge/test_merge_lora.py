"""The shard-streaming LoRA merge (components.merge.merge_lora) against peft, transformers and real files.

Every model is a tiny random Llama split into several safetensors shards (built locally, nothing
downloaded); every adapter is a real peft LoRA adapter with non-zero ``lora_B``. The reference is
peft's own ``merge_and_unload`` on the same weights. MLflow is a real SQLite store.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from builders import REPO_ROOT
from lora import load_weights, make_adapter

from components.common.storage import on_volume
from components.merge.inputs import MergeError
from components.merge.merge_lora import (
    find_published,
    main,
    merge_and_publish,
    merge_model,
    remove_stale_staging,
)
from components.merge.plan import PlannedTensor, group_shards
from components.merge.publish import current_version, published_versions
from components.merge.safetensors import read_safetensors_header
from components.merge.verify import manifest_checksum, verify_model_dir
from pipelines.steps import merge_lora

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGET_SETS = {
    "attention-qv": {"target_modules": ["q_proj", "v_proj"]},
    "all-linear-rslora-patterns": {"target_modules": ALL_LINEAR, "use_rslora": True,
                                   "rank_pattern": {"down_proj": 2}, "alpha_pattern": {"q_proj": 3}},
    "embeddings-and-head": {"target_modules": ["k_proj", "embed_tokens", "lm_head"]},
    "modules-to-save": {"target_modules": ["o_proj", "up_proj"], "modules_to_save": ["lm_head"]},
    "dora": {"target_modules": ["q_proj", "down_proj"], "use_dora": True},
}
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """Multi-shard tiny models: untied, tied embeddings, and a bf16 checkpoint."""
    from components.demo.tiny_model import build_tiny_llama

    root = tmp_path_factory.mktemp("merge-bases")
    return {
        "untied": build_tiny_llama(root / "untied", shard_size="100KB"),
        "tied": build_tiny_llama(root / "tied", shard_size="100KB", tie_word_embeddings=True),
        "bf16": build_tiny_llama(root / "bf16", shard_size="60KB", dtype="bfloat16", seed=3),
    }






def peft_merged(base: Path, adapter: Path, dtype):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=dtype), adapter)
    return model.merge_and_unload()


@pytest.mark.parametrize("base_kind, targets", [
    ("untied", "attention-qv"),
    ("untied", "all-linear-rslora-patterns"),
    ("untied", "embeddings-and-head"),
    ("untied", "modules-to-save"),
    ("untied", "dora"),
    ("tied", "attention-qv"),
    ("tied", "all-linear-rslora-patterns"),
])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_merged_weights_equal_peft_merge_and_unload(bases, tmp_path, base_kind, targets, dtype):
    import torch

    base = bases[base_kind]
    adapter = make_adapter(base, tmp_path / "adapter", **TARGET_SETS[targets])
    summary = merge_model(base, adapter, tmp_path / "merged", dtype=dtype)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    reference = peft_merged(base, adapter, torch_dtype).state_dict()
    mine = load_weights(tmp_path / "merged")
    original = load_weights(base)

    assert summary["shards"] > 1 and summary["merged"] > 0
    expected_keys = set(reference) - ({"lm_head.weight"} if base_kind == "tied" else set())
    assert set(mine) == expected_keys
    changed = 0
    for name, value in mine.items():
        assert value.dtype == torch_dtype, name
        if dtype == "fp32":
            torch.testing.assert_close(value, reference[name], atol=1e-6, rtol=0, msg=name)
        else:  # same rounding as peft: bit-identical
            assert torch.equal(value, reference[name]), name
        changed += not torch.equal(value.float(), original[name].float())
    assert changed >= summary["merged"]  # the adapter really changed the weights it targets


def test_fan_in_fan_out_conv1d_layers_match_peft(tmp_path):
    """GPT-2 stores its projections as Conv1D (in x out): the delta is transposed (fan_in_fan_out)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    base = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=256, n_positions=64)).save_pretrained(
        base, max_shard_size="20KB")
    adapter = make_adapter(base, tmp_path / "adapter", target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)
    summary = merge_model(base, adapter, tmp_path / "merged", dtype="fp32")
    reference = peft_merged(base, adapter, torch.float32).state_dict()
    mine = load_weights(tmp_path / "merged")
    assert summary["merged"] == 6 and summary["shards"] > 1  # 2 layers x (c_attn, attn.c_proj, mlp.c_proj)
    assert set(mine) == set(reference) - {"lm_head.weight"}  # tied to transformer.wte.weight
    assert all(torch.equal(mine[name], reference[name]) for name in mine)


def test_auto_dtype_keeps_a_bf16_checkpoint_and_matches_peft(bases, tmp_path):
    import torch

    adapter = make_adapter(bases["bf16"], tmp_path / "adapter", target_modules=ALL_LINEAR)
    summary = merge_model(bases["bf16"], adapter, tmp_path / "merged", dtype="auto")
    assert summary["dtype"] == "bfloat16"
    reference = peft_merged(bases["bf16"], adapter, torch.bfloat16).state_dict()
    mine = load_weights(tmp_path / "merged")
    assert all(torch.equal(mine[name], reference[name]) for name in mine)
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["dtype"] == config["torch_dtype"] == "bfloat16"


@pytest.mark.parametrize("base_kind, targets", [
    ("untied", "all-linear-rslora-patterns"),
    ("untied", "dora"),
    ("tied", "embeddings-and-head"),  # peft's own merge cannot keep these tied; ours unties them
    ("tied", "modules-to-save"),
])
def test_merged_logits_equal_base_plus_adapter(bases, tmp_path, base_kind, targets):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = bases[base_kind]
    adapter = make_adapter(base, tmp_path / "adapter", seed=7, **TARGET_SETS[targets])
    published, summary = merge_and_publish(base, adapter, tmp_path / "models", "v1", dtype="fp32")
    probe = torch.randint(4, 1000, (3, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)(probe).logits
        plain = AutoModelForCausalLM.from_pretrained(base)(probe).logits
        merged = AutoModelForCausalLM.from_pretrained(published)(probe).logits

    assert (expected - plain).abs().max() > 1e-3  # the adapter matters on this probe
    torch.testing.assert_close(merged, expected, atol=2e-5, rtol=0)
    tied_after = json.loads((published / "config.json").read_text())["tie_word_embeddings"]
    assert tied_after is (base_kind == "tied" and not summary["untied"])
    assert summary["untied"] == (["lm_head.weight"] if base_kind == "tied" else [])


def test_output_is_complete_for_serving(bases, tmp_path):
    from transformers import AutoTokenizer

    adapter = make_adapter(bases["untied"], tmp_path / "adapter", target_modules=["q_proj"])
    published, summary = merge_and_publish(bases["untied"], adapter, tmp_path / "models", "v1", dtype="bf16",
                                           set_current=True)
    names = {path.name for path in published.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja", "checksums.sha256", "merge_info.json"} <= names
    assert not {"adapter_config.json", "adapter_model.safetensors"} & names
    assert summary["chat_template"] is True
    index = json.loads((published / "model.safetensors.index.json").read_text())
    shards = sorted(name for name in names if name.endswith(".safetensors"))
    assert sorted(set(index["weight_map"].values())) == shards
    assert all(re.fullmatch(rf"model-\d{{5}}-of-{len(shards):05d}\.safetensors", name) for name in shards)
    sizes = 0
    for shard in shards:
        header = read_safetensors_header(published / shard)
        assert header.data_start % 8 == 0 and header.metadata == {"format": "pt"}
        sizes += sum(entry.end - entry.begin for entry in header.tensors.values())
    assert index["metadata"]["total_size"] == sizes
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "models" / "current")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("<|assistant|>\n")
    verify_model_dir(published)


def test_full_weights_are_published_as_a_streamed_copy(bases, tmp_path):
    import torch

    published, summary = merge_and_publish(bases["tied"], None, tmp_path / "models", "full-v1", dtype="auto")
    assert summary["merged"] == 0 and summary["dtype"] == "float32"
    original, copied = load_weights(bases["tied"]), load_weights(published)
    assert set(copied) == set(original)
    assert all(torch.equal(copied[name], original[name]) for name in original)


def test_group_shards_respects_the_size_limit():
    shard_a, shard_b = Path("a.safetensors"), Path("b.safetensors")
    plan = [PlannedTensor("x", shard_a, "x", "F32", (100,)), PlannedTensor("y", shard_a, "y", "F32", (100,)),
            PlannedTensor("z", shard_a, "z", "F32", (300,)), PlannedTensor("i", shard_b, "i", "I64", (1,)),
            PlannedTensor("h", shard_b, "h", "BF16", (3,))]
    groups = group_shards(plan, max_shard_bytes=800)
    assert [[t.name for t in group] for group in groups] == [["x", "y"], ["z"], ["i", "h"]]
    assert all(sum(t.nbytes for t in group) <= 1200 for group in groups)  # z alone exceeds the limit


def test_truncated_adapter_is_refused_and_nothing_is_written(bases, tmp_path, capsys):
    adapter = make_adapter(bases["untied"], tmp_path / "adapter", target_modules=["q_proj"])
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(MergeError, match=r"adapter_model\.safetensors: truncated"):
        merge_model(bases["untied"], adapter, tmp_path / "merged")

    out = tmp_path / "cli-out"
    assert main(["--base", str(bases["untied"]), "--adapter", str(adapter), "--output", str(out)]) == 1
    assert "adapter_model.safetensors: truncated" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".cli-out*"))


@pytest.mark.parametrize("change, expected", [
    (lambda adapter, base: _edit_json(adapter / "adapter_config.json", use_dora=True),
     "use_dora is set but module .*q_proj.* has no lora_magnitude_vector"),
    (lambda adapter, base: _edit_json(adapter / "adapter_config.json", lora_bias=True), "lora_bias=True: LoRA biases"),
    (lambda adapter, base: _edit_json(adapter / "adapter_config.json", r=8), "has rank 4 but adapter_config.json"),
    (lambda adapter, base: _edit_json(adapter / "adapter_config.json", init_lora_weights="pissa"), "pissa"),
    (lambda adapter, base: (adapter / "adapter_config.json").unlink(), "adapter_config.json is missing"),
    (lambda adapter, base: _edit_json(base / "config.json", quantization_config={"quant_method": "bitsandbytes"}),
     "base model is quantized .*bitsandbytes.*full-precision"),
])
def test_unmergeable_inputs_are_refused_clearly(bases, tmp_path, change, expected):
    import shutil

    base = Path(shutil.copytree(bases["untied"], tmp_path / "base"))
    adapter = make_adapter(base, tmp_path / "adapter", target_modules=["q_proj"])
    change(adapter, base)
    with pytest.raises(MergeError, match=expected):
        merge_model(base, adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_adapter_of_another_model_is_refused(bases, tmp_path):
    from components.demo.tiny_model import build_tiny_llama

    other = build_tiny_llama(tmp_path / "other", hidden_size=32, intermediate_size=64)
    adapter = make_adapter(other, tmp_path / "adapter", target_modules=["q_proj"])
    with pytest.raises(MergeError, match="q_proj.weight.*is it the adapter of this base model"):
        merge_model(bases["untied"], adapter, tmp_path / "merged")


_CRASH_BEFORE_PUBLISH = """
import importlib, os, signal, sys
from pathlib import Path
merge = importlib.import_module("components.merge.merge_lora")  # the package attribute is the KFP component

def crash(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # the merge is written; the process dies before publishing

merge.publish_model = crash
merge.merge_and_publish(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], dtype="fp32",
                        set_current=True, info={"kfp_run_id": "run-2"})
"""


def test_crash_between_write_and_publish_keeps_the_previous_version(bases, tmp_path):
    base, models = bases["untied"], tmp_path / "models"
    first = make_adapter(base, tmp_path / "adapter1", seed=1, target_modules=["q_proj"])
    second = make_adapter(base, tmp_path / "adapter2", seed=2, target_modules=["v_proj"])
    v1, _ = merge_and_publish(base, first, models, "20260101-000000-run-1", set_current=True,
                              info={"kfp_run_id": "run-1"})
    v1_checksum = manifest_checksum(v1)
    v2_name = "20260102-000000-run-2"

    done = subprocess.run([sys.executable, "-c", _CRASH_BEFORE_PUBLISH, str(base), str(second), str(models), v2_name],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr
    assert published_versions(models) == [v1.name]
    assert current_version(models) == v1.name and os.readlink(models / "current") == v1.name
    verify_model_dir(models / "current")
    assert manifest_checksum(v1) == v1_checksum
    leftovers = [path.name for path in models.iterdir() if path.name.startswith(".")]
    assert len(leftovers) == 1 and leftovers[0].startswith(f".incoming-{v2_name}-")

    # The retry of run-2 clears its own leftovers and publishes normally.
    assert [path.name for path in remove_stale_staging(models, "run-2")] == leftovers
    v2, _ = merge_and_publish(base, second, models, v2_name, info={"kfp_run_id": "run-2"})
    assert published_versions(models) == [v1.name, v2.name] and current_version(models) == v1.name
    assert find_published(models, "run-2") == v2 and find_published(models, "run-3") is None


def test_failure_inside_publish_removes_staging(bases, tmp_path, monkeypatch):
    merge = importlib.import_module("components.merge.merge_lora")  # the package attribute is the KFP component

    models = tmp_path / "models"
    adapter = make_adapter(bases["untied"], tmp_path / "adapter", target_modules=["q_proj"])
    merge_and_publish(bases["untied"], adapter, models, "v1", set_current=True)

    def refuse(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(merge, "publish_model", refuse)
    with pytest.raises(OSError, match="No space left"):
        merge_and_publish(bases["untied"], adapter, models, "v2", set_current=True)
    assert sorted(path.name for path in models.iterdir()) == ["CURRENT", "current", "v1"]


def test_cli_output_and_publish_modes(bases, tmp_path, capsys):
    adapter = make_adapter(bases["tied"], tmp_path / "adapter", target_modules=["q_proj"])
    out = tmp_path / "plain"
    argv = ["--base", str(bases["tied"]), "--adapter", str(adapter)]
    assert main([*argv, "--output", str(out), "--dtype", "fp16"]) == 0
    verify_model_dir(out)
    assert json.loads(capsys.readouterr().out)["dtype"] == "float16"
    assert main([*argv, "--output", str(out)]) == 1  # exists: refused without --force
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--output", str(out), "--force", "--dtype", "fp32"]) == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"

    models = tmp_path / "models"
    assert main([*argv, "--publish-to", str(models), "--version", "a1"]) == 0
    assert main([*argv, "--publish-to", str(models), "--version", "a2", "--no-set-current"]) == 0
    assert current_version(models) == "a1" and published_versions(models) == ["a1", "a2"]
    for usage in (["--output", str(out), "--version", "x"], ["--output", "a", "--publish-to", "b"], []):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, *usage])
        assert exit_info.value.code == 2


def test_pipeline_step_publishes_without_moving_current_and_is_idempotent(local_config, tmp_path):
    import mlflow
    import torch
    from kfp.dsl import Model

    from components.common.storage import run_dir, run_slug

    cfg, run_id = local_config, "run-7f3a"
    base = on_volume(cfg, cfg.storage.base_model)
    adapter = make_adapter(base, run_dir(cfg, run_id) / "adapter", target_modules=["q_proj", "v_proj"])
    models = on_volume(cfg, cfg.storage.models_root) / cfg.mlflow.registered_model_name
    merge_and_publish(base, None, models, "00000000-champion", set_current=True)  # the champion being served

    artifact = Model(name="merged", uri=str(tmp_path / "artifact" / "merged"), metadata={})
    model_dir, version = merge_lora.python_func(config=cfg.model_dump_json(), kfp_run_id=run_id,
                                                weights_dir=str(adapter), merged=artifact)

    assert re.fullmatch(rf"\d{{8}}-\d{{6}}-{run_slug(run_id)}", version)
    assert Path(model_dir) == models / version
    verify_model_dir(Path(model_dir))
    assert current_version(models) == "00000000-champion"  # only the promotion step moves it
    checksum = manifest_checksum(Path(model_dir))
    assert artifact.metadata["checksum"] == checksum and artifact.metadata["version"] == version
    assert artifact.metadata["model_dir"] == model_dir and artifact.metadata["dtype"] == "float32"
    assert json.loads(Path(artifact.path).read_text())["model_dir"] == model_dir
    merged_q = load_weights(Path(model_dir))["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.equal(merged_q, load_weights(base)["model.layers.0.self_attn.q_proj.weight"])

    again = Model(name="merged", uri=str(tmp_path / "artifact2" / "merged"), metadata={})
    assert merge_lora.python_func(config=cfg.model_dump_json(), kfp_run_id=run_id, weights_dir=str(adapter),
                                  merged=again) == (model_dir, version)
    assert published_versions(models) == ["00000000-champion", version]

    client = mlflow.tracking.MlflowClient(cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id], "tags.`llmft.step` = 'merge-lora'")
    assert len(runs) == 2 and {run.info.status for run in runs} == {"FINISHED"}
    for run in runs:
        assert run.data.params["checksum"] == checksum and run.data.params["version"] == version
        assert run.data.params["weights"] == str(adapter) and run.data.params["base"] == str(base)
        assert run.data.tags["mlflow.parentRunId"]


def test_import_stays_light():
    code = ("import sys, components.merge.merge_lora, components.merge.publish; "
            "print([m for m in ('torch', 'transformers', 'peft', 'mlflow', 'safetensors', 'numpy') "
            "if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
