"""Local compute: endpoints as worker processes on this machine (the embedded backend)."""

from aws_extension.middleware.compute.local.compute import LocalCompute
from aws_extension.middleware.compute.local.processes import local_gpus

__all__ = ["LocalCompute", "local_gpus"]
