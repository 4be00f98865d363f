"""How much GPU memory a training job needs, estimated before it starts (`POST /train`), and what would fit.

Standard library only: the middleware calls it and never imports torch.

The estimate models this project's trainer (`engine/train/trainer.py`), which keeps the whole pipeline on
the GPU in float32 (mixed precision is autocast: it changes the activations, not the weights):

    weights      every parameter of the UNet, text encoder and VAE × 4 bytes
    gradients    every trainable parameter × 4 bytes (LoRA: the adapters; DreamBooth: the UNet, and the text
                 encoder when it trains, `stop_text_encoder` > 0)
    optimizer    AdamW: 2 float32 moments (8 bytes) per trainable parameter; 8-bit AdamW (bitsandbytes):
                 2 bytes (the moments quantized to one byte each)
    activations  per sample, for a UNet of SD 1.x's size at 512×512 under fp16 autocast: about
                 ACTIVATION_GIB_PER_SAMPLE_512 (gradient checkpointing on / off); × (side/512)² for other
                 sizes (the UNet is convolutional and attention runs through torch's memory-efficient SDPA, so
                 memory grows with the pixels), × FP32_ACTIVATION_FACTOR without mixed precision,
                 × sqrt(UNet parameters / SD 1.x's) for other model sizes (activations grow with the channels,
                 parameters with their square); samples = train_batch_size, twice that with prior preservation
                 (the trainer keeps the class batch's graph with the instance batch's for one backward pass)
    overhead     the CUDA context, cuDNN workspaces and the allocator's slack: OVERHEAD_GIB
A job fits when the total is at most USABLE_FRACTION of the GPU's nominal memory (the driver reports a little
less than the data sheet: a T4's 16 GiB shows as 15 GiB).

Calibration (the published figures the unit tests check, `tests/training/test_training_memory.py`):
- ShivamShrirao/diffusers `examples/dreambooth/README.md`, the flags table "Tested on Tesla T4 GPU" (SD 1.x,
  512, UNet only: the text encoder and VAE outputs cached and freed; xformers): fp16 + batch 1 + gradient
  checkpointing + 8-bit Adam 9.92 GB; batch 2: 10.4 GB; without checkpointing 11.17 GB (batch 2: 13.67 GB);
  checkpointing with AdamW (no 8-bit) 15.79 GB. The activation terms come from its batch-1 → batch-2 steps
  (0.45 GiB a sample with checkpointing, 2.33 GiB without); the overhead from the rest.
- huggingface/diffusers `examples/dreambooth/README.md`, "Training on a 16GB GPU": with gradient checkpointing
  and the 8-bit optimizer from bitsandbytes DreamBooth (prior preservation, 512, batch 1) trains on a 16 GB
  GPU; "Training on a 12GB GPU" adds memory-efficient attention and fp16 (our SDPA is the former).
- huggingface diffusers LoRA docs (docs/diffusers/training/lora): SD 1.5 LoRA at 512 runs on an 11 GB GPU
  (2080 Ti) with fp16 and no checkpointing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

from aws_extension.model_files import UNET_PREFIX, VAE_PREFIX, ModelFileError, Reader, read_safetensors_header
from aws_extension.training import TEXT_LORA_TARGETS, UNET_LORA_TARGETS, TrainingConfig

GiB = 1024**3
TEXT_ENCODER_PREFIX = "cond_stage_model."
ACTIVATION_GIB_PER_SAMPLE_512 = {True: 0.45, False: 2.33}  # by gradient checkpointing; fp16, SD 1.x UNet
FP32_ACTIVATION_FACTOR = 1.5  # autocast keeps norms and softmax in fp32 already, so less than 2×
OVERHEAD_GIB = 1.0
USABLE_FRACTION = 0.93
BYTES_WEIGHT = BYTES_GRADIENT = 4
OPTIMIZER_BYTES = {"AdamW": 8, "8bit AdamW": 2}
REFERENCE_SIDE = 512


@dataclass(frozen=True)
class ModelSize:
    """Parameter counts of a base checkpoint, and the LoRA parameters per unit of rank on its targets."""

    unet: int
    text_encoder: int
    vae: int
    unet_lora_per_rank: int
    text_lora_per_rank: int


# SD 1.x (counted on the engine's sd15 configuration): used when the base is not a safetensors file.
SD1_SIZE = ModelSize(unet=859_520_964, text_encoder=123_060_480, vae=83_653_863, unet_lora_per_rank=199_296,
                     text_lora_per_rank=73_728)


def model_size(shapes: Mapping[str, tuple[int, ...]]) -> ModelSize:
    """The ModelSize of an A1111 single-file checkpoint from its tensors' shapes (a safetensors header)."""
    counts = {UNET_PREFIX: 0, TEXT_ENCODER_PREFIX: 0, VAE_PREFIX: 0}
    lora = {UNET_PREFIX: 0, TEXT_ENCODER_PREFIX: 0}
    for name, shape in shapes.items():
        prefix = next((p for p in counts if name.startswith(p)), None)
        if prefix is None:
            continue
        counts[prefix] += math.prod(shape)
        targets = UNET_LORA_TARGETS if prefix == UNET_PREFIX else TEXT_LORA_TARGETS
        if prefix in lora and len(shape) == 2 and name.endswith(".weight") \
                and name[:-len(".weight")].endswith(tuple("." + t for t in targets)):
            lora[prefix] += shape[0] + shape[1]  # a rank-r adapter of an (out, in) weight: r × (in + out)
    return ModelSize(unet=counts[UNET_PREFIX], text_encoder=counts[TEXT_ENCODER_PREFIX], vae=counts[VAE_PREFIX],
                     unet_lora_per_rank=lora[UNET_PREFIX], text_lora_per_rank=lora[TEXT_ENCODER_PREFIX])


