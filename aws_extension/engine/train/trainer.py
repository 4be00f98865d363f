"""DreamBooth and LoRA training on diffusers + peft, from an A1111 single-file SD 1.x checkpoint.

The loop: the images' latents are encoded once (the VAE's mean, × scaling factor); each step takes the next
batch of the epoch's deterministic order (`data.epoch_batches`), adds noise at random timesteps (DDPM, from a
generator of the trainer's own), and regresses the UNet's noise prediction (MSE); with prior preservation a
batch of class images adds its loss × `prior_loss_weight`. Several concepts (`concepts_list`) train together:
each image is captioned from its own concept, all of them share one data order, and each one's class image
comes from its own concept's class images. LoRA: peft adapters on the UNet's attention
projections (and the text encoder's with `lora_txt_rank`); DreamBooth: the UNet, and the text encoder for the
first `stop_text_encoder` of the steps.

Resume: the state (`state.py`) holds everything the next step depends on (trainable weights, optimizer, LR
scheduler, GradScaler, every RNG, the step; the data order follows from the step), so a run stopped and
resumed ends with the same weights as one that was not — bit for bit on the CPU.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from aws_extension.engine.base import EngineError
from aws_extension.engine.checkpoints import inspect_model_file, load_checkpoint_pipeline
from aws_extension.engine.placement import resolve_placement
from aws_extension.engine.train import state as saved_state
from aws_extension.engine.train.class_images import class_images
from aws_extension.engine.train.data import (
    DatasetError,
    TrainImage,
    bucket_for,
    bucket_sizes,
    concept_folder,
    epoch_batches,
    fit_to_bucket,
    read_concepts,
)
from aws_extension.engine.train.export import kohya_lora_state, save_checkpoint, save_lora
from aws_extension.model_files import file_sha256
from aws_extension.training import TEXT_LORA_TARGETS, UNET_LORA_TARGETS, Concept, TrainingConfig

log = logging.getLogger(__name__)

STATUS_COMPLETE, STATUS_STOPPED = "Complete", "Stopped"


class TrainingError(RuntimeError):
    """Training cannot go on; the message is the reason shown to the user."""


@dataclass(frozen=True)
class TrainProgress:
    step: int
    total_steps: int
    loss: float
    steps_per_s: float


ProgressCallback = Callable[[TrainProgress], None]


@dataclass(frozen=True)
class TrainInputs:
    """Where a job's files are: the base checkpoint, the instance images (with captions), the user's class
    images (optional), the cache of generated class images, and the output, state and sample folders. With
    several concepts, concept i's instance and class images are in `<i>/` of those folders."""

    base: Path
    instance_dir: Path
    out_dir: Path
    state_dir: Path
    class_dir: Path | None = None
    class_cache_dir: Path | None = None
    samples_dir: Path | None = None


@dataclass
class TrainResult:
    status: str  # Complete | Stopped
    step: int
    total_steps: int
    model: Path | None = None
    samples: list[Path] = field(default_factory=list)


@dataclass
class _Example:
    latents: torch.Tensor  # (4, h/8, w/8), scaled
    caption: str
    concept: int = 0


def model_file_name(config: TrainingConfig) -> str:
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in config.model_name.strip()) or "trained"
    return f"{name}.safetensors"


def train(config: TrainingConfig, inputs: TrainInputs, progress: ProgressCallback | None = None,
          stop: threading.Event | None = None, device: str = "auto") -> TrainResult:
    """Run (or resume, when `inputs.state_dir` holds this job's state) a training job to its end, or until
    `stop` is set (the state is then saved). Raises TrainingError with the reason on failure."""
    try:
        return _Trainer(config, inputs, device).run(progress, stop or threading.Event())
    except (EngineError, DatasetError, saved_state.StateMismatch) as exc:
        raise TrainingError(str(exc)) from None
    except torch.OutOfMemoryError:
        raise TrainingError(f"out of GPU memory: lower train_batch_size or resolution (now {config.train_batch_size}, "
                            f"{config.resolution}), or turn on gradient_checkpointing") from None


