"""Mean pixel difference of the engine's ancestral/SDE samplers, DPM adaptive, timestep samplers (DDIM, DDIM
CFG++, PLMS, UniPC and its settings) and LCM against A1111's algorithm (the references of tests/engine/test_fidelity.py),
on the tiny model at 64×64, 8 steps, a batch of 2.

Run from the repository root: `HF_HUB_OFFLINE=1 python benchmarks/engine_fidelity.py`.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "engine")]

from aws_extension.engine.base import ModelSet  # noqa: E402
from aws_extension.engine.diffusers_engine import DiffusersEngine  # noqa: E402
from aws_extension.engine.tiny import write_tiny_model  # noqa: E402


def main() -> None:
    import test_fidelity as fidelity

    warnings.filterwarnings("ignore")
    root = Path(tempfile.mkdtemp())
    (root / "Stable-diffusion").mkdir()
    checkpoint = root / "Stable-diffusion" / "tiny-sd.safetensors"
    write_tiny_model(checkpoint, extras_dir=root)
    engine, models = DiffusersEngine(), ModelSet(checkpoint=checkpoint, files={})
    pipe = engine.pipelines.get(checkpoint)
    def report(name: str, images, reference) -> None:
        print(f"{name}: {fidelity._mean_difference(images, reference):.4f}/255 "
              f"(another seed: {fidelity._mean_difference(images[0], reference[1]):.1f}/255)")

    for sampler in fidelity.CASES:
        report(sampler, fidelity._engine_images(engine, models, sampler, randn_source="CPU"),
               fidelity._reference_images(pipe, sampler))
    for case, (sampler, overrides, _) in fidelity.TIMESTEP_CASES.items():
        report(case, fidelity._engine_images(engine, models, sampler, randn_source="CPU", **overrides),
               fidelity._timestep_reference_images(pipe, case))
    for schedule, sigmas in (("Automatic", fidelity.LCMReference.automatic), ("Karras", fidelity.LCMReference.karras)):
        ref = fidelity.LCMReference(pipe, fidelity.SEEDS)
        report(f"LCM ({schedule})",
               fidelity._engine_images(engine, models, "LCM", randn_source="CPU", k_sched_type=schedule),
               fidelity._lcm_txt2img_reference(ref, sigmas(ref, fidelity.STEPS)))


if __name__ == "__main__":
    main()
