"""The `ml.*` instance types the AWS backend offers for its asynchronous endpoints, and their GPUs.

Where the table comes from:
- The names are SageMaker's own: every type here is a value of `ProductionVariantInstanceType` in the
  SageMaker API model (botocore's `sagemaker/2017-07-24/service-2.json`, the list CreateEndpointConfig
  accepts; a test checks it). Asynchronous inference takes the instance types real-time hosting takes.
- Of those, the ones the worker image can run: it is an x86_64 image with PyTorch's CUDA 12.8 wheels, which
  are built for Turing (sm_75) and newer (PyTorch's CUDA support matrix, release 2.11 on). So: NVIDIA GPU
  types from Turing on, and x86 CPU types (slow, for trials). Left out: Volta (p3), Graviton (`*g*`: Arm),
  Inferentia/Trainium (`inf*`, `trn*`: Neuron, not CUDA), Gaudi (`dl1`), burstable `t2` (SageMaker's
  autoscaling does not scale burstable types), the previous generations m4/c4/p2, and the GPU types whose
  GPU layout is not listed here yet (g7, g7e, p6-b300, p6e-gb200): add a `Gpu` row to offer one.
- GPU model, count and memory per GPU: AWS's instance-type pages (EC2 accelerated computing; SageMaker's
  `ml.` types are the same machines) and NVIDIA's data sheets. Memory is the nominal size per GPU in GiB;
  the driver reports a little less as usable.
- Regions: not every region offers every type, and AWS publishes no machine-readable list of which. The
  region's own answer is the authority: CreateEndpointConfig/CreateEndpoint refuse a type a region does not
  offer, and `endpoints.py` turns that into a `DeploymentRefused` naming the region. An operator narrows the
  offer to what a region has (and what the account's quotas allow) with `SD_AWS_SAGEMAKER_INSTANCE_TYPES`.
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_extension.middleware.errors import InvalidRequest


@dataclass(frozen=True)
class Gpu:
    model: str
    count: int  # GPUs per instance
    memory_gib: int  # per GPU


def _family(family: str, model: str, memory_gib: int, counts: dict[str, int]) -> dict[str, Gpu]:
    return {f"ml.{family}.{size}": Gpu(model, count, memory_gib) for size, count in counts.items()}


# The g families: one GPU up to 16xlarge, four at 12xlarge and 24xlarge, eight at 48xlarge.
_G_SIZES = {"xlarge": 1, "2xlarge": 1, "4xlarge": 1, "8xlarge": 1, "16xlarge": 1, "12xlarge": 4, "24xlarge": 4,
            "48xlarge": 8}

GPUS: dict[str, Gpu] = {
    **_family("g4dn", "NVIDIA T4", 16, {"xlarge": 1, "2xlarge": 1, "4xlarge": 1, "8xlarge": 1, "16xlarge": 1,
                                        "12xlarge": 4}),
    **_family("g5", "NVIDIA A10G", 24, _G_SIZES),
    **_family("g6", "NVIDIA L4", 24, _G_SIZES),
    **_family("g6e", "NVIDIA L40S", 48, _G_SIZES),
    **_family("p4d", "NVIDIA A100", 40, {"24xlarge": 8}),
    **_family("p4de", "NVIDIA A100", 80, {"24xlarge": 8}),
    **_family("p5", "NVIDIA H100", 80, {"4xlarge": 1, "48xlarge": 8}),
    **_family("p5e", "NVIDIA H200", 141, {"48xlarge": 8}),
    **_family("p5en", "NVIDIA H200", 141, {"48xlarge": 8}),
    **_family("p6-b200", "NVIDIA B200", 180, {"48xlarge": 8}),
}

# Memory of one GPU of each GPU type (what a job or a training run must fit in).
GPU_MEMORY_GIB: dict[str, int] = {name: gpu.memory_gib for name, gpu in GPUS.items()}

_CPU_SIZES = {
    "m5": ("large", "xlarge", "2xlarge", "4xlarge", "12xlarge", "24xlarge"),
    "c5": ("large", "xlarge", "2xlarge", "4xlarge", "9xlarge", "18xlarge"),
    "m6i": ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge", "32xlarge"),
    "c6i": ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge", "32xlarge"),
    "m7i": ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge", "48xlarge"),
    "c7i": ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge", "48xlarge"),
}
CPU_TYPES: tuple[str, ...] = tuple(f"ml.{family}.{size}" for family, sizes in _CPU_SIZES.items() for size in sizes)

# GPU types first: they are what the product is for.
ASYNC_INFERENCE_TYPES: tuple[str, ...] = (*GPUS, *CPU_TYPES)


def offered_types(setting: str | None) -> tuple[str, ...]:
    """The types POST /endpoints accepts: the `SD_AWS_SAGEMAKER_INSTANCE_TYPES` setting (each one must be in
    the table), else the whole table."""
    if not setting:
        return ASYNC_INFERENCE_TYPES
    chosen = tuple(dict.fromkeys(name.strip() for name in setting.split(",") if name.strip()))
    unknown = [name for name in chosen if name not in ASYNC_INFERENCE_TYPES]
    if unknown or not chosen:
        raise ValueError(f"SD_AWS_SAGEMAKER_INSTANCE_TYPES names {', '.join(unknown) or 'no type'}, which the worker "
                         f"cannot run on; choose from {', '.join(ASYNC_INFERENCE_TYPES)}")
    return chosen


def check_instance_type(instance_type: object, offered: tuple[str, ...]) -> None:
    if instance_type not in offered:
        raise InvalidRequest(f"instance_type {instance_type!r} is not offered on this server's SageMaker endpoints; "
                             f"use one of {', '.join(offered)}.")
