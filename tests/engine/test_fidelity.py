"""The engine's samplers (ancestral, SDE, DPM fast/adaptive, A1111's timestep samplers, LCM) make A1111's images
(no A1111 here: the references are A1111's algorithm, written out again).

How each reference is derived, independently of the engine's code (it shares only the model's modules):
- text: A1111's chunk for a prompt without emphasis: the CLIP tokens, BOS first, padded to 77 with EOS
  (`FrozenCLIPEmbedderWithCustomWordsBase`), through the text encoder (clip skip 1); all weights are 1,
  so the emphasis multiplication and the mean restoration change nothing.
- denoiser: k-diffusion's `CompVisDenoiser` as A1111 builds it (`quantize=False`): sigmas from the
  ldm alphas_cumprod (scaled-linear betas in float64), the UNet called at the timestep interpolated
  linearly in log sigma, on x / sqrt(sigma² + 1), denoised = x - sigma · eps; A1111's `CFGDenoiser`
  batches [cond, uncond] and combines uncond + (cond - uncond) · cfg_scale.
- schedules: A1111's `get_sigmas` with the sampler's "Automatic" schedule (`samplers_k_diffusion`):
  uniform timesteps for Euler a, Karras for DPM2 a / DPM++ 2S a / DPM++ SDE (DPM2 a with one extra step
  and the next-to-last sigma dropped), Exponential for DPM++ 2M/3M SDE (3M with the extra step dropped).
- noise: `modules/rng.py` `ImageRNG` with randn_source "CPU": one `torch.Generator` per image seeded with
  its seed; the initial noise is its first draw, every later `randn_like` (k-diffusion's default noise
  sampler, replaced by `TorchHijack`) the next draw; with ENSD the generators are reseeded with
  seed + ENSD after the initial noise. The SDE samplers get a `BrownianTreeNoiseSampler` over
  [min sigma > 0, max sigma] with one torchsde `BrownianTree` per image, entropy = the image's seed.
- samplers: k-diffusion's `sample_*` update rules (commit ab527a9, the one A1111 1.10 pins), each as its
  own short loop below.
- pixels: A1111's decode: VAE, (x + 1) / 2 clamped, 255 · x truncated to uint8.
- DPM fast / DPM adaptive: k-diffusion's `DPMSolver.dpm_solver_fast` / `dpm_solver_adaptive` (order 3, rtol 0.05,
  atol 0.0078, h_init 0.05, integral-only PID control) with A1111's eta (eta_ancestral = 1), between the model's
  sigma range (A1111's txt2img passes it whatever the schedule).
- timestep samplers (`sd_samplers_timesteps_impl`, written again): A1111's timesteps 1, 1 + 1000 // steps, ...;
  the variance-preserving scale (x = noise in txt2img; img2img: the image noised to timesteps[t_enc], then
  timesteps[:t_enc]); guidance on the UNet's eps at the integer timestep; DDIM with eta's noise from the seed's
  stream, DDIM CFG++ (scale / 12.5, the uncond eps as direction), PLMS, and UniPC's multistep predictor-corrector
  (bh1, bh2, vary_coeff; time_uniform, time_quadratic, logSNR; order; lower order final) over t in [1/1000, 1]
  with log alpha interpolated by `np.interp`, its linear systems solved by numpy in float64; inpainting blends
  the model's input (A1111's `mask_before_denoising`).
- LCM (`sd_samplers_lcm`, written again in `LCMReference` / `ref_lcm`): A1111's LCM denoiser on the 50 original
  timesteps (19, 39, ..., 999), its output scalings, its schedule (timesteps 999 → 19; chosen schedules over its
  sigma range), each step's noise the seed's next draw; txt2img, img2img (A1111's `sample_img2img`), prompt editing.
k-diffusion's own `sampling.py` is not imported: its package imports torchvision (`k_diffusion.utils`).
Measured on the tiny model (64×64, 8 steps, batch of 2): mean pixel difference 0.0000–0.0001/255 for Euler a,
DPM2 a, DPM++ 2S a, DPM++ 3M SDE, DPM fast, DPM adaptive and every timestep case; 0.006 DPM++ SDE; 0.003 DPM++
2M SDE; 0.00004 LCM (another seed: 36–39/255). benchmarks/engine_fidelity.py prints them.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchsde
from PIL import Image

from aws_extension.engine.base import ModelSet
from aws_extension.engine.diffusers_engine import DiffusersEngine

PROMPT, NEGATIVE, SEEDS, STEPS, CFG = "a photo of a cat", "blurry", [42, 43], 8, 7.0
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@pytest.fixture(scope="module")
def engine() -> DiffusersEngine:
    return DiffusersEngine()


@pytest.fixture(scope="module")
def models(tiny_models_dir: Path) -> ModelSet:
    return ModelSet(checkpoint=tiny_models_dir / "Stable-diffusion" / "tiny-sd.safetensors", files={})


@pytest.fixture(scope="module")
def pipe(engine: DiffusersEngine, models: ModelSet):
    return engine.pipelines.get(models.checkpoint)  # the engine's cached pipeline: the same modules


class Reference:
    """A1111's CompVisDenoiser + CFGDenoiser + ImageRNG on the pipeline's modules."""

    def __init__(self, pipe, seeds: list[int], ensd: int = 0):
        self.pipe = pipe
        config = pipe.scheduler.config
        betas = np.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, config["num_train_timesteps"],
                            dtype=np.float64) ** 2
        alphas_cumprod = torch.tensor(np.cumprod(1 - betas), dtype=torch.float32)
        self.alphas_cumprod = alphas_cumprod.double().numpy()  # ldm's float32 buffer, read in float64
        self.log_sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).log().double().numpy()
        self.seeds, self.ensd = seeds, ensd
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.draws = 0
        self.context = torch.cat([self._embed(PROMPT).repeat(len(seeds), 1, 1), self._embed(NEGATIVE).repeat(len(seeds), 1, 1)])

    def _embed(self, text: str) -> torch.Tensor:
        ids = self.pipe.tokenizer(text, add_special_tokens=True).input_ids[:76]
        ids = ids + [49407] * (77 - len(ids))
        return self.pipe.text_encoder(torch.tensor([ids]))[0]

    def randn(self) -> torch.Tensor:
        noise = torch.stack([torch.randn((4, 8, 8), generator=g) for g in self.generators])
        self.draws += 1
        if self.draws == 1 and self.ensd:
            self.generators = [torch.Generator().manual_seed(seed + self.ensd) for seed in self.seeds]
        return noise

    def sigma(self, t: float) -> float:
        return math.exp(np.interp(t, np.arange(len(self.log_sigmas)), self.log_sigmas))

    def uniform(self, n: int) -> torch.Tensor:
        return torch.tensor([self.sigma(t) for t in np.linspace(len(self.log_sigmas) - 1, 0, n)] + [0.0])

    def karras(self, n: int) -> torch.Tensor:
        low, high = math.exp(self.log_sigmas[0]) ** (1 / 7), math.exp(self.log_sigmas[-1]) ** (1 / 7)
        return torch.tensor([(high + i / (n - 1) * (low - high)) ** 7 for i in range(n)] + [0.0])

    def exponential(self, n: int) -> torch.Tensor:
        return torch.tensor(list(np.exp(np.linspace(self.log_sigmas[-1], self.log_sigmas[0], n))) + [0.0])

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        t = float(np.interp(math.log(float(sigma)), self.log_sigmas, np.arange(len(self.log_sigmas))))
        x_in = torch.cat([x, x])
        eps = self.pipe.unet(x_in / (float(sigma) ** 2 + 1) ** 0.5, torch.tensor([t] * len(x_in)),
                             encoder_hidden_states=self.context).sample
        cond, uncond = (x_in - float(sigma) * eps).chunk(2)
        return uncond + (cond - uncond) * CFG

    def eps(self, x: torch.Tensor, timestep: float, scale: float = CFG) -> tuple[torch.Tensor, torch.Tensor]:
        """A1111's CFGDenoiserTimesteps: the guided eps at a (possibly fractional) timestep, and the uncond eps."""
        eps = self.pipe.unet(torch.cat([x, x]), torch.tensor([float(timestep)] * 2 * len(x)),
                             encoder_hidden_states=self.context).sample
        cond, uncond = eps.chunk(2)
        return uncond + (cond - uncond) * scale, uncond

    def brownian(self, sigmas: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        low, high = sigmas[sigmas > 0].min(), sigmas.max()
        trees = [torchsde.BrownianTree(low, torch.zeros(4, 8, 8), high, entropy=seed) for seed in self.seeds]

        def sample(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
            a, b = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
            w = torch.stack([tree(min(a, b), max(a, b)) for tree in trees]) * (1 if a < b else -1)
            return w / (b - a).abs().sqrt()
        return sample

    def image(self, latents: torch.Tensor) -> np.ndarray:
        decoded = self.pipe.vae.decode(latents / self.pipe.vae.config.scaling_factor).sample
        return (255.0 * ((decoded + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()).astype(np.uint8)


def _ancestral(sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    up = min(sigma_next, eta * (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5)
    return (sigma_next ** 2 - up ** 2) ** 0.5, up


def ref_euler_a(ref: Reference, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        denoised = ref.denoise(x, sigmas[i])
        down, up = _ancestral(sigmas[i], sigmas[i + 1])
        x = x + (x - denoised) / sigmas[i] * (down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + ref.randn() * up
    return x


def ref_dpm2_a(ref: Reference, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        denoised = ref.denoise(x, sigmas[i])
        down, up = _ancestral(sigmas[i], sigmas[i + 1])
        d = (x - denoised) / sigmas[i]
        if down == 0:
            x = x + d * (down - sigmas[i])
            continue
        mid = torch.exp((torch.log(sigmas[i]) + torch.log(down)) / 2)
        x_2 = x + d * (mid - sigmas[i])
        x = x + (x_2 - ref.denoise(x_2, mid)) / mid * (down - sigmas[i]) + ref.randn() * up
    return x


def ref_dpmpp_2s_a(ref: Reference, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        denoised = ref.denoise(x, sigmas[i])
        down, up = _ancestral(sigmas[i], sigmas[i + 1])
        if down == 0:
            x = denoised
        else:
            s = torch.sqrt(sigmas[i] * down)  # the midpoint in log sigma
            x_2 = (s / sigmas[i]) * x - torch.expm1(torch.log(s / sigmas[i])) * denoised
            x = (down / sigmas[i]) * x - torch.expm1(torch.log(down / sigmas[i])) * ref.denoise(x_2, s)
        if sigmas[i + 1] > 0:
            x = x + ref.randn() * up
    return x


def ref_dpmpp_sde(ref: Reference, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    noise = ref.brownian(sigmas)
    for i in range(len(sigmas) - 1):
        denoised = ref.denoise(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        s = torch.sqrt(sigmas[i] * sigmas[i + 1])
        down, up = _ancestral(sigmas[i], s)
        x_2 = (down / sigmas[i]) * x - torch.expm1(torch.log(down / sigmas[i])) * denoised + noise(sigmas[i], s) * up
        denoised_2 = ref.denoise(x_2, s)
        down, up = _ancestral(sigmas[i], sigmas[i + 1])
        x = (down / sigmas[i]) * x - torch.expm1(torch.log(down / sigmas[i])) * denoised_2
        x = x + noise(sigmas[i], sigmas[i + 1]) * up
    return x


def ref_dpmpp_2m_sde(ref: Reference, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    noise, previous, h_previous = ref.brownian(sigmas), None, None
    for i in range(len(sigmas) - 1):
        denoised = ref.denoise(x, sigmas[i])
        h = None
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = torch.log(sigmas[i] / sigmas[i + 1])
            x = sigmas[i + 1] / sigmas[i] * torch.exp(-h) * x - torch.expm1(-2 * h) * denoised
            if previous is not None:
                x = x - 0.5 * torch.expm1(-2 * h) * (h / h_previous) * (denoised - previous)
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * torch.sqrt(-torch.expm1(-2 * h))
        previous, h_previous = denoised, h
    return x


def ref_dpmpp_3m_sde(ref: Reference, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    noise, d_1, d_2, h_1, h_2 = ref.brownian(sigmas), None, None, None, None
    for i in range(len(sigmas) - 1):
        denoised = ref.denoise(x, sigmas[i])
        h = h_1
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = torch.log(sigmas[i] / sigmas[i + 1])
            x = torch.exp(-2 * h) * x - torch.expm1(-2 * h) * denoised
            phi_2 = torch.expm1(-2 * h) / (2 * h) + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (denoised - d_1) / r0, (d_1 - d_2) / r1
                x = x + phi_2 * (d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)) - (phi_2 / (2 * h) - 0.5) * (d1_0 - d1_1) / (r0 + r1)
            elif h_1 is not None:
                x = x + phi_2 * (denoised - d_1) / (h_1 / h)
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * torch.sqrt(-torch.expm1(-2 * h))
        d_1, d_2, h_1, h_2 = denoised, d_1, h, h_1
    return x


def ref_dpm_fast(ref: Reference, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """DPM-Solver-fast with A1111's eta (eta_ancestral, 1) and its default noise sampler."""
    def eps_at(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (x - ref.denoise(x, torch.exp(-t))) / torch.exp(-t)

    nfe, t_end = len(sigmas) - 1, -torch.log(sigmas[-2])
    m = nfe // 3 + 1
    ts = torch.linspace(float(-torch.log(sigmas[0])), float(t_end), m + 1)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        down, _ = _ancestral(torch.exp(-t), torch.exp(-t_next))
        target = torch.minimum(t_end, -torch.log(down))
        up = (torch.exp(-t_next) ** 2 - torch.exp(-target) ** 2) ** 0.5
        h, e, sigma_target = target - t, eps_at(x, t), torch.exp(-target)
        x_1 = x - sigma_target * torch.expm1(h) * e
        if order == 1:
            x = x_1
        elif order == 2:
            e_1 = eps_at(x - torch.exp(-(t + h / 2)) * torch.expm1(h / 2) * e, t + h / 2)
            x = x_1 - sigma_target * torch.expm1(h) * (e_1 - e)
        else:
            s1, s2 = t + h / 3, t + 2 * h / 3
            e_1 = eps_at(x - torch.exp(-s1) * torch.expm1(h / 3) * e, s1)
            u2 = x - torch.exp(-s2) * torch.expm1(2 * h / 3) * e \
                - torch.exp(-s2) * 2 * (torch.expm1(2 * h / 3) / (2 * h / 3) - 1) * (e_1 - e)
            x = x_1 - sigma_target * 1.5 * (torch.expm1(h) / h - 1) * (eps_at(u2, s2) - e)
        x = x + up * ref.randn()
    return x


def ref_dpm_adaptive(ref: Reference, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """k-diffusion's `dpm_solver_adaptive` as A1111 calls it: order 3, rtol 0.05, atol 0.0078, h_init 0.05, an
    integral-only PID controller (order 1.5 with eta), A1111's eta (eta_ancestral = 1), between the model's
    sigma range (the uniform schedule's ends)."""
    def eps_at(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (x - ref.denoise(x, torch.exp(-t))) / torch.exp(-t)

    s, t_end = -torch.log(sigmas[0]), -torch.log(sigmas[-2])
    h, inverse_errors, x_prev = 0.05, None, x
    while s < t_end - 1e-5:
        t = torch.minimum(t_end, s + h)
        down, _ = _ancestral(torch.exp(-s), torch.exp(-t))
        target = torch.minimum(t_end, -torch.log(down))
        up = (torch.exp(-t) ** 2 - torch.exp(-target) ** 2) ** 0.5
        step, e, sigma_target = target - s, eps_at(x, s), torch.exp(-target)
        s1, s2 = s + step / 3, s + 2 * step / 3
        e_1 = eps_at(x - torch.exp(-s1) * torch.expm1(step / 3) * e, s1)
        x_low = x - sigma_target * torch.expm1(step) * e - sigma_target * 1.5 * torch.expm1(step) * (e_1 - e)
        u2 = x - torch.exp(-s2) * torch.expm1(2 * step / 3) * e \
            - torch.exp(-s2) * 2 * (torch.expm1(2 * step / 3) / (2 * step / 3) - 1) * (e_1 - e)
        x_high = x - sigma_target * torch.expm1(step) * e \
            - sigma_target * 1.5 * (torch.expm1(step) / step - 1) * (eps_at(u2, s2) - e)
        delta = torch.maximum(torch.tensor(0.0078), 0.05 * torch.maximum(x_low.abs(), x_prev.abs()))
        inverse = 1 / (float(torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5) + 1e-8)
        inverse_errors = inverse_errors or [inverse] * 3
        inverse_errors[0] = inverse
        factor = 1 + math.atan(inverse_errors[0] ** (1 / 1.5) - 1)
        if factor >= 0.81:
            inverse_errors[1:] = inverse_errors[:2]
            x_prev, x, s = x_low, x_high + up * ref.randn(), t
        h *= factor
    return x


# -- A1111's timestep samplers (sd_samplers_timesteps_impl), in the variance-preserving scale ---------------

def _timesteps(steps: int) -> list[int]:
    stride = 1000 // steps
    return [min(k * stride + 1, 999) for k in range(math.ceil(1000 / stride))]


def _alpha_pairs(ref: Reference, timesteps: list[int]) -> list[tuple[int, float, float]]:
    """(timestep, alpha_cumprod, alpha_cumprod of the timestep below or of 0) from the top down, as DDIM runs them."""
    below = [0, *timesteps[:-1]]
    return [(timesteps[i], ref.alphas_cumprod[timesteps[i]], ref.alphas_cumprod[below[i]])
            for i in reversed(range(1, len(timesteps)))]


def ref_ddim(ref: Reference, x: torch.Tensor, timesteps: list[int], eta: float = 0.0, cfgpp: bool = False) -> torch.Tensor:
    for t, a, a_prev in _alpha_pairs(ref, timesteps):
        e, uncond = ref.eps(x, t, CFG / 12.5 if cfgpp else CFG)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        x0 = (x - math.sqrt(1 - a) * e) / math.sqrt(a)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma ** 2) * (uncond if cfgpp else e) + sigma * ref.randn()
    return x


def ref_plms(ref: Reference, x: torch.Tensor, timesteps: list[int]) -> torch.Tensor:
    history: list[torch.Tensor] = []  # newest first
    coefficients = {1: [3 / 2, -1 / 2], 2: [23 / 12, -16 / 12, 5 / 12], 3: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}
    def move(x: torch.Tensor, e: torch.Tensor, a: float, a_prev: float) -> torch.Tensor:
        return math.sqrt(a_prev) * (x - math.sqrt(1 - a) * e) / math.sqrt(a) + math.sqrt(1 - a_prev) * e

    for index, (t, a, a_prev) in zip(reversed(range(1, len(timesteps))), _alpha_pairs(ref, timesteps)):
        e = ref.eps(x, t)[0]
        if history:
            weights = coefficients[min(len(history), 3)]
            e_prime = sum(w * v for w, v in zip(weights, [e, *history]))
        else:
            e_prime = (e + ref.eps(move(x, e, a, a_prev), timesteps[index - 1])[0]) / 2
        x = move(x, e_prime, a, a_prev)
        history = [e, *history][:3]
    return x


def ref_unipc(ref: Reference, x: torch.Tensor, timesteps: list[int], variant: str = "bh1",
              skip_type: str = "time_uniform", order: int = 3, lower_order_final: bool = True,
              from_image: bool = False) -> torch.Tensor:
    """UniPC (multistep, data prediction) as A1111 runs it: t from 1 (img2img: (last timestep + 1) / 1000) to
    1/1000, log alpha = ½ log alphas_cumprod interpolated linearly at t_n = (n + 1) / 1000, the UNet at
    timestep 1000 t - 1."""
    grid = np.arange(1, 1001) / 1000
    log_alpha_grid = 0.5 * np.log(ref.alphas_cumprod)

    def log_alpha(t: float) -> float:
        return float(np.interp(t, grid, log_alpha_grid))

    def lam(t: float) -> float:
        return log_alpha(t) - 0.5 * math.log(1 - math.exp(2 * log_alpha(t)))

    def x0(x: torch.Tensor, t: float) -> torch.Tensor:
        alpha = math.exp(log_alpha(t))
        return (x - math.sqrt(1 - alpha ** 2) * ref.eps(x, 1000 * t - 1)[0]) / alpha

    steps, start = len(timesteps), (timesteps[-1] + 1) / 1000 if from_image else 1.0
    if skip_type == "logSNR":
        lambdas = np.linspace(lam(start), lam(0.001), steps + 1)
        log_alphas = -0.5 * np.logaddexp(0, -2 * lambdas)
        times = [float(np.interp(v, log_alpha_grid[::-1], grid[::-1])) for v in log_alphas]
    elif skip_type == "time_quadratic":
        times = list(np.linspace(start ** 0.5, 0.001 ** 0.5, steps + 1) ** 2)
    else:
        times = list(np.linspace(start, 0.001, steps + 1))

    def step(x: torch.Tensor, past: list[tuple[float, torch.Tensor]], t: float, k: int, correct: bool):
        (t_0, m_0) = past[-1]
        h = lam(t) - lam(t_0)
        rks = [(lam(past[-(i + 1)][0]) - lam(t_0)) / h for i in range(1, k)] + [1.0]
        d1s = [(past[-(i + 1)][1] - m_0) / rks[i - 1] for i in range(1, k)]
        alpha_t, hh = math.exp(log_alpha(t)), -h
        sigma_ratio = math.sqrt(1 - alpha_t ** 2) / math.sqrt(1 - math.exp(2 * log_alpha(t_0)))
        base = sigma_ratio * x - alpha_t * math.expm1(hh) * m_0
        # phi_k(hh) · hh^k style terms: phi[k] = hh·φ_k(hh) for k = 1.. (A1111's h_phi_k recursion)
        phi = [math.expm1(hh)]
        for n in range(1, k + 2):
            phi.append(phi[-1] / hh - 1 / math.factorial(n))
        if variant == "vary_coeff":
            c = np.array([[r ** j / math.factorial(j + 1) for j in range(k)] for r in rks])
            x_t = base
            if d1s:
                a_p = np.linalg.inv(c[:-1, :-1])
                for j in range(k - 1):
                    x_t = x_t - alpha_t * phi[j + 1] * sum(float(w) * d for w, d in zip(a_p[j], d1s))
            if not correct:
                return x_t, None
            a_c, m_t = np.linalg.inv(c), x0(x_t, t)
            x_t, last = base, 0
            for last in range(k - 1):
                x_t = x_t - alpha_t * phi[last + 1] * sum(float(w) * d for w, d in zip(a_c[last][:-1], d1s))
            return x_t - alpha_t * phi[k] * (m_t - m_0) * float(a_c[last][-1]), m_t
        b_h = hh if variant == "bh1" else math.expm1(hh)
        r = np.array([[rk ** i for rk in rks] for i in range(k)])
        b = np.array([phi[i + 1] * math.factorial(i + 1) / b_h for i in range(k)])
        x_t = base
        if d1s:
            rhos = [0.5] if k == 2 else np.linalg.solve(r[:-1, :-1], b[:-1])
            x_t = base - alpha_t * b_h * sum(float(w) * d for w, d in zip(rhos, d1s))
        if not correct:
            return x_t, None
        rhos = [0.5] if k == 1 else np.linalg.solve(r, b)
        m_t = x0(x_t, t)
        corrected = sum(float(w) * d for w, d in zip(rhos[:-1], d1s)) + float(rhos[-1]) * (m_t - m_0)
        return base - alpha_t * b_h * corrected, m_t

    past = [(times[0], x0(x, times[0]))]
    for i in range(1, steps + 1):
        k = min(order, i, steps + 1 - i) if lower_order_final else min(order, i)
        x, m = step(x, past, times[i], k, correct=i < steps)
        past = [*past, (times[i], m)][-order:]
    return x


def _drop_penultimate(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas[:-2], sigmas[-1:]])


# sampler → (reference loop, its A1111 "Automatic" sigmas)
CASES: dict[str, tuple[Callable, Callable[[Reference], torch.Tensor]]] = {
    "Euler a": (ref_euler_a, lambda ref: ref.uniform(STEPS)),
    "DPM2 a": (ref_dpm2_a, lambda ref: _drop_penultimate(ref.karras(STEPS + 1))),
    "DPM++ 2S a": (ref_dpmpp_2s_a, lambda ref: ref.karras(STEPS)),
    "DPM++ SDE": (ref_dpmpp_sde, lambda ref: ref.karras(STEPS)),
    "DPM++ 2M SDE": (ref_dpmpp_2m_sde, lambda ref: ref.exponential(STEPS)),
    "DPM++ 3M SDE": (ref_dpmpp_3m_sde, lambda ref: _drop_penultimate(ref.exponential(STEPS + 1))),
    "DPM fast": (ref_dpm_fast, lambda ref: ref.uniform(STEPS)),
    "DPM adaptive": (ref_dpm_adaptive, lambda ref: ref.uniform(STEPS)),
}
# timestep sampler (with override settings) → its reference loop from the initial noise over A1111's timesteps
TIMESTEP_CASES: dict[str, tuple[str, dict, Callable]] = {
    "DDIM": ("DDIM", {}, ref_ddim),
    "DDIM eta 0.5": ("DDIM", {"eta_ddim": 0.5}, lambda ref, x, ts: ref_ddim(ref, x, ts, eta=0.5)),
    "DDIM CFG++": ("DDIM CFG++", {}, lambda ref, x, ts: ref_ddim(ref, x, ts, cfgpp=True)),
    "PLMS": ("PLMS", {}, ref_plms),
    "UniPC": ("UniPC", {}, ref_unipc),
    "UniPC bh2": ("UniPC", {"uni_pc_variant": "bh2"}, lambda ref, x, ts: ref_unipc(ref, x, ts, "bh2")),
    "UniPC vary_coeff": ("UniPC", {"uni_pc_variant": "vary_coeff"}, lambda ref, x, ts: ref_unipc(ref, x, ts, "vary_coeff")),
    "UniPC logSNR order 2": ("UniPC", {"uni_pc_skip_type": "logSNR", "uni_pc_order": 2},
                             lambda ref, x, ts: ref_unipc(ref, x, ts, skip_type="logSNR", order=2)),
    "UniPC quadratic, not lower order final": (
        "UniPC", {"uni_pc_skip_type": "time_quadratic", "uni_pc_lower_order_final": False},
        lambda ref, x, ts: ref_unipc(ref, x, ts, skip_type="time_quadratic", lower_order_final=False)),
}


def _engine_images(engine: DiffusersEngine, models: ModelSet, sampler: str, **overrides) -> np.ndarray:
    result = engine.generate("txt2img", {
        "prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": SEEDS[0], "batch_size": len(SEEDS), "steps": STEPS,
        "cfg_scale": CFG, "width": 64, "height": 64, "sampler_name": sampler, "override_settings": overrides,
    }, models)
    return np.stack([np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) for png in result.images])


def _reference_images(pipe, sampler: str, ensd: int = 0) -> np.ndarray:
    loop, schedule = CASES[sampler]
    ref = Reference(pipe, SEEDS, ensd)
    with torch.no_grad():
        sigmas = schedule(ref).float()
        x = ref.randn() * sigmas[0]
        return ref.image(loop(ref, x, sigmas))


def _timestep_reference_images(pipe, case: str) -> np.ndarray:
    _, _, loop = TIMESTEP_CASES[case]
    ref = Reference(pipe, SEEDS)
    with torch.no_grad():
        return ref.image(loop(ref, ref.randn(), _timesteps(STEPS)))


def _mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


@pytest.mark.parametrize("sampler", list(CASES))
def test_ancestral_and_sde_samplers_make_a1111s_images(engine, models, pipe, sampler: str) -> None:
    engine_images = _engine_images(engine, models, sampler, randn_source="CPU")
    reference = _reference_images(pipe, sampler)
    assert _mean_difference(engine_images, reference) < 0.5
    # a different seed is far away, so the comparison can tell
    assert _mean_difference(engine_images[0], reference[1]) > 2


def test_eta_noise_seed_delta_reseeds_the_ancestral_noise(engine, models, pipe) -> None:
    engine_images = _engine_images(engine, models, "Euler a", randn_source="CPU", eta_noise_seed_delta=31337)
    assert _mean_difference(engine_images, _reference_images(pipe, "Euler a", ensd=31337)) < 0.5
    assert _mean_difference(engine_images, _reference_images(pipe, "Euler a")) > 0.5


@pytest.mark.parametrize("case", list(TIMESTEP_CASES))
def test_timestep_samplers_make_a1111s_images(engine, models, pipe, case: str) -> None:
    sampler, overrides, _ = TIMESTEP_CASES[case]
    engine_images = _engine_images(engine, models, sampler, randn_source="CPU", **overrides)
    reference = _timestep_reference_images(pipe, case)
    # tighter than the k samplers' bound: UniPC's variants differ from bh1 by only ~0.35/255 on this model
    assert _mean_difference(engine_images, reference) < 0.05
    assert _mean_difference(engine_images[0], reference[1]) > 2


def test_ddim_eta_draws_from_the_seeds_stream(engine, models, pipe) -> None:
    """With eta > 0 the noise is the seed's stream continued (another stream gives another image)."""
    engine_images = _engine_images(engine, models, "DDIM", randn_source="CPU", eta_ddim=1.0)
    ref = Reference(pipe, SEEDS)
    with torch.no_grad():
        reference = ref.image(ref_ddim(ref, ref.randn(), _timesteps(STEPS), eta=1.0))
    assert _mean_difference(engine_images, reference) < 0.5
    assert _mean_difference(engine_images, _engine_images(engine, models, "DDIM", randn_source="CPU")) > 0.5


def _gradient_png() -> tuple[np.ndarray, str]:
    x = np.linspace(0, 255, 64, dtype=np.uint8)
    pixels = np.stack([np.tile(x, (64, 1)), np.tile(x[:, None], (1, 64)), np.full((64, 64), 128, np.uint8)], axis=-1)
    return pixels, _png_b64(Image.fromarray(pixels))


def _png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _img2img_reference(pipe, pixels: np.ndarray, strength: float, loop: Callable, ref: Reference) -> torch.Tensor:
    image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1
    init = pipe.vae.encode(image).latent_dist.mean.repeat(len(SEEDS), 1, 1, 1) * pipe.vae.config.scaling_factor
    timesteps, t_enc = _timesteps(STEPS), int(strength * STEPS)
    a = ref.alphas_cumprod[timesteps[t_enc]]
    x = math.sqrt(a) * init + math.sqrt(1 - a) * ref.randn()
    return init, loop(ref, x, timesteps[:t_enc])


class InpaintReference(Reference):
    """A1111's CFGDenoiserTimesteps with a mask: the model's input is blended with the init latents
    ("mask before denoising"), the result once more after sampling."""

    def __init__(self, pipe, seeds: list[int], init: torch.Tensor, repaint: torch.Tensor):
        super().__init__(pipe, seeds)
        self.init, self.repaint = init, repaint

    def eps(self, x: torch.Tensor, timestep: float, scale: float = CFG) -> tuple[torch.Tensor, torch.Tensor]:
        return super().eps(x * self.repaint + self.init * (1 - self.repaint), timestep, scale)


def test_ddim_inpainting_blends_before_denoising_as_a1111(engine, models, pipe) -> None:
    pixels, png = _gradient_png()
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 255  # repaint the left half
    result = engine.generate("img2img", {
        "prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": SEEDS[0], "batch_size": len(SEEDS), "steps": STEPS,
        "cfg_scale": CFG, "width": 64, "height": 64, "sampler_name": "DDIM", "init_images": [png],
        "mask": _png_b64(Image.fromarray(mask)), "mask_blur": 0, "inpainting_fill": 1, "inpaint_full_res": False,
        "denoising_strength": 0.75, "override_settings": {"randn_source": "CPU"},
    }, models)
    engine_images = np.stack([np.asarray(Image.open(io.BytesIO(p)).convert("RGB")) for p in result.images])
    repaint = torch.zeros((1, 1, 8, 8))
    repaint[..., :4] = 1
    with torch.no_grad():
        image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1
        init = pipe.vae.encode(image).latent_dist.mean.repeat(len(SEEDS), 1, 1, 1) * pipe.vae.config.scaling_factor
        ref = InpaintReference(pipe, SEEDS, init, repaint)
        latents = _img2img_reference(pipe, pixels, 0.75, ref_ddim, ref)[1]
        decoded = ref.image(latents * repaint + init * (1 - repaint))
    reference = np.where(mask[None, :, :, None] > 0, decoded, pixels[None])  # A1111 pastes the original back
    assert _mean_difference(engine_images, reference) < 0.05
    assert _mean_difference(engine_images[0, :, :32], reference[1, :, :32]) > 2
    # blending after denoising instead (the k samplers' way) gives another image
    ref = Reference(pipe, SEEDS)
    with torch.no_grad():
        unblended = ref.image(_img2img_reference(pipe, pixels, 0.75, ref_ddim, ref)[1] * repaint + init * (1 - repaint))
    assert _mean_difference(engine_images[:, :, :32], unblended[:, :, :32]) > 0.05


@pytest.mark.parametrize(("sampler", "loop"), [
    ("DDIM", ref_ddim),
    ("PLMS", ref_plms),
    ("UniPC", lambda ref, x, ts: ref_unipc(ref, x, ts, from_image=True)),
])
def test_timestep_samplers_img2img_as_a1111(engine, models, pipe, sampler: str, loop: Callable) -> None:
    """A1111's `sample_img2img`: t_enc = int(strength × steps); the image noised to timesteps[t_enc] (variance
    preserving, the seed's first draw), then sampled over timesteps[:t_enc] (UniPC from t = (the last + 1) / 1000)."""
    pixels, png = _gradient_png()
    strength = 0.6
    result = engine.generate("img2img", {
        "prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": SEEDS[0], "batch_size": len(SEEDS), "steps": STEPS,
        "cfg_scale": CFG, "width": 64, "height": 64, "sampler_name": sampler, "init_images": [png],
        "denoising_strength": strength, "override_settings": {"randn_source": "CPU"},
    }, models)
    engine_images = np.stack([np.asarray(Image.open(io.BytesIO(p)).convert("RGB")) for p in result.images])
    ref = Reference(pipe, SEEDS)
    with torch.no_grad():
        reference = ref.image(_img2img_reference(pipe, pixels, strength, loop, ref)[1])
    assert _mean_difference(engine_images, reference) < 0.05
    assert _mean_difference(engine_images[0], reference[1]) > 2


@pytest.mark.parametrize("sampler", ["DPM fast"])  # DPM adaptive takes the same path (and ~3× the model calls)
def test_dpm_fast_and_adaptive_txt2img_run_over_the_models_sigma_range(engine, models, pipe, sampler: str) -> None:
    """A1111's txt2img gives them the model's sigma_min/sigma_max whatever the schedule; only the initial noise
    is scaled by the schedule's first sigma (here Karras with sigma_max 10)."""
    engine_images = _engine_images(engine, models, sampler, randn_source="CPU", k_sched_type="Karras", sigma_max=10.0)
    loop, model_range = CASES[sampler]
    ref = Reference(pipe, SEEDS)
    with torch.no_grad():
        reference = ref.image(loop(ref, ref.randn() * 10.0, model_range(ref).float()))
    assert _mean_difference(engine_images, reference) < 0.5
    assert _mean_difference(engine_images, _engine_images(engine, models, sampler, randn_source="CPU")) > 0.5


# The engine's LCM is within 0.0001/255 of the reference here; the bound is tight because on the tiny model
# the wrong denoiser (the model's 1000 timesteps) or schedule is only ~0.3/255 away.
LCM_BOUND = 0.05


class LCMReference(Reference):
    """A1111's `LCMCompVisDenoiser` under its `CFGDenoiser`, written out again: the model's alphas_cumprod at
    the 50 timesteps LCM was distilled on (19, 39, ..., 999; ldm's float32 buffer), sigma → the nearest of
    them in log sigma, timestep → sigma by linear interpolation of log sigma between them; the UNet's output
    taken as eps at that integer timestep, denoised = x - sigma · eps, then LCM's boundary condition
    c_out · denoised + c_skip · x with scalings of 10 × the timestep (sigma_data 0.5); guidance on the result.
    `texts(call)`: the prompt of the model call numbered `call` (prompt editing), else PROMPT."""

    def __init__(self, pipe, seeds: list[int], ensd: int = 0, texts: Callable[[int], str] | None = None):
        super().__init__(pipe, seeds, ensd)
        self.timesteps = np.arange(19, 1000, 20)
        original = torch.tensor(self.alphas_cumprod[self.timesteps], dtype=torch.float32)
        self.lcm_log_sigmas = (((1 - original) / original) ** 0.5).log().double().numpy()
        self.texts, self.calls, self.negative = texts, 0, self._embed(NEGATIVE).repeat(len(seeds), 1, 1)

    def timestep(self, sigma: float) -> int:
        return int(self.timesteps[np.abs(math.log(sigma) - self.lcm_log_sigmas).argmin()])

    def sigma_at(self, timestep: float) -> float:
        index = min(max((timestep - 19) / 20, 0), 49)
        return math.exp(np.interp(index, np.arange(50), self.lcm_log_sigmas))

    def automatic(self, n: int) -> torch.Tensor:
        """A1111's `LCMCompVisDenoiser.get_sigmas`: timesteps evenly from 999 down to 19."""
        return torch.tensor([self.sigma_at(t) for t in np.linspace(999, 19, n)] + [0.0])

    def karras(self, n: int) -> torch.Tensor:
        """Karras (rho 7) between LCM's own sigma range (A1111 takes it from the sampler's model wrap)."""
        low, high = math.exp(self.lcm_log_sigmas[0]) ** (1 / 7), math.exp(self.lcm_log_sigmas[-1]) ** (1 / 7)
        return torch.tensor([(high + i / (n - 1) * (low - high)) ** 7 for i in range(n)] + [0.0])

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = float(sigma)
        timestep = self.timestep(sigma)
        if self.texts is not None:
            positive = self._embed(self.texts(self.calls)).repeat(len(self.seeds), 1, 1)
            self.context = torch.cat([positive, self.negative])
        self.calls += 1
        x_in = torch.cat([x, x])
        eps = self.pipe.unet(x_in / (sigma ** 2 + 1) ** 0.5, torch.tensor([timestep] * len(x_in)),
                             encoder_hidden_states=self.context).sample
        scaled = 10.0 * timestep
        c_skip, c_out = 0.25 / (scaled ** 2 + 0.25), scaled / (scaled ** 2 + 0.25) ** 0.5
        cond, uncond = (c_out * (x_in - sigma * eps) + c_skip * x_in).chunk(2)
        return uncond + (cond - uncond) * CFG


def ref_lcm(ref: LCMReference, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """A1111's `sample_lcm`: x becomes the denoised estimate, noised to the next sigma with the seed's next draw."""
    for i in range(len(sigmas) - 1):
        x = ref.denoise(x, sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * ref.randn()
    return x


def _lcm_txt2img_reference(ref: LCMReference, sigmas: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return ref.image(ref_lcm(ref, ref.randn() * sigmas[0].float(), sigmas.float()))


@pytest.mark.parametrize("schedule", ["Automatic", "Karras"])
def test_lcm_txt2img_makes_a1111s_images(engine, models, pipe, schedule: str) -> None:
    """LCM on A1111's LCM denoiser, with its own schedule or a chosen one over its sigma range."""
    engine_images = _engine_images(engine, models, "LCM", randn_source="CPU", k_sched_type=schedule)
    ref = LCMReference(pipe, SEEDS)
    reference = _lcm_txt2img_reference(ref, ref.automatic(STEPS) if schedule == "Automatic" else ref.karras(STEPS))
    assert _mean_difference(engine_images, reference) < LCM_BOUND
    assert _mean_difference(engine_images[0], reference[1]) > 2
    if schedule == "Automatic":  # the model's own timesteps instead of LCM's give another image
        plain = Reference(pipe, SEEDS)
        with torch.no_grad():
            uniform = plain.uniform(STEPS)
            other = ref.image(ref_lcm(plain, plain.randn() * uniform[0], uniform))
        assert _mean_difference(engine_images, other) > 0.1


def test_lcm_noise_continues_the_seeds_stream(engine, models, pipe) -> None:
    """Each LCM step's noise is the seed's next draw: reseeding it (ENSD, which A1111 applies to every
    sampler's later draws) gives the reference reseeded the same way, and another image."""
    engine_images = _engine_images(engine, models, "LCM", randn_source="CPU", eta_noise_seed_delta=31337)
    ref = LCMReference(pipe, SEEDS, ensd=31337)
    assert _mean_difference(engine_images, _lcm_txt2img_reference(ref, ref.automatic(STEPS))) < LCM_BOUND
    ref = LCMReference(pipe, SEEDS)
    assert _mean_difference(engine_images, _lcm_txt2img_reference(ref, ref.automatic(STEPS))) > 0.1


def test_lcm_prompt_editing_counts_model_calls_as_a1111(engine, models, pipe) -> None:
    """[from:to:0.5] over 8 steps: A1111's CFGDenoiser uses "from" while its count of model calls before the
    call is <= 4 (calls 0-4), "to" after. "to" is the negative prompt (no guidance), so the switch shows."""
    result = engine.generate("txt2img", {
        "prompt": f"[{PROMPT}:{NEGATIVE}:0.5]", "negative_prompt": NEGATIVE, "seed": SEEDS[0],
        "batch_size": len(SEEDS), "steps": STEPS, "cfg_scale": CFG, "width": 64, "height": 64, "sampler_name": "LCM",
        "override_settings": {"randn_source": "CPU"},
    }, models)
    engine_images = np.stack([np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) for png in result.images])

    def reference(last_call_of_from: int) -> np.ndarray:
        ref = LCMReference(pipe, SEEDS, texts=lambda call: PROMPT if call <= last_call_of_from else NEGATIVE)
        return _lcm_txt2img_reference(ref, ref.automatic(STEPS))

    # a switch one call earlier or later is 0.02-0.04/255 away on the tiny model, the engine 0.00004
    assert _mean_difference(engine_images, reference(4)) < 0.002
    assert min(_mean_difference(engine_images, reference(3)), _mean_difference(engine_images, reference(5))) > 0.01


def test_lcm_img2img_makes_a1111s_images(engine, models, pipe) -> None:
    """A1111's KDiffusionSampler.sample_img2img on LCM's schedule: t_enc = int(strength × steps), the last
    t_enc + 1 steps of it; the image noised to their first sigma with the seed's first draw."""
    pixels, png = _gradient_png()
    strength = 0.6
    result = engine.generate("img2img", {
        "prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": SEEDS[0], "batch_size": len(SEEDS), "steps": STEPS,
        "cfg_scale": CFG, "width": 64, "height": 64, "sampler_name": "LCM", "init_images": [png],
        "denoising_strength": strength, "override_settings": {"randn_source": "CPU"},
    }, models)
    engine_images = np.stack([np.asarray(Image.open(io.BytesIO(p)).convert("RGB")) for p in result.images])
    ref = LCMReference(pipe, SEEDS)
    with torch.no_grad():
        image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1
        init = pipe.vae.encode(image).latent_dist.mean.repeat(len(SEEDS), 1, 1, 1) * pipe.vae.config.scaling_factor
        t_enc = int(strength * STEPS)
        sigmas = ref.automatic(STEPS)[STEPS - t_enc - 1:].float()
        reference = ref.image(ref_lcm(ref, init + ref.randn() * sigmas[0], sigmas))
    assert _mean_difference(engine_images, reference) < LCM_BOUND
    assert _mean_difference(engine_images[0], reference[1]) > 2
