"""Run one normalised job (params.GenerationParams) on a loaded pipeline: txt2img, img2img, inpaint,
hires fix and ControlNet, with per-step progress and cancel.

The cached pipeline is shared between jobs and only its modules are used (text encoder, UNet, VAE, the
scheduler's config for the model's betas); tiling is undone when the job ends.
Every sampler runs in `engine.k_pass`, A1111's sampling loop over the pipeline's UNet: the k-diffusion
samplers (Euler a, DPM++ ..., LCM on A1111's LCM denoiser) and A1111's timestep samplers (DDIM, DDIM CFG++,
PLMS, UniPC, `engine.timestep_samplers`), with A1111's noise (`engine.noise.ImageNoise`: the initial noise
and every later sample from one generator per image, so ancestral samplers continue the seed's stream;
Brownian trees seeded per image for the SDE samplers) and A1111's prompt schedule (its count of model calls).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from PIL import Image, ImageFilter, ImageOps

from aws_extension.engine import k_pass, timestep_samplers
from aws_extension.engine.base import EngineError, Interrupted, Progress, ProgressCallback
from aws_extension.engine.noise import ImageNoise, NoiseSource
from aws_extension.engine.params import ControlNetUnit, GenerationParams, Img2ImgInputs
from aws_extension.engine.prompt import ScheduledConditioning
from aws_extension.engine.samplers import SamplerSpec

log = logging.getLogger(__name__)

LATENT_SCALE = 8  # pixels per latent pixel (SD 1.x VAE)


class StepReporter:
    """Turns the sampler's step callbacks into Progress reports over the whole job, and checks cancel."""

    def __init__(self, total_steps: int, job_count: int, progress: ProgressCallback | None,
                 cancel: threading.Event | None):
        self.total_steps = total_steps
        self.job_count = job_count
        self.progress = progress
        self.cancel = cancel
        self.done = 0
        self.job_no = 0

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Interrupted("the job was interrupted")

    def k_callback(self, pass_steps: int) -> Callable[[int], None]:
        """The callback of a k-diffusion pass of `pass_steps` steps: after step i (0-based)."""
        start = self.done

        def on_step(index: int) -> None:
            self.check_cancel()
            self.done = start + min(index + 1, pass_steps)  # Restart runs more steps than it is asked for
            if self.progress is not None:
                self.progress(Progress(self.done, self.total_steps, self.job_no, self.job_count))

        return on_step


def img2img_steps_run(steps: int, strength: float) -> int:
    """Steps an img2img pass runs for `steps` and `strength` (as A1111 without "img2img_fix_steps"): A1111's
    k-diffusion samplers run int(strength × steps) + 1 of the schedule's steps."""
    if strength <= 0:
        return 0
    return int(min(strength, 0.999) * steps) + 1


def hires_total_steps(hires_steps: int, strength: float) -> int:
    """A1111's hires second pass runs `hires_steps` out of a schedule stretched by 1/denoising strength."""
    return int(hires_steps / min(strength, 0.999)) if strength > 0 else 0