def base_model_size(read: Reader, size: int, filename: str) -> ModelSize:
    """The base's ModelSize from its safetensors header (read through `read`); SD 1.x's for a pickle
    checkpoint or a file whose header names no UNet."""
    try:
        counted = model_size(read_safetensors_header(read, size, filename).shapes())
    except ModelFileError:
        return SD1_SIZE
    return counted if counted.unet else SD1_SIZE


@dataclass(frozen=True)
class MemoryEstimate:
    """The estimate in GiB, by part."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    overhead: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.overhead


def estimate(config: TrainingConfig, size: ModelSize = SD1_SIZE) -> MemoryEstimate:
    """The GPU memory `config` needs on a base of `size` with this project's trainer."""
    if config.is_lora:
        trainable = size.unet_lora_per_rank * config.lora_unet_rank + size.text_lora_per_rank * config.lora_txt_rank
    else:
        trainable = size.unet + (size.text_encoder if config.stop_text_encoder > 0 else 0)
    prior = any(c.num_class_images_per > 0 for c in config.concepts_list if c.is_valid)
    samples = config.train_batch_size * (2 if prior else 1)
    activations = (samples * ACTIVATION_GIB_PER_SAMPLE_512[config.gradient_checkpointing]
                   * (config.resolution / REFERENCE_SIDE) ** 2 * math.sqrt(size.unet / SD1_SIZE.unet)
                   * (FP32_ACTIVATION_FACTOR if config.mixed_precision == "no" else 1.0))
    return MemoryEstimate(weights=(size.unet + size.text_encoder + size.vae) * BYTES_WEIGHT / GiB,
                          gradients=trainable * BYTES_GRADIENT / GiB,
                          optimizer=trainable * OPTIMIZER_BYTES[config.optimizer] / GiB,
                          activations=activations, overhead=OVERHEAD_GIB)


def fits(config: TrainingConfig, gpu_memory_gib: float, size: ModelSize = SD1_SIZE) -> bool:
    return estimate(config, size).total <= USABLE_FRACTION * gpu_memory_gib


class DoesNotFit(ValueError):
    """Settings that cannot fit the GPU; the message says what would."""


# What lowers the need, in the order they are offered: (field, value, how it reads).
_SAVINGS: tuple[tuple[str, object, str], ...] = (
    ("gradient_checkpointing", True, "gradient_checkpointing true"),
    ("mixed_precision", "fp16", "mixed_precision fp16"),
    ("optimizer", "8bit AdamW", "optimizer 8bit AdamW"),
    ("train_batch_size", 1, "train_batch_size 1"),
    ("resolution", REFERENCE_SIDE, f"resolution {REFERENCE_SIDE}"),
    ("stop_text_encoder", 0.0, "stop_text_encoder 0 (the text encoder frozen)"),
)


def _applies(config: TrainingConfig, name: str, value: object) -> bool:
    current = getattr(config, name)
    if name in ("train_batch_size", "resolution"):
        return current > value
    if name == "mixed_precision":
        return current == "no"  # bf16 saves as much as fp16
    if name == "stop_text_encoder":
        return not config.is_lora and current > 0
    return current != value


def check_fits(config: TrainingConfig, where: str, gpu_memory_gib: float, size: ModelSize = SD1_SIZE,
               other_gpus: Mapping[str, float] | None = None) -> MemoryEstimate:
    """The estimate of `config` on `where` (an instance type, or "this machine's GPU") with `gpu_memory_gib`;
    DoesNotFit naming the settings (each alone, else together) and the smallest of `other_gpus` (instance
    type → GiB) that would fit."""
    needed = estimate(config, size)
    if needed.total <= USABLE_FRACTION * gpu_memory_gib:
        return needed
    options: list[str] = []
    applicable = [(name, value, words) for name, value, words in _SAVINGS if _applies(config, name, value)]
    for name, value, words in applicable:
        changed = dataclasses.replace(config, **{name: value})
        if fits(changed, gpu_memory_gib, size):
            options.append(f"with {words} (~{estimate(changed, size).total:.0f} GiB)")
    if not options and len(applicable) > 1:  # no change alone: the fewest of them, in order, that do
        together, taken = config, []
        for name, value, words in applicable:
            together, taken = dataclasses.replace(together, **{name: value}), [*taken, words]
            if fits(together, gpu_memory_gib, size):
                options.append(f"with {' and '.join(taken)} (~{estimate(together, size).total:.0f} GiB)")
                break
    roomy = [(gib, name) for name, gib in (other_gpus or {}).items() if needed.total <= USABLE_FRACTION * gib]
    if roomy:
        gib, name = min(roomy, key=lambda item: item[0])  # the first of the smallest, in the table's order
        options.append(f"on {name} ({gib:g} GiB)")
    advice = f"it would fit {', or '.join(options)}" if options else "no setting of this trainer makes it fit there"
    if "8bit AdamW" in advice:
        advice += " (8bit AdamW needs bitsandbytes in the training image)"
    raise DoesNotFit(f"this job needs ~{needed.total:.0f} GiB of GPU memory and {where} has {gpu_memory_gib:g} GiB; "
                     f"{advice}.")
