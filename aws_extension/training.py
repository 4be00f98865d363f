"""The typed configuration of a training job: what `POST /train` accepts in `config_params`, and the one
contract between the middleware and the `train` entry point (SageMaker's `hyperparameters.json`).

Standard library only: the middleware imports this module to check a body before any work starts, and never
imports the trainer (torch, diffusers, peft).

Field names: the seed's `config_params` (`concepts_list` and each concept's fields, `num_train_epochs`,
`use_lora`, `model_name`), where the seed is silent the names of the DreamBooth extension's `db_config.json`
(`learning_rate`, `lora_learning_rate`, `lora_unet_rank`, `lora_txt_rank`, `train_batch_size`, `resolution`,
`gradient_checkpointing`, `mixed_precision`, `prior_loss_weight`, `seed`, `save_preview_every`,
`stop_text_encoder`, `lr_scheduler`, `lr_warmup_steps`, `optimizer`, `half_model`), and ours:
`max_train_steps` (overrides epochs), `save_state_every` (steps), `lora_alpha`.
The seed's `model_dir`, `pretrained_model_name_or_path` and `revision` only meant something in the original:
they are accepted and ignored. Any other unknown field is refused, naming it.

`parse_training_config(train_type, config_params)` checks a body and gives a `TrainingConfig`;
`TrainingConfig.to_hyperparameters()` / `TrainingConfig.from_hyperparameters()` write and read SageMaker's
hyperparameters (every value a string; `concepts_list` as JSON).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aws_extension.vocabulary import CheckpointType

TRAIN_TYPES: tuple[str, ...] = (str(CheckpointType.STABLE_DIFFUSION), str(CheckpointType.LORA))
IGNORED_SEED_FIELDS: tuple[str, ...] = ("model_dir", "pretrained_model_name_or_path", "revision")
MIXED_PRECISIONS: tuple[str, ...] = ("no", "fp16", "bf16")
OPTIMIZERS: tuple[str, ...] = ("AdamW", "8bit AdamW")  # 8-bit: bitsandbytes, on a GPU
LR_SCHEDULERS: tuple[str, ...] = ("constant", "constant_with_warmup", "linear", "cosine")
MAX_EPOCHS = 10_000
MAX_TRAIN_STEPS = 1_000_000
MAX_LORA_RANK = 1024
RESOLUTION_MULTIPLE = 64  # the UNet's ×8 latents through 3 downsamplings; kohya's buckets step by 64 too
MAX_RESOLUTION = 2048
MAX_BATCH_SIZE = 64
MAX_CLASS_IMAGES = 10_000
MAX_SAMPLES = 16
MAX_CONCEPTS = 16
MAX_SEED = 2**32 - 1
HYPERPARAMETER_TRAIN_TYPE = "train_type"
# The modules a LoRA adapts (diffusers' / transformers' names, which A1111's checkpoint keys share).
UNET_LORA_TARGETS: tuple[str, ...] = ("to_k", "to_q", "to_v", "to_out.0")
TEXT_LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")


class TrainingConfigError(ValueError):
    """A training configuration that cannot run; the message is for the user and names the field."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Concept:
    """One concept of `concepts_list` (the seed's fields). Prompts may use `[filewords]` for the caption."""

    instance_prompt: str = ""
    instance_token: str = ""
    class_prompt: str = ""
    class_token: str = ""
    class_negative_prompt: str = ""
    class_guidance_scale: float = 7.5
    class_infer_steps: int = 40
    num_class_images_per: int = 0  # class images per instance image (prior preservation when > 0)
    instance_data_dir: str = ""  # the seed's dataset reference; the middleware resolves it to a channel
    class_data_dir: str = ""
    dataset_name: str = ""  # ours: the concept's dataset of /dataset (the middleware writes the resolved name)
    class_dataset_name: str = ""  # ours: its dataset of class images
    is_valid: bool = True
    n_save_sample: int = 1
    sample_seed: int = -1  # -1: the job's `seed`
    save_guidance_scale: float = 7.5
    save_infer_steps: int = 20
    save_sample_prompt: str = ""  # empty: the instance prompt
    save_sample_negative_prompt: str = ""
    save_sample_template: str = ""


