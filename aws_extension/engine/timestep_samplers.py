"""A1111 1.10's timestep samplers: DDIM, DDIM CFG++, PLMS and UniPC (`sd_samplers_timesteps`), on the UNet.

A1111 runs them on the model's integer timesteps `1, 1 + 1000 // steps, ...` (`CompVisSampler.get_timesteps`;
one more step with always_discard_next_to_last_sigma, nothing dropped) in the variance-preserving scale
(x = sqrt(alpha_cumprod) · x0 + sqrt(1 - alpha_cumprod) · eps), through `CFGDenoiserTimesteps`: classifier-free
guidance on the UNet's eps, an inpainting mask applied to the model's input (before denoising). The update
rules follow the papers as A1111 writes them:
- DDIM (Song et al. 2021): len(timesteps) - 1 model calls (the last timestep is where it stops), eta from the
  payload or eta_ddim, and a noise sample of the seed's stream drawn every step (times 0 when eta is 0);
- DDIM CFG++ (Chung et al. 2024): DDIM with the guidance scale / 12.5 and the unconditional eps as direction;
- PLMS (Liu et al. 2022): pseudo linear multistep, its first step a pseudo improved Euler (two calls);
- UniPC (Zhao et al. 2023): multistep predictor-corrector on the data prediction, over continuous time
  t = (timestep + 1) / 1000 with log alpha interpolated linearly, A1111's settings uni_pc_variant (bh1, bh2,
  vary_coeff), uni_pc_skip_type, uni_pc_order and uni_pc_lower_order_final. It ends at t = 1/1000, so its
  logSNR stays finite (diffusers' UniPC ends at sigma 0, where bh1's B(h) = h is infinite: NaNs).

The engine's k-diffusion pass (`engine.k_pass.sample`) hands over x at sigmas[0] in the k-diffusion scale;
`sample` converts (x / sqrt(sigma² + 1)) and reads the timesteps back from the sigmas (`timestep_sigmas`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from aws_extension.engine.base import EngineError
from aws_extension.engine.k_samplers import DiscreteSigmas, Options

if TYPE_CHECKING:
    from aws_extension.engine.k_pass import CFGDenoiser

TIMESTEPS = "timesteps"  # the SamplerSpec.sigmas of the timestep samplers: A1111's own timesteps
CFGPP_SCALE = 1 / 12.5  # DDIM CFG++ maps the guidance scale [0, 12.5] to [0, 1]


def a1111_timesteps(steps: int) -> torch.Tensor:
    """`CompVisSampler.get_timesteps`: 1, 1 + 1000 // steps, ... below 1000 (ascending; more than `steps`
    entries when 1000 is not a multiple of the stride)."""
    return (torch.arange(0, 1000, 1000 // steps) + 1).clamp(0, 999)


def timestep_sigmas(steps: int, model: DiscreteSigmas) -> torch.Tensor:
    """The k-diffusion sigmas of A1111's timesteps for `steps`, descending, and a 0 (engine.k_pass.pass_sigmas)."""
    sigmas = model.sigmas[a1111_timesteps(steps)].flip(0)
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def unipc_pass_steps(steps: int, discard: bool, strength: float | None = None, hires_steps: int | None = None) -> int:
    """How many steps A1111's UniPC runs in a pass: every timestep in txt2img, int(strength × steps) of them in
    img2img, the hires steps - 1 in the hires pass (`sample_img2img` with `setup_img2img_steps`)."""
    count = len(a1111_timesteps(steps + (1 if discard else 0)))
    if hires_steps is not None:
        return min(hires_steps - 1, count)
    if strength is not None:
        return min(int(min(strength, 0.999) * steps), count)
    return count


def check_unipc_order(order: int, steps: int) -> None:
    """A1111 stops a UniPC pass of fewer steps than its order (an assertion); here, before any work."""
    if steps < order:
        raise EngineError(f"override_settings.uni_pc_order: UniPC order ({order}) must be < sampling steps "
                          f"({steps} in this pass), as in A1111: use more steps (or more denoising strength) or "
                          "a lower uni_pc_order", "override_settings")


