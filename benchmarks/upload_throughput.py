"""Middleware benchmark: checkpoint upload throughput and server memory, against `cp` of the same file.

    cd /work/main && .venv/bin/python benchmarks/upload_throughput.py [--size-mib 1024] [--part-mib 16,64]
                                                                    [--workers 4] [--work-dir DIR]

What it does:
1. Writes a valid LoRA-shaped safetensors file of about --size-mib MiB (one F32 tensor named
   `lora_unet_x.lora_down.weight`), in 16 MiB chunks, into a temp dir under --work-dir (default: the
   system temp dir). The middleware's data dir is in the same temp dir, so every copy stays on one disk.
2. Times `cp` of that file to a sibling path (then deletes the copy), twice; the faster one is the
   reference. Also `cp` + `sync <copy>` (the upload fsyncs its assembled file, cp does not).
3. Starts a real `sd-aws serve` (a subprocess on 127.0.0.1) and, for each part size, uploads the file with
   `MiddlewareClient.upload_checkpoint_files` (parallel part PUTs, then PUT /checkpoint, which assembles
   the parts, hashes them and checks the header). Reports MB/s (10^6 bytes/s), upload time / cp time,
   and the split between the part PUTs and the completion.
4. Samples the server's VmRSS from /proc every 50 ms during all of it: baseline (after start and one
   warm-up request), peak during each upload, after, and VmHWM. The peak must not grow with the file.

The file is in the page cache for both cp and the upload (written just before): this measures the
middleware's own cost, not the disk's read speed.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

from _common import API_KEY, MiB, RssSampler, cpu_seconds, machine, mib, middleware, own_cpu_seconds, temp_dir

from aws_extension.client.api import MiddlewareClient

TENSOR = "lora_unet_x.lora_down.weight"
CHUNK = 16 * MiB


def write_lora(path: Path, size_bytes: int) -> int:
    """A safetensors file of about `size_bytes`: one F32 tensor, written chunk by chunk. Returns its size."""
    floats = max(1, (size_bytes - 200) // 4)
    header = json.dumps({TENSOR: {"dtype": "F32", "shape": [floats], "data_offsets": [0, floats * 4]}}).encode()
    header += b" " * (-len(header) % 8)  # safetensors pads the header with spaces to 8-byte alignment
    chunk = bytes([7]) * CHUNK
    left = floats * 4
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(header)) + header)
        while left:
            n = min(left, CHUNK)
            out.write(chunk if n == CHUNK else chunk[:n])
            left -= n
    return path.stat().st_size


def time_cp(source: Path, target: Path, sync: bool) -> float:
    start = time.perf_counter()
    subprocess.run(["cp", str(source), str(target)], check=True)
    if sync:
        subprocess.run(["sync", str(target)], check=True)
    elapsed = time.perf_counter() - start
    target.unlink()
    return elapsed


def mbps(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def upload_once(client: MiddlewareClient, rss: RssSampler, source: Path, size: int, part_mib: int, workers: int,
                round_number: int, cp_s: float, cp_sync_s: float, server_pid: int, data_dir: Path) -> dict:
    parts_done_at: list[float] = []

    def progress(done: int, total: int) -> None:
        if done == total:
            parts_done_at.append(time.perf_counter())

    name = f"upload-{part_mib}-{round_number}"
    server_cpu, client_cpu = cpu_seconds(server_pid), own_cpu_seconds()
    with rss.phase(name):
        start = time.perf_counter()
        record = client.upload_checkpoint_files("Lora", [source], {"bench": True}, part_size=part_mib * MiB,
                                                workers=workers, progress=progress)
        elapsed = time.perf_counter() - start
    server_cpu, client_cpu = cpu_seconds(server_pid) - server_cpu, own_cpu_seconds() - client_cpu
    assert record["status"] == "Active" and record["size"] == size, record
    parts_s = parts_done_at[0] - start if parts_done_at else float("nan")
    peak = rss.phase_peak_kib(name)
    print(f"upload #{round_number} {part_mib:3d} MiB parts x{workers}: {elapsed:7.2f} s  {mbps(size, elapsed):5.0f} MB/s  "
          f"upload/cp {elapsed / cp_s:5.1f}x  upload/(cp+sync) {elapsed / cp_sync_s:4.1f}x\n"
          f"    part PUTs {parts_s:.2f} s, complete (assemble + sha256 + fsync + header check) {elapsed - parts_s:.2f} s; "
          f"CPU: server {server_cpu:.2f} s, client {client_cpu:.2f} s; "
          f"peak VmRSS {mib(peak):.1f} MiB ({rss.count(name)} samples)")
    # Free the disk before the next run: the assembled object is as big as the file.
    stored = data_dir / "blobs" / record["s3_location"].removeprefix("local://blobs/")
    for path in stored.glob("*"):
        path.unlink()
    return {"part_mib": part_mib, "seconds": elapsed, "parts_s": parts_s, "peak_kib": peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="file size in MiB (default 1024)")
    parser.add_argument("--part-mib", default="16,64", help="part sizes to try, MiB, comma-separated")
    parser.add_argument("--workers", type=int, default=4, help="parallel part uploads (default 4)")
    parser.add_argument("--repeat", type=int, default=2, help="uploads per part size (default 2)")
    parser.add_argument("--work-dir", default=None, help="where the temp dir goes (default: system temp)")
    args = parser.parse_args()
    part_sizes = [int(p) for p in args.part_mib.split(",") if p.strip()]

    print(f"machine: {machine()}")
    with temp_dir("sd-aws-upload-bench-", args.work_dir) as work:
        source = work / "bench-lora.safetensors"
        start = time.perf_counter()
        size = write_lora(source, args.size_mib * MiB)
        print(f"file: {source} ({size} bytes, written in {time.perf_counter() - start:.1f} s); "
              f"filesystem device {os.stat(work).st_dev}")

        cp_s = min(time_cp(source, work / "copy.safetensors", sync=False) for _ in range(2))
        cp_sync_s = time_cp(source, work / "copy.safetensors", sync=True)
        print(f"cp:          {cp_s:7.2f} s  {mbps(size, cp_s):7.0f} MB/s   (best of 2)")
        print(f"cp + sync:   {cp_sync_s:7.2f} s  {mbps(size, cp_sync_s):7.0f} MB/s")

        data_dir = work / "data"
        with middleware(data_dir) as server, RssSampler(server.process.pid) as rss:
            client = MiddlewareClient(server.url, API_KEY, timeout_s=600)
            client.test_connection()  # warm-up: the first request imports and builds what it lazily needs
            time.sleep(0.3)
            baseline = rss.current()["VmRSS"]
            print(f"server pid {server.process.pid}: baseline VmRSS {mib(baseline):.1f} MiB")
            results = []
            for round_number in range(1, args.repeat + 1):
                for part_mib in part_sizes:
                    results.append(upload_once(client, rss, source, size, part_mib, args.workers, round_number,
                                               cp_s, cp_sync_s, server.process.pid, data_dir))
            time.sleep(0.5)
            after = rss.current()
            overall_peak = max(r["peak_kib"] for r in results)
            for part_mib in part_sizes:
                best = min(r["seconds"] for r in results if r["part_mib"] == part_mib)
                print(f"best of {args.repeat}, {part_mib:3d} MiB parts: {best:.2f} s, {mbps(size, best):.0f} MB/s, "
                      f"upload/cp {best / cp_s:.1f}x, upload/(cp+sync) {best / cp_sync_s:.1f}x")
            print(f"server RSS: baseline {mib(baseline):.1f} MiB, peak during uploads {mib(overall_peak):.1f} MiB "
                  f"(growth {mib(overall_peak - baseline):+.1f} MiB for a {size / MiB:.0f} MiB file), "
                  f"after {mib(after['VmRSS']):.1f} MiB, VmHWM {mib(after['VmHWM']):.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
