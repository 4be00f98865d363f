"""Image-by-image comparison of the engine with a real AUTOMATIC1111 WebUI (v1.10.1), on the tiny model.

The same payload goes to A1111's `/sdapi/v1/txt2img` (or img2img) and to the project's worker (`sd-aws
worker`, the diffusers engine, on the same checkpoint); for each case it prints the mean absolute pixel
difference (/255, over every pixel and channel of every image) and the largest one, and for contrast the
difference between two of A1111's own images made from different seeds.

    sd-aws make-tiny-model MODELS/Stable-diffusion/tiny-sd.safetensors --extras MODELS
    # start A1111 on that folder, API only, on 127.0.0.1 (benchmarks/README.md "Against a real A1111"):
    #   ... launch.py --api --nowebui --server-name 127.0.0.1 --port 7861 \
    #       --ckpt-dir MODELS/Stable-diffusion --lora-dir MODELS/Lora --embeddings-dir MODELS/embeddings ...
    HF_HUB_OFFLINE=1 python benchmarks/a1111_compare.py http://127.0.0.1:7861/sdapi/v1 --models-dir MODELS

The checkpoint is written with `make-tiny-model` when MODELS has none (it is the same file every time), and
A1111 must list a checkpoint with the same sha256 (the script refuses otherwise). The worker is started on
MODELS for the run and stopped at the end, unless `--worker URL` names a running one. Samplers: each of
`aws_extension.payload.SAMPLER_NAMES` that A1111's `/sdapi/v1/samplers` lists. Every case sets
`randn_source` explicitly (A1111's default "GPU" means the device's torch.randn, which differs between
A1111 on a CPU and the engine, which draws NV's noise for "GPU" on a CPU so a GPU user's seed reproduces).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from aws_extension.payload import SAMPLER_NAMES  # noqa: E402
from tests.helpers import SdAwsProcess, free_port  # noqa: E402

CHECKPOINT = Path("Stable-diffusion") / "tiny-sd.safetensors"
SIZE, STEPS, SEED = 64, 20, 42
BASE: dict[str, Any] = {
    "prompt": "a photo of a cat on a red sofa", "negative_prompt": "blurry", "width": SIZE, "height": SIZE,
    "steps": STEPS, "cfg_scale": 7, "seed": SEED, "sampler_name": "Euler", "batch_size": 1, "n_iter": 1,
}
# Every case sends every setting a case changes: A1111 1.10 restores after a job only the overridden keys
# that its config.json already holds (`stored_opts` in `process_images`), so on a fresh install an override
# (clip skip 2, ENSD, eta) stays in force for the jobs after it unless each job sets it again.
CPU_NOISE = {"randn_source": "CPU", "CLIP_stop_at_last_layers": 1, "eta_ancestral": 1.0, "eta_ddim": 0.0,
             "eta_noise_seed_delta": 0}


@dataclass
class Case:
    name: str
    payload: dict[str, Any]
    task: str = "txt2img"
    settings: dict[str, Any] = field(default_factory=lambda: dict(CPU_NOISE))


def _png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def init_image() -> Image.Image:
    """A smooth, deterministic RGB picture (diagonal colour gradients and a disc)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    disc = ((x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.06).astype(float)
    rgb = np.stack([x, y, 0.5 * (1 - x) + 0.5 * disc], axis=-1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


def inpaint_mask() -> Image.Image:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:48, 20:52] = 255
    return Image.fromarray(mask)


def cases(samplers: list[str]) -> list[Case]:
    found = [Case(f"sampler {name}", {"sampler_name": name}) for name in samplers]
    image = _png_b64(init_image())
    found += [
        Case("schedule Karras (DPM++ 2M)", {"sampler_name": "DPM++ 2M", "scheduler": "Karras"}),
        Case("img2img (Euler a, denoise 0.6)", {"sampler_name": "Euler a", "init_images": [image],
                                                "denoising_strength": 0.6}, task="img2img"),
        Case("img2img (DPM++ 2M, denoise 0.6)", {"sampler_name": "DPM++ 2M", "init_images": [image],
                                                  "denoising_strength": 0.6}, task="img2img"),
        Case("inpainting (Euler, fill original, blur 4)",
             {"init_images": [image], "mask": _png_b64(inpaint_mask()), "denoising_strength": 0.75,
              "mask_blur": 4, "inpainting_fill": 1, "inpaint_full_res": False}, task="img2img"),
        Case("hires fix (Euler, Latent ×2, 10 steps, 0.6)",
             {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 10,
              "denoising_strength": 0.6}),
        Case("hires fix (Euler a, Latent ×2, 10 steps, 0.6)",
             {"sampler_name": "Euler a", "enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent",
              "hr_second_pass_steps": 10, "denoising_strength": 0.6}),
        Case("prompt editing [a cat:a dog:0.5]", {"prompt": "a photo of [a cat:a dog:0.5] on a red sofa"}),
        Case("emphasis + BREAK", {"prompt": "a (photo:1.3) of a [cat] BREAK on a ((red)) sofa"}),
        Case("LoRA <lora:tiny-lora:0.8>", {"prompt": "a photo of a cat on a red sofa <lora:tiny-lora:0.8>"}),
        Case("clip skip 2", {}, settings={**CPU_NOISE, "CLIP_stop_at_last_layers": 2}),
        Case("RNG NV (Euler)", {}, settings={**CPU_NOISE, "randn_source": "NV"}),
        Case("RNG NV (Euler a)", {"sampler_name": "Euler a"}, settings={**CPU_NOISE, "randn_source": "NV"}),
        Case("RNG GPU (Euler; A1111 on a CPU draws CPU noise)", {}, settings={**CPU_NOISE, "randn_source": "GPU"}),
        Case("eta_ancestral 0.5 (Euler a)", {"sampler_name": "Euler a"},
             settings={**CPU_NOISE, "eta_ancestral": 0.5}),
        Case("eta 0.5 in the payload (DDIM)", {"sampler_name": "DDIM", "eta": 0.5}),
        Case("ENSD 31337 (Euler a)", {"sampler_name": "Euler a"},
             settings={**CPU_NOISE, "eta_noise_seed_delta": 31337}),
        Case("batch of 2 (Euler a)", {"sampler_name": "Euler a", "batch_size": 2}),
        Case("batch of 2 (DPM++ 2M SDE)", {"sampler_name": "DPM++ 2M SDE", "batch_size": 2}),
        Case("subseed 7 @ 0.3 (Euler a)", {"sampler_name": "Euler a", "subseed": 7, "subseed_strength": 0.3}),
    ]
    return found


def generate(url: str, case: Case, checkpoint_title: str | None = None,
             seed: int | None = None) -> list[np.ndarray]:
    settings = dict(case.settings)
    if checkpoint_title:
        settings["sd_model_checkpoint"] = checkpoint_title
    payload = {**BASE, **case.payload, "override_settings": settings}
    if seed is not None:
        payload["seed"] = seed
    response = requests.post(f"{url}/{case.task}", json=payload, timeout=600)
    if response.status_code != 200:
        raise RuntimeError(f"{url}/{case.task}: {response.status_code} {response.text[:400]}")
    images = response.json()["images"]
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB"), dtype=np.float64)
            for b in images]


