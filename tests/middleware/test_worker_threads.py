"""The CPU thread settings local workers get, for one worker and for several sharing the cores (the
timings behind the choice are in benchmarks/README.md, "Local workers' threads")."""

from __future__ import annotations

from aws_extension.middleware.compute.local.compute import LocalCompute, LocalEndpoint
from aws_extension.middleware.compute.local.processes import WorkerProcesses
from aws_extension.middleware.services.queue import JobQueue
from aws_extension.middleware.store.sqlite import SQLiteStore
from aws_extension.settings import MiddlewareSettings, load


def test_a_lone_worker_leaves_a_core_to_the_middleware_and_waits_as_torch_does():
    assert WorkerProcesses._thread_env(1, cores=2) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert WorkerProcesses._thread_env(1, cores=16) == {"OMP_NUM_THREADS": "15", "MKL_NUM_THREADS": "15"}
    assert WorkerProcesses._thread_env(1, cores=1)["OMP_NUM_THREADS"] == "1"


def test_workers_sharing_the_cores_split_them_and_wait_passively():
    assert WorkerProcesses._thread_env(2, cores=2) == {
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    assert WorkerProcesses._thread_env(2, cores=16)["OMP_NUM_THREADS"] == "8"
    assert WorkerProcesses._thread_env(3, cores=2)["OMP_NUM_THREADS"] == "1"  # never 0


def test_the_cores_are_split_over_every_local_worker_of_every_endpoint(tmp_path, monkeypatch):
    compute = LocalCompute(JobQueue(SQLiteStore(tmp_path / "store.sqlite3")), load(MiddlewareSettings, data_dir=tmp_path))
    shared_by: list[int] = []
    monkeypatch.setattr(compute.processes, "start", lambda instance, sharing: shared_by.append(sharing) or True)
    for name, most in (("fixed", 2), ("elastic", 3)):  # 2 instances, and an autoscaled one of up to 3
        local = LocalEndpoint(name=name, min_instances=0, max_instances=most, autoscaling=name == "elastic")
        compute._endpoints[name] = local
        compute._start_process(compute._new_instance(local))
    # The first endpoint's worker was started alone with it (2 at most); the second's counts both endpoints.
    assert shared_by == [2, 5] and compute.workers_at_once() == 5
    compute.delete("fixed")
    assert compute.workers_at_once() == 3
    compute.delete("elastic")
    assert compute.workers_at_once() == 1
