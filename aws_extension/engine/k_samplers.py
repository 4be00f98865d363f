"""The k-diffusion samplers of A1111 1.10 and their sigma schedules, as a small loop over a denoiser.

A1111 runs these samplers from crowsonkb/k-diffusion (commit ab527a9) and `sd_samplers_extra.restart_sampler`
on a `CompVisDenoiser` (sigmas from the model's alphas_cumprod), and its `sample_lcm` on its LCM denoiser
(`LCMSigmas`); the algorithms here follow those papers'
update rules as k-diffusion writes them, so that with A1111's noise (`engine.noise`) they make A1111's
latents. `model(x, sigma)` is the CFG denoiser (the denoised latents); `noise(sigma, sigma_next)` a unit
noise sample (the seed's continued stream, or a Brownian tree for the SDE samplers); `callback(i)` runs
after the first model call of step i (progress, interrupt, ControlNet's step; the prompt follows the model's
own count of calls, as A1111's).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from scipy import integrate

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Options:
    """A1111's sampler settings (eta_ancestral or eta_ddim, s_churn, s_tmin, s_tmax, s_noise, the 2M SDE
    solver, the uni_pc_* settings of UniPC)."""

    eta: float = 1.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0
    solver_type: str = "midpoint"
    uni_pc_variant: str = "bh1"
    uni_pc_skip_type: str = "time_uniform"
    uni_pc_order: int = 3
    uni_pc_lower_order_final: bool = True


@dataclass
class Run:
    model: Model
    noise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    callback: Callable[[int], None]
    options: Options
    randn_like: Callable[[], torch.Tensor]  # the next sample of the seed's stream (k-diffusion's torch.randn_like)


# -- the model's discrete sigmas and the schedules -------------------------------------------------------

class DiscreteSigmas:
    """The CompVis model's 1000 sigmas, and k-diffusion's interpolation between sigma and timestep."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.alphas_cumprod = alphas_cumprod.float()  # the ldm model's buffer (A1111's timestep samplers use it)
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float()
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma, log_sigmas = sigma.log(), self.log_sigmas.to(sigma.device)  # sigma: on the UNet's device
        dists = log_sigma - log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
        low, high = log_sigmas[low_idx], log_sigmas[low_idx + 1]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        return ((1 - w) * low_idx + w * (low_idx + 1)).view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]).exp()

    def uniform(self, n: int) -> torch.Tensor:
        """The model wrap's own `get_sigmas(n)`: the "Uniform" schedule, and the "Automatic" one of Euler, LMS,
        Heun, Euler a, DPM fast/adaptive, LCM: timesteps evenly spaced."""
        return _append_zero(self.t_to_sigma(torch.linspace(len(self.sigmas) - 1, 0, n)))


