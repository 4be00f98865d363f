"""Where the engine's models run and in which precision: the `SD_AWS_DEVICE` and `SD_AWS_DTYPE` settings.

`auto` means what the WebUI does by default: the first CUDA GPU in float16 when there is one, else the
CPU in float32. Every model the engine loads (checkpoint pipelines, ControlNets) is moved there once, at
load; tensors the engine makes itself (noise, masks) are moved to the model they meet. The random numbers
are always drawn on the CPU, so a seed gives the same image on any device (the WebUI's "CPU" RNG source).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from aws_extension.engine.base import EngineError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _not_the_empty_float32_warning(record: logging.LogRecord) -> bool:
    # diffusers warns on every cast of a model to another dtype that modules "should be kept in float32",
    # even when the list of such modules is empty, as it is for every SD 1.x model: noise in the worker log.
    return "should be kept in float32: []" not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_not_the_empty_float32_warning)


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype

    def __str__(self) -> str:
        return f"{self.device} ({str(self.dtype).removeprefix('torch.')})"


def resolve_placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """The Placement of the settings' `device` (auto, cpu, cuda, cuda:N, mps) and `dtype` (auto or a DTYPES
    name). Raises EngineError naming the setting when the device is missing or a name is unknown."""
    name = (device or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device(name)
    except RuntimeError:
        raise EngineError(f"SD_AWS_DEVICE={device!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise EngineError(f"SD_AWS_DEVICE={device!r}, but torch sees no CUDA GPU here")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise EngineError(f"SD_AWS_DEVICE={device!r}, but there are {torch.cuda.device_count()} CUDA GPU(s)")
    elif chosen.type == "mps" and not torch.backends.mps.is_available():
        raise EngineError(f"SD_AWS_DEVICE={device!r}, but MPS is not available here")
    elif chosen.type not in ("cpu", "cuda", "mps"):
        raise EngineError(f"SD_AWS_DEVICE={device!r} is not supported: use auto, cpu, cuda, cuda:N or mps")
    precision = (dtype or "auto").strip().lower()
    if precision == "auto":
        return Placement(chosen, torch.float32 if chosen.type == "cpu" else torch.float16)
    if precision not in DTYPES:
        raise EngineError(f"SD_AWS_DTYPE={dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return Placement(chosen, DTYPES[precision])


def place(modules: list[Any], placement: Placement) -> None:
    """Move the torch modules among `modules` to the placement's device and dtype, in place.

    torch's own `Module.to`: diffusers' override warns about modules to keep in float32 even when, as for
    every SD 1.x model here, the list is empty.
    """
    for module in modules:
        if isinstance(module, torch.nn.Module):
            torch.nn.Module.to(module, device=placement.device, dtype=placement.dtype)


def release_cached_memory(placement: Placement) -> None:
    """Give the GPU memory torch keeps cached after a job back, so the next job (or model) has it all."""
    if placement.device.type == "cuda":
        torch.cuda.empty_cache()


def out_of_memory_message(params: Any, placement: Placement) -> str:
    """What a user reads when a job did not fit in the device's memory (the worker stays healthy)."""
    return (f"The job ran out of memory on {placement.device} at {params.width}x{params.height}, batch size "
            f"{params.batch_size}{' with hires fix' if params.hires is not None else ''}: lower the size or "
            "the batch size, or use an instance type with more GPU memory")
