"""Model files on the real engine: the tiny model, detection, safe loading, the pipeline cache, add-ons."""

from __future__ import annotations

import shutil
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from aws_extension.engine.addons import (
    applied_addons,
    apply_loras,
    controlnet_pipeline,
    load_controlnet,
    load_embeddings,
    read_embedding,
    remove_embeddings,
    remove_loras,
)
from aws_extension.engine.base import EngineError
from aws_extension.engine.checkpoints import (
    diffusers_to_a1111_checkpoint,
    inspect_model_file,
    load_checkpoint_pipeline,
    load_state_dict,
    load_tokenizer,
)
from aws_extension.engine.pipelines import PipelineCache, pipeline_size_bytes
from aws_extension.engine.tiny import build_tiny_models, write_tiny_model
from aws_extension.model_files import ARCHITECTURE_METADATA_KEY
from tests.conftest import TINY_CHECKPOINT_NAME

PROMPT = "a photo of a cat"


def generate(pipeline, prompt: str = PROMPT, seed: int = 1, **kwargs) -> np.ndarray:
    """A 64×64 image (float array) from a fixed seed, 4 steps."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipeline(
        prompt, num_inference_steps=4, height=64, width=64, generator=generator, output_type="np", **kwargs
    ).images[0]


@pytest.fixture(scope="module")
def checkpoint(tiny_models_dir: Path) -> Path:
    return tiny_models_dir / "Stable-diffusion" / TINY_CHECKPOINT_NAME


@pytest.fixture(scope="module")
def cache() -> PipelineCache:
    return PipelineCache(memory_budget_bytes=10**9)


@pytest.fixture(scope="module")
def pipeline(cache: PipelineCache, checkpoint: Path):
    return cache.get(checkpoint)


@pytest.fixture(scope="module")
def base_image(pipeline) -> np.ndarray:
    return generate(pipeline)


# --- the tiny model -----------------------------------------------------------------------------------


def test_tiny_model_is_deterministic_and_declares_its_architecture(checkpoint: Path, tmp_path: Path):
    again = tmp_path / "again.safetensors"
    write_tiny_model(again)
    assert again.read_bytes() == checkpoint.read_bytes()
    info = inspect_model_file(again)
    assert (info.kind, info.architecture, info.metadata[ARCHITECTURE_METADATA_KEY]) == ("checkpoint", "sd1-tiny", "sd1-tiny")


def test_a1111_conversion_round_trips_through_diffusers_converters():
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    unet, vae, text_encoder = build_tiny_models()
    a1111 = diffusers_to_a1111_checkpoint(
        unet.state_dict(), vae.state_dict(), text_encoder.state_dict(), unet.config, vae.config
    )
    assert all(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model."))
               for k in a1111)
    back = {
        "unet": (convert_ldm_unet_checkpoint(dict(a1111), dict(unet.config)), unet),
        "vae": (convert_ldm_vae_checkpoint(dict(a1111), dict(vae.config)), vae),
        "text_encoder": (
            {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(dict(a1111)).items()},
            text_encoder,
        ),
    }
    for name, (converted, model) in back.items():
        expected = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
        assert set(converted) - set(expected) == set(), f"{name}: extra keys"
        assert set(expected) - set(converted) == set(), f"{name}: missing keys"
        for key, tensor in expected.items():
            assert torch.equal(converted[key].reshape(tensor.shape), tensor), f"{name}: {key} differs"


def test_tiny_model_loads_and_generates_reproducibly(pipeline, base_image: np.ndarray):
    assert pipeline.safety_checker is None
    assert base_image.shape == (64, 64, 3)
    assert float(base_image.std()) > 0.02  # not a flat image
    np.testing.assert_array_equal(generate(pipeline), base_image)
    assert not np.array_equal(generate(pipeline, seed=2), base_image)


def test_tokenizer_is_the_real_clip_vocabulary():
    tokenizer = load_tokenizer()
    assert tokenizer(PROMPT).input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408


# --- detection ----------------------------------------------------------------------------------------


def test_detects_each_kind_of_tiny_file(tiny_models_dir: Path):
    found = {
        path.relative_to(tiny_models_dir).as_posix(): inspect_model_file(path)
        for path in tiny_models_dir.rglob("*.safetensors")
    }
    kinds = {name: (info.kind, info.format, info.architecture) for name, info in found.items()}
    assert kinds == {
        f"Stable-diffusion/{TINY_CHECKPOINT_NAME}": ("checkpoint", "ldm", "sd1-tiny"),
        "Lora/tiny-lora.safetensors": ("lora", "kohya", "sd1-tiny"),
        "embeddings/tiny-emb.safetensors": ("embedding", "a1111-safetensors", "sd1-tiny"),
        "VAE/tiny-vae.safetensors": ("vae", "ldm", "sd1-tiny"),
        "ControlNet/tiny-controlnet.safetensors": ("controlnet", "ldm", "sd1-tiny"),
    }


def _write_shapes(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(path))
    return path


@pytest.mark.parametrize(
    ("shapes", "expected"),
    [
        ({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
          "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
          "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,)},
         ("checkpoint", "sd1", "ldm")),
        ({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
          "cond_stage_model.model.ln_final.weight": (1024,)}, ("checkpoint", "sd2", "ldm")),
        ({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
          "conditioner.embedders.1.model.ln_final.weight": (1280,)}, ("checkpoint", "sdxl", "ldm")),
        ({"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768)},
         ("lora", "sdxl", "kohya")),
        ({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": (4, 320)},
         ("lora", None, "diffusers")),
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a": (4, 320)}, ("lora", None, "lycoris")),
        ({"my-token": (2, 768)}, ("embedding", None, "diffusers")),
        ({"clip_l": (2, 768), "clip_g": (2, 1280)}, ("embedding", "sdxl", "sdxl")),
        ({"control_model.input_hint_block.0.weight": (16, 3, 3, 3),
          "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768)},
         ("controlnet", "sd1", "ldm")),
        ({"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_in.weight": (512, 4, 3, 3)}, ("vae", None, "ldm")),
    ],
)
def test_detects_kind_and_architecture_from_tensor_names(tmp_path: Path, shapes, expected):
    info = inspect_model_file(_write_shapes(tmp_path / "model.safetensors", shapes))
    assert (info.kind, info.architecture, info.format) == expected


def test_sdxl_and_sd2_checkpoints_are_refused_with_the_reason(tmp_path: Path):
    for family, text_key in (("XL", "conditioner.embedders.1.model.ln_final.weight"),
                             ("2.x", "cond_stage_model.model.ln_final.weight")):
        path = _write_shapes(tmp_path / f"{family}.safetensors",
                             {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3), text_key: (4,)})
        with pytest.raises(EngineError, match=f"Stable Diffusion {family}.* not supported"):
            load_checkpoint_pipeline(path)


def test_checkpoint_with_wrong_shapes_is_refused(checkpoint: Path, tmp_path: Path):
    tensors = load_file(str(checkpoint))
    key = "model.diffusion_model.time_embed.0.weight"
    tensors[key] = torch.zeros(tensors[key].shape[0] // 2, tensors[key].shape[1])
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata={ARCHITECTURE_METADATA_KEY: "sd1-tiny"})
    with pytest.raises(EngineError, match="broken.safetensors does not match the tiny SD 1.x test model"):
        load_checkpoint_pipeline(broken)


def test_a_lora_is_not_loaded_as_a_checkpoint(tiny_models_dir: Path):
    with pytest.raises(EngineError, match="not a Stable Diffusion checkpoint: it is a lora"):
        load_checkpoint_pipeline(tiny_models_dir / "Lora" / "tiny-lora.safetensors")


# --- files that are not models --------------------------------------------------------------------------


def test_random_bytes_are_refused(tmp_path: Path):
    blob = tmp_path / "random.safetensors"
    blob.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(EngineError, match="random.safetensors is not a valid safetensors file"):
        inspect_model_file(blob)
    pickle_blob = tmp_path / "random.ckpt"
    pickle_blob.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(EngineError, match="random.ckpt cannot be loaded safely"):
        load_state_dict(pickle_blob)


def test_html_page_and_text_are_refused(tmp_path: Path):
    page = tmp_path / "page.safetensors"
    page.write_text("<!DOCTYPE html><html><body>Rate limited</body></html>")
    with pytest.raises(EngineError, match="page.safetensors is not a valid safetensors file"):
        inspect_model_file(page)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(EngineError, match="only 0 bytes long"):
        inspect_model_file(empty)


def test_truncated_checkpoint_is_refused(checkpoint: Path, tmp_path: Path):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    with pytest.raises(EngineError, match="truncated.safetensors is not a valid safetensors file: tensor .* lies "
                                          "outside the file"):
        inspect_model_file(truncated)
    with pytest.raises(EngineError, match="lies outside the file"):
        load_checkpoint_pipeline(truncated)


def test_safetensors_header_that_is_not_json_is_refused(tmp_path: Path):
    path = tmp_path / "bad-header.safetensors"
    path.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{}" + b"\0" * 16)
    with pytest.raises(EngineError, match="header is not JSON"):
        inspect_model_file(path)
    path.write_bytes(struct.pack("<Q", 2) + b"[]")
    with pytest.raises(EngineError, match="header is not JSON"):
        inspect_model_file(path)


def test_unknown_tensors_are_not_a_model(tmp_path: Path):
    path = _write_shapes(tmp_path / "other.safetensors", {"classifier.weight": (10, 5), "classifier.bias": (10,)})
    with pytest.raises(EngineError, match="not a model this engine knows"):
        inspect_model_file(path)


class RunsCodeWhenUnpickled:
    """A pickle payload: unpickling it would create `marker` (as a real attack would run a command)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_with_code_is_refused_and_never_executed(tmp_path: Path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"weight": torch.zeros(2)}, "payload": RunsCodeWhenUnpickled(marker)}, evil)
    assert not marker.exists()
    with pytest.raises(EngineError, match="evil.pt cannot be loaded safely.*never run"):
        load_state_dict(evil)
    with pytest.raises(EngineError, match="cannot be loaded safely"):
        inspect_model_file(evil)
    assert not marker.exists()


