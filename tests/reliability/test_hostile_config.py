"""The config loader fed hostile input: every refusal is a ConfigError naming the field or file,
never a crash, and nothing is written. Includes property-based tests (hypothesis).

Round 2 (issues 18 and 19) added values the loader used to accept and the cluster or MLflow then refused or
misread: ``learning_rate: true`` read as 1.0, an empty image or one with a newline, an empty accelerator type,
node-selector labels and taints Kubernetes refuses, a memory limit below the request, ``registered_model_name``
``a/b`` or ``..``, names past Kubernetes' 63-character limits, a newline in any string, a password inside
``mlflow.tracking_uri``; and documents that crashed the parser (5,000-digit integers, deep nesting, a YAML alias
bomb).
"""

from __future__ import annotations

import os
import re
import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from configs.schema import (
    CONFIG_DIR,
    MAX_CONFIG_BYTES,
    NAME_MAX,
    ConfigError,
    PipelineConfig,
    config_from_dict,
    config_from_json,
    load_config,
    parse_quantity,
)
from pipelines.finetune import pipeline_name

PASSWORD = "hunter2-planted-password"

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
    # round 2: accepted before, then refused by the cluster or MLflow, or misread
    "bool-learning-rate.yaml": b"training: {learning_rate: true}\n",
    "bool-deepspeed.yaml": b"training: {deepspeed_stage: false}\n",
    "yes-lora-rank.yaml": b"training: {lora_rank: yes}\n",
    "bool-gpus.yaml": b"cluster: {accelerator_count: on}\n",
    "empty-image.yaml": b"cluster: {image: ''}\n",
    "newline-image.yaml": b'cluster: {image: "ghcr.io/x/y:1\\nrm -rf /"}\n',
    "space-image.yaml": b"cluster: {image: 'ghcr.io/x/y:1 --privileged'}\n",
    "uppercase-image.yaml": b"cluster: {image: 'ghcr.io/Org/Image:1'}\n",
    "empty-accelerator.yaml": b"cluster: {accelerator_type: ''}\n",
    "bare-accelerator.yaml": b"cluster: {accelerator_type: gpu}\n",
    "bad-selector-key.yaml": b"cluster: {gpu_node_selector: {'gpu type': 'a100'}}\n",
    "bad-selector-value.yaml": b"cluster: {gpu_node_selector: {nvidia.com/gpu.product: 'A100 80GB'}}\n",
    "long-selector-value.yaml": b"cluster: {gpu_node_selector: {pool: " + b"a" * 64 + b"}}\n",
    "bad-taint-key.yaml": b"cluster: {gpu_tolerations: [{key: 'nvidia.com/gpu!', operator: Exists}]}\n",
    "equal-without-key.yaml": b"cluster: {gpu_tolerations: [{key: '', operator: Equal, value: x}]}\n",
    "limit-below-request.yaml": b"cluster: {memory_request: 64Gi, memory_limit: 32Gi}\n",
    "millibytes.yaml": b"cluster: {memory_request: 500m}\n",
    "shm-over-limit.yaml": b"cluster: {shm_size: 100Gi, memory_limit: 64Gi}\n",
    "model-name-slash.yaml": b"mlflow: {registered_model_name: a/b}\n",
    "model-name-dotdot.yaml": b"mlflow: {registered_model_name: '..'}\n",
    "model-name-colon.yaml": b"mlflow: {registered_model_name: 'org:model'}\n",
    "model-name-hidden.yaml": b"mlflow: {registered_model_name: '.hidden'}\n",
    "uri-password.yaml": f"mlflow: {{tracking_uri: 'https://bot:{PASSWORD}@mlflow.example.com'}}\n".encode(),
    "uri-token.yaml": f"mlflow: {{tracking_uri: 'https://mlflow.example.com/?token={PASSWORD}'}}\n".encode(),
    "long-name.yaml": b"name: " + b"a" * (NAME_MAX + 1) + b"\n",
    "long-pvc.yaml": b"storage: {pvc_name: " + b"p" * 64 + b"}\n",
    "dotted-pvc.yaml": b"storage: {pvc_name: llama.storage}\n",
    "long-secret.yaml": b"mlflow: {credentials_secret: " + b"s" * 254 + b"}\n",
    "newline-experiment.yaml": b'mlflow: {experiment: "llm\\nfinetune"}\n',
    "newline-base-model.yaml": b'storage: {base_model: "models/base\\n--trust_remote_code"}\n',
    "nul-mount.yaml": b'storage: {mount_path: "/storage\\0"}\n',
    "trailing-newline-pvc.yaml": b'storage: {pvc_name: "llama-storage\\n"}\n',
    "line-separator-dataset.yaml": b'dataset: {names: ["alpaca\\u2028sample"]}\n',
    "date-learning-rate.yaml": b"training: {learning_rate: 2026-01-01}\n",
    "huge-int.yaml": b"training: {lora_rank: " + b"9" * 5000 + b"}\n",
    "deep-list.yaml": b"a: " + b"[" * 50_000 + b"]" * 50_000 + b"\n",
    "deep-map.yaml": b"a: " + b"{b: " * 40 + b"1" + b"}" * 40 + b"\n",
    "alias-bomb.yaml": b"".join([b"a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"] + [
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n".encode() for i in range(1, 9)]),
    "huge-file.yaml": b"name: x\n" + b"# padding\n" * (MAX_CONFIG_BYTES // 10 + 1),
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
    "bool-learning-rate.yaml": "training.learning_rate: must not be a boolean",
    "bool-deepspeed.yaml": "training.deepspeed_stage: must not be a boolean",
    "yes-lora-rank.yaml": "training.lora_rank: must not be a boolean",
    "bool-gpus.yaml": "cluster.accelerator_count: must not be a boolean",
    "empty-image.yaml": "cluster.image: must not be empty",
    "newline-image.yaml": "cluster.image: must not contain a newline",
    "space-image.yaml": "cluster.image: must be a container image reference",
    "uppercase-image.yaml": "cluster.image: must be a container image reference",
    "empty-accelerator.yaml": "cluster.accelerator_type: must be an extended resource name",
    "bare-accelerator.yaml": "cluster.accelerator_type: must be an extended resource name",
    "bad-selector-key.yaml": "cluster.gpu_node_selector: 'gpu type' is not a Kubernetes label key",
    "bad-selector-value.yaml": "cluster.gpu_node_selector: the value 'A100 80GB'",
    "long-selector-value.yaml": "cluster.gpu_node_selector: the value",
    "bad-taint-key.yaml": "cluster.gpu_tolerations.0.key",
    "equal-without-key.yaml": "cluster.gpu_tolerations.0: operator 'Equal' needs a key",
    "limit-below-request.yaml": "cluster: memory_limit (32Gi) is below memory_request (64Gi)",
    "millibytes.yaml": "cluster.memory_request: '500m' is 0.500 bytes",
    "shm-over-limit.yaml": "cluster: shm_size (100Gi) exceeds memory_limit (64Gi)",
    "model-name-slash.yaml": "mlflow.registered_model_name",
    "model-name-dotdot.yaml": "mlflow.registered_model_name",
    "model-name-colon.yaml": "mlflow.registered_model_name",
    "model-name-hidden.yaml": "mlflow.registered_model_name",
    "uri-password.yaml": "mlflow.tracking_uri: must not carry credentials (got 'https://mlflow.example.com')",
    "uri-token.yaml": "mlflow.tracking_uri: must not carry credentials",
    "long-name.yaml": f"name: must be a DNS-1123 label of at most {NAME_MAX} characters",
    "long-pvc.yaml": "storage.pvc_name",
    "dotted-pvc.yaml": "storage.pvc_name",
    "long-secret.yaml": "mlflow.credentials_secret",
    "newline-experiment.yaml": "mlflow.experiment: must not contain a newline",
    "newline-base-model.yaml": "storage.base_model: must not contain a newline",
    "nul-mount.yaml": "storage.mount_path: must not contain a newline or another control character",
    "trailing-newline-pvc.yaml": "storage.pvc_name",
    "line-separator-dataset.yaml": "dataset.names",
    "date-learning-rate.yaml": "training.learning_rate",
    "huge-int.yaml": "an integer of 5000 digits",
    "deep-list.yaml": "nested deeper than 64 levels",
    "deep-map.yaml": "nested more than 32 levels deep",
    "alias-bomb.yaml": "more than 100,000 values",
    "huge-file.yaml": "larger than the 1,048,576 bytes allowed",
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
    assert PASSWORD not in str(info.value) and len(str(info.value)) < 2000
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
                           "n_shot", "alpha", "tracking_uri", "pvc_name", "accelerator_count", "dtype", "x",
                           "image", "accelerator_type", "memory_request", "memory_limit", "gpu_node_selector",
                           "registered_model_name", "experiment", "mount_path", "deepspeed_stage", "use_rslora"])


def _strings(value: object) -> list[str]:
    """Every string in a JSON-like value, mapping keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for pair in value.items() for item in pair for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []


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
    assert not [text for text in _strings(cfg.dump_public()) if re.search(r"[\x00-\x1f\x7f\x85\u2028\u2029]", text)]
    assert parse_quantity(cfg.cluster.memory_limit) >= parse_quantity(cfg.cluster.memory_request)
    assert "/" not in cfg.mlflow.registered_model_name and cfg.mlflow.registered_model_name not in (".", "..")
    assert "@" not in cfg.mlflow.tracking_uri and cfg.cluster.image


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


def _section_fields() -> list[tuple[str, str, typing.Any]]:
    """``(section, field, annotation)`` of every field of every section (and the top-level name)."""
    found = [("", "name", str)]
    for section, info in PipelineConfig.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            found += [(section, key, field.annotation) for key, field in info.annotation.model_fields.items()]
    return found


def _numeric(annotation: typing.Any) -> bool:
    if annotation in (int, float):
        return True
    args = typing.get_args(annotation)
    return typing.get_origin(annotation) is typing.Literal and all(type(arg) is int for arg in args)


NUMERIC_FIELDS = [(section, key) for section, key, annotation in _section_fields() if _numeric(annotation)]
STRING_FIELDS = [(section, key, annotation) for section, key, annotation in _section_fields()
                 if annotation in (str, list[str], dict[str, str])]
CONTROL = ["\n", "\r", "\x00", "\x1b", "\t", "\x7f", "\x85", "\u2028", "\u2029"]


def _with(section: str, key: str, value: typing.Any) -> dict:
    return {key: value} if not section else {section: {key: value}}


def test_the_field_lists_cover_the_schema():
    """The properties below would pass vacuously if the lists were empty or missed a kind of field."""
    assert ("training", "learning_rate") in NUMERIC_FIELDS and ("training", "deepspeed_stage") in NUMERIC_FIELDS
    assert len(NUMERIC_FIELDS) >= 40 and len(STRING_FIELDS) >= 25
    assert {annotation for *_, annotation in STRING_FIELDS} == {str, list[str], dict[str, str]}


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(NUMERIC_FIELDS), st.booleans())
def test_property_a_boolean_never_passes_as_a_number(field, value):
    section, key = field
    path = f"{section}.{key}" if section else key
    with pytest.raises(ConfigError) as info:
        config_from_dict(_with(section, key, value))
    assert f"  {path}: must not be a boolean, got {str(value).lower()}" in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(STRING_FIELDS), st.text(max_size=8), st.sampled_from(CONTROL), st.text(max_size=8),
       st.sampled_from(["value", "key"]))
def test_property_a_control_character_in_any_string_is_refused(field, head, control, tail, where):
    """A newline (or NUL, ESC, a Unicode line separator...) in any string, list item or mapping key or value."""
    section, key, annotation = field
    text = head + control + tail
    value = {list[str]: [text], dict[str, str]: {text: "x"} if where == "key" else {"x": text}}.get(annotation, text)
    with pytest.raises(ConfigError) as info:
        config_from_dict(_with(section, key, value))
    assert (f"  {section}.{key}" if section else f"  {key}") in str(info.value)


_label_name = st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", fullmatch=True)
_dns_subdomain = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?){0,3}",
                               fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(st.one_of(_label_name, st.tuples(_dns_subdomain, _label_name).map("/".join)),
       st.one_of(st.just(""), _label_name))
def test_property_valid_node_labels_are_accepted(key, value):
    cfg = config_from_dict({"cluster": {"gpu_node_selector": {key: value}}})
    assert cfg.cluster.gpu_node_selector == {key: value}


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=70), st.text(max_size=70))
def test_property_node_labels_are_accepted_only_when_kubernetes_would(key, value):
    """An independent reading of the label rules (apimachinery's IsQualifiedName and IsValidLabelValue)."""
    prefix, slash, name = key.rpartition("/")
    part = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", re.ASCII)
    subdomain = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", re.ASCII)
    valid = (bool(part.fullmatch(name)) and len(name) <= 63
             and (not slash or (bool(subdomain.fullmatch(prefix)) and len(prefix) <= 253))
             and (value == "" or (bool(part.fullmatch(value)) and len(value) <= 63)))
    try:
        config_from_dict({"cluster": {"gpu_node_selector": {key: value}}})
    except ConfigError as exc:
        assert not valid, f"{key!r}: {value!r} is a valid label but was refused: {exc}"
        assert "cluster.gpu_node_selector" in str(exc)
    else:
        assert valid, f"{key!r}: {value!r} is not a valid label but was accepted"


_memory = st.tuples(st.integers(1, 4096), st.sampled_from(["", "k", "M", "Mi", "G", "Gi", "T", "Ti"])).map(
    lambda pair: f"{pair[0]}{pair[1]}")


@settings(max_examples=200, deadline=None)
@given(_memory, _memory)
def test_property_memory_limit_is_never_below_the_request(request, limit):
    data = {"cluster": {"memory_request": request, "memory_limit": limit, "shm_size": "1"}}
    if parse_quantity(limit) >= parse_quantity(request):
        assert config_from_dict(data).cluster.memory_limit == limit
    else:
        with pytest.raises(ConfigError, match=r"cluster: memory_limit \(.*\) is below memory_request"):
            config_from_dict(data)


def test_an_empty_taint_key_with_exists_stays_legal():
    """Kubernetes reads an empty key with operator Exists as "tolerate every taint"; the key check keeps it."""
    cfg = config_from_dict({"cluster": {"gpu_tolerations": [{"key": "", "operator": "Exists"}]}})
    assert cfg.cluster.gpu_tolerations[0].key == ""


def test_quantities_parse_as_kubernetes_does():
    assert parse_quantity("500m") == parse_quantity("0.5") and parse_quantity("1Gi") == 1024**3
    assert parse_quantity("1G") == 10**9 and parse_quantity("1.5Ki") == 1536
    with pytest.raises(ValueError):
        parse_quantity("1 Gi")


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True), st.lists(st.text(max_size=20), max_size=3))
def test_property_names_derived_from_the_config_stay_kubernetes_names(name, changes):
    """The pipeline compiled with --set changes is named <name>-<hash>: a DNS-1123 label that keeps its hash, or
    the name is refused at load."""
    try:
        cfg = config_from_dict({"name": name})
    except ConfigError as exc:
        assert len(name) > NAME_MAX and "name:" in str(exc)
        return
    derived, _display = pipeline_name(cfg, [f"training.seed={len(change)}" for change in changes])
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", derived) and len(derived) <= 63
    if changes:
        assert derived.startswith(f"{name}-") and len(derived) == len(name) + 9
