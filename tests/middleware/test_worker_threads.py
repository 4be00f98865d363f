"""The CPU thread settings local workers get, for one worker and for several sharing the cores (the
timings behind the choice are in benchmarks/README.md, "Local workers' threads")."""

from __future__ import annotations

from aws_extension.middleware.compute.local.processes import WorkerProcesses


def test_a_lone_worker_leaves_a_core_to_the_middleware_and_waits_as_torch_does():
    assert WorkerProcesses._thread_env(1, cores=2) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert WorkerProcesses._thread_env(1, cores=16) == {"OMP_NUM_THREADS": "15", "MKL_NUM_THREADS": "15"}
    assert WorkerProcesses._thread_env(1, cores=1)["OMP_NUM_THREADS"] == "1"


def test_workers_sharing_the_cores_split_them_and_wait_passively():
    assert WorkerProcesses._thread_env(2, cores=2) == {
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    assert WorkerProcesses._thread_env(2, cores=16)["OMP_NUM_THREADS"] == "8"
    assert WorkerProcesses._thread_env(3, cores=2)["OMP_NUM_THREADS"] == "1"  # never 0
