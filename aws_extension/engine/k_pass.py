"""One sampling pass of a k-diffusion sampler on a diffusers pipeline's UNet, as A1111 runs it.

A1111's `CFGDenoiserKDiffusion` over k-diffusion's `CompVisDenoiser` (`CompVisVDenoiser` for
v-prediction; for LCM, A1111's `LCMCompVisDenoiser`, `k_samplers.LCMSigmas`): sigmas from the model's alphas_cumprod, the UNet called at the (fractional) timestep of sigma
on x / sqrt(sigma² + 1), classifier-free guidance on the denoised latents, inpainting by blending the
denoised latents with the init latents outside the mask. The noise is A1111's (`engine.noise`): the seed's
stream continued after the initial noise, or a Brownian tree per image for the SDE samplers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from aws_extension.engine import k_samplers, timestep_samplers
from aws_extension.engine.k_samplers import DiscreteSigmas, LCMSigmas, Options, Run
from aws_extension.engine.noise import BrownianNoise, ImageNoise
from aws_extension.engine.prompt import ScheduledConditioning

SAMPLER_FUNCTIONS: dict[str, Callable[[Run, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "euler": k_samplers.euler, "euler_ancestral": k_samplers.euler_ancestral, "heun": k_samplers.heun,
    "lms": k_samplers.lms, "dpm_2": k_samplers.dpm_2, "dpm_2_ancestral": k_samplers.dpm_2_ancestral,
    "dpmpp_2s_ancestral": k_samplers.dpmpp_2s_ancestral, "dpmpp_sde": k_samplers.dpmpp_sde,
    "dpmpp_2m": k_samplers.dpmpp_2m, "dpmpp_2m_sde": k_samplers.dpmpp_2m_sde,
    "dpmpp_3m_sde": k_samplers.dpmpp_3m_sde, "dpm_fast": k_samplers.dpm_fast,
    "dpm_adaptive": k_samplers.dpm_adaptive, "restart": k_samplers.restart, "lcm": k_samplers.lcm,
}

# A1111's `sampler_extra_params`: the settings each sampler is given (others keep k-diffusion's defaults).
_CHURN = ("s_churn", "s_tmin", "s_tmax", "s_noise")
EXTRA_PARAMS: dict[str, tuple[str, ...]] = {
    "euler": _CHURN, "heun": _CHURN, "dpm_2": _CHURN, "dpm_2_ancestral": ("s_noise",),
    "dpmpp_2s_ancestral": ("s_noise",), "dpmpp_sde": ("s_noise",), "dpmpp_2m_sde": ("s_noise",),
    "dpmpp_3m_sde": ("s_noise",), "dpm_fast": ("s_noise",),
}
# The samplers with an eta argument (A1111 passes p.eta or eta_ancestral to them).
ETA_FUNCTIONS = ("euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde",
                 "dpm_fast", "dpm_adaptive")
# The timestep samplers with an eta (A1111's CompVisSampler: p.eta or eta_ddim, default 0).
DDIM_ETA_FUNCTIONS = ("ddim", "ddim_cfgpp")


def model_sigmas(pipe: Any, function: str | None = None) -> DiscreteSigmas:
    """The discrete sigmas of the model as sampler `function` sees it (LCM: `LCMSigmas`). For the
    (scaled_)linear betas of SD, alphas_cumprod in float64 as ldm computes them (diffusers computes the
    betas in float32)."""
    config = pipe.scheduler.config
    schedule = config.get("beta_schedule", "linear")
    count, start, end = config["num_train_timesteps"], config["beta_start"], config["beta_end"]
    if schedule in ("scaled_linear", "linear"):
        if schedule == "scaled_linear":
            betas = torch.linspace(start ** 0.5, end ** 0.5, count, dtype=torch.float64) ** 2
        else:
            betas = torch.linspace(start, end, count, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1 - betas, dim=0).float()
    else:
        alphas_cumprod = pipe.scheduler.alphas_cumprod.double()
    return LCMSigmas(alphas_cumprod) if function == "lcm" else DiscreteSigmas(alphas_cumprod)


@dataclass
class ControlInput:
    """One ControlNet unit for the pass: its model, prepared image ([2 × batch, 3, H, W]), weight, window."""

    model: Any
    image: torch.Tensor
    weight: float
    start: float
    end: float

    def active(self, step: int, steps: int) -> bool:
        """diffusers' (and sd-webui-controlnet's) guidance window: step `step` (0-based) of `steps`."""
        return not (step / steps < self.start or (step + 1) / steps > self.end)


@dataclass
class CFGDenoiser:
    """(x, sigma) → the guided denoised latents of a batch, with the pass's step's prompt."""

    unet: Any
    sigmas: DiscreteSigmas
    conditioning: ScheduledConditioning
    cfg_scale: float
    steps: int
    controls: list[ControlInput] = field(default_factory=list)
    blend: tuple[torch.Tensor, torch.Tensor] | None = None  # (init latents, mask: 1 = repaint)
    v_prediction: bool = False
    step: int = 0  # the 0-based sampler step the next model call belongs to (ControlNet's guidance window)
    calls: int = 0  # model calls so far in the pass: A1111's `CFGDenoiser.step`, which picks the prompt

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        x_in = torch.cat([x, x])
        t = self.sigmas.sigma_to_t(sigma.reshape(1)).expand(batch)
        output = self.outputs(x * (1 / (sigma ** 2 + 1) ** 0.5), t)
        if isinstance(self.sigmas, LCMSigmas):  # A1111 takes LCM's output as eps whatever the model predicts
            denoised = self.sigmas.consistency_output(x_in + output * -sigma, x_in, sigma)
        elif self.v_prediction:
            denoised = output * (-sigma / (sigma ** 2 + 1) ** 0.5) + x_in / (sigma ** 2 + 1)
        else:
            denoised = x_in + output * -sigma
        cond, uncond = denoised.chunk(2)
        denoised = uncond + (cond - uncond) * self.cfg_scale
        if self.blend is not None:
            init_latents, mask = self.blend
            denoised = init_latents * (1 - mask) + denoised * mask
        return denoised

    def outputs(self, sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The UNet's outputs (eps or v; float32) for [cond × batch, uncond × batch] on the scaled `sample` at
        timesteps `t` ([batch]), with the prompt of A1111's step: the number of model calls before this one
        (A1111 counts every call, so a second-order sampler moves through the prompt schedule twice as fast;
        its schedule is built for twice the steps, `SamplerSpec.step_multiplier`)."""
        positive, negative = self.conditioning.at_step(self.calls)
        self.calls += 1
        batch = sample.shape[0]
        if positive.shape[1] == negative.shape[1]:
            context = torch.cat([positive.repeat(batch, 1, 1), negative.repeat(batch, 1, 1)])
            return self._unet(torch.cat([sample, sample]), t.repeat(2), context).float()
        # as A1111 without pad_cond_uncond: cond and uncond of different lengths run apart
        return torch.cat([self._unet(sample, t, z.repeat(batch, 1, 1)).float() for z in (positive, negative)])

    def _unet(self, sample: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        dtype, device = self.unet.dtype, self.unet.device
        sample, t, context = sample.to(device, dtype), t.to(device), context.to(device, dtype)
        down, mid = None, None
        for control in self.controls:
            if not control.active(self.step, self.steps):
                continue
            d, m = control.model(sample, t, encoder_hidden_states=context, controlnet_cond=control.image.to(device, dtype),
                                 conditioning_scale=control.weight, return_dict=False)
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        return self.unet(sample, t, encoder_hidden_states=context, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid, return_dict=False)[0]


@dataclass(frozen=True)
class KPass:
    """What a pass needs besides the latents: the sampler, its settings, the noise and the callback."""

    function: str
    options: Options
    brownian: bool
    noise: ImageNoise
    seeds: list[int]
    on_step: Callable[[int], None]
    from_image: bool = False  # img2img / hires: x is an image noised to sigmas[0] (A1111's `sample_img2img`)


def sample(denoiser: CFGDenoiser, run: KPass, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Run the pass's sampler from `x` (already at sigmas[0]) down `sigmas`; float32 latents."""

    def next_noise() -> torch.Tensor:
        return run.noise.next().to(x.device, x.dtype)

    if run.brownian:
        noise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = BrownianNoise(x, sigmas, run.seeds, run.noise.source)
    else:
        def noise(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
            return next_noise()

    def callback(i: int) -> None:
        run.on_step(i)
        denoiser.step = i + 1

    denoiser.step, denoiser.calls = 0, 0
    if run.function in ("dpm_fast", "dpm_adaptive") and not run.from_image:
        # A1111's txt2img runs them over the model's sigma range whatever the schedule (they read only the
        # ends and the count of `sigmas`); img2img over its part of the schedule
        ends = sigmas.new_tensor([denoiser.sigmas.sigma_max, denoiser.sigmas.sigma_min])
        sigmas = torch.cat([ends[:1], sigmas[1:-2], ends[1:], sigmas[-1:]])
    if run.function in timestep_samplers.SAMPLER_FUNCTIONS:
        x = timestep_samplers.sample(denoiser, run.function, run.options, next_noise, callback, x, sigmas,
                                     run.from_image)
    else:
        x = SAMPLER_FUNCTIONS[run.function](Run(denoiser, noise, callback, run.options, next_noise), x, sigmas)
    return x  # the last blend with the init latents is the caller's (`generate._img2img`), for every sampler


@dataclass(frozen=True)
class ScheduleSettings:
    """A1111's schedule settings: sigma_min / sigma_max / rho (0: the model's / the schedule's own),
    always_discard_next_to_last_sigma."""

    sigma_min: float = 0.0
    sigma_max: float = 0.0
    rho: float = 0.0
    always_discard: bool = False


def pass_sigmas(schedule: str | None, discard_penultimate: bool, steps: int, model: DiscreteSigmas,
                settings: ScheduleSettings) -> torch.Tensor:
    """A1111's `KDiffusionSampler.get_sigmas`: `steps` sigmas of `schedule` (None: uniform) and a 0; for the
    timestep samplers, the sigmas of A1111's timesteps (`timestep_samplers.timestep_sigmas`)."""
    discard = discard_penultimate or settings.always_discard
    if schedule == timestep_samplers.TIMESTEPS:
        return timestep_samplers.timestep_sigmas(steps + (1 if discard else 0), model)
    n = steps + (1 if discard else 0)
    sigma_min = settings.sigma_min if settings.sigma_min else model.sigma_min
    sigma_max = settings.sigma_max if settings.sigma_max else model.sigma_max
    if schedule in (None, "uniform"):
        sigmas = model.uniform(n)
    elif schedule in ("karras", "polyexponential"):
        function = k_samplers.karras if schedule == "karras" else k_samplers.polyexponential
        sigmas = function(n, sigma_min, sigma_max, **({"rho": settings.rho} if settings.rho else {}))
    elif schedule in ("exponential", "kl_optimal"):
        sigmas = getattr(k_samplers, schedule)(n, sigma_min, sigma_max)
    elif schedule in ("sgm_uniform", "normal"):
        sigmas = getattr(k_samplers, schedule)(n, model, sigma_min, sigma_max)
    else:
        sigmas = k_samplers.simple(n, model) if schedule == "simple" else k_samplers.ddim_uniform(n, model)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas.float()