def test_ckpt_checkpoint_loads_like_the_safetensors_one(checkpoint: Path, tmp_path: Path, base_image: np.ndarray):
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(str(checkpoint)), "global_step": 1}, ckpt)
    info = inspect_model_file(ckpt)  # no metadata in a pickle: recognised by its shapes
    assert (info.kind, info.architecture) == ("checkpoint", "sd1-tiny")
    np.testing.assert_array_equal(generate(load_checkpoint_pipeline(ckpt)), base_image)


def test_fp16_checkpoint_loads_as_float32(checkpoint: Path, tmp_path: Path, base_image: np.ndarray):
    half = tmp_path / "tiny-fp16.safetensors"
    save_file({k: v.half() for k, v in load_file(str(checkpoint)).items()}, str(half))
    pipeline = load_checkpoint_pipeline(half)
    assert {pipeline.unet.dtype, pipeline.vae.dtype, pipeline.text_encoder.dtype} == {torch.float32}
    np.testing.assert_allclose(generate(pipeline), base_image, atol=0.05)


def test_a1111_pt_embedding_is_read_with_weights_only(tmp_path: Path):
    vectors = torch.randn(3, 32)
    path = tmp_path / "old-style.pt"
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": "old-style", "step": 10}, path)
    info = inspect_model_file(path)
    assert (info.kind, info.format) == ("embedding", "a1111-pt")
    assert torch.equal(read_embedding(path), vectors)