class LCMSigmas(DiscreteSigmas):
    """A1111's `LCMCompVisDenoiser`: only the 50 timesteps LCM was distilled on ("original timesteps": every
    20th of the model's 1000, 19, 39, ..., 999). Sigma → timestep snaps to the nearest of them (a timestep of
    the model, 0-999); timestep → sigma interpolates between them; the uniform schedule runs from 999 to 19.
    The schedules that take the model's sigma range or sigmas get these (as A1111's `get_sigmas` on this wrap)."""

    ORIGINAL_TIMESTEPS = 50

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.skip = len(alphas_cumprod) // self.ORIGINAL_TIMESTEPS
        super().__init__(alphas_cumprod[self.skip - 1::self.skip])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        nearest = (sigma.log() - self.log_sigmas.to(sigma.device)[:, None]).abs().argmin(dim=0)
        return (nearest * self.skip + (self.skip - 1)).float().view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        index = ((t - (self.skip - 1)) / self.skip).float().clamp(0, len(self.sigmas) - 1)
        return super().t_to_sigma(index)

    def uniform(self, n: int) -> torch.Tensor:
        start, end = self.sigma_to_t(self.sigmas[-1]), self.sigma_to_t(self.sigmas[0])
        return _append_zero(self.t_to_sigma(torch.linspace(float(start), float(end), n)))

    def consistency_output(self, denoised: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """LCM's boundary condition as A1111 applies it: c_out · denoised + c_skip · x, where x is the sample in
        the sigma scale and the scalings are of 10 × the timestep with sigma_data 0.5."""
        scaled = self.sigma_to_t(sigma) * 10.0
        c_skip = 0.25 / (scaled ** 2 + 0.25)
        c_out = scaled / (scaled ** 2 + 0.25) ** 0.5
        return c_out * denoised + c_skip * x


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    ramp = torch.linspace(1, 0, n) ** rho
    return _append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def sgm_uniform(n: int, model: DiscreteSigmas, sigma_min: float, sigma_max: float) -> torch.Tensor:
    start, end = model.sigma_to_t(torch.tensor(sigma_max)), model.sigma_to_t(torch.tensor(sigma_min))
    return _append_zero(torch.stack([model.t_to_sigma(t) for t in torch.linspace(start, end, n + 1)[:-1]]))


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    alpha_min, alpha_max = torch.arctan(torch.tensor(sigma_min)), torch.arctan(torch.tensor(sigma_max))
    steps = torch.arange(n + 1)
    return torch.tan(steps / n * alpha_min + (1.0 - steps / n) * alpha_max)


def simple(n: int, model: DiscreteSigmas) -> torch.Tensor:
    stride = len(model.sigmas) / n
    return _append_zero(torch.stack([model.sigmas[-(1 + int(x * stride))] for x in range(n)]))


def normal(n: int, model: DiscreteSigmas, sigma_min: float, sigma_max: float) -> torch.Tensor:
    start, end = model.sigma_to_t(torch.tensor(sigma_max)), model.sigma_to_t(torch.tensor(sigma_min))
    return _append_zero(torch.stack([model.t_to_sigma(t) for t in torch.linspace(start, end, n)]))


def ddim_uniform(n: int, model: DiscreteSigmas) -> torch.Tensor:
    stride = max(len(model.sigmas) // n, 1)
    picked = [model.sigmas[x] for x in range(1, len(model.sigmas), stride)]
    return _append_zero(torch.stack(picked[::-1]))


# -- the samplers (k-diffusion's algorithms) -------------------------------------------------------------

def ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The sigma to step down to and the noise to add back for an ancestral step of `eta`."""
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    return (sigma_to ** 2 - sigma_up ** 2) ** 0.5, sigma_up


def _to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    return (x - denoised) / sigma


def _churn(run: Run, x: torch.Tensor, sigmas: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Karras et al.'s "churn": noise raising sigma_i to sigma_hat. k-diffusion draws the noise each step
    even unused, so with churn on one sample of the stream is used per step."""
    o = run.options
    if o.s_churn <= 0:
        return x, sigmas[i]
    gamma = min(o.s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if o.s_tmin <= sigmas[i] <= o.s_tmax else 0.0
    eps = run.randn_like() * o.s_noise
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        x = x + eps * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


def euler(run: Run, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(run, x, sigmas, i)
        denoised = run.model(x, sigma_hat)
        run.callback(i)
        x = x + _to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
    return x


def heun(run: Run, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(run, x, sigmas, i)
        denoised = run.model(x, sigma_hat)
        run.callback(i)
        d = _to_d(x, sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = _to_d(x_2, sigmas[i + 1], run.model(x_2, sigmas[i + 1]))
            x = x + (d + d_2) / 2 * dt
    return x


def lcm(run: Run, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """A1111's `sample_lcm` (on `LCMSigmas`' denoiser): each step takes the model's estimate and noises it
    to the next sigma with the seed's next draw (k-diffusion's default noise sampler)."""
    for i in range(len(sigmas) - 1):
        x = run.model(x, sigmas[i])
        run.callback(i)
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * run.noise(sigmas[i], sigmas[i + 1])
    return x


def dpm_2(run: Run, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(run, x, sigmas, i)
        denoised = run.model(x, sigma_hat)
        run.callback(i)
        d = _to_d(x, sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            x = x + _to_d(x_2, sigma_mid, run.model(x_2, sigma_mid)) * (sigmas[i + 1] - sigma_hat)
    return x


def euler_ancestral(run: Run, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    o = run.options
    for i in range(len(sigmas) - 1):
        denoised = run.model(x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], o.eta)
        run.callback(i)
        x = x + _to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + run.noise(sigmas[i], sigmas[i + 1]) * o.s_noise * sigma_up
    return x


def dpm_2_ancestral(run: Run, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    o = run.options
    for i in range(len(sigmas) - 1):
        denoised = run.model(x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], o.eta)
        run.callback(i)
        d = _to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            x = x + _to_d(x_2, sigma_mid, run.model(x_2, sigma_mid)) * (sigma_down - sigmas[i])
            x = x + run.noise(sigmas[i], sigmas[i + 1]) * o.s_noise * sigma_up
    return x


def lms(run: Run, x: torch.Tensor, sigmas: torch.Tensor, order: int = 4) -> torch.Tensor:
    points = sigmas.detach().cpu().double().numpy()

    def coefficient(cur_order: int, i: int, j: int) -> float:
        def basis(tau: float) -> float:
            product = 1.0
            for k in range(cur_order):
                if k != j:
                    product *= (tau - points[i - k]) / (points[i - j] - points[i - k])
            return product
        return integrate.quad(basis, points[i], points[i + 1], epsrel=1e-4)[0]

    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = run.model(x, sigmas[i])
        ds = [*ds, _to_d(x, sigmas[i], denoised)][-order:]
        run.callback(i)
        cur_order = min(i + 1, order)
        x = x + sum(coefficient(cur_order, i, j) * d for j, d in enumerate(reversed(ds)))
    return x


def _sigma_fn(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


def _t_fn(sigma: torch.Tensor) -> torch.Tensor:
    return sigma.log().neg()


def dpmpp_2s_ancestral(run: Run, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    o = run.options
    for i in range(len(sigmas) - 1):
        denoised = run.model(x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], o.eta)
        run.callback(i)
        if sigma_down == 0:
            x = x + _to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t_fn(sigmas[i]), _t_fn(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma_fn(s) / _sigma_fn(t)) * x - (-h / 2).expm1() * denoised
            denoised_2 = run.model(x_2, _sigma_fn(s))
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + run.noise(sigmas[i], sigmas[i + 1]) * o.s_noise * sigma_up
    return x


def dpmpp_sde(run: Run, x: torch.Tensor, sigmas: torch.Tensor, r: float = 0.5) -> torch.Tensor:
    o = run.options
    for i in range(len(sigmas) - 1):
        denoised = run.model(x, sigmas[i])
        run.callback(i)
        if sigmas[i + 1] == 0:
            x = x + _to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        sd, su = ancestral_step(_sigma_fn(t), _sigma_fn(s), o.eta)
        s_ = _t_fn(sd)
        x_2 = (_sigma_fn(s_) / _sigma_fn(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + run.noise(_sigma_fn(t), _sigma_fn(s)) * o.s_noise * su
        denoised_2 = run.model(x_2, _sigma_fn(s))
        sd, su = ancestral_step(_sigma_fn(t), _sigma_fn(t_next), o.eta)
        t_next_ = _t_fn(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma_fn(t_next_) / _sigma_fn(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + run.noise(_sigma_fn(t), _sigma_fn(t_next)) * o.s_noise * su
    return x


def dpmpp_2m(run: Run, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = run.model(x, sigmas[i])
        run.callback(i)
        t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is not None and sigmas[i + 1] != 0:
            r = (t - _t_fn(sigmas[i - 1])) / h
            blended = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        else:
            blended = denoised
        x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * blended
        old_denoised = denoised
    return x


def dpmpp_2m_sde(run: Run, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    o = run.options
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = run.model(x, sigmas[i])
        run.callback(i)
        h = None
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = sigmas[i].log() - sigmas[i + 1].log()
            eta_h = o.eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if o.solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if o.eta:
                x = x + run.noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * o.s_noise
        old_denoised, h_last = denoised, h
    return x


def _third_order_correction(x: torch.Tensor, denoised: torch.Tensor, history: list[torch.Tensor],
                            hs: list[torch.Tensor], h: torch.Tensor, h_eta: torch.Tensor) -> torch.Tensor:
    phi_2 = h_eta.neg().expm1() / h_eta + 1
    if len(history) >= 2:
        r0, r1 = hs[0] / h, hs[1] / h
        d1_0 = (denoised - history[0]) / r0
        d1_1 = (history[0] - history[1]) / r1
        d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        return x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
    if history:
        return x + phi_2 * (denoised - history[0]) / (hs[0] / h)
    return x


def dpmpp_3m_sde(run: Run, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    o = run.options
    history: list[torch.Tensor] = []  # the last two denoised, newest first
    hs: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = run.model(x, sigmas[i])
        run.callback(i)
        if sigmas[i + 1] == 0:
            x = denoised
            h = torch.zeros(())  # k-diffusion keeps the last step's h; it is never used again
        else:
            h = sigmas[i].log() - sigmas[i + 1].log()
            h_eta = h * (o.eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            x = _third_order_correction(x, denoised, history, hs, h, h_eta)
            if o.eta:
                x = x + run.noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * o.eta).expm1().neg().sqrt() * o.s_noise
        history, hs = [denoised, *history][:2], [h, *hs][:2]
    return x


def restart(run: Run, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """A1111's Restart sampler (Xu et al. 2023): Heun steps, with the segment down to sigma 0.1 re-run
    from sigma 2 (renoised) when there are 20 steps or more."""
    steps = len(sigmas) - 1
    restarts: dict[int, tuple[int, int, float]] = {}
    if steps >= 20:
        restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = karras(steps - restart_steps * restart_times, float(sigmas[-2]), float(sigmas[0]))
        restarts = {int(torch.argmin(abs(sigmas - 0.1), dim=0)): (restart_steps + 1, restart_times, 2.0)}
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i in range(len(sigmas) - 1):
        pairs.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in restarts:
            restart_steps, restart_times, restart_max = restarts[i + 1]
            max_idx = int(torch.argmin(abs(sigmas - restart_max), dim=0))
            if max_idx < i + 1:
                segment = karras(restart_steps, float(sigmas[i + 1]), float(sigmas[max_idx]))[:-1]
                pairs += list(zip(segment[:-1], segment[1:])) * restart_times
    last_sigma = None
    for step, (old_sigma, new_sigma) in enumerate(pairs):
        if last_sigma is not None and last_sigma < old_sigma:
            x = x + run.randn_like() * run.options.s_noise * (old_sigma ** 2 - last_sigma ** 2) ** 0.5
        denoised = run.model(x, old_sigma)
        d = _to_d(x, old_sigma, denoised)
        run.callback(step)
        dt = new_sigma - old_sigma
        if new_sigma == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            x = x + (d + _to_d(x_2, new_sigma, run.model(x_2, new_sigma))) / 2 * dt
        last_sigma = new_sigma
    return x


# -- DPM-Solver (Lu et al. 2022), in k-diffusion's form: t = -log sigma, eps = (x - denoised) / sigma ------

class _DPMSolver:
    """One step's model evaluations are cached by name (the 2nd and 3rd order steps share the first)."""

    def __init__(self, run: Run):
        self.run = run
        self.cache: dict[str, torch.Tensor] = {}

    @staticmethod
    def sigma(t: torch.Tensor) -> torch.Tensor:
        return t.neg().exp()

    def eps(self, key: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if key not in self.cache:
            self.cache[key] = (x - self.run.model(x, self.sigma(t))) / self.sigma(t)
        return self.cache[key]

    def step(self, order: int, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, r1: float = 0.5) -> torch.Tensor:
        h = t_next - t
        eps = self.eps("eps", x, t)
        x_1 = x - self.sigma(t_next) * h.expm1() * eps
        if order == 1:
            return x_1
        r1 = 1 / 3 if order == 3 else r1
        s1 = t + r1 * h
        eps_r1 = self.eps("eps_r1", x - self.sigma(s1) * (r1 * h).expm1() * eps, s1)
        if order == 2:
            return x_1 - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)
        r2 = 2 / 3
        s2 = t + r2 * h
        u2 = (x - self.sigma(s2) * (r2 * h).expm1() * eps
              - self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = self.eps("eps_r2", u2, s2)
        return x_1 - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)

    def ancestral(self, t: torch.Tensor, t_next: torch.Tensor, t_end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The target t of the step and the noise to add (eta > 0), clipped at t_end."""
        eta = self.run.options.eta
        if not eta:
            return t_next, torch.zeros(())
        sigma_down, _ = ancestral_step(self.sigma(t), self.sigma(t_next), eta)
        target = torch.minimum(t_end, sigma_down.log().neg())
        return target, (self.sigma(t_next) ** 2 - self.sigma(target) ** 2) ** 0.5


def dpm_fast(run: Run, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """DPM-Solver-fast: len(sigmas) - 1 model evaluations in steps of order 3 (then 2, 1), from sigmas[0]
    down to sigmas[-2] (A1111 passes the schedule's ends)."""
    solver = _DPMSolver(run)
    nfe = len(sigmas) - 1
    t_start, t_end = sigmas[0].log().neg(), sigmas[-2].log().neg()
    m = nfe // 3 + 1
    ts = torch.linspace(float(t_start), float(t_end), m + 1)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        solver.cache = {}
        t, t_next = ts[i], ts[i + 1]
        target, noise_scale = solver.ancestral(t, t_next, t_end)
        solver.eps("eps", x, t)
        run.callback(i)
        x = solver.step(order, x, t, target)
        x = x + noise_scale * run.options.s_noise * run.noise(solver.sigma(t), solver.sigma(t_next))
    return x


@dataclass
class _StepSizeController:
    """k-diffusion's PID step size control (with its defaults: integral only)."""

    h: float
    order: float
    errors: list[float] | None = None

    def accept(self, error: float) -> bool:
        inverse = 1 / (float(error) + 1e-8)
        if self.errors is None:
            self.errors = [inverse, inverse, inverse]
        self.errors[0] = inverse
        factor = 1 + math.atan(self.errors[0] ** (1 / self.order) - 1)
        accepted = factor >= 0.81
        if accepted:
            self.errors[2], self.errors[1] = self.errors[1], self.errors[0]
        self.h *= factor
        return accepted


def dpm_adaptive(run: Run, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """DPM-Solver-23 with adaptive steps (rtol 0.05, atol 0.0078, h_init 0.05), sigmas[0] → sigmas[-2]."""
    solver = _DPMSolver(run)
    t, t_end = sigmas[0].log().neg(), sigmas[-2].log().neg()
    atol, rtol = torch.tensor(0.0078), torch.tensor(0.05)
    pid = _StepSizeController(0.05, 1.5 if run.options.eta else 3)
    x_prev, steps = x, 0
    while t < t_end - 1e-5:
        solver.cache = {}
        t_next = torch.minimum(t_end, t + pid.h)
        target, noise_scale = solver.ancestral(t, t_next, t_end)
        x_low = solver.step(2, x, t, target, r1=1 / 3)
        x_high = solver.step(3, x, t, target)
        delta = torch.maximum(atol, rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.accept(error):
            x_prev = x_low
            x = x_high + noise_scale * run.options.s_noise * run.noise(solver.sigma(t), solver.sigma(t_next))
            t = t_next
        run.callback(steps)
        steps += 1
    return x
