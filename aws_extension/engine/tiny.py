"""A tiny random-weight SD 1.x model (and matching LoRA, embedding, VAE, ControlNet) for tests and demos.

The architecture (`engine/data/sd1-tiny`) is SD 1.x scaled down: the same block types, the ×8 latent scale,
the real CLIP vocabulary, but ~1 M parameters, so a 64×64 image takes a fraction of a second on a CPU.
The files use the layouts users download (A1111 single-file checkpoint, kohya LoRA, A1111 embedding,
A1111 VAE) so that the loaders are exercised on the real formats. Everything is seeded: the same call
writes the same tensors. Torch is imported inside the functions (the CLI imports this module).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aws_extension.model_files import ARCHITECTURE_METADATA_KEY
from aws_extension.vocabulary import CheckpointType

if TYPE_CHECKING:
    import torch

TINY_ARCHITECTURE = "sd1-tiny"
# `make-tiny-model --learnable`: a model that can show learning (see `_make_learnable`). Its own architecture
# (VAE GroupNorms of one group, UNet GroupNorms of 4 groups: with one channel per group, as in the default tiny
# model, a norm removes every constant offset, so neither a solid colour nor a prompt's shift of it can pass;
# a 48-wide text encoder, so its tensors tell it from the default tiny model).
LEARNABLE_ARCHITECTURE = "sd1-tiny-learnable"
LEARNABLE_CROSS_ATTENTION_GAIN = 8.0  # how much louder the UNet's cross-attention output is than at random init
# The learnable UNet is pretrained at build time on solid colours captioned by their colour name (or nothing).
LEARNABLE_COLOURS = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
                     "cyan": (30, 210, 220), "magenta": (210, 30, 200), "white": (240, 240, 240),
                     "black": (15, 15, 15), "grey": (128, 128, 128)}
LEARNABLE_PRETRAIN_STEPS = 200
LEARNABLE_PRETRAIN_BATCH = 8
LEARNABLE_PRETRAIN_LR = 2e-3
TINY_SEED = 1234
LORA_RANK = 4
LORA_ALPHA = 2.0  # deliberately != rank, so a loader that ignores `.alpha` gives a different result
EMBEDDING_VECTORS = 2


def write_tiny_model(out: Path, extras_dir: Path | None = None, learnable: bool = False) -> None:
    """Write the tiny SD 1.x checkpoint to `out` (A1111 single-file `.safetensors`), and beside it what A1111
    needs to load it (`write_webui_config`).

    With `extras_dir`, also write, laid out like the WebUI's models folder: `Lora/tiny-lora.safetensors`
    (kohya keys), `embeddings/tiny-emb.safetensors` (A1111 `emb_params`, 2 vectors, token `tiny-emb`),
    `VAE/tiny-vae.safetensors` (other weights than the checkpoint's VAE) and
    `ControlNet/tiny-controlnet.safetensors` (sd-webui-controlnet `control_model.*` layout). Deterministic.

    With `learnable`, the model that can show learning (`LEARNABLE_ARCHITECTURE`, `_make_learnable`); its
    extras are not made.
    """
    from safetensors.torch import save_file

    from aws_extension.engine.checkpoints import diffusers_to_a1111_checkpoint

    if learnable and extras_dir is not None:
        raise ValueError("--extras are made for the default tiny model only, not with --learnable")
    architecture = LEARNABLE_ARCHITECTURE if learnable else TINY_ARCHITECTURE
    unet, vae, text_encoder = build_tiny_models(seed=TINY_SEED, architecture=architecture)
    if learnable:
        _make_learnable(unet, vae)
        _pretrain_learnable(unet, vae, text_encoder)
    state_dict = diffusers_to_a1111_checkpoint(
        unet.state_dict(), vae.state_dict(), text_encoder.state_dict(), unet.config, vae.config
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(_contiguous(state_dict), str(out), metadata={ARCHITECTURE_METADATA_KEY: architecture})
    write_webui_config(out, architecture)
    if extras_dir is not None:
        _write_extras(Path(extras_dir), unet, text_encoder)


def write_webui_config(checkpoint: Path, architecture: str = TINY_ARCHITECTURE) -> tuple[Path, Path]:
    """Write beside `checkpoint` what A1111 needs to load it: `<stem>.yaml`, the ldm config it picks up by
    name (else it assumes SD 1.5's `v1-inference.yaml`, whose shapes do not fit), and `<stem>-text-encoder/`,
    the folder that config names as the text encoder's `version` (its `config.json` and the CLIP tokenizer
    files; A1111 builds the model from the config and takes the weights from the checkpoint, so no hub).
    The yaml is written as JSON, which YAML readers accept. Returns (yaml, folder)."""
    from aws_extension.engine.checkpoints import TOKENIZER_DIR, architecture_config_dir

    config_dir = architecture_config_dir(architecture)
    text_encoder_dir = checkpoint.with_name(f"{checkpoint.stem}-text-encoder")
    text_encoder_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config_dir / "text_encoder" / "config.json", text_encoder_dir / "config.json")
    for tokenizer_file in sorted(TOKENIZER_DIR.iterdir()):
        if tokenizer_file.is_file():
            shutil.copyfile(tokenizer_file, text_encoder_dir / tokenizer_file.name)
    config = ldm_config(_read_json(config_dir / "unet" / "config.json"), _read_json(config_dir / "vae" / "config.json"),
                        text_encoder_dir.resolve())
    yaml_path = checkpoint.with_suffix(".yaml")
    yaml_path.write_text(f"# ldm config of {checkpoint.name} for A1111 (sd-aws make-tiny-model), written as JSON\n"
                         + json.dumps(config, indent=2) + "\n")
    return yaml_path, text_encoder_dir


def ldm_config(unet: dict[str, Any], vae: dict[str, Any], text_encoder_dir: Path) -> dict[str, Any]:
    """The ldm (`v1-inference.yaml`) config of an SD 1.x model from its diffusers UNet and VAE configs."""
    channels = unet["block_out_channels"]
    # ldm lists the downsampling factors (1, 2, 4, ...) of the levels that have attention
    attention = [2 ** level for level, block in enumerate(unet["down_block_types"]) if block.startswith("CrossAttn")]
    vae_channels = vae["block_out_channels"]
    return {"model": {
        "base_learning_rate": 0.0001,
        "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
        "params": {
            "linear_start": 0.00085, "linear_end": 0.012, "num_timesteps_cond": 1, "log_every_t": 200,
            "timesteps": 1000, "first_stage_key": "jpg", "cond_stage_key": "txt",
            "image_size": unet["sample_size"], "channels": unet["in_channels"], "cond_stage_trainable": False,
            "conditioning_key": "crossattn", "monitor": "val/loss_simple_ema",
            "scale_factor": vae["scaling_factor"], "use_ema": False,
            "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": {
                "image_size": unet["sample_size"], "in_channels": unet["in_channels"],
                "out_channels": unet["out_channels"], "model_channels": channels[0],
                "attention_resolutions": attention, "num_res_blocks": unet["layers_per_block"],
                "channel_mult": [c // channels[0] for c in channels],
                "num_heads": unet["attention_head_dim"],  # SD 1.x diffusers configs name the head count so
                "use_spatial_transformer": True, "transformer_depth": 1,
                "context_dim": unet["cross_attention_dim"], "use_checkpoint": False, "legacy": False}},
            "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
                "embed_dim": vae["latent_channels"], "monitor": "val/rec_loss",
                "ddconfig": {"double_z": True, "z_channels": vae["latent_channels"], "resolution": vae["sample_size"],
                             "in_channels": vae["in_channels"], "out_ch": vae["out_channels"], "ch": vae_channels[0],
                             "ch_mult": [c // vae_channels[0] for c in vae_channels],
                             "num_res_blocks": vae["layers_per_block"], "attn_resolutions": [], "dropout": 0.0},
                "lossconfig": {"target": "torch.nn.Identity"}}},
            "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                                  "params": {"version": str(text_encoder_dir)}},
        },
    }}


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def build_tiny_models(seed: int = TINY_SEED, architecture: str = TINY_ARCHITECTURE) -> tuple[Any, Any, Any]:
    """The tiny (UNet2DConditionModel, AutoencoderKL, CLIPTextModel), random weights from `seed`."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from aws_extension.engine.checkpoints import architecture_config_dir

    config_dir = architecture_config_dir(architecture)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir / "unet"))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae"))
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(config_dir / "text_encoder"))
    return unet.eval(), vae.eval(), text_encoder.eval()


