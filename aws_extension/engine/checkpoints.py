"""Model files on the engine: reading them safely, what a file is (kind, architecture, format: detected by
`aws_extension.model_files`), and loading checkpoints.

Architectures: `sd1` (SD 1.x, configs in `data/sd15`) and `sd1-tiny` (the test model of `tiny.py`,
`data/sd1-tiny`) load; `sd2` and `sdxl` are recognised and refused with a clear error until their config
folders are shipped (add `data/sd2`, `data/sdxl` and their entry in `_LOADABLE_ARCHITECTURES`).
Pickled files (`.ckpt`, `.pt`, `.pth`, `.bin`) are read only with `torch.load(weights_only=True)`: a
pickle that wants to run code is refused, never executed. Torch and diffusers are imported lazily.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aws_extension.engine.base import EngineError
from aws_extension.model_files import (
    CLIP_PREFIX,
    KIND_CHECKPOINT,
    KIND_VAE,
    SAFETENSORS_SUFFIXES,
    UNET_PREFIX,
    VAE_PREFIX,
    ModelFileError,
    ModelFileInfo,
    detect_model,
    identify_model,
    read_safetensors_file,
)
from aws_extension.vocabulary import PICKLE_SUFFIXES

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from aws_extension.engine.placement import Placement

DATA_DIR = Path(__file__).parent / "data"
TOKENIZER_DIR = DATA_DIR / "clip-tokenizer"

# architecture -> config folder under data/ (diffusers layout: unet/, vae/, text_encoder/, scheduler/)
_LOADABLE_ARCHITECTURES = {"sd1": "sd15", "sd1-tiny": "sd1-tiny", "sd1-tiny-learnable": "sd1-tiny-learnable"}
_CONTROLNET_CONFIG_DIRS = {"sd1": "sd15-controlnet", "sd1-tiny": "sd1-tiny-controlnet"}
ARCHITECTURE_NAMES = {
    "sd1": "Stable Diffusion 1.x",
    "sd1-tiny": "the tiny SD 1.x test model",
    "sd1-tiny-learnable": "the tiny SD 1.x test model that can learn (make-tiny-model --learnable)",
    "sd2": "Stable Diffusion 2.x",
    "sdxl": "Stable Diffusion XL",
}


# ---------------------------------------------------------------------------------------------------
# Reading files safely


def read_tensor_shapes(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """The tensor names and shapes of a model file, and its safetensors metadata, without loading data.

    Safetensors headers are read by `aws_extension.model_files`; pickled files are loaded (with
    `weights_only=True`) to see their tensors. Raises EngineError for a missing, truncated, or non-model file.
    """
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"Model file {path.name} does not exist")
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        try:
            header = read_safetensors_file(path)
            return header.shapes(), header.metadata
        except ModelFileError as exc:
            raise EngineError(str(exc)) from None
    tensors = load_state_dict(path)
    return {name: tuple(tensor.shape) for name, tensor in tensors.items()}, {}


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a model file, flattened (`state_dict` wrappers removed), on the CPU.

    `.safetensors` is read with safetensors; `.ckpt`/`.pt`/`.pth`/`.bin` with
    `torch.load(weights_only=True)` only. Nested dicts of tensors (A1111 `.pt` embeddings) are flattened
    with dotted names (`string_to_param.*`). Raises EngineError for anything that is not tensors.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise EngineError(f"Model file {path.name} does not exist")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        read_tensor_shapes(path)  # a clear message for a truncated or non-model file
        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as exc:
            raise EngineError(f"{path.name} is not a valid safetensors file: {exc}") from None
    if suffix not in PICKLE_SUFFIXES:
        raise EngineError(
            f"{path.name}: unsupported model file type {suffix!r}; use .safetensors, .ckpt, .pt, .pth or .bin"
        )
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for bad or unsafe pickles
        raise EngineError(
            f"{path.name} cannot be loaded safely: it is not a PyTorch weights file, is truncated, or contains "
            f"objects other than tensors (code in a pickle is never run). Convert it to .safetensors. "
            f"Detail: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    while isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise EngineError(f"{path.name} does not contain a dictionary of tensors")
    tensors = _flatten_tensors(loaded)
    if not tensors:
        raise EngineError(f"{path.name} contains no tensors; it is not a model")
    return tensors


def _flatten_tensors(container: Mapping[Any, Any] | list[Any] | tuple[Any, ...], prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of nested dicts/lists (A1111 `.pt` embeddings and hypernetworks) under dotted names."""
    import torch

    items = container.items() if isinstance(container, Mapping) else enumerate(container)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        elif isinstance(value, (Mapping, list, tuple)):
            tensors.update(_flatten_tensors(value, prefix=name + "."))
    return tensors


# ---------------------------------------------------------------------------------------------------
# Detection


