"""Trainer step time against a bare diffusers + peft loop (same model, batch, resolution, optimizer).

    python benchmarks/train_step.py [--steps 40] [--threads N] [--sd15]

Both run in this process on the learnable tiny model at 64×64, LoRA rank 4 on the UNet's attention, batch 1,
AdamW, fp32 on the CPU. The bare loop is what a diffusers example does per step with cached latents and text
(randn noise, randint timesteps, DDPM add_noise, UNet, MSE, backward, step, zero_grad); the trainer's step
adds its bookkeeping (the epoch order, progress, NaN check, the LR scheduler). Per-step CPU time (all threads)
from `time.process_time`, the first 5 steps of each left out; printed: medians, their ratio (target ≤ 1.05),
steps/s and the process's peak RSS. `--sd15` also times the bare loop on a random SD 1.5-size UNet (860 M
parameters) at 64 px (the trainer needs a checkpoint file of it, ~3.4 GB: not written here).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WARMUP = 5


def _bare_loop(unet, latents, hidden, steps: int, lr: float) -> list[float]:
    import torch
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    from aws_extension.engine.checkpoints import DATA_DIR

    scheduler = DDPMScheduler.from_config(DDPMScheduler.load_config(DATA_DIR / "sd15" / "scheduler"))
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    unet.train()
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=lr)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps):
        start = time.process_time()
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, 1000, (1,), generator=generator)
        prediction = unet(scheduler.add_noise(latents, noise, t), t, hidden).sample
        loss = torch.nn.functional.mse_loss(prediction.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.process_time() - start)
    return times[WARMUP:]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--sd15", action="store_true")
    args = parser.parse_args()
    import torch
    from PIL import Image

    from aws_extension.engine.checkpoints import load_checkpoint_pipeline
    from aws_extension.engine.tiny import write_tiny_model
    from aws_extension.engine.train import TrainInputs, train
    from aws_extension.training import parse_training_config

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="train-bench-"))
    base = work / "tiny-learnable.safetensors"
    write_tiny_model(base, learnable=True)
    images = work / "images"
    images.mkdir()
    Image.new("RGB", (64, 64), (220, 20, 20)).save(images / "0.png")
    config = parse_training_config("Lora", {"concepts_list": [{"instance_prompt": "sks"}], "resolution": 64,
                                            "max_train_steps": args.steps, "lora_unet_rank": 4,
                                            "lora_learning_rate": 1e-4})
    stamps: list[float] = []
    start = time.process_time()
    train(config, TrainInputs(base, images, work / "out", work / "state"),
          progress=lambda p: stamps.append(time.process_time()))
    trainer_steps = [b - a for a, b in zip([start, *stamps], stamps, strict=False)][WARMUP:]

    pipe = load_checkpoint_pipeline(base)
    with torch.no_grad():
        pixels = torch.full((1, 3, 64, 64), 0.0)
        latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        ids = pipe.tokenizer(["sks"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        hidden = pipe.text_encoder(ids)[0]
    bare_steps = _bare_loop(pipe.unet, latents, hidden, args.steps, 1e-4)
    trainer, bare = statistics.median(trainer_steps), statistics.median(bare_steps)
    print(f"tiny model, 64 px, batch 1, LoRA r4: trainer {trainer * 1000:.1f} ms/step CPU, bare {bare * 1000:.1f} "
          f"ms/step CPU, ratio {trainer / bare:.3f}; trainer {1 / trainer:.1f} steps/s (CPU time)")
    if args.sd15:
        from diffusers import UNet2DConditionModel

        from aws_extension.engine.checkpoints import DATA_DIR

        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(DATA_DIR / "sd15" / "unet"))
        sd15 = _bare_loop(unet, torch.randn(1, 4, 8, 8), torch.randn(1, 77, 768), max(WARMUP + 5, args.steps // 4),
                          1e-4)
        print(f"SD 1.5-size UNet, 64 px, batch 1, LoRA r4 (bare loop): {statistics.median(sd15):.2f} s/step CPU, "
              f"{1 / statistics.median(sd15):.2f} steps/s")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
