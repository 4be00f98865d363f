"""Mean pixel difference of the engine's ancestral/SDE samplers against A1111's algorithm (the references of
tests/engine/test_fidelity.py), on the tiny model at 64×64, 8 steps, a batch of 2.

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
    for sampler in fidelity.CASES:
        images = fidelity._engine_images(engine, models, sampler, randn_source="CPU")
        reference = fidelity._reference_images(pipe, sampler)
        print(f"{sampler}: {fidelity._mean_difference(images, reference):.3f}/255 "
              f"(another seed: {fidelity._mean_difference(images[0], reference[1]):.1f}/255)")


if __name__ == "__main__":
    main()