def difference(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[float, float]:
    """Mean and max absolute difference /255 over all images of two answers (same count and size)."""
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        raise RuntimeError(f"answers differ in shape: {[x.shape for x in a]} vs {[y.shape for y in b]}")
    diffs = np.concatenate([np.abs(x - y).ravel() for x, y in zip(a, b)])
    return float(diffs.mean()), float(diffs.max())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def a1111_checkpoint(a1111: str, checkpoint: Path) -> str:
    """The title of A1111's checkpoint that is `checkpoint` (by sha256, else by file path)."""
    requests.post(f"{a1111}/refresh-checkpoints", timeout=60).raise_for_status()
    requests.post(f"{a1111}/refresh-loras", timeout=60).raise_for_status()
    digest = sha256(checkpoint)
    models = requests.get(f"{a1111}/sd-models", timeout=60).json()
    for model in models:
        if model.get("sha256") == digest or Path(model["filename"]).resolve() == checkpoint.resolve():
            if model.get("sha256") not in (None, digest):
                raise SystemExit(f"A1111's {model['filename']} is not {checkpoint} (sha256 differs)")
            return model["title"]
    raise SystemExit(f"A1111 has no checkpoint with sha256 {digest} ({checkpoint}): start it with "
                     f"--ckpt-dir {checkpoint.parent} (it lists {[m['filename'] for m in models]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a1111", help="A1111's API, e.g. http://127.0.0.1:7861/sdapi/v1 (--api --nowebui)")
    parser.add_argument("--models-dir", type=Path, required=True,
                        help="the models folder A1111 was started on (Stable-diffusion/tiny-sd.safetensors, Lora/)")
    parser.add_argument("--worker", help="a running worker's /sdapi/v1 URL (default: start `sd-aws worker`)")
    parser.add_argument("--only", help="run only the cases whose name contains one of these comma-separated texts")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    a1111 = args.a1111.rstrip("/")
    models = args.models_dir.resolve()
    checkpoint = models / CHECKPOINT
    if not checkpoint.exists():
        from aws_extension.engine.tiny import write_tiny_model
        write_tiny_model(checkpoint, extras_dir=models)
    title = a1111_checkpoint(a1111, checkpoint)
    offered = {s["name"] for s in requests.get(f"{a1111}/samplers", timeout=60).json()}
    samplers = [name for name in SAMPLER_NAMES if name in offered]

    worker_process = None
    worker = args.worker
    if worker is None:
        port = free_port()
        worker_process = SdAwsProcess(["worker", "--models-dir", str(models), "--port", str(port)], port,
                                      ready_path="/ping").start(timeout_s=300)
        worker = f"http://127.0.0.1:{port}/sdapi/v1"
    try:
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
              f"{SIZE}×{SIZE}, {STEPS} steps, seed {SEED}, cfg 7")
        print(f"A1111: {a1111} ({title}); worker: {worker}")
        print(f"samplers A1111 offers that the engine lacks: {sorted(offered - set(SAMPLER_NAMES)) or 'none'}")
        print(f"engine samplers A1111 does not list: {[s for s in SAMPLER_NAMES if s not in offered]}")
        base = Case("contrast", {})
        seeds = difference(generate(a1111, base, title), generate(a1111, base, title, seed=SEED + 1))
        print(f"\ncontrast: A1111 seed {SEED} vs seed {SEED + 1} (Euler): mean {seeds[0]:.2f}/255, "
              f"max {seeds[1]:.0f}/255\n")
        print("| case | mean /255 | max /255 | A1111 s | engine s |\n|---|---:|---:|---:|---:|")
        results = []
        for case in cases(samplers):
            if args.only and not any(text in case.name for text in args.only.split(",")):
                continue
            try:
                started = time.perf_counter()
                reference = generate(a1111, case, title)
                a1111_s = time.perf_counter() - started
                started = time.perf_counter()
                ours = generate(worker, case)
                engine_s = time.perf_counter() - started
                mean, peak = difference(reference, ours)
            except RuntimeError as error:
                print(f"| {case.name} | error: {str(error)[:200]} | | | |", flush=True)
                results.append({"case": case.name, "error": str(error)})
                continue
            print(f"| {case.name} | {mean:.2f} | {peak:.0f} | {a1111_s:.2f} | {engine_s:.2f} |", flush=True)
            results.append({"case": case.name, "mean": mean, "max": peak, "a1111_s": a1111_s,
                            "engine_s": engine_s})
        if args.json:
            args.json.write_text(json.dumps({"contrast": seeds, "cases": results}, indent=1))
    finally:
        if worker_process is not None:
            worker_process.stop()


if __name__ == "__main__":
    main()