def inspect_model_file(path: Path) -> ModelFileInfo:
    """Find what a model file is from its tensors (see model_files.ModelFileInfo). Raises EngineError if unknown."""
    shapes, metadata = read_tensor_shapes(path)
    try:
        return identify_model(shapes, metadata, Path(path).name)
    except ModelFileError as exc:
        raise EngineError(str(exc)) from None


def architecture_config_dir(architecture: str | None) -> Path:
    """The diffusers config folder (unet/, vae/, text_encoder/, scheduler/) of a loadable architecture."""
    if architecture not in _LOADABLE_ARCHITECTURES:
        name = ARCHITECTURE_NAMES.get(architecture or "", "an unknown architecture")
        raise EngineError(
            f"Checkpoints of {name} are not supported by this engine yet; supported: "
            f"{', '.join(ARCHITECTURE_NAMES[a] for a in _LOADABLE_ARCHITECTURES)}"
        )
    return DATA_DIR / _LOADABLE_ARCHITECTURES[architecture]


def controlnet_config_dir(architecture: str | None) -> Path:
    """The diffusers ControlNetModel config folder for ControlNets of `architecture`."""
    if architecture not in _CONTROLNET_CONFIG_DIRS:
        name = ARCHITECTURE_NAMES.get(architecture or "", "an unknown architecture")
        raise EngineError(f"ControlNet models for {name} are not supported by this engine yet")
    return DATA_DIR / _CONTROLNET_CONFIG_DIRS[architecture]


