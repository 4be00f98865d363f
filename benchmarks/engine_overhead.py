"""Engine overhead: `DiffusersEngine.generate` (txt2img) against a bare diffusers pipeline call.

    python benchmarks/engine_overhead.py [--checkpoint FILE] [--width 128 --height 128 --steps 20]
                                         [--sampler "Euler a"] [--repeats 7] [--threads N]

Both run in this process on the same loaded pipeline (the engine's cache), warm (one untimed run each
first), with the same prompt, negative prompt, size, steps and CFG scale, alternating. The bare
call is `pipe(prompt=..., negative_prompt=..., generator=...)` with the checkpoint's own diffusers scheduler
(the engine runs its samplers in its own loop, engine.k_pass; pick a first-order `--sampler` for the same
number of UNet calls), returning a PIL image; the engine's time includes everything a job does: validating the
payload, A1111 prompt encoding (chunks, emphasis), seeded noise, the sampling loop, PNG encoding with the
infotext. Printed, for wall time and for
the process's CPU time (all threads): the fastest and the median run of each and their ratios (target
<= 1.05). On a machine shared with other busy processes wall time swings a lot; CPU time much less, and
the fastest runs are the least disturbed. Default model: the tiny test model (built into a temp dir).
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
    parser.add_argument("--threads", type=int, help="torch intra-op threads (1 avoids OpenMP spinning on a busy machine)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from aws_extension.engine.base import ModelSet
    from aws_extension.engine.diffusers_engine import DiffusersEngine

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

        def run_engine() -> tuple[float, float]:
            start, start_cpu = time.perf_counter(), time.process_time()
            engine.generate("txt2img", payload, models)
            return time.perf_counter() - start, time.process_time() - start_cpu

        def run_bare() -> tuple[float, float]:
            start, start_cpu = time.perf_counter(), time.process_time()
            pipe(prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT, num_inference_steps=args.steps,
                 guidance_scale=args.cfg_scale, width=args.width, height=args.height,
                 generator=torch.Generator("cpu").manual_seed(1))
            return time.perf_counter() - start, time.process_time() - start_cpu

        run_engine(), run_bare()  # warm-up
        engine_runs: list[tuple[float, float]] = []
        bare_runs: list[tuple[float, float]] = []
        for _ in range(args.repeats):
            engine_runs.append(run_engine())
            bare_runs.append(run_bare())
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, load average (1 min) at the end: {os.getloadavg()[0]:.1f}, "
          f"engine on {engine.placement} (SD_AWS_DEVICE, SD_AWS_DTYPE)")
    print(f"model: {checkpoint.name}, {args.width}x{args.height}, {args.steps} steps, {args.sampler}, "
          f"CFG {args.cfg_scale}, {args.repeats} runs each, alternating")
    for column, label in ((0, "wall"), (1, "CPU")):
        engine_times = [run[column] for run in engine_runs]
        bare_times = [run[column] for run in bare_runs]
        print(f"{label} time, bare diffusers pipeline:  fastest {min(bare_times):.3f} s, median "
              f"{statistics.median(bare_times):.3f} s  (runs: {', '.join(f'{t:.3f}' for t in bare_times)})")
        print(f"{label} time, DiffusersEngine.generate: fastest {min(engine_times):.3f} s, median "
              f"{statistics.median(engine_times):.3f} s  (runs: {', '.join(f'{t:.3f}' for t in engine_times)})")
        print(f"{label} time ratio engine / bare: fastest {min(engine_times) / min(bare_times):.3f}, median "
              f"{statistics.median(engine_times) / statistics.median(bare_times):.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
