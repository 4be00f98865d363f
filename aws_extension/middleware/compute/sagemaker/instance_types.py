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
- Regions (`REGION_FAMILIES`): not every region has every GPU family. For the regions the product targets,
  the table lists the GPU families whose EC2 instances the region has (SageMaker's `ml.` types run on the
  same machines, so a family EC2 lacks in a region SageMaker lacks too), from the per-region EC2 offer of
  instances.vantage.sh as collected in github.com/tsaol/aws-gpu `data/all_gpu_instances.js`, dated
  2026-01-21 (`REGION_TABLE_DATE`); SageMaker's own regional lists (its pricing page) are not published as
  data. p5e is left out everywhere (EC2 sells it only as capacity blocks). Every listed region has all the
  CPU types. SageMaker can still lack a listed type in a region, or an account its quota: the region's own
  answer (CreateEndpointConfig/CreateEndpoint refuse it) is turned into a `DeploymentRefused` naming the
  region by `endpoints.py`.
- A region not in the table: the whole list is offered and the refusal says this server does not know
  that region's list (SageMaker's answer then decides). `SD_AWS_SAGEMAKER_INSTANCE_TYPES`, when set, is the
  offer whatever the region (an operator who knows the region or the account's quotas better than the
  table, e.g. after AWS adds a family to it).
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


REGION_TABLE_DATE = "2026-01-21"
# The GPU families each region has (see the module's docstring for where this comes from).
_EVERY_GPU_FAMILY = ("g4dn", "g5", "g6", "g6e", "p4d", "p4de", "p5", "p5en", "p6-b200")
REGION_FAMILIES: dict[str, tuple[str, ...]] = {
    "us-east-1": _EVERY_GPU_FAMILY,
    "us-west-2": _EVERY_GPU_FAMILY,
    "eu-west-1": ("g4dn", "g5", "p4d"),
    "ap-northeast-1": ("g4dn", "g5", "g6", "g6e", "p4d", "p4de", "p5", "p5en"),
}


def _family_of(instance_type: str) -> str:
    return instance_type.split(".")[1]


@dataclass(frozen=True)
class Offer:
    """The instance types POST /endpoints accepts, and for which region they were chosen."""

    types: tuple[str, ...]
    region: str
    region_known: bool  # the table (or the operator's setting) says what this region has

    def check(self, instance_type: object) -> None:
        if instance_type in self.types:
            return
        if self.region_known:
            raise InvalidRequest(f"instance_type {instance_type!r} is not offered for SageMaker endpoints in "
                                 f"{self.region}; {self.region} offers {', '.join(self.types)}.")
        raise InvalidRequest(f"instance_type {instance_type!r} is not one this server can run on SageMaker; use one "
                             f"of {', '.join(self.types)} (this server has no list of what {self.region} offers: "
                             "SageMaker may still refuse one of them there).")


def offered_types(setting: str | None, region: str = "") -> Offer:
    """The types POST /endpoints accepts: the `SD_AWS_SAGEMAKER_INSTANCE_TYPES` setting (each one must be in
    the table), else the region's types of the table, else (a region not in it) the whole table."""
    if setting:
        chosen = tuple(dict.fromkeys(name.strip() for name in setting.split(",") if name.strip()))
        unknown = [name for name in chosen if name not in ASYNC_INFERENCE_TYPES]
        if unknown or not chosen:
            raise ValueError(f"SD_AWS_SAGEMAKER_INSTANCE_TYPES names {', '.join(unknown) or 'no type'}, which the "
                             f"worker cannot run on; choose from {', '.join(ASYNC_INFERENCE_TYPES)}")
        return Offer(chosen, region, region_known=True)
    families = REGION_FAMILIES.get(region)
    if families is None:
        return Offer(ASYNC_INFERENCE_TYPES, region, region_known=False)
    return Offer(tuple(t for t in ASYNC_INFERENCE_TYPES if t in CPU_TYPES or _family_of(t) in families), region,
                 region_known=True)