# --- the pipeline cache -----------------------------------------------------------------------------------


def test_cache_returns_the_same_pipeline_for_the_same_files(cache: PipelineCache, checkpoint: Path, pipeline):
    assert cache.get(checkpoint) is pipeline
    assert cache.get(Path(str(checkpoint))) is pipeline
    assert pipeline_size_bytes(pipeline) > 10_000_000


def test_cache_evicts_least_recently_used_beyond_budget(checkpoint: Path, tmp_path: Path):
    copies = [shutil.copy(checkpoint, tmp_path / f"copy{i}.safetensors") for i in range(2)]
    one_size = pipeline_size_bytes(load_checkpoint_pipeline(checkpoint))
    cache = PipelineCache(memory_budget_bytes=int(one_size * 1.5))
    first = cache.get(copies[0])
    assert cache.get(copies[0]) is first
    second = cache.get(copies[1])
    assert second is not first
    assert [ck.name for ck, _ in cache.cached_files()] == ["copy1.safetensors"]
    assert cache.size_bytes <= cache.memory_budget_bytes
    assert cache.get(copies[0]) is not first  # loaded again after eviction


def test_cache_keeps_one_model_larger_than_the_budget(checkpoint: Path):
    cache = PipelineCache(memory_budget_bytes=1)
    pipeline = cache.get(checkpoint)
    assert cache.get(checkpoint) is pipeline


