"""The trained result in the formats A1111 loads: a kohya LoRA (`lora_unet_*`, `lora_te_*` with each
module's real `.alpha`) or a single-file checkpoint in the ldm key layout, with training metadata in the
safetensors header."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from aws_extension.model_files import ARCHITECTURE_METADATA_KEY

if TYPE_CHECKING:
    import torch

KOHYA_UNET_PREFIX = "lora_unet_"
KOHYA_TEXT_PREFIX = "lora_te_"


def kohya_lora_state(unet: Any, text_encoder: Any | None, unet_alpha: float,
                     text_alpha: float) -> dict[str, torch.Tensor]:
    """The kohya state dict of the peft adapters on `unet` (and `text_encoder`): `lora_A` → `lora_down`,
    `lora_B` → `lora_up`, and `.alpha` = the adapter's lora_alpha (diffusers' `convert_state_dict_to_kohya`
    writes the rank there, which changes the LoRA's scale)."""
    import torch
    from peft.tuners.lora import LoraLayer

    state: dict[str, torch.Tensor] = {}
    models = [(unet, KOHYA_UNET_PREFIX, unet_alpha, "")]
    if text_encoder is not None:
        models.append((text_encoder, KOHYA_TEXT_PREFIX, text_alpha, "text_model."))
    for model, prefix, alpha, module_prefix in models:
        for module_name, module in model.named_modules():
            if not isinstance(module, LoraLayer) or "default" not in module.lora_A:
                continue
            if module_prefix and not module_name.startswith(module_prefix):
                module_name = module_prefix + module_name  # kohya names text encoder modules as transformers 4 did
            name = prefix + module_name.replace(".", "_")
            state[f"{name}.lora_down.weight"] = module.lora_A["default"].weight.detach().float().contiguous()
            state[f"{name}.lora_up.weight"] = module.lora_B["default"].weight.detach().float().contiguous()
            state[f"{name}.alpha"] = torch.tensor(float(alpha))
    return state


def save_lora(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str], architecture: str) -> None:
    from safetensors.torch import save_file

    save_file(state, str(path), metadata={**metadata, ARCHITECTURE_METADATA_KEY: architecture})


def save_checkpoint(path: Path, unet: Any, vae: Any, text_encoder: Any, metadata: dict[str, str],
                    architecture: str, half: bool) -> None:
    """A single-file checkpoint of the three models in A1111's key layout (float16 with `half`)."""
    import torch
    from safetensors.torch import save_file

    from aws_extension.engine.checkpoints import diffusers_to_a1111_checkpoint

    state = diffusers_to_a1111_checkpoint(unet.state_dict(), vae.state_dict(), text_encoder.state_dict(),
                                          unet.config, vae.config)
    dtype = torch.float16 if half else torch.float32
    state = {k: (v.to(dtype) if v.is_floating_point() else v).detach().contiguous() for k, v in state.items()}
    save_file(state, str(path), metadata={**metadata, ARCHITECTURE_METADATA_KEY: architecture})
