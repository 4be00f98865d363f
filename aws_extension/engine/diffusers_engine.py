"""The built-in engine: A1111 txt2img/img2img payloads run on diffusers (see base.Engine).

One job at a time (a lock). Per job: validate the payload (params), resolve every model name against
the job's ModelSet, take the cached pipeline, apply LoRAs/embeddings for the job (undone afterwards),
encode the prompts the A1111 way (prompt), sample (generate), and write PNGs with the A1111 infotext.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from aws_extension import __version__
from aws_extension.engine.addons import applied_addons, load_controlnet
from aws_extension.engine.base import EngineError, GenerationResult, ModelSet, ProgressCallback
from aws_extension.engine.checkpoints import inspect_model_file
from aws_extension.engine.generate import (
    JobRunner,
    StepReporter,
    hires_total_steps,
    img2img_steps_run,
)
from aws_extension.engine.infotext import format_infotext, png_with_infotext, short_hash
from aws_extension.engine.k_pass import DDIM_ETA_FUNCTIONS
from aws_extension.engine.merge import merge_checkpoints
from aws_extension.engine.params import (
    ControlNetUnit,
    GenerationParams,
    HiresFix,
    Img2ImgInputs,
    normalise_payload,
)
from aws_extension.engine.pipelines import PipelineCache
from aws_extension.engine.placement import out_of_memory_message, release_cached_memory, resolve_placement
from aws_extension.engine.prompt import (
    check_supported_syntax,
    encode_prompt_schedules,
    extract_extra_networks,
)
from aws_extension.engine.samplers import infotext_names, sampler_names
from aws_extension.engine.timestep_samplers import TIMESTEPS
from aws_extension.settings import WorkerSettings
from aws_extension.vocabulary import (
    CheckpointType,
    LoraCall,
    model_stem,
    prompt_uses_embedding,
    without_hash_suffix,
)

VERSION_TEXT = f"sd-aws {__version__}"
CONTROLNET_CACHE_SIZE = 2  # loaded ControlNet models kept between jobs
# Infotext keys A1111 writes itself; the others are its `extra_generation_params`.
_BASE_INFOTEXT_KEYS = ("Size", "Model hash", "Model", "VAE hash", "VAE", "Seed resize from", "Clip skip", "Tiling",
                       "Eta", "Version")


def _prompt_name(file_name: str) -> str:
    """The name a prompt (or an option) uses for a file of a ModelSet folder: its stem without its sub-folder,
    as A1111 names LoRAs and embeddings (and as `addons` names an embedding's token)."""
    return model_stem(PurePosixPath(file_name).name)


def _by_name(files: dict[str, Path], name: str) -> Path | None:
    """A file of a ModelSet folder by file name or by stem."""
    if name in files:
        return files[name]
    return next((path for file_name, path in files.items() if _prompt_name(file_name) == name), None)


def _available(files: dict[str, Path]) -> str:
    return ", ".join(sorted(_prompt_name(name) for name in files)) or "none"


class DiffusersEngine:
    """Implements base.Engine with diffusers on the tiny or real SD 1.x checkpoints."""

    def __init__(self, settings: WorkerSettings | None = None):
        self.settings = settings or WorkerSettings()
        self.placement = resolve_placement(self.settings.device, self.settings.dtype)
        self.pipelines = PipelineCache.from_settings(self.settings, self.placement)
        self._controlnets: OrderedDict[tuple[str, int, int], Any] = OrderedDict()
        self._lock = threading.Lock()

    def samplers(self) -> list[str]:
        return sampler_names()

    def generate(
        self,
        task: str,
        payload: dict[str, Any],
        models: ModelSet,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        params = normalise_payload(task, payload, self.settings)
        prompt_text, loras = self._prompt_networks(params)
        lora_files = self._lora_files(loras, models)
        vae_file = self._vae_file(params, models)
        embedding_files = self._embedding_files(params, models)
        controlnet_files = self._controlnet_files(params, models)
        lora_weights = [(path, call.text_encoder_weight) for path, call in lora_files]
        with self._lock, self.pipelines.use(models.checkpoint, vae_file) as pipe, (
            # Applying nothing still costs a walk over every module on removal: skip it.
            applied_addons(pipe, lora_weights, embedding_files) if lora_weights or embedding_files else nullcontext()
        ):
            encoded: dict[str, Any] = {}  # each distinct prompt text is encoded once per job
            # A1111 builds each pass's prompt schedule for steps × the sampler's step multiplier
            first_pass_steps = params.steps * params.sampler_spec.step_multiplier
            conditioning = encode_prompt_schedules(
                prompt_text, params.negative_prompt, pipe, first_pass_steps, params.clip_skip, encoded=encoded,
                emphasis=params.emphasis,
            )
            hires_conditioning = None
            if params.hires is not None:
                hires = params.hires
                hires_prompt = extract_extra_networks(hires.prompt, "hr_prompt")[0] if hires.prompt else prompt_text
                hires_conditioning = encode_prompt_schedules(
                    hires_prompt, hires.negative_prompt or params.negative_prompt, pipe,
                    (hires.steps or params.steps) * hires.sampler_spec.step_multiplier, params.clip_skip,
                    hires_base_steps=first_pass_steps, encoded=encoded, emphasis=params.emphasis,
                )
            controlnets = []
            if controlnet_files:
                architecture = inspect_model_file(models.checkpoint).architecture
                controlnets = [(unit, self._load_controlnet(path, architecture)) for unit, path in controlnet_files]
            reporter = StepReporter(self._total_steps(params), params.n_iter, progress, cancel)
            try:
                images = JobRunner(pipe, params, conditioning, hires_conditioning, controlnets, reporter).run()
            except torch.OutOfMemoryError:
                raise EngineError(out_of_memory_message(params, self.placement)) from None
            finally:
                release_cached_memory(self.placement)
        return self._result(params, images, models.checkpoint, vae_file, lora_files, embedding_files, controlnet_files)

    merge = staticmethod(merge_checkpoints)  # base.Engine.merge: A1111's merge, streamed, on the CPU

    # --- resolving the job's models --------------------------------------------------------------

    @staticmethod
    def _prompt_networks(params: GenerationParams) -> tuple[str, list[LoraCall]]:
        check_supported_syntax(params.prompt, "prompt")
        prompt_text, loras = extract_extra_networks(params.prompt, "prompt")
        if params.hires is not None:
            check_supported_syntax(params.hires.prompt, "hr_prompt")
            hires_loras = extract_extra_networks(params.hires.prompt, "hr_prompt")[1]
            if hires_loras and hires_loras != loras:
                raise EngineError("hr_prompt: LoRAs in hr_prompt must be the same as in prompt", "hr_prompt")
        if params.disable_extra_networks:
            loras = []
        for call in loras:
            if call.text_encoder_weight != call.unet_weight:
                raise EngineError(
                    f"prompt: <lora:{call.name}:...> has different text-encoder and UNet weights, which is not "
                    "supported", "prompt",
                )
        return prompt_text, loras

    @staticmethod
    def _lora_files(loras: list[LoraCall], models: ModelSet) -> list[tuple[Path, LoraCall]]:
        files = models.files.get(CheckpointType.LORA, {})
        resolved = []
        for call in loras:
            path = _by_name(files, call.name)
            if path is None:
                raise EngineError(
                    f"prompt: LoRA {call.name!r} is not among this job's models (available: {_available(files)})",
                    "prompt",
                )
            resolved.append((path, call))
        return resolved

    @staticmethod
    def _vae_file(params: GenerationParams, models: ModelSet) -> Path | None:
        if params.sd_vae is None:
            return None
        files = models.files.get(CheckpointType.VAE, {})
        path = _by_name(files, params.sd_vae)
        if path is None:
            raise EngineError(
                f"override_settings.sd_vae: VAE {params.sd_vae!r} is not among this job's models "
                f"(available: {_available(files)})", "override_settings.sd_vae",
            )
        return path

    @staticmethod
    def _embedding_files(params: GenerationParams, models: ModelSet) -> list[Path]:
        """Embeddings whose name occurs as a word in a prompt (as the WebUI finds them)."""
        texts = [params.prompt, params.negative_prompt]
        if params.hires is not None:
            texts += [params.hires.prompt, params.hires.negative_prompt]
        return [path for name, path in sorted(models.files.get(CheckpointType.EMBEDDINGS, {}).items())
                if prompt_uses_embedding(texts, _prompt_name(name))]

    @staticmethod
    def _controlnet_files(params: GenerationParams, models: ModelSet) -> list[tuple[Any, Path]]:
        files = models.files.get(CheckpointType.CONTROLNET, {})
        resolved = []
        for unit in params.controlnet:
            name = without_hash_suffix(unit.model)  # A1111 ControlNet names: "name [hash]"
            path = _by_name(files, name)
            if path is None:
                field = f"alwayson_scripts.controlnet.args[{unit.index}].model"
                raise EngineError(
                    f"{field}: ControlNet {name!r} is not among this job's models (available: {_available(files)})",
                    field,
                )
            resolved.append((unit, path))
        return resolved

    def _load_controlnet(self, path: Path, architecture: str | None) -> Any:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key in self._controlnets:
            self._controlnets.move_to_end(key)
        else:
            self._controlnets[key] = load_controlnet(path, architecture, self.placement)
            while len(self._controlnets) > CONTROLNET_CACHE_SIZE:
                self._controlnets.popitem(last=False)
        return self._controlnets[key]

    @staticmethod
    def _total_steps(params: GenerationParams) -> int:
        if params.img2img is not None:
            per_batch = img2img_steps_run(params.steps, params.denoising_strength or 0.0)
        else:
            per_batch = params.steps
        if params.hires is not None:
            hires_steps = params.hires.steps or params.steps
            if hires_total_steps(hires_steps, params.hires.denoising_strength):
                per_batch += hires_steps
        return per_batch * params.n_iter

    # --- the response ----------------------------------------------------------------------------

    def _result(self, params: GenerationParams, images: list[Any], checkpoint: Path, vae: Path | None,
                loras: list[tuple[Path, LoraCall]], embeddings: list[Path], controlnets: list[tuple[Any, Path]]
                ) -> GenerationResult:
        shared = self._infotext_parameters(params, checkpoint, vae, loras, embeddings, controlnets)
        infotexts = []
        pngs = []
        for index, image in enumerate(images):
            seed_parameters = {"Seed": params.all_seeds[index]}
            if params.subseed_strength:
                seed_parameters |= {"Variation seed": params.all_subseeds[index],
                                    "Variation seed strength": params.subseed_strength}
            infotext = format_infotext(params.prompt, params.negative_prompt, {**shared[0], **seed_parameters, **shared[1]})
            infotexts.append(infotext)
            pngs.append(png_with_infotext(image, infotext))
        count = len(images)
        info = {
            "prompt": params.prompt,
            "all_prompts": [params.prompt] * count,
            "negative_prompt": params.negative_prompt,
            "all_negative_prompts": [params.negative_prompt] * count,
            "seed": params.all_seeds[0],
            "all_seeds": params.all_seeds,
            "subseed": params.all_subseeds[0],
            "all_subseeds": params.all_subseeds,
            "subseed_strength": params.subseed_strength,
            "width": params.width,
            "height": params.height,
            "sampler_name": params.sampler,
            "cfg_scale": params.cfg_scale,
            "steps": params.steps,
            "batch_size": params.batch_size,
            "restore_faces": False,
            "face_restoration_model": None,
            "sd_model_name": checkpoint.stem,
            "sd_model_hash": short_hash(checkpoint),
            "sd_vae_name": vae.stem if vae else None,
            "sd_vae_hash": short_hash(vae) if vae else None,
            "seed_resize_from_w": params.seed_resize_from_w,
            "seed_resize_from_h": params.seed_resize_from_h,
            "denoising_strength": params.denoising_strength,
            "extra_generation_params": {
                key: value for key, value in shared[1].items() if value is not None and key not in _BASE_INFOTEXT_KEYS
            },
            "index_of_first_image": 0,
            "infotexts": infotexts,
            "styles": [],
            "job_timestamp": datetime.now().strftime("%Y%m%d%H%M%S"),
            "clip_skip": params.clip_skip,
            "is_using_inpainting_conditioning": False,
            "version": VERSION_TEXT,
        }
        json.dumps(info)  # the worker sends it JSON-encoded: fail here, not there, if something is not
        return GenerationResult(images=pngs, parameters=params.parameters, info=info)

    @staticmethod
    def _infotext_parameters(params: GenerationParams, checkpoint: Path, vae: Path | None,
                             loras: list[tuple[Path, LoraCall]], embeddings: list[Path],
                             controlnets: list[tuple[Any, Path]]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The infotext's keys before the seed and after it, in A1111's order (None = left out)."""
        sampler, schedule = infotext_names(params.sampler, params.sampler_spec)
        before = {"Steps": params.steps, "Sampler": sampler, "Schedule type": schedule, "CFG scale": params.cfg_scale}
        after: dict[str, Any] = {
            "Size": f"{params.width}x{params.height}",
            "Model hash": short_hash(checkpoint),
            "Model": checkpoint.stem,
            "VAE hash": short_hash(vae) if vae else None,
            "VAE": vae.stem if vae else None,
            "Seed resize from": f"{params.seed_resize_from_w}x{params.seed_resize_from_h}"
            if params.seed_resize_from_w > 0 and params.seed_resize_from_h > 0 else None,
            "Denoising strength": params.denoising_strength,
            "Clip skip": params.clip_skip if params.clip_skip > 1 else None,
            **_noise_infotext(params),
            "Emphasis": params.emphasis.mode if params.emphasis.mode != "Original"
            and any(c in text for text in (params.prompt, params.negative_prompt) for c in "([") else None,
            "Tiling": "True" if params.tiling else None,
            **_sampler_settings_infotext(params),
        }
        after |= _img2img_infotext(params.img2img)
        after |= _hires_infotext(params.hires, params.sampler)
        after |= _controlnet_infotext(controlnets)
        if loras:
            after["Lora hashes"] = ", ".join(f"{call.name}: {short_hash(path)}" for path, call in loras)
        if embeddings:
            after["TI hashes"] = ", ".join(f"{path.stem}: {short_hash(path)}" for path in embeddings)
        after["Version"] = VERSION_TEXT
        return before, after


def _noise_infotext(params: GenerationParams) -> dict[str, Any]:
    """A1111's "ENSD" (for the samplers it changes, with an eta other than 0) and "RNG" (unless GPU)."""
    spec, sampling = params.sampler_spec, params.sampling
    eta = sampling.eta_ancestral if params.eta is None else params.eta
    uses_ensd = spec.uses_ensd and eta != 0
    return {"ENSD": sampling.eta_noise_seed_delta if sampling.eta_noise_seed_delta and uses_ensd else None,
            "RNG": sampling.randn_source if sampling.randn_source != "GPU" else None}


_SETTING_LABELS = {"eta": "Eta", "s_churn": "Sigma churn", "s_tmin": "Sigma tmin", "s_tmax": "Sigma tmax",
                   "s_noise": "Sigma noise"}


def _sampler_settings_infotext(params: GenerationParams) -> dict[str, Any]:
    """A1111's extra generation parameters of the sampler and its schedule, where not their defaults."""
    spec, sampling = params.sampler_spec, params.sampling
    given = sampling.sampler_settings(spec.k_function, params.eta)
    if spec.k_function in DDIM_ETA_FUNCTIONS:  # A1111's CompVisSampler: "Eta DDIM", its default 0
        return {"Eta DDIM": given["eta"] if given["eta"] != 0 else None,
                "Discard penultimate sigma": True if sampling.schedule.always_discard else None}
    found = {_SETTING_LABELS[name]: value for name, value in given.items()
             if name in _SETTING_LABELS and (name != "eta" or value != 1.0)}
    schedule = sampling.schedule
    chosen = spec.sigmas not in (None, "uniform", "simple", "ddim", TIMESTEPS)  # the schedules A1111 gives min/max/rho
    return {
        **found,
        "Discard penultimate sigma": True if schedule.always_discard and not spec.discard_penultimate else None,
        "Schedule min sigma": schedule.sigma_min if chosen and schedule.sigma_min else None,
        "Schedule max sigma": schedule.sigma_max if chosen and schedule.sigma_max else None,
        "Schedule rho": schedule.rho if spec.sigmas in ("karras", "polyexponential") and schedule.rho else None,
        "SGM noise multiplier": True if sampling.sgm_noise_multiplier else None,
    }


def _img2img_infotext(img2img: Img2ImgInputs | None) -> dict[str, Any]:
    """The infotext keys of an img2img job's mask and noise multiplier."""
    after: dict[str, Any] = {}
    if img2img is None:
        return after
    if img2img.mask is not None:
        same_blur = img2img.mask_blur_x == img2img.mask_blur_y
        after |= {
            "Mask blur": img2img.mask_blur_x if same_blur else None,
            "Mask blur x": img2img.mask_blur_x if not same_blur else None,
            "Mask blur y": img2img.mask_blur_y if not same_blur else None,
            "Inpaint area": "Only masked" if img2img.inpaint_full_res else None,
            "Masked area padding": img2img.inpaint_full_res_padding if img2img.inpaint_full_res else None,
            "Mask mode": "Inpaint not masked" if img2img.inpainting_mask_invert else None,
            "Masked content": ("fill", "original", "latent noise", "latent nothing")[img2img.inpainting_fill],
        }
    if img2img.initial_noise_multiplier != 1.0:
        after["Noise multiplier"] = img2img.initial_noise_multiplier
    return after


def _hires_infotext(hires: HiresFix | None, sampler: str) -> dict[str, Any]:
    """The infotext keys of the hires. fix pass (none without one)."""
    if hires is None:
        return {}
    resized = bool(hires.resize_x or hires.resize_y)
    return {
        "Hires upscale": hires.scale if not resized else None,
        "Hires resize": f"{hires.resize_x}x{hires.resize_y}" if resized else None,
        "Hires steps": hires.steps or None,
        "Hires upscaler": hires.upscaler,
        "Hires sampler": hires.sampler if hires.sampler != sampler else None,
        "Hires prompt": hires.prompt or None,
        "Hires negative prompt": hires.negative_prompt or None,
    }


def _controlnet_infotext(controlnets: list[tuple[ControlNetUnit, Path]]) -> dict[str, Any]:
    """`ControlNet <n>` keys, as sd-webui-controlnet writes them."""
    after: dict[str, Any] = {}
    for position, (unit, path) in enumerate(controlnets):
        preprocessor = unit.preprocessor
        settings = "".join(f", {label}: {value}" for label, value in (
            ("Processor Res", preprocessor.processor_res), ("Threshold A", preprocessor.threshold_a),
            ("Threshold B", preprocessor.threshold_b)) if value is not None)
        after[f"ControlNet {position}"] = (
            f"Module: {preprocessor.module}, Model: {path.stem}, Weight: {unit.weight}, Resize Mode: "
            f"{unit.resize_mode}{settings}, Guidance Start: {unit.guidance_start}, Guidance End: "
            f"{unit.guidance_end}, Pixel Perfect: {preprocessor.pixel_perfect}"
        )
    return after