@dataclass
class TimestepDenoiser:
    """A1111's `CFGDenoiserTimesteps`: (x, timestep) → the guided eps of the batch."""

    guide: CFGDenoiser
    alphas_cumprod: torch.Tensor
    scale_multiplier: float = 1.0  # DDIM CFG++: 1 / 12.5
    last_uncond: torch.Tensor | None = None  # the unconditional eps of the last call (DDIM CFG++)

    def __call__(self, x: torch.Tensor, timestep: float) -> torch.Tensor:
        guide = self.guide
        if guide.blend is not None:  # A1111 blends the model's input here ("mask before denoising")
            init_latents, mask = guide.blend
            x = init_latents * (1 - mask) + x * mask
        output = guide.outputs(x, torch.full((x.shape[0],), float(timestep), device=x.device))
        if guide.v_prediction:  # eps from v, with alphas_cumprod at the truncated timestep as A1111
            a = self.alphas_cumprod[int(timestep)]
            output = a.sqrt() * output + (1 - a).sqrt() * torch.cat([x, x])
        cond, uncond = output.chunk(2)
        self.last_uncond = uncond
        return uncond + (cond - uncond) * (guide.cfg_scale * self.scale_multiplier)


@dataclass
class TimestepRun:
    model: TimestepDenoiser
    timesteps: torch.Tensor  # ascending integer timesteps (A1111's, cut for img2img)
    options: Options
    randn_like: Callable[[], torch.Tensor]
    callback: Callable[[int], None]
    from_image: bool


def _alphas(run: TimestepRun) -> tuple[torch.Tensor, torch.Tensor]:
    """alphas_cumprod at each timestep and at the one before it (at 0 for the first), as A1111 (the latter
    in float64)."""
    alphas_cumprod = run.model.alphas_cumprod
    previous = torch.cat([run.timesteps.new_zeros([1]), run.timesteps[:-1]])
    return alphas_cumprod[run.timesteps], alphas_cumprod[previous].double()


def ddim(run: TimestepRun, x: torch.Tensor, cfgpp: bool = False) -> torch.Tensor:
    alphas, alphas_prev = _alphas(run)
    eta = run.options.eta
    sigmas = eta * ((1 - alphas_prev) / (1 - alphas.double()) * (1 - alphas.double() / alphas_prev)).sqrt()
    if cfgpp:
        run.model.scale_multiplier = CFGPP_SCALE
    for i in range(len(run.timesteps) - 1):
        index = len(run.timesteps) - 1 - i
        e_t = run.model(x, float(run.timesteps[index]))
        a_t, a_prev, sigma_t = float(alphas[index]), float(alphas_prev[index]), float(sigmas[index])
        pred_x0 = (x - math.sqrt(1 - a_t) * e_t) / math.sqrt(a_t)
        direction = run.model.last_uncond if cfgpp else e_t
        x = math.sqrt(a_prev) * pred_x0 + math.sqrt(1 - a_prev - sigma_t ** 2) * direction + sigma_t * run.randn_like()
        run.callback(i)
    return x


def ddim_cfgpp(run: TimestepRun, x: torch.Tensor) -> torch.Tensor:
    return ddim(run, x, cfgpp=True)


def plms(run: TimestepRun, x: torch.Tensor) -> torch.Tensor:
    alphas, alphas_prev = _alphas(run)

    def step(e_t: torch.Tensor, index: int) -> torch.Tensor:
        a_t, a_prev = float(alphas[index]), float(alphas_prev[index])
        pred_x0 = (x - math.sqrt(1 - a_t) * e_t) / math.sqrt(a_t)
        return math.sqrt(a_prev) * pred_x0 + math.sqrt(1 - a_prev) * e_t

    old_eps: list[torch.Tensor] = []  # the last three eps, oldest first
    for i in range(len(run.timesteps) - 1):
        index = len(run.timesteps) - 1 - i
        e_t = run.model(x, float(run.timesteps[index]))
        if not old_eps:  # pseudo improved Euler
            e_next = run.model(step(e_t, index), float(run.timesteps[max(index - 1, 0)]))
            e_prime = (e_t + e_next) / 2
        elif len(old_eps) == 1:  # Adams-Bashforth, orders 2, 3, 4
            e_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x = step(e_prime, index)
        old_eps = [*old_eps, e_t][-3:]
        run.callback(i)
    return x


# -- UniPC --------------------------------------------------------------------------------------------------

