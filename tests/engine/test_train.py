"""The trainer on the learnable tiny model (CPU, 64×64): LoRA and DreamBooth learn a colour, their files load
in the engine (kohya LoRA, A1111 checkpoint), a LoRA at weight 0 is the base, stop/resume is bit-exact, and
bad data or a diverging loss fail with the reason."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from aws_extension.engine.base import ModelSet
from aws_extension.engine.diffusers_engine import DiffusersEngine
from aws_extension.engine.train import STATUS_COMPLETE, STATUS_STOPPED, TrainingError, TrainInputs, train
from aws_extension.training import parse_training_config

RED = (220, 20, 20)
SEEDS = (0, 1, 2, 3)
# "Clearly closer": the trained model's sks images are at least this much closer to red (mean |Δ| per channel,
# 0-255) than the base model's, at the same seeds.
LEARNING_MARGIN = 25.0


def _images(folder: Path, count: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):  # one wide image: it gets a bucket of its own, not a square crop
        Image.new("RGB", (64, 64) if i else (128, 64), RED).save(folder / f"{i}.png")
    return folder


def _config(train_type: str = "Lora", **overrides):
    params = {"concepts_list": [{"instance_prompt": "sks"}], "resolution": 64, "max_train_steps": 150,
              "lora_learning_rate": 3e-3, "learning_rate": 1e-3, "lora_unet_rank": 8, "seed": 11,
              "model_name": "sks", **overrides}
    return parse_training_config(train_type, params)


def _generate(checkpoint: Path, prompt: str, seed: int, loras: dict[str, Path] | None = None) -> np.ndarray:
    payload = {"prompt": prompt, "steps": 20, "cfg_scale": 3, "width": 64, "height": 64, "seed": seed,
               "sampler_name": "Euler"}
    models = ModelSet(checkpoint, files={"Lora": loras or {}})
    png = DiffusersEngine().generate("txt2img", payload, models).images[0]
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float64)


def _distance_to_red(checkpoint: Path, prompt: str = "sks", loras: dict[str, Path] | None = None) -> float:
    return float(np.mean([np.abs(_generate(checkpoint, prompt, s, loras) - RED).mean() for s in SEEDS]))


@pytest.fixture(scope="module")
def base_distance(learnable_checkpoint: Path) -> float:
    return _distance_to_red(learnable_checkpoint)


@pytest.fixture(scope="module")
def trained_lora(tmp_path_factory, learnable_checkpoint: Path) -> Path:
    root = tmp_path_factory.mktemp("lora")
    result = train(_config(lora_txt_rank=4), TrainInputs(learnable_checkpoint, _images(root / "images"),
                                                         root / "out", root / "state"))
    assert result.status == STATUS_COMPLETE and result.model == root / "out" / "sks.safetensors"
    return result.model


def test_a_lora_learns_the_colour(learnable_checkpoint, trained_lora, base_distance):
    trained = _distance_to_red(learnable_checkpoint, "sks <lora:sks:1>", {"sks.safetensors": trained_lora})
    assert trained < base_distance - LEARNING_MARGIN, (trained, base_distance)


def test_a_lora_at_weight_0_is_the_base(learnable_checkpoint, trained_lora):
    base = _generate(learnable_checkpoint, "sks", 5)
    assert np.array_equal(_generate(learnable_checkpoint, "sks <lora:sks:0>", 5, {"sks.safetensors": trained_lora}), base)
    assert not np.array_equal(
        _generate(learnable_checkpoint, "sks <lora:sks:1>", 5, {"sks.safetensors": trained_lora}), base)


def test_the_lora_has_kohya_keys_real_alphas_and_training_metadata(trained_lora):
    tensors = load_file(trained_lora)
    assert {k.split("_")[1] for k in tensors} == {"unet", "te"}
    assert all(k.startswith(("lora_unet_", "lora_te_text_model_encoder_layers_")) for k in tensors)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight" in tensors
    alphas = {float(v) for k, v in tensors.items() if k.endswith(".alpha")}
    assert alphas == {8.0, 4.0}  # lora_alpha 0 means alpha = rank: 8 on the UNet, 4 on the text encoder
    with safe_open(str(trained_lora), "pt") as opened:
        metadata = opened.metadata()
    assert (metadata["ss_network_dim"], metadata["ss_steps"], metadata["ss_seed"]) == ("8", "150", "11")
    assert metadata["ss_network_module"] == "networks.lora" and "sd_aws_training_config" in metadata


def test_dreambooth_learns_and_its_checkpoint_loads_in_the_engine(tmp_path, learnable_checkpoint, base_distance):
    config = _config("Stable-diffusion", stop_text_encoder=0.5, half_model=True)
    result = train(config, TrainInputs(learnable_checkpoint, _images(tmp_path / "images"), tmp_path / "out",
                                       tmp_path / "state"))
    assert result.status == STATUS_COMPLETE
    with safe_open(str(result.model), "pt") as opened:
        assert opened.get_tensor("model.diffusion_model.out.2.weight").dtype == torch.float16
    trained = _distance_to_red(result.model)  # through the engine's single-file loader
    assert trained < base_distance - LEARNING_MARGIN, (trained, base_distance)


def test_a_stopped_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, learnable_checkpoint):
    config = _config(max_train_steps=12, lora_txt_rank=2, save_state_every=5)
    images = _images(tmp_path / "images")
    whole = train(config, TrainInputs(learnable_checkpoint, images, tmp_path / "whole", tmp_path / "whole-state"))
    stop = threading.Event()
    inputs = TrainInputs(learnable_checkpoint, images, tmp_path / "parts", tmp_path / "parts-state")
    stopped = train(config, inputs, progress=lambda p: stop.set() if p.step == 7 else None, stop=stop)
    assert (stopped.status, stopped.step, stopped.model) == (STATUS_STOPPED, 7, None)
    resumed = train(config, inputs)
    assert resumed.status == STATUS_COMPLETE
    expected, got = load_file(whole.model), load_file(resumed.model)
    assert expected.keys() == got.keys() and all(got[k].equal(v) for k, v in expected.items())


def test_state_of_another_job_is_refused(tmp_path, learnable_checkpoint):
    images = _images(tmp_path / "images")
    stop = threading.Event()
    inputs = TrainInputs(learnable_checkpoint, images, tmp_path / "out", tmp_path / "state")
    train(_config(max_train_steps=6), inputs, progress=lambda p: stop.set(), stop=stop)
    with pytest.raises(TrainingError, match="another job"):
        train(_config(max_train_steps=6, lora_learning_rate=1e-2), inputs)


def test_a_nan_loss_fails_with_that_reason(tmp_path, learnable_checkpoint):
    tensors = load_file(learnable_checkpoint)
    tensors["model.diffusion_model.out.2.bias"] = torch.full_like(tensors["model.diffusion_model.out.2.bias"],
                                                                 float("nan"))
    broken = tmp_path / "nan.safetensors"
    with safe_open(str(learnable_checkpoint), "pt") as opened:
        save_file(tensors, str(broken), metadata=opened.metadata())
    with pytest.raises(TrainingError, match="loss became nan at step 1"):
        train(_config(), TrainInputs(broken, _images(tmp_path / "images"), tmp_path / "out", tmp_path / "state"))


def test_a_non_image_in_the_dataset_is_named(tmp_path, learnable_checkpoint):
    images = _images(tmp_path / "images")
    (images / "notes.docx").write_bytes(b"PK\x03\x04")
    with pytest.raises(TrainingError, match="notes.docx is not an image"):
        train(_config(), TrainInputs(learnable_checkpoint, images, tmp_path / "out", tmp_path / "state"))


def test_class_images_are_generated_once_and_reused(tmp_path, learnable_checkpoint):
    concept = {"instance_prompt": "sks", "class_prompt": "red", "num_class_images_per": 1, "class_infer_steps": 4}
    config = _config(concepts_list=[concept], max_train_steps=3)
    cache = tmp_path / "class-cache"
    images = _images(tmp_path / "images", count=2)
    train(config, TrainInputs(learnable_checkpoint, images, tmp_path / "a", tmp_path / "sa", class_cache_dir=cache))
    generated = sorted(cache.rglob("*.png"))
    assert len(generated) == 2
    stamps = [p.stat().st_mtime_ns for p in generated]
    train(config, TrainInputs(learnable_checkpoint, images, tmp_path / "b", tmp_path / "sb", class_cache_dir=cache))
    assert [p.stat().st_mtime_ns for p in sorted(cache.rglob("*.png"))] == stamps
