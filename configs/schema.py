"""The typed configuration of the fine-tuning pipeline.

One :class:`PipelineConfig` per run, loaded (:mod:`configs.loading`) from a preset in ``configs/*.yaml``
and optionally changed with ``--set section.field=value`` overrides. Every setting is declared here once,
with its default, its description and its marks (:func:`form_field`: a typed run parameter;
:func:`compile_time`: fixed when the pipeline is compiled); pipeline parameters, CLI flags and the rendered
LLaMA-Factory YAML all read from this model.

This module is longer than the others because it holds one concern whole: the ~60 settings and
the rules on their values. Split by section, a rule that spans sections and the shared value checks
(Kubernetes names and quantities, control characters, booleans) would sit apart from the fields they guard.

Rules that involve one section live in that section's validators; rules that span sections live
in :meth:`PipelineConfig._cross_section_rules`. Every error names the field path, e.g.
``training.learning_rate: Input should be greater than 0``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import types
import typing
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from configs.errors import UsageError
from configs.redaction import has_credentials, public_uri, redact
from configs.templates import LLAMAFACTORY_TEMPLATES

# The one image every task runs in (built from the Dockerfile; pins match setup.cfg).
DEFAULT_IMAGE = "ghcr.io/llm-finetune-pipelines/llm-finetune:0.3.0"
# Patterns are used with fullmatch: "$" would also match before a trailing newline.
_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")  # a DNS-1123 label (at most 63 characters)
# A DNS-1123 subdomain (most object names: ClusterTrainingRuntime, ServiceAccount, Secret): labels joined by dots.
_K8S_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# The name part of a label key or a qualified resource name, and a non-empty label value (both at most 63).
_LABEL_PART = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?")
_QUANTITY_FACTORS = {"": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                     "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
# A container image reference (the grammar of distribution/reference): [registry[:port]/]path[:tag][@digest].
_IMAGE = re.compile(
    r"(?:(?P<registry>(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])(?:\.(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*"
    r"[A-Za-z0-9]))*(?::[0-9]+)?)/)?"
    r"(?P<path>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>\w[\w.-]{0,127}))?(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?",
    re.ASCII)
FORM_KEY = "run_form_parameter"
COMPILE_TIME_KEY = "compile_time"
_DATASET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
# A registered model name is also a directory, <models_root>/<name>/<version>: one plain path component.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
# A newline or another control character in a value that reaches a command line, a label or a YAML file
# splits or corrupts it (U+0085, U+2028 and U+2029 are line breaks too).
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
# The compiled pipeline of a config changed with --set is named <name>-<8 hex digits> (pipelines.finetune), which
# must stay within Kubernetes' 63-character limit on names and label values without losing the hash.
NAME_MAX = 63 - len("-12345678")
# Upper bounds of counts no real run comes near: a typo such as max_steps 10**15 (or a 20-digit timeout, which the
# compiled IR cannot even hold) is refused at load with the field named instead of training until a timeout.
MAX_STEPS = 10_000_000  # optimizer steps (max_steps, save_steps, logging_steps)
MAX_TIMEOUT_S = 30 * 86400  # a task's timeout: 30 days
MAX_ROWS = 1_000_000_000  # rows or questions
MAX_HELD_OUT = 0.5  # dataset.test_fraction + dataset.val_fraction: most rows stay for training


class ConfigError(UsageError):
    """A configuration that cannot be used; the message names every offending field path (a CLI exits 2).

    The message is redacted (:func:`configs.redaction.redact`): a credential in a value it quotes never shows.
    """

    def __init__(self, message: str):
        super().__init__(redact(message))


def form_field(name: str) -> dict[str, str]:
    """Mark a field as a typed parameter of the pipeline's run form, under ``name``.

    The Kubeflow UI lists run parameters alphabetically, showing only ``name - type``; each name starts with
    its group's letter so that the form reads in pipeline order, the fields users change most first:
    a what to train (model, data, template), b method and learning rate, c the schedule, d LoRA, e evaluation,
    f the gate, g MLflow, h the cluster; ``z_config`` and ``z_overrides``, the advanced path, come last. A sweep's
    list of values for a field is named after the field with ``_sweep`` (``b_learning_rate_sweep``), so it
    sorts right below it.
    See :mod:`configs.form`.
    """
    return {FORM_KEY: name}


def compile_time() -> dict[str, bool]:
    """Mark a field as fixed when the pipeline is compiled: it shapes the compiled IR (the image, pod resources,
    timeouts, retries, the storage mount, Secrets, the trials loop's parallelism), so a run that changes it is
    refused (:func:`components.run.resolve_config.refuse_compile_time_changes`). See :mod:`configs.form`.
    """
    return {COMPILE_TIME_KEY: True}


def _admits_bool(annotation: Any) -> bool:
    """Whether a field of this type may hold ``true``/``false`` (``bool``, or a union or literal with one)."""
    if annotation is bool:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_admits_bool(arg) for arg in typing.get_args(annotation))
    if origin is Literal:
        return any(isinstance(arg, bool) for arg in typing.get_args(annotation))
    return False


def _control_character(value: Any) -> str | None:
    """The first string in ``value`` (a string, or the keys and items of lists and dicts) holding a newline or
    another control character, or None."""
    if isinstance(value, str):
        return value if _CONTROL.search(value) else None
    if isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        return None
    return next((found for item in items if (found := _control_character(item)) is not None), None)


def parse_quantity(text: str) -> Decimal:
    """The value of a Kubernetes quantity such as ``500m``, ``4`` or ``32Gi`` (in cores or bytes).

    Written out rather than imported from the kubernetes client: that import costs most of a second in every
    task process, and the quantities allowed here are only the plain forms the field validators admit.

    Raises:
        ValueError: ``text`` is not such a quantity.
    """
    match = _QUANTITY.fullmatch(text)
    if not match:
        raise ValueError(f"must be a Kubernetes quantity such as '4', '500m' or '32Gi', got {text!r}")
    number = text[:len(text) - len(match.group(2) or "")]
    return Decimal(number) * _QUANTITY_FACTORS[match.group(2) or ""]


def _label_key(key: str) -> str | None:
    """Why ``key`` is not a Kubernetes label key (``[prefix/]name``), or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _K8S_SUBDOMAIN.fullmatch(prefix)):
        return "its prefix must be a DNS subdomain (lowercase letters, digits, '-' and '.') of at most 253 characters"
    if not name or len(name) > 63 or not _LABEL_PART.fullmatch(name):
        return ("its name must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter "
                "or digit")
    return None


