"""The contract between the worker and an engine (light: no torch, no diffusers here).

An engine turns an A1111 `/sdapi/v1/txt2img|img2img` payload into images. The worker owns the model
files: it tells the engine, for each job, exactly which files exist by type and name (`ModelSet`); the
engine never scans folders or fetches anything.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class EngineError(ValueError):
    """A job the engine refuses or cannot run; the message is for the user and names the field."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class Interrupted(Exception):
    """The job was stopped through its cancel event (at the next sampling step)."""


@dataclass(frozen=True)
class ModelSet:
    """The files one job may use: the checkpoint, and every other model by type, then by name.

    Names are file names as the WebUI shows them (`foo.safetensors`); lookups by stem (`foo`, as in
    `<lora:foo:0.8>`) are the engine's job.
    """

    checkpoint: Path
    files: dict[str, dict[str, Path]] = field(default_factory=dict)


@dataclass
class Progress:
    """One step of progress, reported per sampling step."""

    step: int  # sampling steps done in the whole job (all batches, all passes)
    total_steps: int
    job_no: int = 0  # batch being sampled (0-based) and how many there are
    job_count: int = 1

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0


ProgressCallback = Callable[[Progress], None]


@dataclass
class GenerationResult:
    images: list[bytes]  # PNG files, each with the A1111 infotext in its `parameters` text chunk
    parameters: dict[str, Any]  # the request as the engine understood it (A1111 `parameters`)
    info: dict[str, Any]  # what A1111 returns JSON-encoded in `info` (infotexts, seed, all_seeds, ...)


class Engine(Protocol):
    def samplers(self) -> list[str]: ...

    def generate(
        self,
        task: str,  # a vocabulary.GENERATION_TASKS task
        payload: dict[str, Any],
        models: ModelSet,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult: ...

    def merge(
        self,
        primary: Path,
        secondary: Path,
        tertiary: Path | None,
        method: str,  # a vocabulary.MergeMethod
        multiplier: float,
        save_as_half: bool,
        out: Path,
        progress: ProgressCallback | None = None,
    ) -> None: ...