@dataclass(frozen=True)
class TrainingConfig:
    """A checked training configuration. `train_type` is `Lora` or `Stable-diffusion` (full DreamBooth)."""

    train_type: str = str(CheckpointType.LORA)
    concepts_list: tuple[Concept, ...] = (Concept(),)
    model_name: str = ""
    num_train_epochs: int = 100
    max_train_steps: int = 0  # > 0 overrides num_train_epochs
    use_lora: bool = False
    learning_rate: float = 5e-6  # DreamBooth (full fine-tune)
    lora_learning_rate: float = 1e-4
    lora_txt_learning_rate: float = 5e-5
    lora_unet_rank: int = 4
    lora_txt_rank: int = 0  # > 0: a LoRA on the text encoder's attention too
    lora_alpha: float = 0.0  # 0: the rank (scale 1)
    train_batch_size: int = 1
    resolution: int = 512
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"
    optimizer: str = "AdamW"
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    prior_loss_weight: float = 1.0
    seed: int = 420420  # -1 (db_config.json's "random"): a random seed, fixed when the config is parsed
    save_preview_every: int = 0  # steps; 0: no samples during training
    save_state_every: int = 0  # steps; 0: state only on stop
    stop_text_encoder: float = 0.0  # DreamBooth: the fraction of the steps the text encoder trains (0: never)
    half_model: bool = False  # DreamBooth: save the checkpoint in float16

    @property
    def is_lora(self) -> bool:
        return self.train_type == CheckpointType.LORA

    @property
    def trained_concepts(self) -> tuple[Concept, ...]:
        """The concepts that train: those `is_valid` (the seed's flag), else the first. With several, concept
        i's images are in folder `<i>/` of the instance and class channels (`worker/sagemaker_train.py`)."""
        return tuple(self.concepts_list[i] for i in trained_indices(self.concepts_list))

    def unet_rank_alpha(self) -> tuple[int, float]:
        return self.lora_unet_rank, self.lora_alpha or float(self.lora_unet_rank)

    def text_rank_alpha(self) -> tuple[int, float]:
        return self.lora_txt_rank, self.lora_alpha or float(self.lora_txt_rank)

    def total_steps(self, images: int) -> int:
        """Optimizer steps for a dataset of `images` images (max_train_steps, else epochs × batches)."""
        if self.max_train_steps:
            return self.max_train_steps
        return self.num_train_epochs * max(1, math.ceil(images / self.train_batch_size))

    def to_hyperparameters(self) -> dict[str, str]:
        """SageMaker's hyperparameters: every field as a string (numbers and bools as JSON, `concepts_list`
        as a JSON list of objects)."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "concepts_list":
                out[f.name] = json.dumps([dataclasses.asdict(c) for c in value])
            elif isinstance(value, str):
                out[f.name] = value
            else:
                out[f.name] = json.dumps(value)
        return out

    @classmethod
    def from_hyperparameters(cls, hyperparameters: Mapping[str, Any]) -> TrainingConfig:
        """Read `to_hyperparameters()` back (and any hand-written file of the same shape), checking it."""
        if not isinstance(hyperparameters, Mapping):
            raise TrainingConfigError("hyperparameters must be an object of strings", "hyperparameters")
        params: dict[str, Any] = {}
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for name, raw in hyperparameters.items():
            if not isinstance(raw, str) or types.get(name) == "str":
                params[name] = raw
                continue
            if types.get(name) == "bool" and raw.strip().lower() in ("true", "false"):
                params[name] = raw.strip().lower() == "true"  # Python's str(True), as SDKs write it
                continue
            try:
                params[name] = json.loads(raw)
            except json.JSONDecodeError:
                if name in types:
                    raise TrainingConfigError(f"{name}: {raw!r} is not a {types[name]}", name) from None
                params[name] = raw
        train_type = params.pop(HYPERPARAMETER_TRAIN_TYPE, str(CheckpointType.LORA))
        return parse_training_config(train_type, params)


def trained_indices(concepts: tuple[Concept, ...]) -> list[int]:
    """Where in `concepts_list` the concepts that train are: those `is_valid`, else the first."""
    return [i for i, c in enumerate(concepts) if c.is_valid] or [0]


def concept_subfolder(index: int, concepts: int) -> str:
    """The folder of trained concept `index` (of `concepts`) in the instance and class channels: the channel
    itself ("") for a job of one concept, `<index>/` for several (`worker/sagemaker_train.py`)."""
    return "" if concepts == 1 else f"{index}/"


_CONCEPT_FIELDS = {f.name: f for f in dataclasses.fields(Concept)}
_CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(TrainingConfig)
                  if f.name not in ("train_type", "concepts_list")}


def _typed(value: Any, type_name: str, name: str) -> Any:
    """`value` checked against a dataclass field's type (`str`, `int`, `float`, `bool`)."""
    if type_name == "bool":
        if isinstance(value, bool):
            return value
        raise TrainingConfigError(f"{name} must be true or false, not {value!r}", name)
    if type_name == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            raise TrainingConfigError(f"{name} must be a whole number, not {value!r}", name)
        return int(value)
    if type_name == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TrainingConfigError(f"{name} must be a number, not {value!r}", name)
        return float(value)
    if not isinstance(value, str):
        raise TrainingConfigError(f"{name} must be a string, not {value!r}", name)
    return value


def _in_range(config: Mapping[str, Any], name: str, low: float, high: float, why: str = "") -> None:
    value = config[name]
    if not low <= value <= high:
        raise TrainingConfigError(f"{name} must be between {low:g} and {high:g}{why}, not {value:g}", name)


