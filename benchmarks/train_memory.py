"""The trainer's peak memory on the CPU against `training_memory.py`'s activation term (a sanity check of its
scaling with batch × resolution², not of its SD 1.x-size constants).

    python benchmarks/train_memory.py [--steps 3] [--base tiny-learnable.safetensors]

Each setting trains a LoRA (rank 4, fp32) on the learnable tiny model for a few steps in a fresh process;
printed: the process's peak RSS growth during `train()` (the model load is the same in every row), its
growth over the first row, and the formula's activation estimate for the same setting (the tiny model's
UNet size scaled in, as the formula does). The growth over the first row should follow the formula's
column in proportion (4× the pixels or the batch: about 4× the activations).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SETTINGS = [  # (resolution, batch, gradient checkpointing)
    (128, 1, False), (256, 1, False), (256, 4, False), (256, 4, True),
]

_CHILD = """
import json, resource, sys
from pathlib import Path
from PIL import Image
from aws_extension.engine.train import TrainInputs, train
from aws_extension.training import parse_training_config
base, root, resolution, batch, checkpointing, steps = sys.argv[1:]
root = Path(root)
(root / "images").mkdir(parents=True)
for i in range(int(batch)):
    Image.new("RGB", (int(resolution),) * 2, (200, 30, 30)).save(root / "images" / f"{i}.png")
config = parse_training_config("Lora", {"concepts_list": [{"instance_prompt": "sks"}], "resolution": int(resolution),
                                        "train_batch_size": int(batch), "gradient_checkpointing": checkpointing == "1",
                                        "max_train_steps": int(steps), "lora_unet_rank": 4})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
train(config, TrainInputs(Path(base), root / "images", root / "out", root / "state"), device="cpu")
print(json.dumps({"growth_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--base", type=Path, help="a `make-tiny-model --learnable` file (default: built here)")
    args = parser.parse_args()
    from aws_extension.engine.tiny import write_tiny_model
    from aws_extension.model_files import read_safetensors_file
    from aws_extension.training import parse_training_config
    from aws_extension.training_memory import GiB, estimate, model_size

    with tempfile.TemporaryDirectory() as tmp:
        base = args.base or Path(tmp) / "tiny-learnable.safetensors"
        if args.base is None:
            write_tiny_model(base, learnable=True)
        size = model_size(read_safetensors_file(base).shapes())
        rows = []
        for index, (resolution, batch, checkpointing) in enumerate(SETTINGS):
            out = subprocess.run([sys.executable, "-c", _CHILD, str(base), f"{tmp}/run{index}", str(resolution),
                                  str(batch), "1" if checkpointing else "0", str(args.steps)],
                                 capture_output=True, text=True, cwd=REPO, check=True)
            growth = json.loads(out.stdout.strip().splitlines()[-1])["growth_kib"] / 1024
            config = parse_training_config("Lora", {"concepts_list": [{"instance_prompt": "sks"}],
                                                    "resolution": resolution, "train_batch_size": batch,
                                                    "gradient_checkpointing": checkpointing})
            rows.append((resolution, batch, checkpointing, growth, estimate(config, size).activations * GiB / 2**20))
    print(f"{'resolution':>10} {'batch':>5} {'ckpt':>5} {'RSS growth MiB':>15} {'over row 1':>11} {'formula MiB':>12}")
    for resolution, batch, checkpointing, growth, formula in rows:
        print(f"{resolution:>10} {batch:>5} {'yes' if checkpointing else 'no':>5} {growth:>15.0f} "
              f"{growth - rows[0][3]:>11.0f} {formula:>12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
