"""A training job's saved state, for resume: everything the next step depends on.

`<state dir>/latest.json` names the newest complete state folder `step-NNNNNN/` (written first, then named
by an atomic replace of latest.json, then older folders removed): trainable weights (safetensors), the
optimizer's, LR scheduler's and GradScaler's state, every RNG state (the trainer's noise generator, torch's,
CUDA's, Python's) and the step. The data order is a function of (seed, epoch), so the step places it. The
job's fingerprint (its hyperparameters, the base's sha256, the image names) is kept too: the state of
another job is refused rather than resumed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

LATEST = "latest.json"


class StateMismatch(RuntimeError):
    pass


def save(state_dir: Path, fingerprint: dict[str, Any], step: int, params: list[tuple[str, Any, float]],
         optimizer: Any, lr_scheduler: Any, scaler: Any, generator: torch.Generator) -> Path:
    from safetensors.torch import save_file

    state_dir.mkdir(parents=True, exist_ok=True)
    folder = state_dir / f"step-{step:06d}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    save_file({name: p.detach().cpu().contiguous() for name, p, _ in params}, str(folder / "trainable.safetensors"))
    torch.save({
        "optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(), "scaler": scaler.state_dict(),
        "generator": generator.get_state(), "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
    }, folder / "training.pt")
    (folder / "state.json").write_text(json.dumps({"step": step, "fingerprint": fingerprint}, indent=1))
    temporary = state_dir / (LATEST + ".tmp")
    temporary.write_text(json.dumps({"folder": folder.name, "step": step}))
    os.replace(temporary, state_dir / LATEST)
    for old in state_dir.glob("step-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def saved_step(state_dir: Path) -> int | None:
    """The step of the newest saved state in `state_dir`, or None."""
    latest = state_dir / LATEST
    return json.loads(latest.read_text())["step"] if latest.is_file() else None


def load(state_dir: Path, fingerprint: dict[str, Any]) -> Path | None:
    """The newest state folder of this job in `state_dir`, or None; StateMismatch if it is another job's."""
    latest = state_dir / LATEST
    if not latest.is_file():
        return None
    folder = state_dir / json.loads(latest.read_text())["folder"]
    saved = json.loads((folder / "state.json").read_text())["fingerprint"]
    if saved != fingerprint:
        differs = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
        raise StateMismatch(f"the saved state in {state_dir.name}/ is of another job (its {', '.join(differs)} "
                            "differ); remove it to start afresh")
    return folder


def restore(folder: Path, params: list[tuple[str, Any, float]], optimizer: Any, lr_scheduler: Any, scaler: Any,
            generator: torch.Generator) -> int:
    """Put the state of `folder` back; returns the step to go on from."""
    from safetensors.torch import load_file

    weights = load_file(str(folder / "trainable.safetensors"))
    with torch.no_grad():
        for name, parameter, _ in params:
            parameter.copy_(weights[name])
    training = torch.load(folder / "training.pt", weights_only=False)  # noqa: S614 - our own file, written by save()
    optimizer.load_state_dict(training["optimizer"])
    lr_scheduler.load_state_dict(training["lr_scheduler"])
    scaler.load_state_dict(training["scaler"])
    generator.set_state(training["generator"])
    torch.set_rng_state(training["torch"])
    if training["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(training["cuda"])
    random.setstate(training["python"])
    return json.loads((folder / "state.json").read_text())["step"]
