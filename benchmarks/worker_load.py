"""Worker benchmarks: cold load of a checkpoint against reading its file once, and model cache hit vs miss.

    python benchmarks/worker_load.py [--sd15] [--no-worker] [--repeats N] [--work-dir DIR]

1. Cold load. The checkpoint's pages are dropped from the page cache (posix_fadvise DONTNEED: no root
   needed), then, in a fresh Python process with torch and diffusers already imported, the engine loads it
   (`load_checkpoint_pipeline`: read, convert to diffusers, build the pipeline). Compared with
   `cat file > /dev/null` from the same cold state. Also the warm numbers (file in the page cache), and
   the worker's view: the first job of a fresh worker against its second job.
2. Cache hit vs miss. A real worker gets the same `/invocations` job twice, its checkpoint served by a
   local http.server: the first fetches (download + sha256), the second finds it cached. Reported:
   `timings.load_s` of each answer, and the whole request.

Checkpoints: the tiny test model, and with `--sd15` a random-weight SD 1.5-size one (fp16, ~2 GB; built
once into the work dir, which takes a minute or two on a CPU).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.worker.helpers import FileServer, WorkerProcess  # noqa: E402 - after the path is set

PAYLOAD = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "sampler_name": "Euler a", "seed": 1}


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def time_cat(path: Path) -> float:
    started = time.perf_counter()
    subprocess.run(f"cat '{path}' > /dev/null", shell=True, check=True)
    return time.perf_counter() - started


_LOAD_IN_FRESH_PROCESS = """
import sys, time
# Everything the loader imports (diffusers imports lazily) is imported before the clock starts.
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer
from aws_extension.engine.checkpoints import load_checkpoint_pipeline
started = time.perf_counter()
load_checkpoint_pipeline(sys.argv[1])
print(time.perf_counter() - started)
"""


def time_engine_load(path: Path) -> float:
    out = subprocess.run([sys.executable, "-c", _LOAD_IN_FRESH_PROCESS, str(path)], check=True, cwd=REPO,
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return float(out.stdout.strip().splitlines()[-1])


def build_sd15_checkpoint(out: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from aws_extension.engine.checkpoints import architecture_config_dir, diffusers_to_a1111_checkpoint

    config_dir = architecture_config_dir("sd1")
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae"))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(config_dir / "text_encoder"))
    state = diffusers_to_a1111_checkpoint(unet.state_dict(), vae.state_dict(), text_encoder.state_dict(),
                                          unet.config, vae.config)
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}, str(out))


def median(values: list[float]) -> float:
    return statistics.median(values)


def bench_cold_load(checkpoint: Path, repeats: int) -> dict[str, float]:
    cold_cat, cold_load, warm_cat, warm_load = [], [], [], []
    for _ in range(repeats):
        drop_from_page_cache(checkpoint)
        cold_cat.append(time_cat(checkpoint))
        drop_from_page_cache(checkpoint)
        cold_load.append(time_engine_load(checkpoint))
        warm_cat.append(time_cat(checkpoint))
        warm_load.append(time_engine_load(checkpoint))
    return {"size_mb": checkpoint.stat().st_size / 1e6,
            "cold_cat_s": median(cold_cat), "cold_load_s": median(cold_load),
            "cold_ratio": median(cold_load) / median(cold_cat),
            "warm_cat_s": median(warm_cat), "warm_load_s": median(warm_load),
            "warm_ratio": median(warm_load) / median(warm_cat)}


def post_timed(url: str, body: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    answer = requests.post(url, json=body, timeout=1800)
    elapsed = time.perf_counter() - started
    answer.raise_for_status()
    return elapsed, answer.json()


def bench_worker(checkpoint: Path, work_dir: Path) -> dict[str, float]:
    """First vs second job of a fresh worker (the worker's cold load), then cache miss vs hit."""
    models_dir = work_dir / f"models-{checkpoint.stem}"
    shutil.rmtree(models_dir, ignore_errors=True)
    (models_dir / "Stable-diffusion").mkdir(parents=True)
    os.link(checkpoint, models_dir / "Stable-diffusion" / checkpoint.name)
    data = checkpoint.read_bytes()
    files = FileServer()
    worker = WorkerProcess(models_dir, work_dir / f"worker-{checkpoint.stem}.log")
    try:
        worker.ping_statuses_until_healthy()
        drop_from_page_cache(checkpoint)
        first_job_s, _ = post_timed(f"{worker.url}/sdapi/v1/txt2img", PAYLOAD)
        second_job_s, _ = post_timed(f"{worker.url}/sdapi/v1/txt2img", PAYLOAD)
        model = {"type": "Stable-diffusion", "name": "fetched.safetensors",
                 "sha256": hashlib.sha256(data).hexdigest(), "url": files.serve("/fetched.safetensors", data)}
        del data
        job = {"task": "txt2img", "models": [model], "params": PAYLOAD}
        miss_s, miss = post_timed(f"{worker.url}/invocations", job)
        hit_s, hit = post_timed(f"{worker.url}/invocations", job)
        assert files.gets["/fetched.safetensors"] == 1, "the second job downloaded the model again"
    finally:
        worker.stop()
        files.close()
    return {"first_job_s": first_job_s, "second_job_s": second_job_s,
            "miss_request_s": miss_s, "miss_load_s": miss["timings"]["load_s"], "miss_run_s": miss["timings"]["run_s"],
            "hit_request_s": hit_s, "hit_load_s": hit["timings"]["load_s"], "hit_run_s": hit["timings"]["run_s"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd15", action="store_true", help="also measure a random-weight SD 1.5-size checkpoint")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "sd-aws-bench-worker")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-worker", action="store_true", help="measure only the cold load (no worker process)")
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = [args.work_dir / "tiny-sd.safetensors"]
    if not checkpoints[0].exists():
        from aws_extension.engine.tiny import write_tiny_model

        write_tiny_model(checkpoints[0])
    if args.sd15:
        checkpoints.append(args.work_dir / "random-sd15-fp16.safetensors")
        if not checkpoints[1].exists():
            build_sd15_checkpoint(checkpoints[1])
    results = {}
    for checkpoint in checkpoints:
        results[checkpoint.name] = bench_cold_load(checkpoint, args.repeats)
        if not args.no_worker:
            results[checkpoint.name].update(bench_worker(checkpoint, args.work_dir))
        print(json.dumps({checkpoint.name: results[checkpoint.name]}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