def test_cache_loads_once_when_threads_ask_together(checkpoint: Path):
    loads: list[Path] = []

    def counting_loader(path: Path, vae: Path | None):
        loads.append(path)
        return load_checkpoint_pipeline(path, vae)

    cache = PipelineCache(memory_budget_bytes=10**9, loader=counting_loader)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(checkpoint))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    assert len(results) == 3 and all(r is results[0] for r in results)


def test_cache_reloads_a_replaced_file(checkpoint: Path, tmp_path: Path):
    path = Path(shutil.copy(checkpoint, tmp_path / "replaced.safetensors"))
    cache = PipelineCache(memory_budget_bytes=10**9)
    first = cache.get(path)
    tensors = load_file(str(path))
    save_file(tensors, str(path), metadata={ARCHITECTURE_METADATA_KEY: "sd1-tiny", "note": "new version"})
    assert cache.get(path) is not first


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path):
    with pytest.raises(EngineError, match="nothing.safetensors does not exist"):
        PipelineCache(memory_budget_bytes=10**9).get(tmp_path / "nothing.safetensors")


# --- VAE ---------------------------------------------------------------------------------------------------


def test_vae_override_changes_the_output(cache: PipelineCache, checkpoint: Path, tiny_models_dir: Path,
                                         pipeline, base_image: np.ndarray):
    vae_file = tiny_models_dir / "VAE" / "tiny-vae.safetensors"
    with_vae = cache.get(checkpoint, vae=vae_file)
    assert with_vae is not pipeline
    assert cache.get(checkpoint, vae=vae_file) is with_vae
    assert not np.array_equal(generate(with_vae), base_image)
    np.testing.assert_array_equal(generate(pipeline), base_image)


def test_a_lora_is_not_a_vae(checkpoint: Path, tiny_models_dir: Path):
    with pytest.raises(EngineError, match="tiny-lora.safetensors is not a VAE"):
        load_checkpoint_pipeline(checkpoint, vae=tiny_models_dir / "Lora" / "tiny-lora.safetensors")


# --- LoRA ---------------------------------------------------------------------------------------------------


def test_lora_weight_zero_is_identical_weight_one_differs_and_removal_restores(
    pipeline, tiny_models_dir: Path, base_image: np.ndarray
):
    lora = tiny_models_dir / "Lora" / "tiny-lora.safetensors"
    with applied_addons(pipeline, loras=[(lora, 0.0)]):
        np.testing.assert_array_equal(generate(pipeline), base_image)
    token_ids = pipeline.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        text_features = pipeline.text_encoder(token_ids)[0]
    with applied_addons(pipeline, loras=[(lora, 1.0)]):
        assert set(pipeline.get_list_adapters()) == {"unet", "text_encoder"}
        with torch.no_grad():
            assert not torch.allclose(pipeline.text_encoder(token_ids)[0], text_features)  # lora_te_* applied
        with_lora = generate(pipeline)
    assert np.abs(with_lora - base_image).mean() > 1e-3
    with torch.no_grad():
        assert torch.equal(pipeline.text_encoder(token_ids)[0], text_features)
    assert pipeline.get_list_adapters() == {}
    np.testing.assert_array_equal(generate(pipeline), base_image)


