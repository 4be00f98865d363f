"""Engine overhead: `DiffusersEngine.generate` (txt2img) against a bare diffusers pipeline call.

    python benchmarks/engine_overhead.py [--checkpoint FILE] [--width 256 --height 256 --steps 20]
                                         [--sampler "Euler a"] [--repeats 5]

Both run in this process on the same loaded pipeline (the engine's cache), warm (one untimed run each
first), with the same prompt, negative prompt, size, steps, CFG scale and sampler, alternating. The bare
call is `pipe(prompt=..., negative_prompt=..., generator=...)` returning a PIL image; the engine's time
includes everything a job does: validating the payload, A1111 prompt encoding (chunks, emphasis), seeded
noise, the scheduler and pipeline view, PNG encoding with the infotext. Printed: the fastest and the median
run of each and their ratios (target <= 1.05); on a shared machine the fastest runs are the ones least
disturbed by other processes. Default model: the tiny test model (built into a temp dir).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = "a photo of a cat sitting on a (red:1.2) sofa, detailed, soft light"
NEGATIVE_PROMPT = "blurry, low quality"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="an A1111 checkpoint file (default: the tiny model)")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="Euler a")
    parser.add_argument("--cfg-scale", type=float, default=7.0)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    import torch

    from aws_extension.engine.base import ModelSet
    from aws_extension.engine.diffusers_engine import DiffusersEngine
    from aws_extension.engine.samplers import make_scheduler, resolve_sampler

    with tempfile.TemporaryDirectory(prefix="engine-overhead-") as work_dir:
        checkpoint = args.checkpoint
        if checkpoint is None:
            from aws_extension.engine.tiny import write_tiny_model

            checkpoint = Path(work_dir) / "tiny-sd.safetensors"
            write_tiny_model(checkpoint)
        engine = DiffusersEngine()
        models = ModelSet(checkpoint=checkpoint)
        payload = {
            "prompt": PROMPT, "negative_prompt": NEGATIVE_PROMPT, "seed": 1, "steps": args.steps,
            "sampler_name": args.sampler, "cfg_scale": args.cfg_scale, "width": args.width, "height": args.height,
        }
        pipe = engine.pipelines.get(checkpoint)
        pipe.scheduler = make_scheduler(resolve_sampler(args.sampler), pipe.scheduler.config, seed=1)

        def run_engine() -> float:
            start = time.perf_counter()
            engine.generate("txt2img", payload, models)
            return time.perf_counter() - start

        def run_bare() -> float:
            start = time.perf_counter()
            pipe(prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT, num_inference_steps=args.steps,
                 guidance_scale=args.cfg_scale, width=args.width, height=args.height,
                 generator=torch.Generator("cpu").manual_seed(1))
            return time.perf_counter() - start

        run_engine(), run_bare()  # warm-up
        engine_times: list[float] = []
        bare_times: list[float] = []
        for _ in range(args.repeats):
            engine_times.append(run_engine())
            bare_times.append(run_bare())

    engine_median, bare_median = statistics.median(engine_times), statistics.median(bare_times)
    engine_best, bare_best = min(engine_times), min(bare_times)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print(f"model: {checkpoint.name}, {args.width}x{args.height}, {args.steps} steps, {args.sampler}, "
          f"CFG {args.cfg_scale}, {args.repeats} runs each, alternating")
    print(f"bare diffusers pipeline:  fastest {bare_best:.3f} s, median {bare_median:.3f} s  "
          f"(runs: {', '.join(f'{t:.3f}' for t in bare_times)})")
    print(f"DiffusersEngine.generate: fastest {engine_best:.3f} s, median {engine_median:.3f} s  "
          f"(runs: {', '.join(f'{t:.3f}' for t in engine_times)})")
    print(f"ratio engine / bare: fastest {engine_best / bare_best:.3f}, median {engine_median / bare_median:.3f}"
          "  (target <= 1.05)")


if __name__ == "__main__":
    main()
