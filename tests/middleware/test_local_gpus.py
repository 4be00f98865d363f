"""Which GPUs local workers are spread over (SD_AWS_LOCAL_GPUS); the spreading itself is checked on real
workers in tests/inference/test_jobs.py."""

from __future__ import annotations

from pathlib import Path

from aws_extension.middleware.compute.local import local_gpus


def test_the_setting_wins_then_cuda_visible_devices_then_the_driver():
    assert local_gpus("0, 2", {"CUDA_VISIBLE_DEVICES": "1"}) == ["0", "2"]
    assert local_gpus("", {"CUDA_VISIBLE_DEVICES": "1"}) == []  # empty: no GPUs, even if there are some
    assert local_gpus(None, {"CUDA_VISIBLE_DEVICES": "1,3"}) == ["1", "3"]
    assert local_gpus(None, {"CUDA_VISIBLE_DEVICES": ""}) == []
    if not Path("/proc/driver/nvidia/gpus").exists():  # no NVIDIA driver, no GPUs to spread over
        assert local_gpus(None, {}) == []