# The learnable model's VAE channels: +colour (0-2), -colour (3-5), then pairs of ±_LEARNABLE_LEVEL constants.
_COLOUR_CHANNELS = 3
_LEARNABLE_LEVEL = 100.0
_LOGVAR = -20.0  # the posterior's log variance: sampling it adds noise of std e^-10


def _colour_to_latent() -> torch.Tensor:
    """A (4, 3) matrix with orthonormal columns: latent = √3 · M · rgb (rgb in -1..1), so a random colour's
    latent (× scaling factor) has about unit variance, and rgb = Mᵀ · latent / √3 undoes it."""
    import torch

    hadamard = torch.tensor([[1., 1., 1., 1.], [1., -1., 1., -1.], [1., 1., -1., -1.], [1., -1., -1., 1.]]) / 2
    return hadamard[:, 1:]


def _make_learnable(unet: Any, vae: Any) -> None:
    """Turn the random tiny model into one that can show learning, deterministically and at once:

    - the VAE is built, not trained: every residual branch and attention output is zeroed (identity blocks),
      the encoder averages 2×2 at each downsampling and the decoder repeats pixels, and colour passes its two
      GroupNorms (one group over all channels) as ±pairs beside large ±constants: the norm's mean is 0 and its
      scale the constants', so it divides colour by a fixed number, and silu(y) − silu(−y) = y exactly. The
      latent is a fixed orthonormal map of the 8×8-averaged colour, of about unit variance × scaling factor;
      the decoder reconstructs the averaged image exactly (up to float rounding);
    - the UNet's cross-attention output is LEARNABLE_CROSS_ATTENTION_GAIN times louder, so the prompt
      changes the image clearly (at random init its effect is below 1/255).
    """
    import math

    import torch

    colour = _colour_to_latent()
    scaling = vae.config.scaling_factor
    channels = vae.config.block_out_channels[0]
    constants = channels - 2 * _COLOUR_CHANNELS
    norm_scale = _LEARNABLE_LEVEL * math.sqrt(constants / channels)  # what the GroupNorms divide by

    def centre(conv: torch.nn.Conv2d, weights: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        conv.weight.zero_()
        conv.weight[:, :, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = weights
        conv.bias.copy_(bias if bias is not None else torch.zeros(conv.out_channels))

    def constant_bias() -> torch.Tensor:
        bias = torch.zeros(channels)
        bias[2 * _COLOUR_CHANNELS:] = torch.tensor([_LEARNABLE_LEVEL, -_LEARNABLE_LEVEL]).repeat(constants // 2)
        return bias

    def identity_blocks(module: Any) -> None:
        for name, sub in module.named_modules():
            if name.endswith("conv2") or name.endswith("to_out.0"):
                sub.weight.zero_()
                sub.bias.zero_()
        for sub in module.modules():
            if isinstance(sub, torch.nn.GroupNorm):
                sub.weight.fill_(1.0)
                sub.bias.zero_()

    eye = torch.eye(channels)
    pm = torch.cat([torch.eye(_COLOUR_CHANNELS), -torch.eye(_COLOUR_CHANNELS)])  # (6, 3): +colour, -colour
    with torch.no_grad():
        encoder, decoder = vae.encoder, vae.decoder
        identity_blocks(encoder)
        identity_blocks(decoder)
        into = torch.zeros(channels, 3)
        into[:2 * _COLOUR_CHANNELS] = pm
        centre(encoder.conv_in, into, constant_bias())
        for block in encoder.down_blocks:
            for downsampler in block.downsamplers or []:
                downsampler.conv.weight.zero_()
                downsampler.conv.weight[:, :, :2, :2] = eye[:, :, None, None] / 4  # a 2×2 average
                downsampler.conv.bias.zero_()
        out = torch.zeros(encoder.conv_out.out_channels, channels)
        to_latent = colour * math.sqrt(3) / scaling * norm_scale  # (4, 3)
        out[:4, :_COLOUR_CHANNELS] = to_latent
        out[:4, _COLOUR_CHANNELS:2 * _COLOUR_CHANNELS] = -to_latent
        logvar = torch.zeros(encoder.conv_out.out_channels)
        logvar[4:] = _LOGVAR
        centre(encoder.conv_out, out, logvar)
        centre(vae.quant_conv, torch.eye(vae.quant_conv.out_channels))
        centre(vae.post_quant_conv, torch.eye(vae.post_quant_conv.out_channels))
        back = torch.zeros(channels, 4)
        back[:2 * _COLOUR_CHANNELS] = pm @ colour.T * scaling / math.sqrt(3)
        centre(decoder.conv_in, back, constant_bias())
        for block in decoder.up_blocks:
            for upsampler in block.upsamplers or []:
                centre(upsampler.conv, eye)
        out = torch.zeros(3, channels)
        out[:, :2 * _COLOUR_CHANNELS] = pm.T * norm_scale
        centre(decoder.conv_out, out)
        for name, module in unet.named_modules():
            if name.endswith("attn2.to_out.0"):
                module.weight.mul_(LEARNABLE_CROSS_ATTENTION_GAIN)


def colour_latent(rgb: tuple[int, int, int], scaling_factor: float) -> torch.Tensor:
    """The learnable VAE's latent (unscaled, per channel) of a solid colour: what its encoder computes."""
    import math

    import torch

    colour = torch.tensor(rgb, dtype=torch.float32) / 127.5 - 1
    return _colour_to_latent() @ colour * math.sqrt(3) / scaling_factor


def _pretrain_learnable(unet: Any, vae: Any, text_encoder: Any) -> None:
    """LEARNABLE_PRETRAIN_STEPS steps of the DDPM loss on solid colours near LEARNABLE_COLOURS, captioned with
    their name (one in five uncaptioned), so the base is a denoiser (its images are colours, not saturated
    noise), as a real base model is. Deterministic (a generator of its own); latents from `colour_latent`."""
    import torch
    from diffusers import DDPMScheduler

    from aws_extension.engine.checkpoints import architecture_config_dir, load_tokenizer

    generator = torch.Generator("cpu").manual_seed(TINY_SEED + 40)
    scheduler = DDPMScheduler.from_config(DDPMScheduler.load_config(
        architecture_config_dir(LEARNABLE_ARCHITECTURE) / "scheduler"))
    tokenizer = load_tokenizer()
    names = list(LEARNABLE_COLOURS)
    with torch.no_grad():
        ids = tokenizer([*names, ""], padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        hidden = text_encoder(ids)[0]
    centres = torch.stack([colour_latent(LEARNABLE_COLOURS[n], 1.0) for n in names])  # scaled latents
    size = unet.config.sample_size
    optimizer = torch.optim.AdamW(unet.parameters(), lr=LEARNABLE_PRETRAIN_LR)
    unet.train()
    for _ in range(LEARNABLE_PRETRAIN_STEPS):
        which = torch.randint(0, len(names), (LEARNABLE_PRETRAIN_BATCH,), generator=generator)
        jitter = torch.randn(LEARNABLE_PRETRAIN_BATCH, 4, generator=generator) * 0.1
        latents = (centres[which] + jitter)[:, :, None, None].expand(-1, -1, size, size)
        uncaptioned = torch.rand(LEARNABLE_PRETRAIN_BATCH, generator=generator) < 0.2
        context = hidden[torch.where(uncaptioned, len(names), which)]
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (LEARNABLE_PRETRAIN_BATCH,),
                                  generator=generator)
        prediction = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, context).sample
        loss = torch.nn.functional.mse_loss(prediction, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    unet.eval()


def _write_extras(extras_dir: Path, unet: Any, text_encoder: Any) -> None:
    import torch
    from diffusers import AutoencoderKL, ControlNetModel
    from safetensors.torch import save_file

    from aws_extension.engine.checkpoints import (
        architecture_config_dir,
        diffusers_to_a1111_controlnet,
        diffusers_to_a1111_vae,
    )

    metadata = {ARCHITECTURE_METADATA_KEY: TINY_ARCHITECTURE}
    lora_dir, embeddings_dir, vae_dir, controlnet_dir = (
        extras_dir / str(t) for t in (CheckpointType.LORA, CheckpointType.EMBEDDINGS, CheckpointType.VAE,
                                      CheckpointType.CONTROLNET))
    for folder in (lora_dir, embeddings_dir, vae_dir, controlnet_dir):
        folder.mkdir(parents=True, exist_ok=True)

    generator = torch.Generator("cpu").manual_seed(TINY_SEED + 10)
    save_file(
        _kohya_lora(unet, text_encoder, generator),
        str(lora_dir / "tiny-lora.safetensors"),
        metadata={**metadata, "ss_network_dim": str(LORA_RANK), "ss_network_alpha": str(LORA_ALPHA)},
    )

    token_std = float(text_encoder.get_input_embeddings().weight.detach().std())
    hidden_size = text_encoder.config.hidden_size
    embedding = torch.randn(EMBEDDING_VECTORS, hidden_size, generator=generator) * token_std * 4
    save_file({"emb_params": embedding}, str(embeddings_dir / "tiny-emb.safetensors"), metadata=metadata)

    config_dir = architecture_config_dir(TINY_ARCHITECTURE)
    torch.manual_seed(TINY_SEED + 20)
    other_vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae"))
    save_file(
        _contiguous(diffusers_to_a1111_vae(other_vae.state_dict(), other_vae.config)),
        str(vae_dir / "tiny-vae.safetensors"),
        metadata=metadata,
    )

    torch.manual_seed(TINY_SEED + 30)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16))
    with torch.no_grad():  # ControlNet's output convolutions start at zero; make it have an effect
        for name, parameter in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    save_file(
        _contiguous(diffusers_to_a1111_controlnet(controlnet.state_dict(), controlnet.config)),
        str(controlnet_dir / "tiny-controlnet.safetensors"),
        metadata=metadata,
    )


def _kohya_lora(unet: Any, text_encoder: Any, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A kohya/A1111 LoRA on every attention projection of the UNet and the text encoder."""
    import torch

    targets: list[tuple[str, Any]] = []
    for name, module in unet.named_modules():
        if name.endswith(("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                          "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")):
            targets.append(("lora_unet_" + name.replace(".", "_"), module))
    for name, module in text_encoder.named_modules():
        if name.endswith(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")):
            # kohya names text encoder modules as transformers 4 did: `text_model.encoder.layers...`
            full_name = name if name.startswith("text_model.") else "text_model." + name
            targets.append(("lora_te_" + full_name.replace(".", "_"), module))
    lora: dict[str, torch.Tensor] = {}
    for prefix, module in targets:
        lora[f"{prefix}.lora_down.weight"] = torch.randn(LORA_RANK, module.in_features, generator=generator) * 0.3
        lora[f"{prefix}.lora_up.weight"] = torch.randn(module.out_features, LORA_RANK, generator=generator) * 0.3
        lora[f"{prefix}.alpha"] = torch.tensor(LORA_ALPHA)
    return lora


def _contiguous(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: tensor.detach().contiguous() for key, tensor in state_dict.items()}
