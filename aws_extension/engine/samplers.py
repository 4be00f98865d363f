"""A1111 sampler names → diffusers schedulers.

A1111 before 1.9 named the Karras variants as samplers ("DPM++ 2M Karras"); 1.9+ has a separate
`scheduler` field ("Automatic", "Karras", ...). Both spellings are accepted here. The names (torch-free, for
the middleware too) are `aws_extension.payload.SAMPLER_NAMES` and `SCHEDULER_NAMES`: `SAMPLERS` and
`SCHEDULES` have exactly those keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import diffusers

from aws_extension.engine.base import EngineError
from aws_extension.payload import SAMPLER_NAMES, SCHEDULER_NAMES, canonical_schedule

KARRAS, EXPONENTIAL = "karras", "exponential"


@dataclass(frozen=True)
class SamplerSpec:
    scheduler_class: str  # a class of the `diffusers` package
    options: dict[str, Any] = field(default_factory=dict)
    sigmas: str | None = None  # KARRAS or EXPONENTIAL sigma schedule; None: the scheduler's own
    schedule_choice: bool = False  # the `scheduler` field may pick Karras or Exponential sigmas
    seeded_noise: bool = False  # the scheduler draws its own noise from `noise_sampler_seed`


def _k(cls: str, sigmas: str | None = None, seeded_noise: bool = False, **options: Any) -> SamplerSpec:
    """A k-diffusion sampler of A1111 (its sigma schedule can be chosen)."""
    return SamplerSpec(cls, options, sigmas=sigmas, schedule_choice=True, seeded_noise=seeded_noise)


_SDE = {"algorithm_type": "sde-dpmsolver++"}
# Names of A1111 1.10 (plain names) and of A1111 < 1.9 (" Karras" names). The plain names' sigmas are
# the defaults of A1111 1.10's "Automatic" schedule: Karras for DPM++ 2M/SDE, Exponential for the 2M/3M SDEs.
SAMPLERS: dict[str, SamplerSpec] = {
    "Euler a": SamplerSpec("EulerAncestralDiscreteScheduler"),
    "Euler": _k("EulerDiscreteScheduler"),
    "LMS": _k("LMSDiscreteScheduler"),
    "LMS Karras": _k("LMSDiscreteScheduler", KARRAS),
    "Heun": _k("HeunDiscreteScheduler"),
    "DPM2": _k("KDPM2DiscreteScheduler"),
    "DPM2 Karras": _k("KDPM2DiscreteScheduler", KARRAS),
    "DPM2 a": _k("KDPM2AncestralDiscreteScheduler"),
    "DPM2 a Karras": _k("KDPM2AncestralDiscreteScheduler", KARRAS),
    "DPM++ 2S a": _k("DPMSolverSinglestepScheduler"),
    "DPM++ 2S a Karras": _k("DPMSolverSinglestepScheduler", KARRAS),
    "DPM++ 2M": _k("DPMSolverMultistepScheduler", KARRAS),
    "DPM++ 2M Karras": _k("DPMSolverMultistepScheduler", KARRAS),
    "DPM++ 2M SDE": _k("DPMSolverMultistepScheduler", EXPONENTIAL, **_SDE),
    "DPM++ 2M SDE Karras": _k("DPMSolverMultistepScheduler", KARRAS, **_SDE),
    "DPM++ 2M SDE Heun": _k("DPMSolverMultistepScheduler", EXPONENTIAL, solver_type="heun", **_SDE),
    "DPM++ 2M SDE Heun Karras": _k("DPMSolverMultistepScheduler", KARRAS, solver_type="heun", **_SDE),
    "DPM++ 3M SDE": _k("DPMSolverMultistepScheduler", EXPONENTIAL, solver_order=3, **_SDE),
    "DPM++ 3M SDE Karras": _k("DPMSolverMultistepScheduler", KARRAS, solver_order=3, **_SDE),
    "DPM++ SDE": _k("DPMSolverSDEScheduler", KARRAS, seeded_noise=True),
    "DPM++ SDE Karras": _k("DPMSolverSDEScheduler", KARRAS, seeded_noise=True),
    "DDIM": SamplerSpec("DDIMScheduler"),
    "PLMS": SamplerSpec("PNDMScheduler"),
    "UniPC": SamplerSpec("UniPCMultistepScheduler"),
    "LCM": SamplerSpec("LCMScheduler"),
}

# The 1.9+ `scheduler` field: "Automatic" keeps the sampler's own schedule.
SCHEDULES: dict[str, str | None] = {"Automatic": None, "Karras": KARRAS, "Exponential": EXPONENTIAL}


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


def make_scheduler(spec: SamplerSpec, base_config: Any, seed: int) -> Any:
    """A new scheduler of `spec` from the pipeline's scheduler config (so the model's betas are kept)."""
    cls = getattr(diffusers, spec.scheduler_class)
    options = dict(spec.options)
    if spec.sigmas is not None:
        options[f"use_{spec.sigmas}_sigmas"] = True
    if spec.seeded_noise:
        options["noise_sampler_seed"] = seed  # without it the SDE sampler is not reproducible
    return cls.from_config(base_config, **options)