def load_tokenizer() -> CLIPTokenizer:
    """The CLIP tokenizer of SD 1.x (OpenAI's BPE vocabulary, shipped in data/clip-tokenizer)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


# ---------------------------------------------------------------------------------------------------
# Loading


def load_checkpoint_pipeline(checkpoint: Path, vae: Path | None = None,
                             placement: Placement | None = None) -> StableDiffusionPipeline:
    """Load an A1111 single-file checkpoint as a StableDiffusionPipeline, offline, on `placement` (default:
    the CPU in float32).

    Configs come from engine/data (nothing is fetched). `vae` (a VAE file) replaces the checkpoint's VAE.
    safety_checker is None. Raises EngineError for files that are not a supported SD checkpoint.
    """
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    checkpoint = Path(checkpoint)
    shapes, metadata = read_tensor_shapes(checkpoint)
    info = detect_model(shapes, metadata)
    if info is None or info.kind != KIND_CHECKPOINT:
        what = f"a {info.kind}" if info else "not a model this engine knows"
        raise EngineError(f"{checkpoint.name} is not a Stable Diffusion checkpoint: it is {what}")
    config_dir = architecture_config_dir(info.architecture)
    _check_checkpoint_shapes(checkpoint.name, shapes, config_dir)
    # Built in the placement's dtype from the start: a float16 file is not widened to float32 and back.
    dtype = placement.dtype if placement is not None else None
    vae_override = load_vae(vae, info.architecture, dtype) if vae else None
    state_dict = load_state_dict(checkpoint)
    try:
        unet = UNet2DConditionModel.from_single_file(
            state_dict, config=str(config_dir), subfolder="unet", local_files_only=True, torch_dtype=dtype
        )
        vae_model = vae_override or _vae_from_checkpoint(state_dict, config_dir, dtype)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise EngineError(
            f"{checkpoint.name} does not match {ARCHITECTURE_NAMES[info.architecture]}: {str(exc).splitlines()[0]}"
        ) from None
    text_encoder = _text_encoder_from_checkpoint(state_dict, config_dir, checkpoint.name, dtype)
    scheduler = PNDMScheduler.from_config(PNDMScheduler.load_config(config_dir / "scheduler"))
    pipeline = StableDiffusionPipeline(
        vae=vae_model,
        text_encoder=text_encoder,
        tokenizer=load_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    if placement is not None:
        from aws_extension.engine.placement import place

        place(list(pipeline.components.values()), placement)
    return pipeline


def _check_checkpoint_shapes(name: str, shapes: Mapping[str, tuple[int, ...]], config_dir: Path) -> None:
    unet_config = json.loads((config_dir / "unet" / "config.json").read_text())
    conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in and conv_in[1] != unet_config["in_channels"]:
        raise EngineError(
            f"{name} has a UNet with {conv_in[1]} input channels (an inpainting or instruct model?); only "
            f"{unet_config['in_channels']}-channel txt2img/img2img checkpoints are supported"
        )
    if not any(k.startswith(VAE_PREFIX) for k in shapes) or not any(k.startswith(CLIP_PREFIX) for k in shapes):
        raise EngineError(f"{name} is incomplete: it lacks the VAE or the text encoder of a full checkpoint")


def _vae_from_checkpoint(state_dict: dict[str, torch.Tensor], config_dir: Path,
                         dtype: torch.dtype | None = None) -> AutoencoderKL:
    from diffusers import AutoencoderKL

    vae_state = {k: v for k, v in state_dict.items() if k.startswith(VAE_PREFIX)}
    return AutoencoderKL.from_single_file(vae_state, config=str(config_dir), subfolder="vae", local_files_only=True,
                                          torch_dtype=dtype)


def load_vae(path: Path, architecture: str | None, dtype: torch.dtype | None = None) -> AutoencoderKL:
    """Load a VAE file (A1111/ldm or diffusers layout, or a full checkpoint's VAE) for `architecture`, in
    `dtype` (default float32)."""
    from diffusers import AutoencoderKL

    path = Path(path)
    shapes, metadata = read_tensor_shapes(path)
    info = detect_model(shapes, metadata)
    if info is None or info.kind not in (KIND_VAE, KIND_CHECKPOINT):
        raise EngineError(f"{path.name} is not a VAE", field="sd_vae")
    config_dir = architecture_config_dir(architecture)
    state_dict = load_state_dict(path)
    if info.kind == KIND_CHECKPOINT:
        state_dict = {k: v for k, v in state_dict.items() if k.startswith(VAE_PREFIX)}
    try:
        return AutoencoderKL.from_single_file(
            state_dict, config=str(config_dir), subfolder="vae", local_files_only=True, torch_dtype=dtype
        )
    except (ValueError, RuntimeError, KeyError) as exc:
        raise EngineError(
            f"VAE {path.name} does not fit {ARCHITECTURE_NAMES.get(architecture or '', architecture)}: {exc}",
            field="sd_vae",
        ) from None


def _text_encoder_from_checkpoint(state_dict: dict[str, torch.Tensor], config_dir: Path, name: str,
                                  dtype: torch.dtype | None = None) -> Any:
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():  # parameters on "meta" (no random init: SD 1.5's takes seconds); buffers real
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(str(config_dir / "text_encoder")))
    expected = text_encoder.state_dict()
    prefix = "text_model." if any(k.startswith("text_model.") for k in expected) else ""
    import torch

    weights = {  # float32 by default, like the UNet and VAE (from_single_file loads fp16 files as float32 too)
        prefix + k[len(CLIP_PREFIX):]: v.to(dtype or torch.float32) if v.is_floating_point() else v
        for k, v in state_dict.items()
        if k.startswith(CLIP_PREFIX) and prefix + k[len(CLIP_PREFIX):] in expected
    }
    missing = sorted(set(expected) - set(weights) - {k for k in expected if k.endswith("position_ids")})
    if missing:
        raise EngineError(f"{name} is incomplete: its text encoder lacks {len(missing)} tensors, e.g. {missing[0]}")
    try:
        text_encoder.load_state_dict(weights, strict=False, assign=True)
    except RuntimeError as exc:
        raise EngineError(f"{name}: the text encoder does not match SD 1.x: {str(exc).splitlines()[0]}") from None
    return text_encoder.eval()


# ---------------------------------------------------------------------------------------------------
# diffusers -> A1111 (ldm) key conversion, driven by the model configs


def diffusers_to_a1111_checkpoint(
    unet_state: Mapping[str, torch.Tensor],
    vae_state: Mapping[str, torch.Tensor],
    text_encoder_state: Mapping[str, torch.Tensor],
    unet_config: Mapping[str, Any],
    vae_config: Mapping[str, Any],
) -> dict[str, torch.Tensor]:
    """An A1111 single-file SD 1.x state dict from diffusers UNet, VAE and CLIP text encoder state dicts."""
    checkpoint = {UNET_PREFIX + k: v for k, v in diffusers_to_a1111_unet(unet_state, unet_config).items()}
    checkpoint.update({VAE_PREFIX + k: v for k, v in diffusers_to_a1111_vae(vae_state, vae_config).items()})
    for key, tensor in text_encoder_state.items():
        if key.endswith("position_ids"):
            continue
        checkpoint[CLIP_PREFIX + key.removeprefix("text_model.")] = tensor
    return checkpoint


_UNET_TOP_LEVEL = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_UNET_RESNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "time_emb_proj.": "emb_layers.1.",
    "conv_shortcut.": "skip_connection.",
}


def _unet_block_prefixes(config: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(diffusers prefix, ldm prefix, is_resnet) for every block of a UNet2DConditionModel config."""
    per_level = config["layers_per_block"] + 1
    levels = len(config["block_out_channels"])
    prefixes: list[tuple[str, str, bool]] = []
    for i, block_type in enumerate(config["down_block_types"]):
        for j in range(config["layers_per_block"]):
            ldm_index = i * per_level + j + 1
            prefixes.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{ldm_index}.0.", True))
            if "CrossAttn" in block_type:
                prefixes.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{ldm_index}.1.", False))
        if i < levels - 1:
            prefixes.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * per_level}.0.op.", False))
    for i, block_type in enumerate(config.get("up_block_types", ())):  # a ControlNet has no up blocks
        has_attention = "CrossAttn" in block_type
        for j in range(per_level):
            ldm_index = i * per_level + j
            prefixes.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{ldm_index}.0.", True))
            if has_attention:
                prefixes.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{ldm_index}.1.", False))
        if i < levels - 1:
            upsampler_slot = 2 if has_attention else 1
            prefixes.append(
                (f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{i * per_level + per_level - 1}.{upsampler_slot}.", False)
            )
    prefixes += [
        ("mid_block.resnets.0.", "middle_block.0.", True),
        ("mid_block.attentions.0.", "middle_block.1.", False),
        ("mid_block.resnets.1.", "middle_block.2.", True),
    ]
    return prefixes


def diffusers_to_a1111_unet(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """ldm (`model.diffusion_model.*` without the prefix) keys for a diffusers UNet2DConditionModel."""
    prefixes = _unet_block_prefixes(config)
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        converted[_convert_unet_key(key, prefixes)] = tensor
    return converted


def _convert_unet_key(key: str, prefixes: list[tuple[str, str, bool]]) -> str:
    for diffusers_prefix, ldm_prefix in _UNET_TOP_LEVEL.items():
        if key.startswith(diffusers_prefix):
            return ldm_prefix + key[len(diffusers_prefix):]
    for diffusers_prefix, ldm_prefix, is_resnet in prefixes:
        if key.startswith(diffusers_prefix):
            rest = key[len(diffusers_prefix):]
            if is_resnet:
                rest = _replace_prefix(rest, _UNET_RESNET)
            return ldm_prefix + rest
    raise EngineError(f"UNet tensor {key} has no A1111 equivalent (unsupported UNet layout)")


def diffusers_to_a1111_controlnet(
    state: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """The A1111/sd-webui-controlnet layout (`control_model.*`) of a diffusers ControlNetModel state dict."""
    prefixes = _unet_block_prefixes(config)
    # input_hint_block: conv_in at 0, each block conv at 2k+2 (SiLUs between), conv_out after the last
    hint_conv_out_index = 2 * (2 * len(config["conditioning_embedding_out_channels"]) - 2) + 2
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.startswith("controlnet_down_blocks."):
            _, index, rest = key.split(".", 2)
            new_key = f"zero_convs.{index}.0.{rest}"
        elif key.startswith("controlnet_mid_block."):
            new_key = "middle_block_out.0." + key.removeprefix("controlnet_mid_block.")
        elif key.startswith("controlnet_cond_embedding."):
            rest = key.removeprefix("controlnet_cond_embedding.")
            if rest.startswith("conv_in."):
                new_key = "input_hint_block.0." + rest.removeprefix("conv_in.")
            elif rest.startswith("conv_out."):
                new_key = f"input_hint_block.{hint_conv_out_index}." + rest.removeprefix("conv_out.")
            else:
                _, index, rest = rest.split(".", 2)
                new_key = f"input_hint_block.{2 * int(index) + 2}.{rest}"
        else:
            new_key = _convert_unet_key(key, prefixes)
        converted["control_model." + new_key] = tensor
    return converted


_VAE_ATTENTION = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}


def diffusers_to_a1111_vae(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """ldm (A1111 VAE file / `first_stage_model.*` without the prefix) keys for a diffusers AutoencoderKL."""
    levels = len(config["block_out_channels"])
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        new_key = key
        for part in ("encoder.", "decoder."):
            if not key.startswith(part):
                continue
            rest = key[len(part):]
            rest = rest.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")
            if rest.startswith("down_blocks."):
                _, level, rest = rest.split(".", 2)
                rest = f"down.{level}." + rest.replace("resnets.", "block.", 1).replace("downsamplers.0.", "downsample.", 1)
            elif rest.startswith("up_blocks."):
                _, level, rest = rest.split(".", 2)
                rest = f"up.{levels - 1 - int(level)}." + rest.replace("resnets.", "block.", 1).replace(
                    "upsamplers.0.", "upsample.", 1
                )
            elif rest.startswith("mid_block.resnets."):
                _, _, index, rest = rest.split(".", 3)
                rest = f"mid.block_{int(index) + 1}." + rest
            elif rest.startswith("mid_block.attentions.0."):
                rest = "mid.attn_1." + _replace_prefix(rest[len("mid_block.attentions.0."):], _VAE_ATTENTION)
                if tensor.ndim == 2:  # ldm keeps the attention projections as 1×1 convolutions
                    tensor = tensor.reshape(*tensor.shape, 1, 1)
            new_key = part + rest
        converted[new_key] = tensor
    return converted


def _replace_prefix(text: str, mapping: Mapping[str, str]) -> str:
    for old, new in mapping.items():
        if text.startswith(old):
            return new + text[len(old):]
    return text
