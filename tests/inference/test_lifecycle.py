"""Endpoints over their life: failed deployments, deletion with jobs queued, autoscaling, restarts."""

from __future__ import annotations

import signal
import time

import requests

from aws_extension.client import MiddlewareClient
from tests.helpers import SdAwsProcess, free_port
from tests.inference.conftest import (
    API_KEY,
    LONG_JOB,
    SEED_MODEL,
    TEST_ENV,
    deploy,
    start_stack,
    wait_for_endpoint_status,
    wait_until_running,
    worker_pids,
)

QUICK_JOB = {"task_type": "txt2img", "models": {"Stable-diffusion": [SEED_MODEL]}, "width": 64, "height": 64,
             "steps": 2, "prompt": "quick"}


def _busy_endpoint(stack, name: str, waiting: int, size: int = 512) -> tuple[dict, list[dict]]:
    """Deploy `name`, start a long job on it (`size` pixels square, 40 steps) and queue `waiting` quick ones."""
    deploy(stack.client, name)
    running = stack.client.create_inference({**LONG_JOB, "width": size, "height": size, "steps": 40,
                                             "sagemaker_endpoint_name": name})
    wait_until_running(stack.client, running["inference_id"])
    return running, [stack.client.create_inference({**QUICK_JOB, "seed": s, "sagemaker_endpoint_name": name})
                     for s in range(waiting)]


def _restart(data_dir, tmp_path, env: dict[str, str] | None = None) -> SdAwsProcess:
    """A new `sd-aws serve` on the data dir of a stopped stack."""
    port = free_port()
    return SdAwsProcess(["serve", "--port", str(port), "--data-dir", str(data_dir)], port,
                        env={"SD_AWS_API_KEY": API_KEY, **TEST_ENV, **(env or {})},
                        log_path=tmp_path / "restarted.log").start()


def _wait_for(predicate, timeout_s: float = 120, poll_s: float = 0.3):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError("condition not met in time")


def test_delete_endpoint_with_jobs_queued_and_invocation_timeout(tmp_path, tiny_models_dir):
    stack = start_stack(tmp_path, tiny_models_dir, env={"SD_AWS_INVOCATION_TIMEOUT_S": "12"})
    try:
        deploy(stack.client, "doomed")
        running = stack.client.create_inference({**LONG_JOB, "sagemaker_endpoint_name": "doomed"})
        wait_until_running(stack.client, running["inference_id"])
        queued = [stack.client.create_inference({**QUICK_JOB, "sagemaker_endpoint_name": "doomed"}) for _ in range(3)]
        answer = requests.delete(f"{stack.url}/endpoints", headers={"x-api-key": API_KEY}, timeout=120,
                                 json={"delete_endpoint_list": ["doomed", "never-existed"]})
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert results["doomed"] == "deleted" and "does not exist" in results["never-existed"]
        for job in queued:  # waiting jobs are cancelled in the request; the running one once its worker stops
            record = stack.client.inference_job(job["inference_id"])
            assert record["status"] == "cancelled" and "doomed" in record["error"], record
        record = stack.client.wait_for_job(running["inference_id"], timeout_s=60)
        assert record["status"] == "cancelled" and "doomed" in record["error"], record
        endpoint = wait_for_endpoint_status(stack.client, "doomed", "Deleted")
        assert endpoint["status"] == "deleted"
        assert worker_pids(stack.data_dir, "doomed") == {}
        late = requests.post(f"{stack.url}/inference/v2", json={**QUICK_JOB, "sagemaker_endpoint_name": "doomed"},
                             headers={"x-api-key": API_KEY}, timeout=10)
        assert late.status_code == 404
        redeploy = stack.client.deploy_endpoint("local", 1, endpoint_name="doomed")  # the name is free again
        creating = requests.post(f"{stack.url}/inference/v2", json={**QUICK_JOB, "sagemaker_endpoint_name": "doomed"},
                                 headers={"x-api-key": API_KEY}, timeout=10)
        assert creating.status_code == 409 and "Creating, not InService" in creating.json()["error"]
        assert stack.client.wait_for_endpoint(redeploy["EndpointDeploymentJobId"], 300)["endpoint_status"] == "InService"
        picked = requests.post(f"{stack.url}/inference/v2", json=QUICK_JOB, headers={"x-api-key": API_KEY}, timeout=10)
        assert picked.status_code == 200 and picked.json()["endpoint_name"] == "doomed"  # the one InService
        assert stack.client.wait_for_job(picked.json()["inference_id"], 300)["status"] == "succeed"
        # A job running past the invocation timeout is failed, and the worker takes the next job.
        too_long = stack.client.create_inference(LONG_JOB)
        failed = stack.client.wait_for_job(too_long["inference_id"], timeout_s=300)
        assert failed["status"] == "failed" and "invocation timeout (12 s)" in failed["error"]
        assert stack.client.wait_for_job(stack.client.create_inference(QUICK_JOB)["inference_id"], 300)["status"] == "succeed"
    finally:
        stack.server.stop()


