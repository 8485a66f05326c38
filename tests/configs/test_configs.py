"""The typed configuration: every shipped preset loads, and bad configs fail with the field path named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from configs.loading import CONFIG_DIR, apply_overrides, config_from_dict, load_config
from configs.schema import ConfigError, PipelineConfig
from configs.templates import LLAMAFACTORY_TEMPLATES

PRESETS = sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


def test_the_four_presets_exist():
    assert {"lora", "qlora", "full", "local"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_loads_and_round_trips(preset):
    cfg = load_config(CONFIG_DIR / f"{preset}.yaml")
    again = config_from_dict(cfg.dump_public())
    assert again == cfg
    assert again.config_hash() == cfg.config_hash()


def test_presets_differ_where_they_should():
    lora, qlora, full, local = (load_config(name) for name in ("lora", "qlora", "full", "local"))
    assert (lora.training.method, qlora.training.method, full.training.method) == ("lora", "qlora", "full")
    assert qlora.training.quantization_bit == 4
    assert full.training.deepspeed_stage == 3
    assert local.cluster.accelerator_count == 0
    assert local.mlflow.tracking_uri.startswith("sqlite:///")
    assert len({c.config_hash() for c in (lora, qlora, full, local)}) == 4


def test_preset_header_names_the_command_that_runs_it():
    for preset in PRESETS:
        head = (CONFIG_DIR / f"{preset}.yaml").read_text().splitlines()[:6]
        assert any("python -m pipelines." in line for line in head), preset


def test_template_list_matches_installed_llamafactory():
    from llamafactory.data.template import TEMPLATES

    assert set(TEMPLATES) == LLAMAFACTORY_TEMPLATES


def _lora_with(**changes) -> dict:
    data = yaml.safe_load((CONFIG_DIR / "lora.yaml").read_text())
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return data


BAD_CONFIGS = [
    # (changes, field path expected in the message, words expected in the message)
    ({"training__learning_rate": -1.0}, "training.learning_rate", "greater than 0"),
    ({"training__learning_rate": 0}, "training.learning_rate", "greater than 0"),
    ({"training__lora_rank": 0}, "training.lora_rank", "greater than or equal to 1"),
    ({"training__per_device_train_batch_size": 10**9}, "training.per_device_train_batch_size", "less than"),
    ({"training__method": "dora"}, "training.method", "lora"),
    ({"training__template": "no-such-template"}, "training.template", "unknown LLaMA-Factory template"),
    ({"training__methd": "lora"}, "training.methd", "Extra inputs are not permitted"),
    ({"training__quantization_bit": 4}, "training", "only for method 'qlora'"),
    ({"training__lora_target": "q_proj; rm -rf /"}, "training.lora_target", "module names"),
    ({"storage__base_model": "../../etc"}, "storage.base_model", "inside the storage root"),
    ({"storage__data_dir": "/etc/passwd"}, "storage.data_dir", "inside the storage root"),
    ({"storage__pvc_name": "Bad_Name"}, "storage.pvc_name", "Kubernetes resource name"),
    ({"cluster__memory_request": "lots"}, "cluster.memory_request", "Kubernetes quantity"),
    ({"cluster__gpu_tolerations": [{"key": "x", "operator": "Equal"}]}, "cluster.gpu_tolerations.0", "needs a value"),
    ({"cluster__accelerator_count": -1}, "cluster.accelerator_count", "greater than or equal to 0"),
    ({"dataset__names": ["../secrets"]}, "dataset.names", "plain identifiers"),
    ({"dataset__names": []}, "dataset.names", "at least 1"),
    ({"evaluation__n_shot": 50}, "evaluation.n_shot", "less than or equal to 20"),
    ({"evaluation__backend": "openai"}, "evaluation", "evaluation.backend and evaluation.endpoint were removed"),
    ({"gate__alpha": 1.5}, "gate.alpha", "less than 1"),
    ({"mlflow__tracking_uri": "ftp://x"}, "mlflow.tracking_uri", "http(s)://"),
    ({"mlflow__credentials_secret": "Not A Name"}, "mlflow.credentials_secret", "secret name"),
    ({"name": "Has Spaces"}, "name", "lowercase"),
]


@pytest.mark.parametrize(("changes", "path", "words"), BAD_CONFIGS, ids=[f"{c[1]}:{c[2]}" for c in BAD_CONFIGS])
def test_bad_config_names_the_field(changes, path, words):
    with pytest.raises(ConfigError) as info:
        config_from_dict(_lora_with(**changes), source="test.yaml")
    message = str(info.value)
    assert "test.yaml" in message
    assert f"  {path}" in message, message
    assert words in message, message


def test_cross_section_rule_names_the_fields():
    data = _lora_with(training__method="qlora", training__quantization_bit=4, cluster__accelerator_count=0)
    with pytest.raises(ConfigError, match=r"qlora.*cluster.accelerator_count"):
        config_from_dict(data)


def test_every_error_is_reported_not_just_the_first():
    data = _lora_with(training__learning_rate=-1, evaluation__n_shot=99, gate__alpha=2)
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    message = str(info.value)
    for path in ("training.learning_rate", "evaluation.n_shot", "gate.alpha"):
        assert path in message


def test_file_errors_are_clear(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("training:\n  learning_rate: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken.yaml is not valid YAML at line \d+"):
        load_config(broken)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(scalar)


def test_overrides_are_typed_and_validated():
    cfg = load_config("lora", overrides=["training.learning_rate=5e-5", "dataset.names=[a, b]",
                                         "training.use_rslora=true"])
    assert cfg.training.learning_rate == 5e-5
    assert cfg.dataset.names == ["a", "b"]
    assert cfg.training.use_rslora is True
    with pytest.raises(ConfigError, match="training.lerning_rate"):
        load_config("lora", overrides=["training.lerning_rate=1"])
    with pytest.raises(ConfigError, match="must look like section.field=value"):
        load_config("lora", overrides=["training.learning_rate"])
    with pytest.raises(ConfigError, match="is not a section"):
        apply_overrides({"name": "x"}, ["name.inner=1"])


def test_config_hash_changes_with_any_value():
    base = PipelineConfig()
    changed = config_from_dict({"training": {"seed": 43}})
    assert base.config_hash() != changed.config_hash()