def _label_value(value: str) -> str | None:
    """Why ``value`` is not a Kubernetes label value, or None."""
    if value and (len(value) > 63 or not _LABEL_PART.fullmatch(value)):
        return ("a label value is empty or at most 63 letters, digits, '-', '_' or '.', starting and ending with a "
                "letter or digit")
    return None


class _Section(BaseModel):
    """Base settings shared by every section: unknown keys are errors, values are re-validated, a boolean is never
    read as a number, and no string holds a newline or another control character."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads true as 1 and 1.0 (and false as 0 for a Literal[0, ...]); `learning_rate: true` is a typo
        # or a wrong key, never a learning rate of 1.
        if isinstance(value, bool) and info.field_name and not _admits_bool(cls.model_fields[info.field_name]
                                                                             .annotation):
            raise ValueError(f"must not be a boolean, got {str(value).lower()}")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: Any) -> Any:
        found = _control_character(value)
        if found is not None:
            raise ValueError(f"must not contain a newline or another control character, got {found!r}")
        return value


def kubernetes_secret_name(value: str) -> str:
    """``value`` when it is empty or a Kubernetes Secret name.

    Raises:
        ValueError: anything else.
    """
    if value and (not _K8S_SUBDOMAIN.fullmatch(value) or len(value) > 253):
        raise ValueError(f"must be a Kubernetes secret name (lowercase letters, digits, '-' and '.', at most 253 "
                         f"characters), got {value!r}")
    return value


def bare_uri(value: str, schemes: str, described: str, where_credentials_go: str) -> str:
    """``value`` when it is a URI that starts with one of ``schemes`` (a regex), without spaces or credentials.

    A URI reaches the compiled IR, the pods' environment, logs and MLflow params, so credentials in it would show
    in all of them; the error says ``where_credentials_go`` instead.

    Raises:
        ValueError: credentials in it, another scheme, or whitespace (``described`` names what is allowed).
    """
    if has_credentials(value):
        raise ValueError(f"must not carry credentials (got {public_uri(value)!r}): {where_credentials_go}")
    if not re.match(schemes, value) or any(char.isspace() for char in value):
        raise ValueError(f"must be {described} without spaces, got {value!r}")
    return value


def _relative_storage_path(value: str) -> str:
    """Refuse paths that would escape the storage root (absolute or containing '..')."""
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts or value.startswith("~"):
        raise ValueError(f"must be a relative path inside the storage root, got {value!r}")
    return str(path)


class StorageConfig(_Section):
    """Where everything lives on the shared (NFS) volume. Paths are relative to ``mount_path``."""

    pvc_name: str = Field(
        "llama-storage", description="PersistentVolumeClaim (ReadWriteMany) with models and data.",
        json_schema_extra=form_field("h_pvc_name"))
    mount_path: str = Field("/storage", description="Where every task mounts the PVC (the storage root).",
                            json_schema_extra=compile_time())
    base_model: str = Field(
        "models/base-model", description="Base model directory on the volume, relative to its root (Hugging Face "
                                         "layout).",
        json_schema_extra=form_field("a_base_model"))
    data_dir: str = Field("data", description="Directory with dataset_info.json and the dataset files.")
    output_root: str = Field("output", description="Run-scoped outputs: <output_root>/<kfp run id>/...",
                             json_schema_extra=compile_time())
    models_root: str = Field("models", description="Published merged models: <models_root>/<name>/<version>.")
    eval_data_dir: str = Field("eval/mmlu", description="MMLU data in the hendrycks layout (dev/, test/).")

    @field_validator("pvc_name")
    @classmethod
    def _k8s_name(cls, value: str) -> str:
        # KFP's driver names the pod's volume after the claim, and volume names are DNS-1123 labels.
        if not _K8S_NAME.fullmatch(value) or len(value) > 63:
            raise ValueError(f"must be a Kubernetes resource name usable as a volume name: a DNS-1123 label of at "
                             f"most 63 characters (lowercase letters, digits, '-'; KFP names the pod's volume after "
                             f"the claim), got {value!r}")
        return value

    @field_validator("mount_path")
    @classmethod
    def _absolute_or_local(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("base_model", "data_dir", "output_root", "models_root", "eval_data_dir")
    @classmethod
    def _inside_root(cls, value: str) -> str:
        return _relative_storage_path(value)


class Toleration(_Section):
    """One Kubernetes toleration (the GPU nodes' taints)."""

    key: str = Field(..., description="Taint key, e.g. nvidia.com/gpu.")
    operator: Literal["Exists", "Equal"] = Field("Exists", description="Exists ignores value.")
    value: str | None = Field(None, description="Taint value when operator is Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(None, description="Taint effect.")

    @field_validator("key")
    @classmethod
    def _taint_key(cls, value: str) -> str:
        reason = _label_key(value) if value else None  # empty: with Exists, tolerate every taint (Kubernetes' rule)
        if reason:
            raise ValueError(f"{value!r} is not a taint key (label key syntax): {reason}")
        return value

    @field_validator("value")
    @classmethod
    def _taint_value(cls, value: str | None) -> str | None:
        reason = _label_value(value) if value is not None else None
        if reason:
            raise ValueError(f"{value!r} is not a taint value: {reason}")
        return value

    @model_validator(mode="after")
    def _value_needs_equal(self) -> Toleration:
        if self.operator == "Equal" and self.value is None:
            raise ValueError("operator 'Equal' needs a value")
        if self.operator == "Equal" and not self.key:
            raise ValueError("operator 'Equal' needs a key (an empty key with 'Exists' tolerates every taint)")
        return self


class ClusterConfig(_Section):
    """Scheduling of the tasks on the Kubernetes cluster."""

    image: str = Field(DEFAULT_IMAGE, description="The one image every task runs in (see Dockerfile).",
                       json_schema_extra=compile_time())
    nodes: int = Field(1, ge=1, le=64, description="Training nodes; >1 submits a training job (training_engine).",
                       json_schema_extra=compile_time())
    training_engine: Literal["trainjob", "pytorchjob"] = Field(
        "trainjob", description="What runs a multi-node (nodes > 1) training: 'trainjob' (Kubeflow Trainer v2, "
        "trainer.kubeflow.org/v1alpha1) or 'pytorchjob' (Training Operator v1, kubeflow.org/v1; older clusters).")
    training_runtime: str = Field(
        "torch-distributed", description="The ClusterTrainingRuntime a TrainJob runs on (training_engine trainjob); "
        "`kubectl get clustertrainingruntimes` lists them.")
    trainer_service_account: str = Field(
        "llm-trainer", description="Service account of the TrainJob's pods; deploy/rbac.yaml creates one that "
        "mounts no API token (a TrainJob cannot turn the mount off itself). Empty: the namespace's default account.")
    kueue_queue_name: str = Field("", description="Kueue LocalQueue that admits the multi-node job ('': no Kueue).")
    kueue_priority_class: str = Field("", description="Kueue WorkloadPriorityClass of the multi-node job ('': the "
                                      "queue's default).")
    gpu_node_selector: dict[str, str] = Field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"},
        description="Node selector for GPU tasks, e.g. {\"nvidia.com/gpu.present\": \"true\"}.",
        json_schema_extra=form_field("h_gpu_node_selector"),
    )
    gpu_tolerations: list[Toleration] = Field(
        default_factory=lambda: [Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
        description="Tolerations for GPU tasks (Kubernetes toleration objects).",
        json_schema_extra=form_field("h_gpu_tolerations"),
    )
    accelerator_type: str = Field(
        "nvidia.com/gpu", description="Extended resource name of the GPU.",
        json_schema_extra=form_field("h_accelerator_type"))
    # A run-form field, but whether it is 0 (GPUs or not) is fixed when compiling (resolve-config refuses a change).
    accelerator_count: int = Field(
        1, ge=0, le=16, description="GPUs per training pod; >1 launches torchrun.",
        json_schema_extra=form_field("h_accelerator_count"))
    cpu_request: str = Field("4", description="CPU request of GPU tasks.", json_schema_extra=compile_time())
    memory_request: str = Field("32Gi", description="Memory request of GPU tasks.", json_schema_extra=compile_time())
    memory_limit: str = Field("64Gi", description="Memory limit of GPU tasks.", json_schema_extra=compile_time())
    light_cpu_request: str = Field("500m", description="CPU request of CPU-only tasks (validate, compare, register).",
                                   json_schema_extra=compile_time())
    light_memory_request: str = Field("1Gi", description="Memory request of CPU-only tasks.",
                                      json_schema_extra=compile_time())
    shm_size: str = Field("16Gi", description="Size of the in-memory /dev/shm volume NCCL needs.",
                          json_schema_extra=compile_time())
    image_pull_secrets: list[str] = Field(default_factory=list, description="Secrets to pull the image.",
                                          json_schema_extra=compile_time())
    train_timeout_s: int = Field(86400, ge=60, le=MAX_TIMEOUT_S, description="Timeout of the training task (seconds).",
                                 json_schema_extra=compile_time())
    eval_timeout_s: int = Field(14400, ge=60, le=MAX_TIMEOUT_S,
                                description="Timeout of each evaluation task (seconds).",
                                json_schema_extra=compile_time())
    merge_timeout_s: int = Field(14400, ge=60, le=MAX_TIMEOUT_S, description="Timeout of the merge task (seconds).",
                                 json_schema_extra=compile_time())
    light_timeout_s: int = Field(1800, ge=60, le=MAX_TIMEOUT_S, description="Timeout of CPU-only tasks (seconds).",
                                 json_schema_extra=compile_time())
    train_retries: int = Field(2, ge=0, le=10, description="Retries of the training task (resumes from checkpoints).",
                               json_schema_extra=compile_time())

    @field_validator("image")
    @classmethod
    def _image_reference(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty; e.g. " + DEFAULT_IMAGE)
        match = _IMAGE.fullmatch(value)
        if not match or len(value) - len(match["tag"] or "") - len(match["digest"] or "") > 256:
            raise ValueError(f"must be a container image reference such as {DEFAULT_IMAGE!r} (registry/path:tag, no "
                             f"spaces, lowercase path), got {value!r}")
        return value

    @field_validator("accelerator_type")
    @classmethod
    def _extended_resource(cls, value: str) -> str:
        reason = _label_key(value) if "/" in value else "it needs a domain, e.g. nvidia.com/gpu"
        if reason:
            raise ValueError(f"must be an extended resource name such as 'nvidia.com/gpu' or 'amd.com/gpu', got "
                             f"{value!r}: {reason}")
        return value

    @field_validator("gpu_node_selector")
    @classmethod
    def _node_labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            reason = _label_key(key)
            if reason:
                raise ValueError(f"{key!r} is not a Kubernetes label key: {reason}")
            reason = _label_value(label)
            if reason:
                raise ValueError(f"the value {label!r} of {key!r} is not a label value: {reason}")
        return value

    @field_validator("cpu_request", "memory_request", "memory_limit", "light_cpu_request", "light_memory_request",
                     "shm_size")
    @classmethod
    def _quantity(cls, value: str, info: ValidationInfo) -> str:
        parse_quantity(value)
        if "cpu" not in info.field_name and value.endswith("m"):  # 'm' is milli: "500m" of memory is half a byte
            raise ValueError(f"{value!r} is {parse_quantity(value)} bytes ('m' means milli); did you mean "
                             f"{value[:-1]}Mi?")
        return value

    @model_validator(mode="after")
    def _memory_fits(self) -> ClusterConfig:
        limit = parse_quantity(self.memory_limit)
        if limit < parse_quantity(self.memory_request):
            raise ValueError(f"memory_limit ({self.memory_limit}) is below memory_request ({self.memory_request}); "
                             "Kubernetes refuses such a pod")
        if parse_quantity(self.shm_size) > limit:
            raise ValueError(f"shm_size ({self.shm_size}) exceeds memory_limit ({self.memory_limit}): /dev/shm is "
                             "memory and counts against the limit")
        return self

    @field_validator("training_runtime", "trainer_service_account", "kueue_queue_name", "kueue_priority_class")
    @classmethod
    def _object_name(cls, value: str, info: ValidationInfo) -> str:
        if not value and info.field_name != "training_runtime":
            return value  # empty: not used
        # Kueue reads the queue and the priority class from labels, whose values have at most 63 characters.
        limit = 63 if info.field_name.startswith("kueue_") else 253
        if not _K8S_SUBDOMAIN.fullmatch(value) or len(value) > limit:
            raise ValueError(f"must be a Kubernetes object name of at most {limit} characters (lowercase letters, "
                             f"digits, '-' and '.'), got {value!r}")
        return value

    @field_validator("image_pull_secrets")
    @classmethod
    def _secret_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _K8S_SUBDOMAIN.fullmatch(name) or len(name) > 253:
                raise ValueError(f"must be Kubernetes secret names (lowercase letters, digits, '-' and '.', at most "
                                 f"253 characters), got {name!r}")
        return value


class DatasetConfig(_Section):
    """Which datasets (entries of dataset_info.json) to validate and train on."""

    names: list[str] = Field(default_factory=lambda: ["alpaca_sample"], min_length=1,
                             description="Dataset names from dataset_info.json (trained on together).",
                             json_schema_extra=form_field("a_datasets"))
    max_reported_errors: int = Field(50, ge=1, le=10000, description="Errors listed before the rest are counted.")
    contamination_ngram: int = Field(13, ge=5, le=50, description="Word n-gram length of the overlap checks: MMLU "
                                     "questions in the training text, held-out answers on the train side.")
    max_contaminated_rows: int = Field(
        -1, ge=-1, le=MAX_ROWS,
        description="Fail when more training rows than this overlap MMLU test questions (-1: warn only)."
    )
    max_leaked_rows: int = Field(
        0, ge=-1, le=1_000_000_000, description="Fail when more scored test rows than this have a near-duplicate "
        "answer on the train side (a shared run of contamination_ngram words, or the whole answer); -1: warn only.")
    test_fraction: float = Field(
        0.05, gt=0, lt=1, description="Share of each dataset's examples held out for testing, by a hash of the "
        "example (first user turn and its answer, normalised): appending rows never moves a row across, and every "
        "copy of an example shares its side.")
    min_test_rows: int = Field(
        20, ge=1, le=1_000_000, description="Fewest held-out rows a dataset may have; fewer fails validation "
        "(raise test_fraction or add rows).")
    max_test_rows: int = Field(
        2000, ge=1, le=1_000_000, description="Most held-out rows scored per dataset (those with the smallest "
        "content hashes); the rest of the test side stays out of training too.")
    val_fraction: float = Field(
        0.05, ge=0, lt=1, description="Share of each dataset's rows held out for validation, by the same content hash "
        "(the band after the test side): the best checkpoint and the sweep's winner are chosen on these rows, never "
        "on the test rows. 0: no validation side (the last checkpoint is published, no sweep).")
    min_val_rows: int = Field(
        20, ge=1, le=1_000_000, description="Fewest validation rows a dataset may have when val_fraction > 0; fewer "
        "fails validation (raise val_fraction or add rows).")
    max_val_rows: int = Field(
        1000, ge=1, le=1_000_000, description="Most validation rows scored per dataset (the smallest content hashes; "
        "each checkpoint is evaluated on them); the rest stays out of training too.")

    @field_validator("names")
    @classmethod
    def _plain_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _DATASET_NAME.fullmatch(name) or ".." in name:
                raise ValueError(f"dataset names are plain identifiers, got {name!r}")
        return value

    @model_validator(mode="after")
    def _test_row_bounds(self) -> DatasetConfig:
        if self.min_test_rows > self.max_test_rows:
            raise ValueError(f"min_test_rows ({self.min_test_rows}) must not exceed max_test_rows "
                             f"({self.max_test_rows})")
        if self.min_val_rows > self.max_val_rows:
            raise ValueError(f"min_val_rows ({self.min_val_rows}) must not exceed max_val_rows ({self.max_val_rows})")
        if self.test_fraction + self.val_fraction > MAX_HELD_OUT:
            raise ValueError(f"test_fraction + val_fraction ({self.test_fraction} + {self.val_fraction}) must be at "
                             f"most {MAX_HELD_OUT}: most rows stay for training")
        return self


class TrainingConfig(_Section):
    """LLaMA-Factory training settings (rendered into its YAML by components.train.train)."""

    method: Literal["lora", "qlora", "full"] = Field(
        "lora", description="lora, qlora (needs GPUs) or full.", json_schema_extra=form_field("b_method"))
    template: str = Field(
        "llama3", description="LLaMA-Factory chat template of the base model, e.g. llama3, qwen, mistral.",
        json_schema_extra=form_field("a_chat_template"))
    learning_rate: float = Field(
        1e-4, gt=0, le=1.0, description="Peak learning rate (LoRA: ~1e-4; full: ~1e-5).",
        json_schema_extra=form_field("b_learning_rate"))
    num_train_epochs: float = Field(
        3.0, gt=0, le=1000, description="Epochs (ignored when max_steps > 0).",
        json_schema_extra=form_field("c_epochs"))
    max_steps: int = Field(
        -1, ge=-1, le=MAX_STEPS, description="Stop after this many optimizer steps (-1: use epochs).",
        json_schema_extra=form_field("c_max_steps"))
    per_device_train_batch_size: int = Field(
        4, ge=1, le=4096, description="Micro-batch per GPU.", json_schema_extra=form_field("c_batch_size"))
    gradient_accumulation_steps: int = Field(
        4, ge=1, le=4096, description="Micro-batches per optimizer step.",
        json_schema_extra=form_field("c_gradient_accumulation"))
    lr_scheduler_type: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    cutoff_len: int = Field(
        2048, ge=16, le=1_048_576, description="Token limit per example; longer is truncated.",
        json_schema_extra=form_field("c_cutoff_len"))
    seed: int = Field(
        42, ge=0, le=2**32 - 1, description="Seed for data order and initialisation.",
        json_schema_extra=form_field("c_seed"))
    lora_rank: int = Field(
        16, ge=1, le=1024, description="LoRA rank r (higher: more capacity, more memory).",
        json_schema_extra=form_field("d_lora_rank"))
    lora_alpha: int = Field(
        32, ge=1, le=4096, description="LoRA alpha; the update is scaled by alpha / r.",
        json_schema_extra=form_field("d_lora_alpha"))
    lora_dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout on the LoRA path.", json_schema_extra=form_field("d_lora_dropout"))
    lora_target: str = Field(
        "all", description="Target modules: 'all' linear layers or a comma list.",
        json_schema_extra=form_field("d_lora_target"))
    use_rslora: bool = Field(False, description="Rank-stabilised LoRA scaling alpha / sqrt(r).")
    quantization_bit: Literal[4, 8] | None = Field(
        None, description="QLoRA quantisation bits (bitsandbytes); unset: 4 (NF4) with method qlora, none otherwise. "
        "It follows the method: a change of training.method that does not set it too resets it.")
    deepspeed_stage: Literal[0, 2, 3] = Field(0, description="DeepSpeed ZeRO stage (0: off); full uses 3.",
                                              json_schema_extra=compile_time())
    save_steps: int = Field(500, ge=1, le=MAX_STEPS, description="Checkpoint interval in optimizer steps.")
    save_total_limit: int = Field(3, ge=1, le=100, description="Checkpoints kept on the PVC.")
    logging_steps: int = Field(10, ge=1, le=MAX_STEPS, description="Log loss every N steps.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 on GPU, fp32 on CPU.")
    flash_attn: Literal["auto", "disabled", "sdpa", "fa2"] = Field("auto", description="Attention kernel.")
    gradient_checkpointing: bool = Field(True, description="Trade compute for memory.")
    trust_remote_code: bool = Field(False, description="Run model code from the model directory (a risk).")
    preprocessing_num_workers: int = Field(4, ge=1, le=256, description="Tokenisation worker processes.")

    @field_validator("template")
    @classmethod
    def _known_template(cls, value: str) -> str:
        if value not in LLAMAFACTORY_TEMPLATES:
            raise ValueError(f"unknown LLaMA-Factory template {value!r}; e.g. llama3, qwen, mistral, default")
        return value

    @field_validator("lora_target")
    @classmethod
    def _module_names(cls, value: str) -> str:
        parts = [part.strip() for part in value.split(",")]
        if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", part) for part in parts):
            raise ValueError(f"must be 'all' or comma-separated module names, got {value!r}")
        return ",".join(parts)

    @model_validator(mode="before")
    @classmethod
    def _no_random_validation_split(cls, data: Any) -> Any:
        if isinstance(data, dict) and "val_size" in data:
            raise ValueError("training.val_size was removed: validation rows are split off by their content hash, "
                             "disjoint from the test rows and stable across runs; set dataset.val_fraction instead")
        return data

    @model_validator(mode="before")
    @classmethod
    def _qlora_bits_default(cls, data: Any) -> Any:
        # QLoRA without bits means LLaMA-Factory's usual 4-bit NF4; other methods have none (see _method_rules).
        if isinstance(data, dict) and data.get("method") == "qlora" and data.get("quantization_bit") is None:
            return {**data, "quantization_bit": 4}
        return data

    @model_validator(mode="after")
    def _method_rules(self) -> TrainingConfig:
        if self.method != "qlora" and self.quantization_bit is not None:
            raise ValueError(f"training.quantization_bit is only for method 'qlora', not {self.method!r}: set "
                             "training.method=qlora (run form: b_method), or leave training.quantization_bit unset")
        return self


# The training fields a sweep may vary (components/train/select_trial.py picks the winner), in the order trials
# enumerate them. Others stay fixed for all trials: the method picks the run's train task, the template and cutoff
# decide the one shared tokenization and the gate's scoring, DeepSpeed and the cluster are compiled in.
SWEEP_AXES = ("learning_rate", "lora_rank", "lora_alpha", "lora_dropout", "num_train_epochs", "max_steps",
              "warmup_ratio", "weight_decay")
LORA_AXES = frozenset({"lora_rank", "lora_alpha", "lora_dropout"})


class SweepConfig(_Section):
    """A grid of training settings, trained side by side as trials; the lowest validation loss wins.

    Each list holds the values of one ``training`` field; the trials are every combination, in the order of
    :data:`SWEEP_AXES` (the last axis varies fastest). An empty list leaves the field at its ``training`` value;
    all empty: one trial, the plain training.
    """

    learning_rate: list[float] = Field(
        default_factory=list, description="Learning rates to try (empty: training.learning_rate only).",
        json_schema_extra=form_field("b_learning_rate_sweep"))
    lora_rank: list[int] = Field(
        default_factory=list, description="LoRA ranks to try (empty: training.lora_rank only).",
        json_schema_extra=form_field("d_lora_rank_sweep"))
    lora_alpha: list[int] = Field(
        default_factory=list, description="LoRA alphas to try (empty: training.lora_alpha only).",
        json_schema_extra=form_field("d_lora_alpha_sweep"))
    lora_dropout: list[float] = Field(
        default_factory=list, description="LoRA dropouts to try (empty: training.lora_dropout only).",
        json_schema_extra=form_field("d_lora_dropout_sweep"))
    num_train_epochs: list[float] = Field(
        default_factory=list, description="Epoch counts to try (empty: training.num_train_epochs only).",
        json_schema_extra=form_field("c_epochs_sweep"))
    max_steps: list[int] = Field(default_factory=list, description="Step limits to try (empty: training.max_steps).")
    warmup_ratio: list[float] = Field(
        default_factory=list, description="Warm-up shares to try (empty: training.warmup_ratio only).",
        json_schema_extra=form_field("c_warmup_ratio_sweep"))
    weight_decay: list[float] = Field(default_factory=list, description="Weight decays to try (empty: "
                                      "training.weight_decay).")
    max_trials: int = Field(16, ge=1, le=256, description="Most trials a sweep may have: a grid larger than this is "
                            "refused at load (each trial costs a training).")
    parallelism: int = Field(2, ge=1, le=64, description="Trials that train at the same time, each on its own GPU "
                             "task (or multi-node job); fixed when the pipeline is compiled.",
                             json_schema_extra=compile_time())

    @model_validator(mode="before")
    @classmethod
    def _known_axes(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for key in data:
            if key in cls.model_fields:
                continue
            if key in TrainingConfig.model_fields:
                raise ValueError(f"sweep.{key}: training.{key} cannot vary between trials (a sweep varies "
                                 f"{', '.join(SWEEP_AXES)}; the method, template, cutoff, DeepSpeed stage and the "
                                 "cluster are one per run, several of them fixed when the pipeline is compiled)")
            raise ValueError(f"sweep.{key}: not a sweep field; a sweep varies {', '.join(SWEEP_AXES)}")
        return data

    @field_validator(*SWEEP_AXES, mode="before")
    @classmethod
    def _numbers_only(cls, values: Any) -> Any:
        # pydantic reads true as 1 and 1.0 inside a list too: a typo, never a learning rate of 1.
        if isinstance(values, list) and any(isinstance(value, bool) for value in values):
            raise ValueError(f"must hold numbers, not booleans, got {values}")
        return values

    @field_validator(*SWEEP_AXES)
    @classmethod
    def _distinct_values(cls, values: list[float], info: ValidationInfo) -> list[float]:
        repeated = sorted({value for value in values if values.count(value) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(map(str, repeated))} more than once: each trial must differ")
        return values

    @model_validator(mode="after")
    def _bounded(self) -> SweepConfig:
        sizes = {axis: len(values) for axis, values in self.axes().items()}
        if math.prod(sizes.values()) > self.max_trials:
            shown = " x ".join(f"{size} {axis}" for axis, size in sizes.items())
            raise ValueError(f"{shown} make {math.prod(sizes.values())} trials, more than max_trials "
                             f"({self.max_trials}): shorten a list or raise sweep.max_trials")
        return self

    def axes(self) -> dict[str, list[float]]:
        """The swept fields and their values, in :data:`SWEEP_AXES` order (the fields with a non-empty list)."""
        return {axis: list(getattr(self, axis)) for axis in SWEEP_AXES if getattr(self, axis)}

    def trials(self) -> list[dict[str, float]]:
        """Every trial's settings (``{training field: value}``), trial 0 first; ``[{}]`` without a sweep."""
        axes = self.axes()
        return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


class EvaluationConfig(_Section):
    """Evaluation of candidate and baseline (components.evaluate.evaluate): MMLU, and the held-out task rows."""

    n_shot: int = Field(
        5, ge=0, le=20, description="Few-shot examples from the subject's dev split.",
        json_schema_extra=form_field("e_mmlu_n_shot"))
    subjects: list[str] = Field(
        default_factory=list, description="Subjects to evaluate (empty: all found).",
        json_schema_extra=form_field("e_mmlu_subjects"))
    batch_size: int = Field(16, ge=1, le=4096, description="MMLU questions or held-out rows per forward pass.")
    limit: int = Field(0, ge=0, le=MAX_ROWS, description="Questions per subject (0: all).")
    generate_rows: int = Field(
        100, ge=0, le=100_000,
        description="Held-out rows each model answers (greedy, scored against the reference answers; 0: off).",
        json_schema_extra=form_field("e_generate_rows"))
    max_new_tokens: int = Field(
        256, ge=1, le=32_768, description="Longest generated answer, in tokens (an answer cut here did not stop).")
    accelerator_count: int = Field(
        1, ge=1, le=16, description="GPUs per evaluation pod; a model too large for one is split across them "
        "(ignored when cluster.accelerator_count is 0).", json_schema_extra=form_field("h_eval_accelerator_count"))
    gpu_memory_fraction: float = Field(
        0.9, gt=0, le=1, description="Share of each GPU's memory the evaluated model's weights may take (the rest: "
        "activations, KV cache).")
    judge_endpoint: str = Field(
        "", description="OpenAI-compatible server of a judge model ('': no judge), e.g. http://judge-vllm:8000/v1.")
    judge_model: str = Field("", description="The judge's model name ('': the first one the server lists).")
    judge_secret: str = Field(
        "", description="Kubernetes Secret whose key 'api_key' holds the judge's API key ('': none; fixed when "
        "compiling).", json_schema_extra=compile_time())
    judge_timeout_s: int = Field(60, ge=1, le=3600, description="Per-request timeout of the judge.")

    @field_validator("subjects")
    @classmethod
    def _subject_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(r"[a-z0-9_]+", name):
                raise ValueError(f"MMLU subjects are lowercase identifiers, got {name!r}")
        return value

    @field_validator("judge_endpoint")
    @classmethod
    def _judge_uri(cls, value: str) -> str:
        # Like mlflow.tracking_uri; a key belongs in judge_secret.
        if not value:  # no judge
            return value
        return bare_uri(value, r"https?://", "an http(s):// URL",
                        "put the API key in the Kubernetes Secret named by evaluation.judge_secret (key api_key)")

    @field_validator("judge_secret")
    @classmethod
    def _judge_secret_name(cls, value: str) -> str:
        return kubernetes_secret_name(value)

    @model_validator(mode="before")
    @classmethod
    def _no_served_backend(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("backend" in data or "endpoint" in data):
            raise ValueError("evaluation.backend and evaluation.endpoint were removed: the pipeline scores the merged "
                             "candidate inside its evaluate task, before any server serves it (to score a served "
                             "model, use python -m components.evaluate.mmlu.evaluate_mmlu --backend openai "
                             "--endpoint URL)")
        return data


class GateConfig(_Section):
    """When a candidate replaces the champion: the rules are documented in one place, components/gate/rules.py."""

    min_task_improvement: float = Field(
        0.01, ge=0, lt=1,
        description="How much lower the held-out loss must be than the baseline's, relative (0.01: 1 % lower). "
                    "A tie never promotes.", json_schema_extra=form_field("f_min_task_improvement"))
    mmlu_max_drop: float = Field(0.01, ge=0, le=1, description="Largest allowed drop of MMLU micro accuracy "
                                                              "(absolute, 0.01: one point).",
                                 json_schema_extra=form_field("f_mmlu_max_drop"))
    max_regression: float = Field(0.02, ge=0, le=1, description="Largest allowed drop of any MMLU category.",
                                  json_schema_extra=form_field("f_max_regression"))
    require_significance: bool = Field(
        False, description="Also require a one-sided Wilcoxon signed-rank test on the held-out rows, p < alpha.",
        json_schema_extra=form_field("f_require_significance"))
    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level (and 1 - confidence of the intervals).")
    require_generation: bool = Field(
        True, description="Also rule on the generated answers (evaluation.generate_rows > 0): the mean "
        "generation_metric may drop by at most generation_max_drop, the stop rate by at most generation_max_stop_drop.",
        json_schema_extra=form_field("f_require_generation"))
    generation_metric: Literal["chrf", "rouge_l", "token_f1", "exact_match"] = Field(
        "chrf", description="Answer score the generation rule reads (each 0-100 points per row).")
    generation_max_drop: float = Field(
        1.0, ge=0, le=100, description="Largest allowed drop of the mean generation_metric (points of 100).",
        json_schema_extra=form_field("f_generation_max_drop"))
    generation_max_stop_drop: float = Field(
        0.05, ge=0, le=1, description="Largest allowed drop of the share of answers that stop before "
        "evaluation.max_new_tokens (0.05: five rows in a hundred).")
    bootstrap_samples: int = Field(2000, ge=100, le=100_000, description="Paired bootstrap resamples.")
    allow_unknown_baseline_split: bool = Field(
        False, description="Compare with a champion whose training split is not recorded (registered before "
        "split recording, or by hand) on every held-out row, some of which it may have trained on (that favours "
        "it); off: find-baseline refuses.")

    @model_validator(mode="before")
    @classmethod
    def _replaced_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("metric" in data or "min_improvement" in data):
            raise ValueError("gate.metric and gate.min_improvement were replaced: the gate now requires a lower "
                             "held-out loss (gate.min_task_improvement, relative) and bounds the MMLU drop "
                             "(gate.mmlu_max_drop); see components/gate/rules.py")
        return data


class MlflowConfig(_Section):
    """Experiment tracking and the model registry."""

    tracking_uri: str = Field("http://mlflow.mlflow.svc.cluster.local:5000", description="MLflow tracking URI.")
    experiment: str = Field(
        "llm-finetune", min_length=1, max_length=500, description="MLflow experiment the runs are logged to.",
        json_schema_extra=form_field("g_mlflow_experiment"))
    credentials_secret: str = Field(
        "mlflow-config", description="Kubernetes Secret with MLFLOW_TRACKING_USERNAME/PASSWORD or TOKEN.",
        json_schema_extra=compile_time())
    registered_model_name: str = Field("llm-finetuned", min_length=1, max_length=256,
                                       description="Registered model that carries the champion alias.",
                                       json_schema_extra=form_field("g_registered_model_name"))
    request_timeout_s: int = Field(10, ge=1, le=300, description="Per-request HTTP timeout.")
    request_max_retries: int = Field(2, ge=0, le=20, description="HTTP retries before a step gives up.")

    @field_validator("tracking_uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        # The credentials belong in the Secret, which reaches the pods as environment variables.
        return bare_uri(value, r"(https?://|sqlite:///|databricks)", "an http(s):// or sqlite:/// URI",
                        "put MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the "
                        "Kubernetes Secret named by mlflow.credentials_secret, and the bare URI here")

    @field_validator("credentials_secret")
    @classmethod
    def _secret_name(cls, value: str) -> str:
        return kubernetes_secret_name(value)

    @field_validator("registered_model_name")
    @classmethod
    def _model_name(cls, value: str) -> str:
        # MLflow refuses '/' and ':'; the name is also the directory <models_root>/<name>/, so it must be one plain
        # path component ('..' or 'a/b' would publish outside models_root or into another model).
        if not _MODEL_NAME.fullmatch(value) or ".." in value or len(value) > 200:
            raise ValueError(f"must be at most 200 letters, digits, '_', '.' or '-', starting with a letter or digit "
                             f"and without '..' (it names a directory under storage.models_root), got {value!r}")
        return value


class MergeConfig(_Section):
    """LoRA merge and publication for vLLM (components.merge.merge_lora)."""

    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="Weights dtype of the merged model.")
    max_shard_size_mb: int = Field(4096, ge=1, le=100_000, description="Largest output shard.")


class PipelineConfig(_Section):
    """Everything one run of the fine-tuning pipeline needs."""

    name: str = Field("llm-finetune", description="Short run family name; used in MLflow and paths.")
    storage: StorageConfig = Field(default_factory=StorageConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)

    @field_validator("name")
    @classmethod
    def _k8s_like(cls, value: str) -> str:
        if not _K8S_NAME.fullmatch(value) or len(value) > NAME_MAX:
            raise ValueError(f"must be a DNS-1123 label of at most {NAME_MAX} characters (lowercase letters, digits "
                             f"and '-', starting and ending with a letter or digit; a pipeline compiled with --set "
                             f"changes is named <name>-<8 hex digits>, within Kubernetes' 63), got {value!r}")
        return value

    @model_validator(mode="after")
    def _cross_section_rules(self) -> PipelineConfig:
        if self.training.deepspeed_stage and self.cluster.accelerator_count == 0:
            raise ValueError("training.deepspeed_stage needs GPUs (cluster.accelerator_count >= 1)")
        if self.training.quantization_bit and self.cluster.accelerator_count == 0:
            raise ValueError("method 'qlora' (bitsandbytes) needs GPUs (cluster.accelerator_count >= 1)")
        if self.cluster.nodes > 1 and self.cluster.accelerator_count == 0:
            raise ValueError("cluster.nodes > 1 needs cluster.accelerator_count >= 1")
        self._publish_outside_the_base()
        self._sweep_rules()
        return self

    def _publish_outside_the_base(self) -> None:
        """Versions are published into <models_root>/<registered_model_name>/: never the base model's folder, one
        holding it or one inside it (merge-lora's output guard also catches a symlink at run time)."""
        published = PurePosixPath(self.storage.models_root) / self.mlflow.registered_model_name
        base = PurePosixPath(self.storage.base_model)
        relation = ("is" if published == base else "holds" if published in base.parents
                    else "lies inside" if base in published.parents else None)
        if relation:
            raise ValueError(f"mlflow.registered_model_name: {self.mlflow.registered_model_name!r} would publish "
                             f"versions into {published}, which {relation} storage.base_model ({base}); choose "
                             "another registered_model_name")

    def _sweep_rules(self) -> None:
        """Each swept value must be a valid value of its training field; LoRA axes need a LoRA method; more than one
        trial needs validation rows to choose by."""
        axes = self.sweep.axes()
        if self.training.method == "full" and LORA_AXES & set(axes):
            raise ValueError(f"sweep.{min(LORA_AXES & set(axes))}: training.method 'full' has no LoRA settings to vary")
        if len(self.sweep.trials()) > 1 and self.dataset.val_fraction == 0:
            raise ValueError("sweep: the trials are compared on the validation rows; set dataset.val_fraction > 0")
        base = self.training.model_dump()
        for axis, values in axes.items():
            for value in values:
                try:
                    TrainingConfig.model_validate({**base, axis: value})
                except ValueError as exc:  # pydantic's ValidationError
                    errors = exc.errors() if hasattr(exc, "errors") else [{"msg": str(exc)}]
                    raise ValueError(f"sweep.{axis}: the value {value} is not a valid training.{axis}: "
                                     f"{errors[0]['msg']}") from None

    def dump_public(self) -> dict[str, Any]:
        """A JSON-ready dict for logs and MLflow params (the config holds no secret values by design:
        credentials reach the tasks only as environment variables from a Kubernetes Secret)."""
        return json.loads(self.model_dump_json())

    def config_hash(self) -> str:
        """A stable short hash of the whole configuration (lineage tag, cache key)."""
        canonical = json.dumps(self.dump_public(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


__all__ = [
    "NAME_MAX",
    "SWEEP_AXES",
    "ConfigError",
    "PipelineConfig",
    "compile_time",
    "form_field",
    "parse_quantity",
]
