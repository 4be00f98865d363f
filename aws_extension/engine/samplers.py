"""A1111 sampler names → diffusers schedulers.

A1111 before 1.9 named the Karras variants as samplers ("DPM++ 2M Karras"); 1.9+ has a separate
`scheduler` field ("Automatic", "Karras", ...). Both spellings are accepted here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import diffusers

from aws_extension.engine.base import EngineError


@dataclass(frozen=True)
class SamplerSpec:
    scheduler_class: str  # a class of the `diffusers` package
    options: dict[str, Any] = field(default_factory=dict)
    karras: bool = False  # the sampler uses the Karras sigma schedule
    karras_allowed: bool = False  # scheduler "Karras" may be asked for
    seeded_noise: bool = False  # the scheduler draws its own noise from `noise_sampler_seed`


def _k(cls: str, karras: bool = False, **options: Any) -> SamplerSpec:
    return SamplerSpec(cls, options, karras=karras, karras_allowed=True)


SAMPLERS: dict[str, SamplerSpec] = {
    "Euler a": SamplerSpec("EulerAncestralDiscreteScheduler"),
    "Euler": _k("EulerDiscreteScheduler"),
    "LMS": _k("LMSDiscreteScheduler"),
    "LMS Karras": _k("LMSDiscreteScheduler", karras=True),
    "Heun": _k("HeunDiscreteScheduler"),
    "DPM2": _k("KDPM2DiscreteScheduler"),
    "DPM2 Karras": _k("KDPM2DiscreteScheduler", karras=True),
    "DPM2 a": _k("KDPM2AncestralDiscreteScheduler"),
    "DPM2 a Karras": _k("KDPM2AncestralDiscreteScheduler", karras=True),
    "DPM++ 2S a": _k("DPMSolverSinglestepScheduler"),
    "DPM++ 2S a Karras": _k("DPMSolverSinglestepScheduler", karras=True),
    "DPM++ 2M": _k("DPMSolverMultistepScheduler"),
    "DPM++ 2M Karras": _k("DPMSolverMultistepScheduler", karras=True),
    "DPM++ 2M SDE": _k("DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++"),
    "DPM++ 2M SDE Karras": _k("DPMSolverMultistepScheduler", karras=True, algorithm_type="sde-dpmsolver++"),
    "DPM++ 2M SDE Heun": _k("DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++", solver_type="heun"),
    "DPM++ 2M SDE Heun Karras": _k(
        "DPMSolverMultistepScheduler", karras=True, algorithm_type="sde-dpmsolver++", solver_type="heun"
    ),
    "DPM++ 3M SDE": _k("DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++", solver_order=3),
    "DPM++ 3M SDE Karras": _k(
        "DPMSolverMultistepScheduler", karras=True, algorithm_type="sde-dpmsolver++", solver_order=3
    ),
    "DPM++ SDE": SamplerSpec("DPMSolverSDEScheduler", karras_allowed=True, seeded_noise=True),
    "DPM++ SDE Karras": SamplerSpec("DPMSolverSDEScheduler", karras=True, karras_allowed=True, seeded_noise=True),
    "DDIM": SamplerSpec("DDIMScheduler"),
    "PLMS": SamplerSpec("PNDMScheduler"),
    "UniPC": SamplerSpec("UniPCMultistepScheduler"),
    "LCM": SamplerSpec("LCMScheduler"),
}

# The 1.9+ `scheduler` field: "Automatic" keeps the sampler's own schedule.
SCHEDULES = ("Automatic", "Karras")
# The sampler for eta: DDIM is the only one whose eta diffusers takes; A1111's ancestral eta is 1.
ETA_SAMPLERS = ("DDIM",)


def sampler_names() -> list[str]:
    return list(SAMPLERS)


def resolve_sampler(name: str, schedule: str = "Automatic", field_name: str = "sampler_name") -> SamplerSpec:
    """The spec of sampler `name` with the 1.9+ `scheduler` applied; unknown → EngineError listing names."""
    spec = SAMPLERS.get(name)
    if spec is None:
        raise EngineError(
            f"{field_name}: unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}", field_name
        )
    schedule = next((known for known in SCHEDULES if known.lower() == schedule.lower()), schedule)
    if schedule not in SCHEDULES:
        raise EngineError(
            f"scheduler: unsupported schedule {schedule!r}; valid: {', '.join(SCHEDULES)}", "scheduler"
        )
    if schedule == "Karras" and not spec.karras:
        if not spec.karras_allowed:
            raise EngineError(f"scheduler: sampler {name!r} has no Karras schedule", "scheduler")
        spec = SamplerSpec(spec.scheduler_class, spec.options, True, True, spec.seeded_noise)
    return spec


def make_scheduler(spec: SamplerSpec, base_config: Any, seed: int) -> Any:
    """A new scheduler of `spec` from the pipeline's scheduler config (so the model's betas are kept)."""
    cls = getattr(diffusers, spec.scheduler_class)
    options = dict(spec.options)
    if spec.karras:
        options["use_karras_sigmas"] = True
    if spec.seeded_noise:
        options["noise_sampler_seed"] = seed  # without it the SDE sampler is not reproducible
    return cls.from_config(base_config, **options)