def test_lora_alpha_is_honoured(pipeline, tiny_models_dir: Path, tmp_path: Path):
    lora = tiny_models_dir / "Lora" / "tiny-lora.safetensors"
    tensors = load_file(str(lora))
    rank = next(t for k, t in tensors.items() if k.endswith("lora_down.weight")).shape[0]
    alpha = float(next(t for k, t in tensors.items() if k.endswith(".alpha")))
    assert alpha != rank
    # scale = weight · alpha / rank: the file at weight 1 equals a copy with alpha = rank at weight alpha/rank
    full_alpha = tmp_path / "full-alpha.safetensors"
    save_file({k: torch.tensor(float(rank)) if k.endswith(".alpha") else t for k, t in tensors.items()}, str(full_alpha))
    with applied_addons(pipeline, loras=[(lora, 1.0)]):
        original = generate(pipeline)
    with applied_addons(pipeline, loras=[(full_alpha, alpha / rank)]):
        rescaled = generate(pipeline)
    np.testing.assert_allclose(rescaled, original, atol=1e-5)


def test_pickled_kohya_lora_loads_like_the_safetensors_one(pipeline, tiny_models_dir: Path, tmp_path: Path):
    lora = tiny_models_dir / "Lora" / "tiny-lora.safetensors"
    pickled = tmp_path / "tiny-lora.pt"
    torch.save(load_file(str(lora)), pickled)
    with applied_addons(pipeline, loras=[(lora, 0.7)]):
        from_safetensors = generate(pipeline)
    with applied_addons(pipeline, loras=[(pickled, 0.7)]):
        np.testing.assert_array_equal(generate(pipeline), from_safetensors)


def test_diffusers_format_lora_loads_like_kohya(pipeline, tiny_models_dir: Path, tmp_path: Path):
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    lora = tiny_models_dir / "Lora" / "tiny-lora.safetensors"
    with applied_addons(pipeline, loras=[(lora, 1.0)]):
        kohya_image = generate(pipeline)
        name = pipeline.get_list_adapters()["unet"][0]
        StableDiffusionPipeline.save_lora_weights(
            tmp_path,
            unet_lora_layers=get_peft_model_state_dict(pipeline.unet, adapter_name=name),
            text_encoder_lora_layers=get_peft_model_state_dict(pipeline.text_encoder, adapter_name=name),
            unet_lora_adapter_metadata=pipeline.unet.peft_config[name].to_dict(),
            text_encoder_lora_adapter_metadata=pipeline.text_encoder.peft_config[name].to_dict(),
            weight_name="diffusers-lora.safetensors",
        )
    diffusers_lora = tmp_path / "diffusers-lora.safetensors"
    assert inspect_model_file(diffusers_lora).format == "diffusers"
    with applied_addons(pipeline, loras=[(diffusers_lora, 1.0)]):
        np.testing.assert_allclose(generate(pipeline), kohya_image, atol=1e-5)


def test_lora_errors_leave_the_pipeline_clean(pipeline, tiny_models_dir: Path, base_image: np.ndarray):
    lora = tiny_models_dir / "Lora" / "tiny-lora.safetensors"
    embedding = tiny_models_dir / "embeddings" / "tiny-emb.safetensors"
    with pytest.raises(EngineError, match="tiny-emb.safetensors is not a LoRA"):
        apply_loras(pipeline, [(lora, 1.0), (embedding, 1.0)])
    assert pipeline.get_list_adapters() == {}
    with pytest.raises(RuntimeError, match="job failed"), applied_addons(pipeline, loras=[(lora, 1.0)]):
        raise RuntimeError("job failed")
    assert pipeline.get_list_adapters() == {}
    np.testing.assert_array_equal(generate(pipeline), base_image)
    remove_loras(pipeline, [])  # nothing applied: a no-op


