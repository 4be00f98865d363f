"""The GPU memory estimate of `POST /train` (`training_memory.py`) against the published figures it is
calibrated on, its advice when a job does not fit, and its parameter counts against the real models."""

from __future__ import annotations

import pytest

from aws_extension.middleware.compute.sagemaker.instance_types import GPUS
from aws_extension.model_files import read_safetensors_file
from aws_extension.training import TEXT_LORA_TARGETS, UNET_LORA_TARGETS, parse_training_config
from aws_extension.training_memory import (
    BYTES_WEIGHT,
    SD1_SIZE,
    USABLE_FRACTION,
    DoesNotFit,
    GiB,
    check_fits,
    estimate,
    fits,
    model_size,
)

GB = 1e9
SINGLE_GPU_TYPES = {name: gpu.memory_gib for name, gpu in GPUS.items() if gpu.count == 1}


def _config(train_type: str = "Stable-diffusion", prior: bool = False, **fields):
    concept = {"instance_prompt": "sks"}
    if prior:
        concept |= {"class_prompt": "dog", "num_class_images_per": 1}
    return parse_training_config(train_type, {"concepts_list": [concept], "resolution": 512, **fields})


# ShivamShrirao/diffusers examples/dreambooth/README.md, "Tested on Tesla T4 GPU" (SD 1.x UNet at 512; the
# text encoder and VAE were cached and freed, which this trainer does not do, so their weights are left out
# of the comparison): (mixed precision, batch, gradient checkpointing, 8-bit Adam) → GB of VRAM.
SHIVAM_T4_TABLE = [
    (("fp16", 1, True, True), 9.92),
    (("no", 1, True, True), 10.08),
    (("fp16", 2, True, True), 10.4),
    (("fp16", 1, False, True), 11.17),
    (("fp16", 2, False, True), 13.67),
    (("fp16", 1, True, False), 15.79),
]


@pytest.mark.parametrize(("flags", "published_gb"), SHIVAM_T4_TABLE)
def test_the_estimate_is_within_10_percent_of_the_published_dreambooth_table(flags, published_gb):
    mixed_precision, batch, checkpointing, eight_bit = flags
    config = _config(mixed_precision=mixed_precision, train_batch_size=batch, gradient_checkpointing=checkpointing,
                     optimizer="8bit AdamW" if eight_bit else "AdamW")
    unet_only = estimate(config).total - (SD1_SIZE.text_encoder + SD1_SIZE.vae) * BYTES_WEIGHT / GiB
    published = published_gb * GB / GiB
    assert abs(unet_only - published) <= 0.1 * published, (unet_only, published)


def test_diffusers_16gb_recipe_fits_a_t4_and_the_plain_command_does_not():
    # huggingface/diffusers examples/dreambooth/README.md: "Training on a 16GB GPU" = gradient checkpointing +
    # 8-bit Adam, with prior preservation, batch 1, 512.
    recipe = _config(prior=True, gradient_checkpointing=True, optimizer="8bit AdamW")
    assert fits(recipe, 16)
    plain = _config(prior=True)
    assert not fits(plain, 16) and fits(plain, 24)
    twelve = _config(prior=True, gradient_checkpointing=True, optimizer="8bit AdamW", mixed_precision="fp16")
    assert fits(twelve, 12)  # "Training on a 12GB GPU" (memory-efficient attention: our SDPA)


def test_a_sd15_lora_at_512_fits_an_11gb_gpu_and_is_far_below_dreambooth():
    # diffusers LoRA docs: SD 1.5 at 512 with fp16 trains on an 11 GB 2080 Ti.
    lora = _config("Lora", mixed_precision="fp16", lora_unet_rank=128, lora_txt_rank=64)
    assert fits(lora, 11)
    assert estimate(lora).optimizer < 0.5 and estimate(lora).total < estimate(_config()).total / 2


def test_memory_grows_with_pixels_and_batch_and_prior_preservation():
    base = estimate(_config("Lora")).activations
    assert estimate(_config("Lora", resolution=1024)).activations == pytest.approx(4 * base)
    assert estimate(_config("Lora", train_batch_size=3)).activations == pytest.approx(3 * base)
    assert estimate(_config("Lora", prior=True)).activations == pytest.approx(2 * base)
    assert estimate(_config("Lora", gradient_checkpointing=True)).activations < base / 4
    text = estimate(_config(stop_text_encoder=0.5)).gradients - estimate(_config()).gradients
    assert text == pytest.approx(SD1_SIZE.text_encoder * 4 / GiB)


def test_a_job_that_does_not_fit_is_told_what_would():
    config = _config(prior=True, stop_text_encoder=0.5)  # ~23 GiB
    with pytest.raises(DoesNotFit) as refused:
        check_fits(config, "ml.g4dn.xlarge", 16, other_gpus=SINGLE_GPU_TYPES)
    message = str(refused.value)
    assert message.startswith(f"this job needs ~{estimate(config).total:.0f} GiB of GPU memory and ml.g4dn.xlarge "
                              "has 16 GiB; it would fit with gradient_checkpointing true and mixed_precision fp16 "
                              "and optimizer 8bit AdamW (~")
    assert message.endswith("or on ml.g6e.xlarge (48 GiB) (8bit AdamW needs bitsandbytes in the training image).")
    suggested = _config(prior=True, stop_text_encoder=0.5, gradient_checkpointing=True, mixed_precision="fp16",
                        optimizer="8bit AdamW")
    assert fits(suggested, 16) and fits(config, 48)


def test_single_changes_that_fit_are_offered_each():
    config = _config("Lora", train_batch_size=4)  # 4 samples of activations without checkpointing
    with pytest.raises(DoesNotFit) as refused:
        check_fits(config, "ml.g4dn.xlarge", 16, other_gpus=SINGLE_GPU_TYPES)
    message = str(refused.value)
    assert "it would fit with gradient_checkpointing true (~" in message
    assert ", or with train_batch_size 1 (~" in message and "or on ml.g5.xlarge (24 GiB)." in message
    assert "8bit AdamW" not in message  # it saves next to nothing on a LoRA, and fits nothing alone here
    assert check_fits(config, "ml.g5.xlarge", 24).total <= USABLE_FRACTION * 24


def test_nothing_fits_says_so():
    config = _config(resolution=2048, train_batch_size=64)
    with pytest.raises(DoesNotFit, match="no setting of this trainer makes it fit there"):
        check_fits(config, "this machine's GPU", 4)


def test_the_parameter_counts_of_a_header_are_the_models(learnable_checkpoint):
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    from aws_extension.engine.checkpoints import load_checkpoint_pipeline

    size = model_size(read_safetensors_file(learnable_checkpoint).shapes())
    pipe = load_checkpoint_pipeline(learnable_checkpoint)

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    assert (size.unet, size.text_encoder, size.vae) == (count(pipe.unet), count(pipe.text_encoder), count(pipe.vae))
    before = count(pipe.unet), count(pipe.text_encoder)
    pipe.unet.add_adapter(LoraConfig(r=1, lora_alpha=1, target_modules=list(UNET_LORA_TARGETS)))
    inject_adapter_in_model(LoraConfig(r=1, lora_alpha=1, target_modules=list(TEXT_LORA_TARGETS)), pipe.text_encoder)
    assert count(pipe.unet) - before[0] == size.unet_lora_per_rank
    assert count(pipe.text_encoder) - before[1] == size.text_lora_per_rank
