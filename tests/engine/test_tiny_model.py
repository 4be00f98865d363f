"""`make-tiny-model` writes what A1111 needs to load the tiny checkpoint: the ldm config `<stem>.yaml` and the
text-encoder folder it names. Every number of the config is checked against the checkpoint's own tensors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from aws_extension.model_files import read_safetensors_file
from tests.conftest import TINY_CHECKPOINT_NAME

UNET = "model.diffusion_model."
VAE = "first_stage_model.encoder."
TEXT = "cond_stage_model.transformer.text_model."


@pytest.fixture(scope="module")
def checkpoint(tiny_models_dir: Path) -> Path:
    return tiny_models_dir / "Stable-diffusion" / TINY_CHECKPOINT_NAME


@pytest.fixture(scope="module")
def shapes(checkpoint: Path) -> dict[str, tuple[int, ...]]:
    return read_safetensors_file(checkpoint).shapes()


@pytest.fixture(scope="module")
def params(checkpoint: Path) -> dict[str, Any]:
    config = yaml.safe_load(checkpoint.with_suffix(".yaml").read_text())  # A1111 takes <stem>.yaml by name
    assert config["model"]["target"] == "ldm.models.diffusion.ddpm.LatentDiffusion"
    return config["model"]["params"]


def _indices(shapes: dict[str, tuple[int, ...]], pattern: str) -> set[int]:
    return {int(m.group(1)) for key in shapes if (m := re.fullmatch(pattern, key))}


def test_the_unet_config_fits_the_checkpoint(params: dict[str, Any], shapes: dict[str, tuple[int, ...]]):
    unet = params["unet_config"]["params"]
    assert params["unet_config"]["target"] == "ldm.modules.diffusionmodules.openaimodel.UNetModel"
    channels, in_channels = shapes[UNET + "input_blocks.0.0.weight"][:2]
    assert (unet["model_channels"], unet["in_channels"], params["channels"]) == (channels, in_channels, in_channels)
    assert unet["out_channels"] == shapes[UNET + "out.2.weight"][0]
    per_level = unet["num_res_blocks"] + 1  # the res blocks, then a downsample (none after the last level)
    assert max(_indices(shapes, r"model\.diffusion_model\.input_blocks\.(\d+)\..*")) + 1 == (
        len(unet["channel_mult"]) * per_level)
    for level, mult in enumerate(unet["channel_mult"]):
        block = f"{UNET}input_blocks.{level * per_level + 1}."
        assert shapes[block + "0.out_layers.3.weight"][0] == mult * channels
        has_attention = f"{block}1.transformer_blocks.0.attn2.to_k.weight" in shapes
        assert has_attention == (2 ** level in unet["attention_resolutions"])
    key = shapes[f"{UNET}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"]
    assert unet["context_dim"] == key[1]
    assert key[0] % unet["num_heads"] == 0 and unet["num_heads"] == 8  # heads are not in the weights
    assert unet["use_spatial_transformer"] and unet["transformer_depth"] == 1
    assert (unet["model_channels"], unet["channel_mult"], unet["attention_resolutions"], unet["context_dim"]) == (
        32, [1, 2], [1], 32)


def test_the_vae_config_fits_the_checkpoint(params: dict[str, Any], shapes: dict[str, tuple[int, ...]]):
    first_stage = params["first_stage_config"]["params"]
    dd = first_stage["ddconfig"]
    ch = shapes[VAE + "conv_in.weight"][0]
    assert (dd["ch"], dd["in_channels"]) == (ch, shapes[VAE + "conv_in.weight"][1])
    levels = _indices(shapes, r"first_stage_model\.encoder\.down\.(\d+)\..*")
    assert dd["ch_mult"] == [shapes[f"{VAE}down.{i}.block.0.conv1.weight"][0] // ch for i in sorted(levels)]
    assert dd["num_res_blocks"] == len(_indices(shapes, r"first_stage_model\.encoder\.down\.0\.block\.(\d+)\..*"))
    assert dd["double_z"] and shapes[VAE + "conv_out.weight"][0] == 2 * dd["z_channels"]
    assert first_stage["embed_dim"] == shapes["first_stage_model.quant_conv.weight"][0] // 2
    assert dd["out_ch"] == shapes["first_stage_model.decoder.conv_out.weight"][0]
    assert params["scale_factor"] == 0.18215
    assert (dd["ch"], dd["ch_mult"]) == (32, [1, 1, 1, 1])


def test_the_text_encoder_folder_fits_the_checkpoint(params: dict[str, Any], shapes: dict[str, tuple[int, ...]],
                                                     checkpoint: Path):
    from transformers import CLIPTokenizer

    assert params["cond_stage_config"]["target"] == "ldm.modules.encoders.modules.FrozenCLIPEmbedder"
    folder = Path(params["cond_stage_config"]["params"]["version"])
    assert folder.is_absolute() and folder == checkpoint.with_name(f"{checkpoint.stem}-text-encoder").resolve()
    config = json.loads((folder / "config.json").read_text())
    vocab, hidden = shapes[TEXT + "embeddings.token_embedding.weight"]
    assert (config["vocab_size"], config["hidden_size"]) == (vocab, hidden)
    assert config["max_position_embeddings"] == shapes[TEXT + "embeddings.position_embedding.weight"][0]
    assert config["num_hidden_layers"] == len(_indices(shapes, r"cond_stage_model\.transformer\.text_model\."
                                                               r"encoder\.layers\.(\d+)\..*"))
    assert config["intermediate_size"] == shapes[TEXT + "encoder.layers.0.mlp.fc1.weight"][0]
    assert hidden % config["num_attention_heads"] == 0
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)  # as A1111 loads it
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
