"""A tiny random-weight SD 1.x model (and matching LoRA, embedding, VAE, ControlNet) for tests and demos.

The architecture (`engine/data/sd1-tiny`) is SD 1.x scaled down: the same block types, the ×8 latent scale,
the real CLIP vocabulary, but ~1 M parameters, so a 64×64 image takes a fraction of a second on a CPU.
The files use the layouts users download (A1111 single-file checkpoint, kohya LoRA, A1111 embedding,
A1111 VAE) so that the loaders are exercised on the real formats. Everything is seeded: the same call
writes the same tensors. Torch is imported inside the functions (the CLI imports this module).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from aws_extension.model_files import ARCHITECTURE_METADATA_KEY
from aws_extension.vocabulary import CheckpointType

if TYPE_CHECKING:
    import torch

TINY_ARCHITECTURE = "sd1-tiny"
TINY_SEED = 1234
LORA_RANK = 4
LORA_ALPHA = 2.0  # deliberately != rank, so a loader that ignores `.alpha` gives a different result
EMBEDDING_VECTORS = 2


def write_tiny_model(out: Path, extras_dir: Path | None = None) -> None:
    """Write the tiny SD 1.x checkpoint to `out` (A1111 single-file `.safetensors`).

    With `extras_dir`, also write, laid out like the WebUI's models folder: `Lora/tiny-lora.safetensors`
    (kohya keys), `embeddings/tiny-emb.safetensors` (A1111 `emb_params`, 2 vectors, token `tiny-emb`),
    `VAE/tiny-vae.safetensors` (other weights than the checkpoint's VAE) and
    `ControlNet/tiny-controlnet.safetensors` (sd-webui-controlnet `control_model.*` layout). Deterministic.
    """
    from safetensors.torch import save_file

    from aws_extension.engine.checkpoints import diffusers_to_a1111_checkpoint

    unet, vae, text_encoder = build_tiny_models(seed=TINY_SEED)
    state_dict = diffusers_to_a1111_checkpoint(
        unet.state_dict(), vae.state_dict(), text_encoder.state_dict(), unet.config, vae.config
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(_contiguous(state_dict), str(out), metadata={ARCHITECTURE_METADATA_KEY: TINY_ARCHITECTURE})
    if extras_dir is not None:
        _write_extras(Path(extras_dir), unet, text_encoder)


def build_tiny_models(seed: int = TINY_SEED) -> tuple[Any, Any, Any]:
    """The tiny (UNet2DConditionModel, AutoencoderKL, CLIPTextModel), random weights from `seed`."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from aws_extension.engine.checkpoints import architecture_config_dir

    config_dir = architecture_config_dir(TINY_ARCHITECTURE)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir / "unet"))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae"))
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(config_dir / "text_encoder"))
    return unet.eval(), vae.eval(), text_encoder.eval()


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
