"""A1111 sampler names → the engine's k-diffusion samplers (engine.k_samplers, LCM included) or its timestep
samplers (engine.timestep_samplers), all run in engine.k_pass.

A1111 before 1.9 named the Karras variants as samplers ("DPM++ 2M Karras"); 1.9+ has a separate
`scheduler` field ("Automatic", "Karras", ...). Both spellings are accepted here. The names (torch-free, for
the middleware too) are `aws_extension.payload.SAMPLER_NAMES` and `SCHEDULER_NAMES`: `SAMPLERS` and
`SCHEDULES` have exactly those keys.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from aws_extension.engine.base import EngineError
from aws_extension.engine.timestep_samplers import TIMESTEPS
from aws_extension.payload import SAMPLER_NAMES, SCHEDULER_NAMES, canonical_schedule

KARRAS, EXPONENTIAL = "karras", "exponential"  # SCHEDULES' values name k_samplers' schedule functions


@dataclass(frozen=True)
class SamplerSpec:
    k_function: str  # a function of engine.k_pass.SAMPLER_FUNCTIONS or timestep_samplers'
    sigmas: str | None = None  # the k-diffusion schedule (SCHEDULES' values); None: "Automatic" (uniform)
    schedule_choice: bool = False  # the `scheduler` field may pick the schedule
    solver_type: str = "midpoint"  # DPM++ 2M SDE's ("heun" for the Heun variants)
    brownian: bool = False  # its noise comes from a Brownian tree per image (A1111's SDE samplers)
    discard_penultimate: bool = False  # A1111 drops the next-to-last sigma
    uses_ensd: bool = False  # eta_noise_seed_delta changes its noise (the infotext says "ENSD")
    second_order: bool = False  # A1111's "second_order": its prompt schedule has twice the steps

    @property
    def step_multiplier(self) -> int:
        """A1111's `p.step_multiplier`: the prompt schedule of a pass is built for steps × this."""
        return 2 if self.second_order else 1


def _k(function: str, sigmas: str | None = None, **flags: Any) -> SamplerSpec:
    """A k-diffusion sampler of A1111 1.10 (`samplers_k_diffusion`, and `samplers_lcm`), run by engine.k_pass."""
    return SamplerSpec(function, sigmas=sigmas, schedule_choice=True, **flags)


def _timesteps(function: str) -> SamplerSpec:
    """A timestep sampler of A1111 1.10 (`samplers_timesteps`), on A1111's timesteps only."""
    return SamplerSpec(function, sigmas=TIMESTEPS)


_ANCESTRAL = {"uses_ensd": True}
_SDE = {"brownian": True}
_2ND = {"second_order": True}
# Names of A1111 1.10 (plain names, each with its "Automatic" schedule) and of A1111 < 1.9 (" Karras").
SAMPLERS: dict[str, SamplerSpec] = {
    "Euler a": _k("euler_ancestral", **_ANCESTRAL),
    "Euler": _k("euler"),
    "LMS": _k("lms"),
    "LMS Karras": _k("lms", KARRAS),
    "Heun": _k("heun", **_2ND),
    "DPM2": _k("dpm_2", KARRAS, discard_penultimate=True, **_2ND),
    "DPM2 Karras": _k("dpm_2", KARRAS, discard_penultimate=True, **_2ND),
    "DPM2 a": _k("dpm_2_ancestral", KARRAS, discard_penultimate=True, **_ANCESTRAL, **_2ND),
    "DPM2 a Karras": _k("dpm_2_ancestral", KARRAS, discard_penultimate=True, **_ANCESTRAL, **_2ND),
    "DPM++ 2S a": _k("dpmpp_2s_ancestral", KARRAS, **_ANCESTRAL, **_2ND),
    "DPM++ 2S a Karras": _k("dpmpp_2s_ancestral", KARRAS, **_ANCESTRAL, **_2ND),
    "DPM++ 2M": _k("dpmpp_2m", KARRAS),
    "DPM++ 2M Karras": _k("dpmpp_2m", KARRAS),
    "DPM++ 2M SDE": _k("dpmpp_2m_sde", EXPONENTIAL, **_SDE),
    "DPM++ 2M SDE Karras": _k("dpmpp_2m_sde", KARRAS, **_SDE),
    "DPM++ 2M SDE Heun": _k("dpmpp_2m_sde", EXPONENTIAL, solver_type="heun", **_SDE),
    "DPM++ 2M SDE Heun Karras": _k("dpmpp_2m_sde", KARRAS, solver_type="heun", **_SDE),
    "DPM++ 3M SDE": _k("dpmpp_3m_sde", EXPONENTIAL, discard_penultimate=True, **_SDE),
    "DPM++ 3M SDE Karras": _k("dpmpp_3m_sde", KARRAS, discard_penultimate=True, **_SDE),
    "DPM++ SDE": _k("dpmpp_sde", KARRAS, **_SDE, **_2ND),
    "DPM++ SDE Karras": _k("dpmpp_sde", KARRAS, **_SDE, **_2ND),
    "DPM fast": _k("dpm_fast", **_ANCESTRAL),
    "DPM adaptive": _k("dpm_adaptive", **_ANCESTRAL),
    "Restart": _k("restart", KARRAS, **_2ND),
    "DDIM": _timesteps("ddim"),
    "DDIM CFG++": _timesteps("ddim_cfgpp"),
    "PLMS": _timesteps("plms"),
    "UniPC": _timesteps("unipc"),
    "LCM": _k("lcm"),  # A1111's `samplers_lcm`: a KDiffusionSampler on its own denoiser (k_samplers.LCMSigmas)
}

# The 1.9+ `scheduler` field (A1111's sd_schedulers): "Automatic" keeps the sampler's own schedule.
SCHEDULES: dict[str, str | None] = {
    "Automatic": None, "Uniform": "uniform", "Karras": KARRAS, "Exponential": EXPONENTIAL,
    "Polyexponential": "polyexponential", "SGM Uniform": "sgm_uniform", "KL Optimal": "kl_optimal",
    "Simple": "simple", "Normal": "normal", "DDIM": "ddim",
}


def sampler_names() -> list[str]:
    return list(SAMPLER_NAMES)


def resolve_sampler(name: str, schedule: str = "Automatic", field_name: str = "sampler_name") -> SamplerSpec:
    """The spec of sampler `name` with the 1.9+ `scheduler` applied; unknown → EngineError listing names."""
    spec = SAMPLERS.get(name)
    if spec is None:
        raise EngineError(
            f"{field_name}: unknown sampler {name!r}; valid samplers: {', '.join(SAMPLER_NAMES)}", field_name
        )
    known = canonical_schedule(schedule)
    if known is None:
        raise EngineError(
            f"scheduler: unsupported schedule {schedule!r}; valid: {', '.join(SCHEDULER_NAMES)}", "scheduler"
        )
    schedule = known
    sigmas = SCHEDULES[schedule]
    if sigmas is not None and sigmas != spec.sigmas:
        if not spec.schedule_choice:
            raise EngineError(f"scheduler: sampler {name!r} has no {schedule} schedule", "scheduler")
        spec = replace(spec, sigmas=sigmas)
    return spec


def infotext_names(name: str, spec: SamplerSpec) -> tuple[str, str]:
    """A1111 1.10's "Sampler" and "Schedule type" of a job: the sampler without a " Karras" suffix, and the
    label of the schedule it runs ("Automatic" for a sampler without a schedule function: uniform, DDIM, ...)."""
    base = name.removesuffix(" Karras")
    labels = {value: label for label, value in SCHEDULES.items() if value is not None}
    return base, labels.get(spec.sigmas, "Automatic")