def _concept(raw: Any, index: int) -> Concept:
    where = f"concepts_list[{index}]"
    if not isinstance(raw, Mapping):
        raise TrainingConfigError(f"{where} must be an object", where)
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in _CONCEPT_FIELDS:
            raise TrainingConfigError(f"{where}.{name} is not a concept field this trainer knows", f"{where}.{name}")
        values[name] = _typed(value, _CONCEPT_FIELDS[name].type, f"{where}.{name}")
    concept = Concept(**values)
    for name, low, high in (("class_guidance_scale", 0, 30), ("class_infer_steps", 1, 150),
                            ("num_class_images_per", 0, MAX_CLASS_IMAGES), ("n_save_sample", 0, MAX_SAMPLES),
                            ("sample_seed", -1, MAX_SEED), ("save_guidance_scale", 0, 30),
                            ("save_infer_steps", 1, 150)):
        value = getattr(concept, name)
        if not low <= value <= high:
            raise TrainingConfigError(f"{where}.{name} must be between {low} and {high}, not {value:g}",
                                      f"{where}.{name}")
    if concept.num_class_images_per and not concept.class_prompt.strip():
        raise TrainingConfigError(f"{where}.class_prompt is needed for class images (num_class_images_per > 0)",
                                  f"{where}.class_prompt")
    return concept


def parse_training_config(train_type: Any, config_params: Any) -> TrainingConfig:
    """The checked TrainingConfig of a `POST /train` body's `train_type` and `config_params`.

    `use_lora: true` makes any train type `Lora`, as in the original. Raises TrainingConfigError naming
    the field for an unknown field, a wrong type or a value out of range."""
    if train_type not in TRAIN_TYPES:
        raise TrainingConfigError(f"train_type must be one of {', '.join(TRAIN_TYPES)}, not {train_type!r}",
                                  "train_type")
    if not isinstance(config_params, Mapping):
        raise TrainingConfigError("config_params must be an object", "config_params")
    values: dict[str, Any] = {}
    concepts: tuple[Concept, ...] = (Concept(),)
    for name, value in config_params.items():
        if name in IGNORED_SEED_FIELDS:
            continue
        if name == "concepts_list":
            if not isinstance(value, list) or not value:
                raise TrainingConfigError("concepts_list must be a non-empty list of concepts", name)
            concepts = tuple(_concept(raw, i) for i, raw in enumerate(value))
            continue
        if name not in _CONFIG_FIELDS:
            raise TrainingConfigError(f"{name} is not a training field this trainer knows", name)
        values[name] = _typed(value, _CONFIG_FIELDS[name].type, name)
    if values.get("seed") == -1:
        values["seed"] = random.randrange(MAX_SEED + 1)
    if values.get("use_lora"):
        train_type = str(CheckpointType.LORA)
    config = TrainingConfig(train_type=str(train_type), concepts_list=concepts, **values)
    checked = dataclasses.asdict(config)
    _in_range(checked, "num_train_epochs", 1, MAX_EPOCHS)
    _in_range(checked, "max_train_steps", 0, MAX_TRAIN_STEPS, " (0: from num_train_epochs)")
    _in_range(checked, "lora_unet_rank", 1, MAX_LORA_RANK)
    _in_range(checked, "lora_txt_rank", 0, MAX_LORA_RANK, " (0: no text encoder LoRA)")
    _in_range(checked, "lora_alpha", 0, 2 * MAX_LORA_RANK, " (0: the rank)")
    _in_range(checked, "train_batch_size", 1, MAX_BATCH_SIZE)
    _in_range(checked, "resolution", RESOLUTION_MULTIPLE, MAX_RESOLUTION)
    if config.resolution % RESOLUTION_MULTIPLE:
        raise TrainingConfigError(f"resolution must be a multiple of {RESOLUTION_MULTIPLE}, not {config.resolution}",
                                  "resolution")
    for name in ("learning_rate", "lora_learning_rate", "lora_txt_learning_rate"):
        _in_range(checked, name, 0, 1)
    _in_range(checked, "lr_warmup_steps", 0, MAX_TRAIN_STEPS)
    _in_range(checked, "prior_loss_weight", 0, 100)
    _in_range(checked, "seed", 0, MAX_SEED)
    _in_range(checked, "save_preview_every", 0, MAX_TRAIN_STEPS, " (0: never)")
    _in_range(checked, "save_state_every", 0, MAX_TRAIN_STEPS, " (0: only on stop)")
    _in_range(checked, "stop_text_encoder", 0, 1, " (a fraction of the steps)")
    for name, allowed in (("mixed_precision", MIXED_PRECISIONS), ("optimizer", OPTIMIZERS),
                          ("lr_scheduler", LR_SCHEDULERS)):
        if checked[name] not in allowed:
            raise TrainingConfigError(f"{name} must be one of {', '.join(allowed)}, not {checked[name]!r}", name)
    trained = trained_indices(concepts)
    for index in trained:
        concept = concepts[index]
        if not (concept.instance_prompt.strip() or concept.instance_token.strip()):
            raise TrainingConfigError(f"concepts_list[{index}] needs an instance_prompt (the caption of its images "
                                      "that have no .txt beside them)", f"concepts_list[{index}].instance_prompt")
    if len(trained) > MAX_CONCEPTS:
        raise TrainingConfigError(f"concepts_list has {len(trained)} concepts to train; at most {MAX_CONCEPTS}",
                                  "concepts_list")
    return config