def test_deployment_that_cannot_start_fails_with_the_reason(tmp_path, tiny_models_dir):
    # Workers started with the webui engine and no WebUI URL exit at once: the endpoint must fail, not hang.
    stack = start_stack(tmp_path, tiny_models_dir, env={"SD_AWS_WORKER_ENGINE": "webui"})
    try:
        job = stack.client.deploy_endpoint("local", 1, endpoint_name="broken")
        record = stack.client.wait_for_endpoint(job["EndpointDeploymentJobId"], timeout_s=120)
        assert record["endpoint_status"] == "Failed" and record["status"] == "failed"
        assert "did not become healthy" in record["error"] and "--webui-url" in record["error"]
        not_in_service = requests.post(f"{stack.url}/inference/v2", json={**QUICK_JOB, "sagemaker_endpoint_name": "broken"},
                                       headers={"x-api-key": API_KEY}, timeout=10)
        assert not_in_service.status_code == 404  # a failed endpoint's name is released
    finally:
        stack.server.stop()


def test_autoscaling_from_zero_to_one_and_back(tmp_path, tiny_models_dir):
    stack = start_stack(tmp_path, tiny_models_dir, env={"SD_AWS_SCALE_IN_IDLE_S": "3"})
    try:
        record = deploy(stack.client, "elastic", count=0, autoscaling_enabled=True, min_instance_number=0,
                        max_instance_number=1)
        assert record["current_instance_count"] == 0 and record["autoscaling"] is True
        job = stack.client.create_inference({**QUICK_JOB, "sagemaker_endpoint_name": "elastic"})
        assert stack.client.wait_for_job(job["inference_id"], timeout_s=300)["status"] == "succeed"
        assert stack.client.list_endpoints(endpoint_name="elastic")[0]["current_instance_count"] == 1
        _wait_for(lambda: stack.client.list_endpoints(endpoint_name="elastic")[0]["current_instance_count"] == 0, 60)
        assert worker_pids(stack.data_dir, "elastic") == {}
        again = stack.client.create_inference({**QUICK_JOB, "sagemaker_endpoint_name": "elastic"})
        assert stack.client.wait_for_job(again["inference_id"], timeout_s=300)["status"] == "succeed"
    finally:
        stack.server.stop()


def test_middleware_killed_with_jobs_queued_loses_none(tmp_path, tiny_models_dir):
    stack = start_stack(tmp_path, tiny_models_dir)
    try:
        first, rest = _busy_endpoint(stack, "durable", waiting=4, size=256)  # it only has to be running
        stack.server.stop(signal.SIGKILL)
        _wait_for(lambda: worker_pids(stack.data_dir, "durable") == {}, 30)  # workers die with the middleware

        restarted = _restart(stack.data_dir, tmp_path)
        try:
            client = MiddlewareClient(restarted.url, API_KEY)
            jobs = [client.wait_for_job(j["inference_id"], timeout_s=600) for j in [first, *rest]]
            assert [j["status"] for j in jobs] == ["succeed"] * 5, jobs
            assert client.list_endpoints(endpoint_name="durable")[0]["endpoint_status"] == "InService"
        finally:
            restarted.stop()
    finally:
        stack.server.stop()


def test_an_endpoint_that_cannot_come_back_after_a_restart_fails_with_its_jobs(tmp_path, tiny_models_dir):
    stack = start_stack(tmp_path, tiny_models_dir)
    try:
        running, (waiting,) = _busy_endpoint(stack, "fragile", waiting=1)
    finally:
        stack.server.stop()
    # Back with workers that cannot start (the webui engine without a WebUI): the endpoint cannot be restored.
    restarted = _restart(stack.data_dir, tmp_path, {"SD_AWS_WORKER_ENGINE": "webui"})
    try:
        client = MiddlewareClient(restarted.url, API_KEY)
        endpoint = _wait_for(lambda: next((e for e in client.list_endpoints(endpoint_name="fragile")
                                           if e["endpoint_status"] == "Failed"), None), 120)
        assert "did not become healthy" in endpoint["error"] and endpoint["current_instance_count"] == 0
        for job_id in (running["inference_id"], waiting["inference_id"]):
            job = client.wait_for_job(job_id, timeout_s=60)
            assert job["status"] == "failed" and job["error"].startswith("The endpoint fragile failed: "), job
        refused = requests.post(f"{restarted.url}/inference/v2", json={**QUICK_JOB, "sagemaker_endpoint_name": "fragile"},
                                headers={"x-api-key": API_KEY}, timeout=10)
        assert refused.status_code == 404  # its name is released, as for a deployment that failed
    finally:
        restarted.stop()


def test_a_job_finishing_while_the_middleware_stops_is_queued_again_and_runs_after_the_restart(tmp_path, tiny_models_dir):
    # A job of a few seconds, running when SIGTERM comes: its worker (stopped after the HTTP server) finishes
    # it within its 10 s grace, but the server no longer takes its images, so it answers "failed". That job
    # must go back to the queue, not end failed.
    stack = start_stack(tmp_path, tiny_models_dir)
    try:
        deploy(stack.client, "finishing")
        job = stack.client.create_inference({**LONG_JOB, "width": 256, "height": 256, "steps": 16,
                                             "sagemaker_endpoint_name": "finishing"})
        wait_until_running(stack.client, job["inference_id"])
        assert stack.server.stop() == 0
    finally:
        stack.server.stop()
    log = (stack.data_dir.parent / "data-serve.log").read_text()
    assert f"job {job['inference_id']} failed while the middleware stops" in log, log[-3000:]
    restarted = _restart(stack.data_dir, tmp_path)
    try:
        record = MiddlewareClient(restarted.url, API_KEY).wait_for_job(job["inference_id"], timeout_s=300)
        assert record["status"] == "succeed", record
    finally:
        restarted.stop()
