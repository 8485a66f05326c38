"""Property-based tests (hypothesis) of the config loader (``configs.schema``).

Any mapping of sections and fields, and any ``--set`` override text, either loads or raises a ConfigError (never
another exception), and what loads is consistent: paths stay relative, no control character in any string, the
memory limit is not below the request, the tracking URI carries no credentials. A boolean never passes as a number;
a control character in any string field is refused; node labels are accepted exactly when Kubernetes would accept
them; names derived from the config stay Kubernetes names. The literal hostile files are in
``bad_input/test_config.py``.
"""

from __future__ import annotations

import re
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from configs.loading import CONFIG_DIR, config_from_dict, load_config
from configs.schema import NAME_MAX, ConfigError, PipelineConfig, parse_quantity
from pipelines.finetune import pipeline_name

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


@pytest.mark.parametrize("field", NUMERIC_FIELDS, ids=[".".join(filter(None, field)) for field in NUMERIC_FIELDS])
def test_a_huge_number_in_any_numeric_field_is_refused_at_load_naming_it(field):
    """Every numeric field has an upper bound: a 20-digit timeout once loaded and then failed at compile ("Value out
    of range"), and ``c_max_steps=10**15`` trained until the task's timeout."""
    section, key = field
    path = f"{section}.{key}" if section else key
    for value in (10**20, 10**15, -(10**20)):
        with pytest.raises(ConfigError) as info:
            config_from_dict(_with(section, key, value))
        assert f"\n  {path}: " in str(info.value), (value, str(info.value))


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