def resize_image(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """A1111's `images.resize_image`: 0 just resize, 1 crop and resize, 2 resize and fill."""
    if mode == 0:
        return image.resize((width, height), Image.Resampling.LANCZOS)
    ratio, src_ratio = width / height, image.width / image.height
    crop = mode == 1
    fit_width = ratio > src_ratio if crop else ratio < src_ratio
    src_w = width if fit_width else image.width * height // image.height
    src_h = height if (ratio <= src_ratio if crop else ratio >= src_ratio) else image.height * width // image.width
    resized = image.resize((src_w, src_h), Image.Resampling.LANCZOS)
    result = Image.new(image.mode, (width, height))
    result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if not crop:  # fill the borders by stretching the image's edge rows/columns
        if ratio < src_ratio:
            fill = height // 2 - src_h // 2
            if fill > 0:
                result.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
                result.paste(resized.resize((width, fill), box=(0, resized.height, width, resized.height)),
                             box=(0, fill + src_h))
        elif ratio > src_ratio:
            fill = width // 2 - src_w // 2
            if fill > 0:
                result.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
                result.paste(resized.resize((fill, height), box=(resized.width, 0, resized.width, height)),
                             box=(fill + src_w, 0))
    return result


def fill_masked_area(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's `masking.fill` (inpainting fill "fill"): the masked area becomes a blur of its surroundings."""
    filled = Image.new("RGBA", image.size)
    unmasked = Image.new("RGBa", image.size)
    unmasked.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = unmasked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            filled.alpha_composite(blurred)
    return filled.convert("RGB")


def binary_mask(mask: Image.Image, round_mask: bool) -> Image.Image:
    """A1111's `create_binary_mask`: a transparent RGBA mask means its alpha; mask_round makes it 0/255."""
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        mask = mask.getchannel("A")
    mask = mask.convert("L")
    return mask.point(lambda value: 255 if value > 128 else 0) if round_mask else mask


def masked_crop_region(mask: Image.Image, padding: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """A1111's `get_crop_region` + `expand_crop_region`: the mask's box plus padding, grown to width:height."""
    box = mask.getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    x1, y1 = max(x1 - padding, 0), max(y1 - padding, 0)
    x2, y2 = min(x2 + padding, mask.width), min(y2 + padding, mask.height)
    ratio_crop, ratio_target = (x2 - x1) / (y2 - y1), width / height
    if ratio_crop > ratio_target:  # grow the height
        y1, y2 = _grow_span(y1, y2, (x2 - x1) / ratio_target, mask.height)
    else:  # grow the width
        x1, x2 = _grow_span(x1, x2, (y2 - y1) * ratio_target, mask.width)
    return x1, y1, x2, y2


def _grow_span(low: int, high: int, desired: float, limit: int) -> tuple[int, int]:
    """[low, high) grown evenly on both sides to `desired` length, shifted back inside [0, limit)."""
    diff = int(desired - (high - low))
    low -= diff // 2
    high += diff - diff // 2
    if high >= limit:
        low, high = low - (high - limit), limit
    return max(low, 0), min(high, limit)


@dataclass
class PreparedImg2Img:
    """An img2img job's images as A1111's `StableDiffusionProcessingImg2Img.init` leaves them."""

    images: list[Image.Image]  # the init images at width x height, filled where `latent_mask` repaints
    mask: Image.Image | None  # the image mask made from the request's (binary, inverted, blurred, resized)
    latent_mask: Image.Image | None  # what is repainted in the latents: the request's latent_mask, else `mask`
    overlay: Image.Image | None  # where the result is pasted over the original
    crop_region: tuple[int, int, int, int] | None  # "only masked": the region cut out and generated


def prepare_img2img(inputs: Img2ImgInputs, width: int, height: int) -> PreparedImg2Img:
    """The init images, masks, overlay and crop of an img2img job (A1111's order of steps)."""
    mask = inputs.mask
    overlay = None
    crop_region = None
    if mask is not None:
        mask = binary_mask(mask, inputs.mask_round)
        if inputs.inpainting_mask_invert:
            mask = ImageOps.invert(mask)
        if inputs.mask_blur_x > 0:
            mask = mask.filter(ImageFilter.GaussianBlur((inputs.mask_blur_x, 0)))
        if inputs.mask_blur_y > 0:
            mask = mask.filter(ImageFilter.GaussianBlur((0, inputs.mask_blur_y)))
        if inputs.inpaint_full_res:
            overlay = mask
            crop_region = masked_crop_region(mask, inputs.inpaint_full_res_padding, width, height)
        if crop_region is not None:
            mask = resize_image(2, mask.crop(crop_region), width, height)
        else:
            mask = resize_image(inputs.resize_mode, mask, width, height)
            overlay = mask.point(lambda value: min(255, value * 2))
    # A1111 takes p.latent_mask as it is (no rounding, blur, inversion or resizing here) and only with a mask
    repaint = (inputs.latent_mask if inputs.latent_mask is not None else mask) if mask is not None else None
    images = []
    for image in inputs.init_images:
        image = ImageOps.exif_transpose(image).convert("RGB")
        if crop_region is not None:
            image = resize_image(2, image.crop(crop_region), width, height)
        else:
            image = resize_image(inputs.resize_mode, image, width, height)
        if repaint is not None and inputs.inpainting_fill != 1:
            image = fill_masked_area(image, repaint)
        images.append(image)
    return PreparedImg2Img(images, mask, repaint, overlay, crop_region)


def latent_mask(mask: Image.Image, latent_height: int, latent_width: int, round_mask: bool) -> torch.Tensor:
    """The repaint mask at latent size, [1, 1, h, w] with 1 = repaint (A1111's `nmask`)."""
    small = mask.convert("RGB").resize((latent_width, latent_height))
    values = torch.from_numpy(np.asarray(small.getchannel(0), dtype=np.float32)) / 255
    if round_mask:
        values = torch.round(values)
    return values[None, None]


@contextmanager
def circular_padding(modules: list[torch.nn.Module], enabled: bool) -> Iterator[None]:
    """A1111's tiling: every convolution pads circularly while the block runs."""
    convolutions = [
        layer for module in modules for layer in module.modules()
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
    ] if enabled else []
    previous = [layer.padding_mode for layer in convolutions]
    for layer in convolutions:
        layer.padding_mode = "circular"
    try:
        yield
    finally:
        for layer, mode in zip(convolutions, previous):
            layer.padding_mode = mode


class JobRunner:
    """One job on one pipeline: batches × passes. Built by the engine, used once."""

    def __init__(self, pipe: StableDiffusionPipeline, params: GenerationParams, conditioning: ScheduledConditioning,
                 hires_conditioning: ScheduledConditioning | None, controlnets: list[tuple[ControlNetUnit, Any]],
                 reporter: StepReporter):
        self.pipe = pipe
        self.params = params
        self.conditioning = conditioning
        self.hires_conditioning = hires_conditioning
        self.controlnets = controlnets
        self.reporter = reporter
        self._control_images_by_size: dict[tuple[int, int], list[Image.Image]] = {}

    @property
    def _scaling_factor(self) -> float:
        return float(self.pipe.vae.config.scaling_factor)

    @torch.no_grad()
    def run(self) -> list[Image.Image]:
        params = self.params
        images: list[Image.Image] = []
        modules = [self.pipe.unet, self.pipe.vae, *(model for _, model in self.controlnets)]
        with circular_padding(modules, params.tiling):
            for batch in range(params.n_iter):
                self.reporter.check_cancel()
                self.reporter.job_no = batch
                start, end = batch * params.batch_size, (batch + 1) * params.batch_size
                images += self._run_batch(params.all_seeds[start:end], params.all_subseeds[start:end])
        return images

    @property
    def _noise_source(self) -> NoiseSource:
        return NoiseSource(self.params.sampling.randn_source, self.pipe.unet.device)

    def _rng(self, seeds: list[int], subseeds: list[int], width: int, height: int) -> ImageNoise:
        """A1111's ImageRNG of a pass: its first draw is the initial noise (float32)."""
        params = self.params
        shape = (self.pipe.unet.config.in_channels, height // LATENT_SCALE, width // LATENT_SCALE)
        return ImageNoise(shape, seeds, subseeds, params.subseed_strength, params.seed_resize_from_w,
                          params.seed_resize_from_h, self._noise_source, params.sampling.eta_noise_seed_delta)

    def _run_batch(self, seeds: list[int], subseeds: list[int]) -> list[Image.Image]:
        params = self.params
        rng = self._rng(seeds, subseeds, params.width, params.height)
        if params.img2img is None:
            latents = self._txt2img(rng, seeds)
            if params.hires is not None:
                latents = self._hires(latents, seeds, subseeds)
            return self._decode(latents)
        return self._img2img(params.img2img, rng, seeds)

    def _control_images(self, width: int, height: int) -> list[Image.Image]:
        """Each unit's control image at `width`x`height`, made once per job and size (every batch uses it)."""
        if (width, height) not in self._control_images_by_size:
            self._control_images_by_size[width, height] = [
                resize_image(("Just Resize", "Crop and Resize", "Resize and Fill").index(unit.resize_mode),
                             unit.preprocessor.detected_map(unit.image, width, height, unit.resize_mode).convert("RGB"),
                             width, height) for unit, _ in self.controlnets]
        return self._control_images_by_size[width, height]

    def _txt2img(self, rng: ImageNoise, seeds: list[int]) -> torch.Tensor:
        params = self.params
        spec = params.sampler_spec
        noise = rng.first()
        sigmas = self._sigmas(spec, params.steps)
        # the timestep samplers start from the noise itself (x / sqrt(sigma² + 1) in their scale)
        timesteps = spec.sigmas == timestep_samplers.TIMESTEPS
        scale = (1 + sigmas[0] ** 2) ** 0.5 if params.sampling.sgm_noise_multiplier or timesteps else sigmas[0]
        x = noise.to(self.pipe.unet.device) * scale
        return self._k_sample(x, sigmas, rng, self.conditioning, spec, seeds, params.width, params.height)

    def _sigmas(self, spec: SamplerSpec, steps: int) -> torch.Tensor:
        return k_pass.pass_sigmas(spec.sigmas, spec.discard_penultimate, steps,
                                  k_pass.model_sigmas(self.pipe, spec.k_function), self.params.sampling.schedule)

    def _k_sample(self, x: torch.Tensor, sigmas: torch.Tensor, rng: ImageNoise, conditioning: ScheduledConditioning,
                  spec: SamplerSpec, seeds: list[int], width: int, height: int,
                  blend: tuple[torch.Tensor, torch.Tensor] | None = None, from_image: bool = False) -> torch.Tensor:
        """A k-diffusion pass from `x` (at sigmas[0]) on the UNet; float32 in, the UNet's dtype out.
        `from_image`: x is an image noised to sigmas[0] (img2img, hires), not noise."""
        steps = len(sigmas) - 1
        denoiser = k_pass.CFGDenoiser(
            self.pipe.unet, k_pass.model_sigmas(self.pipe, spec.k_function), conditioning, self.params.cfg_scale, steps,
            self._control_inputs(width, height, len(seeds)), blend,
            v_prediction=self.pipe.scheduler.config.get("prediction_type") == "v_prediction",
        )
        run = k_pass.KPass(
            spec.k_function,
            self.params.sampling.options(spec.k_function, self.params.eta, spec.solver_type),
            spec.brownian, rng, seeds, self.reporter.k_callback(steps), from_image,
        )
        return k_pass.sample(denoiser, run, x.float(), sigmas.to(x.device)).to(self.pipe.unet.dtype)

    def _control_inputs(self, width: int, height: int, batch: int) -> list[k_pass.ControlInput]:
        """Each ControlNet unit's image as the UNet pass takes it: [0, 1] RGB, repeated for cond and uncond."""
        if not self.controlnets:
            return []
        processor = VaeImageProcessor(vae_scale_factor=LATENT_SCALE, do_convert_rgb=True, do_normalize=False)
        inputs = []
        for (unit, model), image in zip(self.controlnets, self._control_images(width, height)):
            pixels = processor.preprocess(image, height=height, width=width).float().repeat(2 * batch, 1, 1, 1)
            inputs.append(k_pass.ControlInput(model, pixels, unit.weight, unit.guidance_start, unit.guidance_end))
        return inputs

    def _denoise_latents(self, init_latents: torch.Tensor, rng: ImageNoise, conditioning: ScheduledConditioning,
                         sampler: SamplerSpec, seeds: list[int], steps: int, pass_steps: int, strength: float,
                         width: int, height: int, mask: torch.Tensor | None = None,
                         noise_multiplier: float = 1.0) -> torch.Tensor:
        """Img2img from latents: noise to `strength`, then denoise; with `mask`, keep the unmasked latents.
        `steps` is the length of the schedule, `pass_steps` how many of its last steps run."""
        if img2img_steps_run(steps, strength) == 0:
            return init_latents
        noise = rng.first() * noise_multiplier
        sigmas = self._sigmas(sampler, steps)[-(pass_steps + 1):]
        x = init_latents.float() + noise.to(init_latents.device) * sigmas[0]
        blend = None if mask is None else (init_latents.float(), mask.float())
        return self._k_sample(x, sigmas, rng, conditioning, sampler, seeds, width, height, blend, from_image=True)

    def _hires(self, latents: torch.Tensor, seeds: list[int], subseeds: list[int]) -> torch.Tensor:
        hires = self.params.hires
        assert hires is not None
        mode, antialias = hires.upscale_mode
        latents = torch.nn.functional.interpolate(  # in float32: the antialiased modes have no half kernels
            latents.float(), size=(hires.target_height // LATENT_SCALE, hires.target_width // LATENT_SCALE),
            mode=mode, antialias=antialias,
        ).to(latents.dtype)
        if hires.truncate_x or hires.truncate_y:
            latents = latents[:, :, hires.truncate_y // 2:latents.shape[2] - (hires.truncate_y + 1) // 2,
                              hires.truncate_x // 2:latents.shape[3] - (hires.truncate_x + 1) // 2]
        rng = self._rng(seeds, subseeds, hires.width, hires.height)  # A1111 1.10: a new ImageRNG for the pass
        steps = hires.steps or self.params.steps
        return self._denoise_latents(
            latents, rng, self.hires_conditioning or self.conditioning, hires.sampler_spec, seeds,
            hires_total_steps(steps, hires.denoising_strength), steps, hires.denoising_strength,
            hires.width, hires.height,
        )

    def _encode(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.pipe.image_processor.preprocess(images)
        # The distribution's mean, not a sample: the same init image always gives the same latents.
        latents = self._with_vae(lambda vae: vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean)
        return (latents * self._scaling_factor).to(self.pipe.unet.dtype)

    def _decode(self, latents: torch.Tensor) -> list[Image.Image]:
        if torch.isnan(latents).all():  # as A1111's NaN check: a black image would tell the user nothing
            raise EngineError(
                f"The UNet produced only NaNs in {str(latents.dtype).removeprefix('torch.')}: this checkpoint "
                "needs more precision than that; run the worker with SD_AWS_DTYPE=float32", field="sd_model_checkpoint")
        scaled = latents / self._scaling_factor
        decoded = self._with_vae(lambda vae: vae.decode(scaled.to(vae.dtype), return_dict=False)[0])
        # A1111's conversion: [-1, 1] → [0, 1], then 255 × value truncated (diffusers rounds, 0.5/255 brighter)
        pixels = 255.0 * ((decoded.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(image.astype(np.uint8)) for image in pixels]

    def _with_vae(self, run: Callable[[Any], torch.Tensor]) -> torch.Tensor:
        """`run(vae)`; if the VAE overflowed half precision (inf, NaN), again with the VAE in float32 (A1111's
        "revert VAE to 32-bit floats"). The cached pipeline's VAE goes back to its dtype afterwards."""
        vae = self.pipe.vae
        result = run(vae)
        if vae.dtype == torch.float32 or torch.isfinite(result).all():
            return result
        log.info("The VAE overflowed in %s; running it in float32 for this job", vae.dtype)
        half = vae.dtype
        try:
            torch.nn.Module.to(vae, dtype=torch.float32)  # torch's own `to`, as placement.place
            return run(vae)
        finally:
            torch.nn.Module.to(vae, dtype=half)

    def _img2img(self, inputs: Img2ImgInputs, rng: ImageNoise, seeds: list[int]) -> list[Image.Image]:
        params = self.params
        width, height = params.width, params.height
        prepared = prepare_img2img(inputs, width, height)
        batch_images = [prepared.images[i % len(prepared.images)] for i in range(len(seeds))]
        init_latents = self._encode(batch_images)
        mask = None
        if prepared.latent_mask is not None:
            mask = latent_mask(prepared.latent_mask, init_latents.shape[2], init_latents.shape[3],
                               inputs.mask_round).to(init_latents)
            if inputs.inpainting_fill == 2:  # latent noise
                # A1111's create_random_tensors: a fresh ImageRNG of the seeds
                fill_noise = ImageNoise(tuple(init_latents.shape[1:]), seeds, source=self._noise_source).first()
                fill_noise = fill_noise.to(init_latents)
                init_latents = init_latents * (1 - mask) + fill_noise * mask
            elif inputs.inpainting_fill == 3:  # latent nothing
                init_latents = init_latents * (1 - mask)
        strength = params.denoising_strength or 0.0
        spec = params.sampler_spec
        latents = self._denoise_latents(
            init_latents, rng, self.conditioning, spec, seeds, params.steps,
            img2img_steps_run(params.steps, strength), strength, width, height, mask,
            inputs.initial_noise_multiplier,
        )
        if mask is not None:  # A1111's last blend after sampling: the unmasked latents are the init ones exactly
            latents = (latents * mask + init_latents * (1 - mask)).to(latents.dtype)
        results = self._decode(latents)
        if prepared.overlay is None:
            return results
        originals = [ImageOps.exif_transpose(inputs.init_images[i % len(inputs.init_images)]).convert("RGB")
                     for i in range(len(seeds))]
        return [self._paste_back(result, original, prepared.overlay, prepared.crop_region, inputs.resize_mode,
                                 width, height) for result, original in zip(results, originals)]

    @staticmethod
    def _paste_back(result: Image.Image, original: Image.Image, overlay: Image.Image,
                    crop_region: tuple[int, int, int, int] | None, resize_mode: int, width: int, height: int) -> Image.Image:
        """A1111's `apply_overlay`: the original outside the (blurred) mask, the result inside."""
        if crop_region is not None:
            x1, y1, x2, y2 = crop_region
            base = original.copy()
            base.paste(resize_image(1, result, x2 - x1, y2 - y1), (x1, y1))
            return Image.composite(base, original, overlay)
        return Image.composite(result, resize_image(resize_mode, original, width, height), overlay)