class _NoiseSchedule:
    """The discrete VP schedule over continuous t in [1/N, 1]: log alpha_t (= ½ log alphas_cumprod)
    interpolated linearly between t_n = (n + 1) / N."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.total = len(alphas_cumprod)
        self.t_points = torch.linspace(0.0, 1.0, self.total + 1)[1:]
        self.log_alphas = 0.5 * alphas_cumprod.float().log()

    @staticmethod
    def _interpolate(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
        """Piecewise linear through (xp, fp) (xp ascending), extended by the end segments."""
        i = torch.searchsorted(xp, x.reshape(1)).clamp(1, len(xp) - 1)
        x0, x1, y0, y1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
        return (y0 + (x - x0) * (y1 - y0) / (x1 - x0)).reshape(x.shape)

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self._interpolate(t, self.t_points, self.log_alphas)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self.log_alpha(t).exp()

    def std(self, t: torch.Tensor) -> torch.Tensor:
        return (1.0 - (2.0 * self.log_alpha(t)).exp()).sqrt()

    def lambda_(self, t: torch.Tensor) -> torch.Tensor:
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * (1.0 - (2.0 * log_alpha).exp()).log()

    def inverse_lambda(self, lamb: torch.Tensor) -> torch.Tensor:
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lamb), -2.0 * lamb)
        return torch.stack([self._interpolate(v, self.log_alphas.flip(0), self.t_points.flip(0)) for v in log_alpha])

    def times(self, skip_type: str, t_start: float, t_end: float, n: int) -> torch.Tensor:
        if skip_type == "logSNR":
            lambdas = torch.linspace(float(self.lambda_(torch.tensor(t_start))), float(self.lambda_(torch.tensor(t_end))), n + 1)
            return self.inverse_lambda(lambdas)
        if skip_type == "time_quadratic":
            return torch.linspace(t_start ** 0.5, t_end ** 0.5, n + 1).pow(2)
        return torch.linspace(t_start, t_end, n + 1)


class _UniPC:
    def __init__(self, run: TimestepRun):
        self.run = run
        self.schedule = _NoiseSchedule(run.model.alphas_cumprod)
        self.variant = run.options.uni_pc_variant

    def data_prediction(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 from the guided eps at continuous t (the UNet at timestep (t - 1/N) · 1000)."""
        eps = self.run.model(x, float((t - 1.0 / self.schedule.total) * 1000.0))
        return (x - self.schedule.std(t) * eps) / self.schedule.alpha(t)

    def update(self, x: torch.Tensor, models: list[torch.Tensor], times: list[torch.Tensor], t: torch.Tensor,
               order: int, corrector: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One multistep step from times[-1] to t with `order` previous data predictions; the model's value
        at the new point (the corrector's call), None without the corrector."""
        ns = self.schedule
        lambda_prev, lambda_t = ns.lambda_(times[-1]), ns.lambda_(t)
        h = lambda_t - lambda_prev
        rks, d1s = [], []
        for i in range(1, order):
            rk = (ns.lambda_(times[-(i + 1)]) - lambda_prev) / h
            rks.append(rk)
            d1s.append((models[-(i + 1)] - models[-1]) / rk)
        rks_t = torch.tensor([*[float(r) for r in rks], 1.0])
        hh = -h
        x_base = ns.std(t) / ns.std(times[-1]) * x - ns.alpha(t) * hh.expm1() * models[-1]
        step = self._bh_step if self.variant in ("bh1", "bh2") else self._vary_coeff_step
        return step(x_base, t, hh, rks_t, d1s, order, corrector, models[-1])

    def _bh_step(self, x_base: torch.Tensor, t: torch.Tensor, hh: torch.Tensor, rks: torch.Tensor,
                 d1s: list[torch.Tensor], order: int, corrector: bool, model_prev: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b_h = hh if self.variant == "bh1" else hh.expm1()
        h_phi_k = hh.expm1() / hh - 1
        factorial, rows, b = 1, [], []
        for i in range(1, order + 1):
            rows.append(rks ** (i - 1))
            b.append(float(h_phi_k * factorial / b_h))
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        r_matrix, b_vector = torch.stack(rows), torch.tensor(b)
        alpha_b = self.schedule.alpha(t) * b_h

        def combined(rhos: torch.Tensor) -> torch.Tensor | float:
            return sum(rho * d for rho, d in zip(rhos, d1s)) if d1s else 0.0

        x_t = x_base
        if d1s:
            rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(r_matrix[:-1, :-1], b_vector[:-1])
            x_t = x_base - alpha_b * combined(rhos_p)
        if not corrector:
            return x_t, None
        rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(r_matrix, b_vector)
        model_t = self.data_prediction(x_t, t)
        return x_base - alpha_b * (combined(rhos_c[:-1]) + rhos_c[-1] * (model_t - model_prev)), model_t

    def _vary_coeff_step(self, x_base: torch.Tensor, t: torch.Tensor, hh: torch.Tensor, rks: torch.Tensor,
                         d1s: list[torch.Tensor], order: int, corrector: bool, model_prev: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
        k_count = len(rks)
        columns, column = [], torch.ones_like(rks)
        for k in range(1, k_count + 1):  # C[i, k - 1] = rks[i]^(k-1) / k!
            columns.append(column)
            column = column * rks / (k + 1)
        c_matrix = torch.stack(columns, dim=1)
        h_phi, h_phi_k, factorial = [], hh.expm1(), 1
        for k in range(1, k_count + 2):
            h_phi.append(h_phi_k)
            h_phi_k = h_phi_k / hh - 1 / factorial
            factorial *= k + 1
        alpha_t = self.schedule.alpha(t)

        def residual(weights: torch.Tensor) -> torch.Tensor:
            return sum(w * d for w, d in zip(weights, d1s))

        x_t = x_base
        if d1s:
            a_p = torch.linalg.inv(c_matrix[:-1, :-1])
            for k in range(k_count - 1):
                x_t = x_t - alpha_t * h_phi[k + 1] * residual(a_p[k])
        if not corrector:
            return x_t, None
        a_c = torch.linalg.inv(c_matrix)
        model_t = self.data_prediction(x_t, t)
        x_t, last = x_base, 0
        for last in range(k_count - 1):
            x_t = x_t - alpha_t * h_phi[last + 1] * residual(a_c[last][:-1])
        # A1111 weighs the new point with the last row's last entry the loop reached (row 0 at order 1)
        return x_t - alpha_t * h_phi[k_count] * ((model_t - model_prev) * a_c[last][-1]), model_t

    def sample(self, x: torch.Tensor) -> torch.Tensor:
        o, run = self.run.options, self.run
        steps, order = len(run.timesteps), o.uni_pc_order
        check_unipc_order(order, steps)
        t_start = float(run.timesteps[-1]) / 1000 + 1 / 1000 if run.from_image else 1.0
        times = self.schedule.times(o.uni_pc_skip_type, t_start, 1.0 / self.schedule.total, steps)
        models, previous = [self.data_prediction(x, times[0])], [times[0]]
        for init_order in range(1, order):  # the first steps at increasing order
            x, model_x = self.update(x, models, previous, times[init_order], init_order, corrector=True)
            assert model_x is not None
            run.callback(init_order - 1)
            models.append(model_x)
            previous.append(times[init_order])
        for step in range(order, steps + 1):
            step_order = min(order, steps + 1 - step) if o.uni_pc_lower_order_final else order
            x, model_x = self.update(x, models, previous, times[step], step_order, corrector=step != steps)
            run.callback(step - 1)
            previous = [*previous[1:], times[step]]
            if step < steps:
                assert model_x is not None
                models = [*models[1:], model_x]
        return x


def unipc(run: TimestepRun, x: torch.Tensor) -> torch.Tensor:
    return _UniPC(run).sample(x)


SAMPLER_FUNCTIONS: dict[str, Callable[[TimestepRun, torch.Tensor], torch.Tensor]] = {
    "ddim": ddim, "ddim_cfgpp": ddim_cfgpp, "plms": plms, "unipc": unipc,
}


def sample(guide: CFGDenoiser, function: str, options: Options, randn_like: Callable[[], torch.Tensor],
           callback: Callable[[int], None], x: torch.Tensor, sigmas: torch.Tensor, from_image: bool) -> torch.Tensor:
    """Run timestep sampler `function` from `x` at sigmas[0] (the k-diffusion scale) down the timesteps of
    `sigmas` (`timestep_sigmas`, cut for img2img); the latents in the model's scale.

    txt2img samples every timestep from pure noise; img2img (`from_image`) starts from the image noised to
    sigmas[0]'s timestep and samples the timesteps below it (A1111's `sample_img2img`)."""
    table = guide.sigmas
    timesteps = torch.stack([(table.sigmas - s.cpu()).abs().argmin() for s in sigmas[:-1]]).flip(0)
    if from_image:
        timesteps = timesteps[:-1]
    x = x * (1 / (sigmas[0] ** 2 + 1) ** 0.5)
    model = TimestepDenoiser(guide, table.alphas_cumprod.to(x.device))
    return SAMPLER_FUNCTIONS[function](TimestepRun(model, timesteps, options, randn_like, callback, from_image), x)
