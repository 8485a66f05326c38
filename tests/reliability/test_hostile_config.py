"""The config loader fed hostile input: every refusal is a ConfigError naming the field or file,
never a crash, and nothing is written. Includes a property-based test (hypothesis)."""

from __future__ import annotations

import os

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from configs.schema import CONFIG_DIR, ConfigError, PipelineConfig, config_from_dict, config_from_json, load_config

HOSTILE_FILES = {
    "malformed.yaml": b"training: {learning_rate: 1e-4\n",
    "tabs.yaml": b"training:\n\tmethod: lora\n",
    "empty.yaml": b"",
    "binary.yaml": b"\x89PNG\r\n\x1a\n\x00\x00",
    "latin1.yaml": "name: caf\xe9\n".encode("latin-1"),
    "list.yaml": b"[1, 2, 3]\n",
    "huge-number.yaml": b"training: {per_device_train_batch_size: 99999999999999999999999}\n",
    "nan.yaml": b"training: {learning_rate: .nan}\n",
    "inf.yaml": b"training: {num_train_epochs: .inf}\n",
    "negative.yaml": b"training: {gradient_accumulation_steps: -4}\n",
    "zero-lr.yaml": b"training: {learning_rate: 0}\n",
    "unknown-template.yaml": b"training: {template: my-own-template}\n",
    "dataset-escape.yaml": b"dataset: {names: ['../../etc/passwd']}\n",
    "absolute-data.yaml": b"storage: {data_dir: /etc}\n",
    "home-model.yaml": b"storage: {base_model: ~/models}\n",
    "python-tag.yaml": b"name: !!python/object/apply:os.system ['true']\n",
    "anchor-bomb.yaml": b"a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n",
    "wrong-type.yaml": b"training: {lora_rank: sixteen}\n",
    "section-scalar.yaml": b"training: 5\n",
    "secret-in-config.yaml": b"mlflow: {password: hunter2}\n",
}
EXPECTED = {
    "malformed.yaml": "not valid YAML",
    "tabs.yaml": "not valid YAML",
    "binary.yaml": "not UTF-8",
    "latin1.yaml": "not UTF-8",
    "list.yaml": "top level must be a mapping",
    "huge-number.yaml": "training.per_device_train_batch_size",
    "nan.yaml": "training.learning_rate",
    "inf.yaml": "training.num_train_epochs",
    "negative.yaml": "training.gradient_accumulation_steps",
    "zero-lr.yaml": "training.learning_rate",
    "unknown-template.yaml": "training.template",
    "dataset-escape.yaml": "dataset.names",
    "absolute-data.yaml": "storage.data_dir",
    "home-model.yaml": "storage.base_model",
    "python-tag.yaml": "not valid YAML",
    "anchor-bomb.yaml": "a: Extra inputs are not permitted",
    "wrong-type.yaml": "training.lora_rank",
    "section-scalar.yaml": "training:",
    "secret-in-config.yaml": "mlflow.password",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_FILES))
def test_hostile_config_file_is_refused_with_the_field_named(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(HOSTILE_FILES[name])
    before = sorted(os.listdir(tmp_path))
    if name == "empty.yaml":  # an empty file means "all defaults", which is valid
        assert load_config(path) == PipelineConfig()
        return
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert EXPECTED[name] in str(info.value), str(info.value)
    assert name in str(info.value) or "the config parameter" in str(info.value)
    assert sorted(os.listdir(tmp_path)) == before


def test_secret_values_are_not_echoed_in_errors():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"mlflow": {"password": "hunter2-secret"}})
    assert "mlflow.password" in str(info.value)
    assert "hunter2-secret" not in str(info.value)


def test_the_config_parameter_of_a_task_is_validated_too():
    with pytest.raises(ConfigError, match="the config parameter"):
        config_from_json("{not json")
    with pytest.raises(ConfigError, match="training.lora_rank"):
        config_from_json('{"training": {"lora_rank": -1}}')


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                     st.text(max_size=20), st.lists(st.integers(), max_size=3))
_sections = st.sampled_from(["storage", "cluster", "dataset", "training", "evaluation", "gate", "mlflow", "merge",
                             "bogus"])
_fields = st.sampled_from(["learning_rate", "lora_rank", "method", "template", "names", "base_model", "data_dir",
                           "n_shot", "alpha", "tracking_uri", "pvc_name", "accelerator_count", "dtype", "x"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_sections, st.dictionaries(_fields, _scalars, max_size=4), max_size=4))
def test_any_input_either_validates_or_raises_config_error(data):
    """Property: the loader never crashes with anything but ConfigError, and what it accepts is consistent."""
    try:
        cfg = config_from_dict(data)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith("invalid configuration in")
        assert len(message.splitlines()) >= 2  # at least one "  field.path: reason" line
        return
    assert config_from_dict(cfg.dump_public()) == cfg
    for relative in (cfg.storage.base_model, cfg.storage.data_dir, cfg.storage.output_root):
        assert not relative.startswith("/") and ".." not in relative.split("/")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_any_override_text_either_applies_or_raises_config_error(text):
    try:
        cfg = load_config(CONFIG_DIR / "lora.yaml", overrides=[text])
    except ConfigError as exc:
        assert "override" in str(exc) or "invalid configuration" in str(exc)
    else:
        assert isinstance(cfg, PipelineConfig)


def test_preset_yaml_round_trips_through_yaml(tmp_path):
    cfg = load_config("qlora")
    path = tmp_path / "dumped.yaml"
    path.write_text(yaml.safe_dump(cfg.dump_public()))
    assert load_config(path) == cfg
