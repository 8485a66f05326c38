"""The config loader (``configs.schema``, which every entry point goes through) fed hostile config files: every
refusal is a ConfigError naming the field or file, never a crash, and nothing is written.

Round 2 (issues 18 and 19) added values the loader used to accept and the cluster or MLflow then refused or
misread: ``learning_rate: true`` read as 1.0, an empty image or one with a newline, an empty accelerator type,
node-selector labels and taints Kubernetes refuses, a memory limit below the request, ``registered_model_name``
``a/b`` or ``..``, names past Kubernetes' 63-character limits, a newline in any string, a password inside
``mlflow.tracking_uri``; and documents that crashed the parser (5,000-digit integers, deep nesting, a YAML alias
bomb).

Where a new case goes: a hostile file is one entry of ``HOSTILE_FILES`` and ``EXPECTED``. The loader's properties
over generated input (hypothesis) are in ``properties/test_config_loader.py``; a config secret that must not be
echoed, in ``secret_leaks/test_secrets.py``.
"""

from __future__ import annotations

import os

import pytest
import yaml

from configs.loading import config_from_dict, config_from_json, load_config
from configs.safe_json import MAX_YAML_BYTES
from configs.schema import NAME_MAX, ConfigError, PipelineConfig, parse_quantity

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
    "model-name-base-folder.yaml": b"mlflow: {registered_model_name: base-model}\n",
    "model-name-holds-base.yaml": b"storage: {base_model: models/llama/base}\nmlflow: {registered_model_name: llama}\n",
    "huge-timeout.yaml": b"cluster: {train_timeout_s: 12345678901234567890}\n",
    "huge-max-steps.yaml": b"training: {max_steps: 1000000000000000}\n",
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
    "huge-file.yaml": b"name: x\n" + b"# padding\n" * (MAX_YAML_BYTES // 10 + 1),
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
    "model-name-base-folder.yaml": "mlflow.registered_model_name: 'base-model' would publish versions into "
                                   "models/base-model, which is storage.base_model (models/base-model)",
    "model-name-holds-base.yaml": "mlflow.registered_model_name: 'llama' would publish versions into models/llama, "
                                  "which holds storage.base_model (models/llama/base)",
    "huge-timeout.yaml": "cluster.train_timeout_s: Input should be less than or equal to 2592000",
    "huge-max-steps.yaml": "training.max_steps: Input should be less than or equal to 10000000",
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

def test_the_config_parameter_of_a_task_is_validated_too():
    with pytest.raises(ConfigError, match="the config parameter"):
        config_from_json("{not json")
    with pytest.raises(ConfigError, match="training.lora_rank"):
        config_from_json('{"training": {"lora_rank": -1}}')

def test_preset_yaml_round_trips_through_yaml(tmp_path):
    cfg = load_config("qlora")
    path = tmp_path / "dumped.yaml"
    path.write_text(yaml.safe_dump(cfg.dump_public()))
    assert load_config(path) == cfg

def test_an_empty_taint_key_with_exists_stays_legal():
    """Kubernetes reads an empty key with operator Exists as "tolerate every taint"; the key check keeps it."""
    cfg = config_from_dict({"cluster": {"gpu_tolerations": [{"key": "", "operator": "Exists"}]}})
    assert cfg.cluster.gpu_tolerations[0].key == ""

def test_quantities_parse_as_kubernetes_does():
    assert parse_quantity("500m") == parse_quantity("0.5") and parse_quantity("1Gi") == 1024**3
    assert parse_quantity("1G") == 10**9 and parse_quantity("1.5Ki") == 1536
    with pytest.raises(ValueError):
        parse_quantity("1 Gi")