# --- embeddings -------------------------------------------------------------------------------------------


def test_embedding_changes_the_output_only_with_its_token_and_is_removed(
    pipeline, tiny_models_dir: Path, base_image: np.ndarray
):
    embedding = tiny_models_dir / "embeddings" / "tiny-emb.safetensors"
    vocabulary_size = len(pipeline.tokenizer)
    with applied_addons(pipeline, embeddings=[embedding]):
        assert pipeline.maybe_convert_prompt("tiny-emb cat", pipeline.tokenizer) == "tiny-emb tiny-emb_1 cat"
        np.testing.assert_array_equal(generate(pipeline), base_image)
        with_token = generate(pipeline, prompt="a photo of tiny-emb cat")
    without_embedding = generate(pipeline, prompt="a photo of tiny-emb cat")
    assert not np.array_equal(with_token, without_embedding)
    assert len(pipeline.tokenizer) == vocabulary_size
    assert pipeline.text_encoder.get_input_embeddings().weight.shape[0] == vocabulary_size
    np.testing.assert_array_equal(generate(pipeline), base_image)


def test_pt_embedding_and_size_mismatch(pipeline, tmp_path: Path):
    good = tmp_path / "pt-emb.pt"
    torch.save({"string_to_param": {"*": torch.randn(1, 32)}, "name": "pt-emb"}, good)
    tokens = load_embeddings(pipeline, [good])
    assert tokens == ["pt-emb"]
    remove_embeddings(pipeline, tokens)
    wrong_size = tmp_path / "sd15-emb.safetensors"
    save_file({"emb_params": torch.randn(2, 768)}, str(wrong_size))
    with pytest.raises(EngineError, match="vectors of size 768.*uses 32"):
        load_embeddings(pipeline, [good, wrong_size])
    assert "pt-emb" not in pipeline.tokenizer.get_added_vocab()


# --- ControlNet -----------------------------------------------------------------------------------------


def test_controlnet_loads_and_steers_the_image(pipeline, tiny_models_dir: Path, base_image: np.ndarray):
    from PIL import Image

    controlnet = load_controlnet(tiny_models_dir / "ControlNet" / "tiny-controlnet.safetensors")
    assert controlnet.config.cross_attention_dim == 32
    control_pipe = controlnet_pipeline(pipeline, controlnet)
    assert control_pipe.unet is pipeline.unet
    hint = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8"))
    with_control = generate(control_pipe, image=hint)
    assert with_control.shape == (64, 64, 3)
    assert not np.array_equal(with_control, base_image)
    np.testing.assert_array_equal(generate(pipeline), base_image)


def test_controlnet_in_both_layouts_loads_the_same_weights(tiny_models_dir: Path, tmp_path: Path):
    ldm_file = tiny_models_dir / "ControlNet" / "tiny-controlnet.safetensors"
    assert all(key.startswith("control_model.") for key in load_file(str(ldm_file)))
    from_ldm = load_controlnet(ldm_file)
    weights = from_ldm.state_dict()
    assert len(weights) == len(load_file(str(ldm_file)))  # every tensor of the file was used
    diffusers_file = tmp_path / "diffusers-controlnet.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(diffusers_file))
    assert inspect_model_file(diffusers_file).format == "diffusers"
    from_diffusers = load_controlnet(diffusers_file, architecture="sd1-tiny")
    for key, tensor in from_diffusers.state_dict().items():
        assert torch.equal(tensor, weights[key]), key
    with pytest.raises(EngineError, match="not a ControlNet"):
        load_controlnet(tiny_models_dir / "VAE" / "tiny-vae.safetensors")