class _Trainer:
    def __init__(self, config: TrainingConfig, inputs: TrainInputs, device: str):
        self.config, self.inputs = config, inputs
        self.concepts: tuple[Concept, ...] = config.trained_concepts
        self.placement = resolve_placement(device, "float32")
        self.device = self.placement.device
        self.images = read_concepts(inputs.instance_dir, self.concepts)
        self.total_steps = config.total_steps(len(self.images))
        self.base_sha256 = file_sha256(inputs.base)
        self.architecture = inspect_model_file(inputs.base).architecture or "sd1"
        self.pipe = load_checkpoint_pipeline(inputs.base, placement=self.placement)
        self.unet, self.vae, self.text_encoder = self.pipe.unet, self.pipe.vae, self.pipe.text_encoder
        self.vae.requires_grad_(False)
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(self.pipe.scheduler.config)
        self.autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision)
        if self.device.type != "cuda":
            self.autocast_dtype = None  # mixed precision is a GPU feature; the CPU trains in float32
        self.fingerprint = {"config": config.to_hyperparameters(), "base_sha256": self.base_sha256,
                            "images": [image.path.relative_to(inputs.instance_dir).as_posix() for image in self.images]}

    # --- setup -----------------------------------------------------------------------------------------

    def _trainable(self) -> list[tuple[str, torch.nn.Parameter, float]]:
        """Add the adapters (LoRA) or unfreeze the models (DreamBooth); (name, parameter, learning rate)."""
        from peft import LoraConfig, inject_adapter_in_model

        config = self.config
        torch.manual_seed(config.seed)  # the adapters' initial weights
        self.unet.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        self.trains_text = False
        if config.is_lora:
            rank, alpha = config.unet_rank_alpha()
            self.unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                             target_modules=list(UNET_LORA_TARGETS)))
            if config.lora_txt_rank:
                rank, alpha = config.text_rank_alpha()
                # peft directly: transformers' own add_adapter wants a newer peft than diffusers does
                inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                                   target_modules=list(TEXT_LORA_TARGETS)), self.text_encoder)
                for name, parameter in self.text_encoder.named_parameters():
                    parameter.requires_grad_(".lora_" in name)
                self.trains_text = True
            unet_lr, text_lr = config.lora_learning_rate, config.lora_txt_learning_rate
        else:
            self.unet.requires_grad_(True)
            if config.stop_text_encoder > 0:
                self.text_encoder.requires_grad_(True)
                self.trains_text = True
            unet_lr = text_lr = config.learning_rate
        params = [(f"unet.{n}", p, unet_lr) for n, p in self.unet.named_parameters() if p.requires_grad]
        params += [(f"text_encoder.{n}", p, text_lr) for n, p in self.text_encoder.named_parameters()
                   if p.requires_grad]
        if config.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if self.trains_text:
                self.text_encoder.gradient_checkpointing_enable()
        self.unet.train()
        self.text_encoder.train(self.trains_text)
        return params

    def _optimizer(self, params: list[tuple[str, torch.nn.Parameter, float]]) -> torch.optim.Optimizer:
        groups: dict[float, list[torch.nn.Parameter]] = {}
        for _, parameter, lr in params:
            groups.setdefault(lr, []).append(parameter)
        param_groups = [{"params": ps, "lr": lr} for lr, ps in groups.items()]
        if self.config.optimizer == "8bit AdamW":
            try:
                import bitsandbytes as bnb  # noqa: PLC0415 - an optional extra

                if self.device.type == "cuda":
                    return bnb.optim.AdamW8bit(param_groups)
            except ImportError:
                pass
            log.warning("8bit AdamW needs bitsandbytes and a CUDA GPU; using torch's AdamW")
        return torch.optim.AdamW(param_groups)

    @torch.no_grad()
    def _encode(self, image: Any, size: tuple[int, int]) -> torch.Tensor:
        import numpy as np

        pixels = torch.from_numpy(np.asarray(fit_to_bucket(image, size), dtype=np.float32)).permute(2, 0, 1)
        pixels = (pixels / 127.5 - 1).unsqueeze(0).to(self.device)
        latents = self.vae.encode(pixels).latent_dist.mean * self.vae.config.scaling_factor
        return latents[0].float().cpu()

    def _examples(self, images: list[TrainImage]) -> tuple[list[_Example], dict[tuple[int, int], list[int]]]:
        from PIL import Image

        sizes = bucket_sizes(self.config.resolution)
        examples: list[_Example] = []
        buckets: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            size = bucket_for(image.width, image.height, sizes)
            with Image.open(image.path) as opened:
                examples.append(_Example(self._encode(opened, size), image.caption, image.concept))
            buckets.setdefault(size, []).append(index)
        return examples, buckets

    def _tokens(self, captions: list[str]) -> torch.Tensor:
        tokenizer = self.pipe.tokenizer
        return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids.to(self.device)

    def _text(self, captions: list[str], cache: dict[str, torch.Tensor], train_text: bool) -> torch.Tensor:
        if train_text:
            return self.text_encoder(self._tokens(captions))[0]
        missing = [c for c in dict.fromkeys(captions) if c not in cache]
        if missing:
            with torch.no_grad():
                for caption, hidden in zip(missing, self.text_encoder(self._tokens(missing))[0], strict=True):
                    cache[caption] = hidden
        return torch.stack([cache[c] for c in captions])

    # --- the loop ----------------------------------------------------------------------------------------

    def run(self, progress: ProgressCallback | None, stop: threading.Event) -> TrainResult:
        from diffusers.optimization import get_scheduler

        config = self.config
        params = self._trainable()
        optimizer = self._optimizer(params)
        lr_scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps,
                                     num_training_steps=self.total_steps)
        scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        generator = torch.Generator("cpu").manual_seed(config.seed)  # noise and timesteps, on the CPU for any device
        examples, buckets = self._examples(self.images)
        class_examples = self._class_examples()
        start = 0
        loaded = saved_state.load(self.inputs.state_dir, self.fingerprint)
        if loaded is not None:
            start = saved_state.restore(loaded, params, optimizer, lr_scheduler, scaler, generator)
            log.info("resumed at step %d of %d", start, self.total_steps)
        text_cache: dict[str, torch.Tensor] = {}
        batches_per_epoch = len(epoch_batches(buckets, config.train_batch_size, config.seed, 0))
        batches: list[list[int]] = []
        batches_epoch = -1
        text_steps = round(config.stop_text_encoder * self.total_steps) if not config.is_lora else self.total_steps
        samples: list[Path] = []
        started, loss_value = time.monotonic(), 0.0
        for step in range(start, self.total_steps):
            if stop.is_set():
                saved_state.save(self.inputs.state_dir, self.fingerprint, step, params, optimizer, lr_scheduler,
                                 scaler, generator)
                return TrainResult(STATUS_STOPPED, step, self.total_steps, samples=samples)
            epoch, position = divmod(step, batches_per_epoch)
            if epoch != batches_epoch:
                batches, batches_epoch = epoch_batches(buckets, config.train_batch_size, config.seed, epoch), epoch
            train_text = self.trains_text and step < text_steps
            if self.trains_text and not config.is_lora and step == text_steps:
                self.text_encoder.requires_grad_(False)  # stop_text_encoder: the rest of the steps train the UNet
            batch = [examples[i] for i in batches[position]]
            loss = self._loss(batch, generator, text_cache, train_text)
            first = step * len(batch)  # each example's class image: the next of its concept's, in turn
            class_batch = [class_examples[e.concept][(first + k) % len(class_examples[e.concept])]
                           for k, e in enumerate(batch) if class_examples.get(e.concept)]
            if class_batch:
                loss = loss + config.prior_loss_weight * self._mean_loss(class_batch, generator, text_cache, train_text)
            loss_value = float(loss.detach())
            if not torch.isfinite(loss.detach()):
                raise TrainingError(
                    f"the loss became {loss_value} at step {step + 1} of {self.total_steps}: the training diverged "
                    f"(lower the learning rate, or use mixed_precision bf16 or no instead of fp16)")
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            elapsed = time.monotonic() - started
            if progress:
                progress(TrainProgress(done, self.total_steps, loss_value, (done - start) / elapsed if elapsed else 0.0))
            if config.save_preview_every and done % config.save_preview_every == 0 and done < self.total_steps:
                samples += self._samples(done)
            if config.save_state_every and done % config.save_state_every == 0 and done < self.total_steps:
                saved_state.save(self.inputs.state_dir, self.fingerprint, done, params, optimizer, lr_scheduler,
                                 scaler, generator)
        if config.save_preview_every:
            samples += self._samples(self.total_steps)
        model = self._save(loss_value)
        return TrainResult(STATUS_COMPLETE, self.total_steps, self.total_steps, model, samples)

    def _loss(self, batch: list[_Example], generator: torch.Generator, text_cache: dict[str, torch.Tensor],
              train_text: bool) -> torch.Tensor:
        latents = torch.stack([example.latents for example in batch])
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(batch),),
                                  generator=generator)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            hidden = self._text([example.caption for example in batch], text_cache, train_text)
            prediction = self.unet(noisy.to(self.device), timesteps.to(self.device), hidden).sample
        return torch.nn.functional.mse_loss(prediction.float(), noise.to(self.device).float())

    def _mean_loss(self, batch: list[_Example], generator: torch.Generator, text_cache: dict[str, torch.Tensor],
                   train_text: bool) -> torch.Tensor:
        """`_loss` of examples whose latents may differ in size (class images of several concepts, or a
        user's of several shapes): the mean over groups of one size, weighted by their counts."""
        groups: dict[tuple[int, ...], list[_Example]] = {}
        for example in batch:
            groups.setdefault(tuple(example.latents.shape), []).append(example)
        if len(groups) == 1:
            return self._loss(batch, generator, text_cache, train_text)
        return sum(self._loss(group, generator, text_cache, train_text) * len(group)
                   for group in groups.values()) / len(batch)

    def _class_examples(self) -> dict[int, list[_Example]]:
        """Each concept's class examples (by its place among the trained concepts; none without class images)."""
        pools: dict[int, list[_Example]] = {}
        cache = self.inputs.class_cache_dir or self.inputs.state_dir / "class-images"
        for index, concept in enumerate(self.concepts):
            if not concept.num_class_images_per:
                continue
            wanted = concept.num_class_images_per * sum(1 for image in self.images if image.concept == index)
            user_dir = concept_folder(self.inputs.class_dir, index, len(self.concepts)) if self.inputs.class_dir else None
            paths = class_images(self.inputs.base, self.base_sha256, concept, self.config.resolution, wanted,
                                 user_dir if user_dir and user_dir.is_dir() else None, cache, self.config.seed)
            images = [TrainImage(p, concept.class_prompt, *_size(p), concept=index) for p in paths]
            pools[index] = self._examples(images)[0]
        return pools

    def _metadata(self, loss: float) -> dict[str, str]:
        config = self.config
        metadata = {
            "ss_base_model_version": "sd_v1", "ss_sd_model_name": self.inputs.base.name,
            "ss_new_sd_model_hash": self.base_sha256, "ss_steps": str(self.total_steps),
            "ss_max_train_steps": str(self.total_steps), "ss_seed": str(config.seed),
            "ss_resolution": f"({config.resolution}, {config.resolution})",
            "ss_num_train_images": str(len(self.images)), "ss_batch_size_per_device": str(config.train_batch_size),
            "ss_lr_scheduler": config.lr_scheduler, "ss_mixed_precision": config.mixed_precision,
            "ss_training_comment": f"sd-aws {'LoRA' if config.is_lora else 'DreamBooth'}; final loss {loss:.4f}",
            "sd_aws_training_config": json.dumps(config.to_hyperparameters(), sort_keys=True),
        }
        if config.is_lora:
            rank, alpha = config.unet_rank_alpha()
            metadata.update({"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
                             "ss_network_alpha": f"{alpha:g}", "ss_learning_rate": f"{config.lora_learning_rate:g}",
                             "ss_text_encoder_lr": f"{config.lora_txt_learning_rate:g}" if self.trains_text else "0"})
        else:
            metadata["ss_learning_rate"] = f"{config.learning_rate:g}"
        return metadata

    def _save(self, loss: float) -> Path:
        self.inputs.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.inputs.out_dir / model_file_name(self.config)
        partial = path.with_name(path.name + ".partial")
        metadata = self._metadata(loss)
        if self.config.is_lora:
            state = kohya_lora_state(self.unet, self.text_encoder if self.trains_text else None,
                                     self.config.unet_rank_alpha()[1], self.config.text_rank_alpha()[1])
            save_lora(partial, state, metadata, self.architecture)
        else:
            save_checkpoint(partial, self.unet, self.vae, self.text_encoder, metadata, self.architecture,
                            self.config.half_model)
        partial.replace(path)
        return path

    @torch.no_grad()
    def _samples(self, step: int) -> list[Path]:
        """Each concept's `n_save_sample` images of its sample prompt (else its first image's caption) with
        the weights of now, seeded (`sample_seed`, else `seed`), numbered on across the concepts; the
        pipeline's own generator leaves the training RNGs alone."""
        if self.inputs.samples_dir is None or not any(c.n_save_sample for c in self.concepts):
            return []
        self.inputs.samples_dir.mkdir(parents=True, exist_ok=True)
        was_training = self.unet.training, self.text_encoder.training
        self.unet.eval()
        self.text_encoder.eval()
        paths: list[Path] = []
        for index, concept in enumerate(self.concepts):
            prompt = concept.save_sample_prompt or next(i.caption for i in self.images if i.concept == index)
            seed = concept.sample_seed if concept.sample_seed >= 0 else self.config.seed
            for number in range(concept.n_save_sample):
                image = self.pipe(prompt, negative_prompt=concept.save_sample_negative_prompt or None,
                                  num_inference_steps=concept.save_infer_steps,
                                  guidance_scale=concept.save_guidance_scale, height=self.config.resolution,
                                  width=self.config.resolution,
                                  generator=torch.Generator("cpu").manual_seed(seed + number)).images[0]
                path = self.inputs.samples_dir / f"step-{step:06d}-{len(paths)}.png"
                image.save(path)
                paths.append(path)
        self.unet.train(was_training[0])
        self.text_encoder.train(was_training[1])
        return paths


def _size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size
