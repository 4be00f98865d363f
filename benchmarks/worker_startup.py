"""Worker start-up: how long `sd-aws sagemaker serve` takes to listen, to be healthy, and its first two jobs.

    python benchmarks/worker_startup.py [--rounds N] [--repo DIR] [--work-dir DIR]

The host run of the image's `serve` entry point, as SageMaker starts it: the root (`SD_AWS_SAGEMAKER_ROOT`)
is a temp dir whose `model/` holds the tiny checkpoint (what SageMaker unpacks from the model's
ModelDataUrl), the model cache on a temp volume. Per round, from `Popen`:
- listening: the first answer to `GET /ping` (any status);
- healthy: the first `GET /ping` that answers 200 (polled every 20 ms, as SageMaker polls it, but faster);
- first job / second job: a SageMaker-style asynchronous request object (no model named: the endpoint's own
  model; 64x64, 4 steps, Euler a, one image PUT to a local file server) posted to `/invocations`, wall time
  of the request, with the answer's `timings.run_s` (the engine, pipeline load included);
- where the worker has `GET /health`, its own split of start-up (`engine`: building the engine, imports
  included; `warm_up`: the start-up job on its checkpoint).
`--repo` runs another checkout's code (e.g. the commit before a change) with this script's measurement.
"""

from __future__ import annotations

import argparse
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

from benchmarks._common import machine  # noqa: E402 - after the path is set
from tests.helpers import free_port  # noqa: E402
from tests.worker.helpers import FileServer  # noqa: E402

PARAMS = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 4, "sampler_name": "Euler a"}
POLL_S = 0.02
TIMEOUT_S = 300


def tiny_checkpoint(work: Path) -> Path:
    path = work / "tiny-sd.safetensors"
    if not path.exists():
        from aws_extension.engine.tiny import write_tiny_model

        write_tiny_model(path)
    return path


def one_round(repo: Path, checkpoint: Path, work: Path, files: FileServer) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="opt-ml-", dir=work))
    (root / "model").mkdir()
    shutil.copy(checkpoint, root / "model" / "model.safetensors")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo), "SD_AWS_SAGEMAKER_ROOT": str(root),
           "SD_AWS_MODEL_CACHE_DIR": str(root / "volume"), "SD_AWS_HOME": str(root / "home")}
    url = f"http://127.0.0.1:{port}"
    log = (root / "serve.log").open("wb")
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "aws_extension", "sagemaker", "serve", "--host", "127.0.0.1",
                                "--port", str(port)], cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
    result: dict[str, float] = {}
    try:
        while "healthy" not in result:
            if process.poll() is not None or time.perf_counter() - started > TIMEOUT_S:
                raise RuntimeError(f"serve did not become healthy: {(root / 'serve.log').read_text()[-3000:]}")
            try:
                status = requests.get(url + "/ping", timeout=2).status_code
            except requests.ConnectionError:
                time.sleep(POLL_S)
                continue
            result.setdefault("listening", time.perf_counter() - started)
            if status == 200:
                result["healthy"] = time.perf_counter() - started
            else:
                time.sleep(POLL_S)
        health = requests.get(url + "/health", timeout=2)  # the worker's own split, where it reports one
        if health.status_code == 200:
            result.update({f"{step}_s (worker)": s for step, s in health.json()["startup_s"].items()})
        for n, name in enumerate(("first", "second")):
            job_id = f"bench-{name}"
            request = {"task": "txt2img", "job_id": job_id, "models": [], "params": {**PARAMS, "seed": n},
                       "output": {"image_urls": [f"{files.url}/out/{job_id}.png"]}}
            job_started = time.perf_counter()
            answer = requests.post(url + "/invocations", json=request, timeout=TIMEOUT_S)
            result[name] = time.perf_counter() - job_started
            if answer.status_code != 200:
                raise RuntimeError(f"{name} job: HTTP {answer.status_code}: {answer.text[:500]}")
            result[f"{name}_run_s"] = answer.json()["timings"]["run_s"]
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose code `serve` runs")
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()
    print(machine())
    print(f"code: {args.repo.resolve()} ({subprocess.run(['git', '-C', str(args.repo), 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()})")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="worker-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    files = FileServer()
    try:
        checkpoint = tiny_checkpoint(work)
        rounds = []
        for n in range(args.rounds):
            rounds.append(one_round(args.repo.resolve(), checkpoint, work, files))
            print(f"round {n + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in rounds[-1].items()), flush=True)
    finally:
        files.close()
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"median of {len(rounds)} rounds (from process start; jobs: the request's wall time, engine run_s):")
    for key in rounds[0]:
        print(f"  {key:>14}: {statistics.median(r[key] for r in rounds):.2f} s "
              f"(min {min(r[key] for r in rounds):.2f}, max {max(r[key] for r in rounds):.2f})")


if __name__ == "__main__":
    main()
