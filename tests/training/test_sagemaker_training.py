"""Training on the aws backend: `ml.*` jobs as SageMaker training jobs, on moto's server with the training fake
of tests/aws_stack.py (the real `sd-aws sagemaker train` on channels from moto's S3, its checkpoints synced to
the job's S3 prefix, `model.tar.gz`, and the state-change events), behind `sd-aws serve --backend aws`.
The learnable tiny model, 64 px, few steps."""

from __future__ import annotations

import io
import json
import time

import pytest
import requests
from PIL import Image

from aws_extension.client import MiddlewareClient
from tests.aws_stack import SageMakerTrainingFake, start_aws_middleware
from tests.inference.conftest import deploy
from tests.training.test_training_api import BASE_NAME, DATASET, write_images

API_KEY = "sagemaker-training-key"
HEADERS = {"x-api-key": API_KEY}
INSTANCE_TYPE = "ml.g5.xlarge"


def api(stack, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(method, stack["url"] + path, headers=HEADERS, timeout=60, **kwargs)


def ok(response: requests.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def lora_body(model_id: str, name: str, dataset: str = DATASET, use_spot: bool = False, **config) -> dict:
    return {"train_type": "Lora", "model_id": model_id,
            "params": {"training_params": {"dataset_name": dataset, "training_instance_type": INSTANCE_TYPE,
                                           "use_spot": use_spot},
                       "config_params": {"concepts_list": [{"instance_prompt": "sks", "n_save_sample": 1,
                                                            "save_infer_steps": 2}],
                                         "model_name": name, "resolution": 64, "max_train_steps": 4,
                                         "lora_learning_rate": 1e-3, "seed": 7, **config}}}


def wait_for(stack, job_id: str, until, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    job = None
    while time.monotonic() < deadline:
        job = ok(api(stack, "GET", f"/train/{job_id}"))["job"]
        if until(job):
            return job
        time.sleep(0.3)
    raise AssertionError(f"training {job_id} did not get there: {job}")


def finished(job: dict) -> bool:
    return job["status"] in ("Complete", "Fail", "Stopped")


def start(stack, body: dict) -> dict:
    job = ok(api(stack, "POST", "/train", json=body))["job"]
    started = ok(api(stack, "PUT", "/train", json={"train_job_id": job["id"], "status": "Training"}))["job"]
    assert started["status"] == "Training" and started["sagemakerTrainName"], started["error"]
    return started


@pytest.fixture(scope="module")
def stack(aws_cloud, tmp_path_factory, learnable_checkpoint):
    tmp = tmp_path_factory.mktemp("sagemaker-training")
    fake = SageMakerTrainingFake(aws_cloud, tmp / "instances", env={"SD_AWS_TRAINING_PROGRESS_SYNC_S": "0.2"})
    fake.install()
    server, resources = start_aws_middleware(aws_cloud, tmp / "data", API_KEY, env={
        "SD_AWS_SAGEMAKER_TRAINING_VANISHED_GRACE_S": "1"})
    try:
        client = MiddlewareClient(server.url, API_KEY, timeout_s=60)
        base = tmp / BASE_NAME
        base.write_bytes(learnable_checkpoint.read_bytes())
        checkpoint = client.upload_checkpoint_files("Stable-diffusion", [base])
        client.create_dataset_from_files(DATASET, write_images(tmp / "images"))
        built = {"url": server.url, "client": client, "fake": fake, "resources": resources, "tmp": tmp}
        model = ok(api(built, "POST", "/model", json={"model_type": "Stable-diffusion", "name": "tiny-base",
                                                      "checkpoint_id": checkpoint["id"]}))["job"]
        ok(api(built, "PUT", "/model", json={"model_id": model["id"], "status": "Creating"}))
        deadline = time.monotonic() + 60
        while {m["id"]: m for m in ok(api(built, "GET", "/models"))["models"]}[model["id"]]["status"] != "Complete":
            assert time.monotonic() < deadline, "the training base was not prepared"
            time.sleep(0.3)
        built["model_id"] = model["id"]
        yield built
    finally:
        server.stop()
        fake.uninstall()


@pytest.mark.timeout(900)  # the first test of the module also starts the stack (the session's aws_cloud)
def test_a_lora_job_stopped_and_resumed_on_sagemaker_completes_and_its_lora_is_used_in_an_inference_job(stack):
    """One job through every state (two SageMaker runs: a run is a process start, the costly part here)."""
    job = start(stack, lora_body(stack["model_id"], "sm-red-lora", use_spot=True, max_train_steps=60,
                                 save_state_every=2, save_preview_every=30))
    first = job["sagemakerTrainName"]
    assert first.startswith(stack["resources"].stack_name + "--")
    sagemaker = stack["fake"].client("sagemaker").describe_training_job(TrainingJobName=first)
    bucket = stack["resources"].bucket
    assert sagemaker["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert sagemaker["RoleArn"] == stack["resources"].sagemaker_role_arn
    assert sagemaker["HyperParameters"]["max_train_steps"] == "60"
    assert {c["ChannelName"] for c in sagemaker["InputDataConfig"]} == {"base", "instance"}
    assert sagemaker["OutputDataConfig"]["S3OutputPath"] == f"s3://{bucket}/training/{job['id']}/output/"
    assert sagemaker["CheckpointConfig"]["S3Uri"] == f"s3://{bucket}/training/{job['id']}/checkpoints/"
    assert sagemaker["EnableManagedSpotTraining"] is True
    assert sagemaker["StoppingCondition"]["MaxWaitTimeInSeconds"] >= sagemaker["StoppingCondition"]["MaxRuntimeInSeconds"]
    tags = stack["fake"].client("sagemaker").list_tags(ResourceArn=sagemaker["TrainingJobArn"])["Tags"]
    assert {"Key": "sd-aws:training-job", "Value": job["id"]} in tags

    # Stop: StopTrainingJob; the answer does not wait, the state-change event ends the job Stopped.
    wait_for(stack, job["id"], lambda j: j["step"] >= 3 or finished(j))
    asked = ok(api(stack, "PUT", "/train", json={"train_job_id": job["id"], "status": "Stopped"}))["job"]
    assert asked["status"] in ("Training", "Stopped")
    stopped = wait_for(stack, job["id"], finished)
    assert stopped["status"] == "Stopped", stopped
    assert stack["fake"].resumed_from[first] is None
    saved = stack["fake"].client("s3").get_object(
        Bucket=bucket, Key=f"training/{job['id']}/checkpoints/latest.json")["Body"].read()
    saved_step = int(json.loads(saved)["step"])
    assert 2 <= saved_step < 60

    # Resume: a new SageMaker job that starts from the state in the checkpoint prefix.
    resumed = ok(api(stack, "PUT", "/train", json={"train_job_id": job["id"], "status": "Training"}))["job"]
    second = resumed["sagemakerTrainName"]
    assert second != first and resumed["status"] == "Training"
    done = wait_for(stack, job["id"], finished)
    assert done["status"] == "Complete", done
    assert stack["fake"].resumed_from[second] == saved_step
    assert (done["step"], done["total_steps"]) == (60, 60) and done["loss"] > 0 and done["error"] is None
    assert done["attempts"] == 1 and done["sagemakerTrainName"] == second
    assert len(done["samples"]) == 2
    sample = requests.get(done["samples"][-1], timeout=30)
    assert sample.status_code == 200 and Image.open(io.BytesIO(sample.content)).size == (64, 64)

    client = stack["client"]
    checkpoint = client.get_checkpoint(done["checkpoint_id"])
    assert (checkpoint["type"], checkpoint["status"], checkpoint["name"]) == ("Lora", "Active", ["sm-red-lora.safetensors"])
    assert checkpoint["params"]["training_job_id"] == job["id"] and checkpoint["sha256"]
    assert "sm-red-lora.safetensors" in ok(api(stack, "GET", "/inference/get-lora-list"))
    deploy(client, "sm-train-check", instance_type=INSTANCE_TYPE)
    try:
        inference = client.create_inference({
            "task_type": "txt2img", "models": {"Stable-diffusion": [BASE_NAME]},
            "sagemaker_endpoint_name": "sm-train-check", "prompt": "sks <lora:sm-red-lora:1>", "width": 64,
            "height": 64, "steps": 2, "seed": 1})
        result = client.wait_for_job(inference["inference_id"], timeout_s=300)
        assert result["status"] == "succeed", result
        param = requests.get(client.inference_param_url(inference["inference_id"]), timeout=30).json()
        assert "sm-red-lora" in param["info"]
    finally:
        client.request("DELETE", "/endpoints", json={"delete_endpoint_list": ["sm-train-check"]})


def test_the_trainers_failure_reason_reaches_the_jobs_error(stack):
    client = stack["client"]
    urls = client.create_dataset("sm-broken", [{"filename": "broken.png", "name": "broken.png",
                                                "type": "image"}])["s3PresignUrl"]
    requests.put(urls["broken.png"], data=b"\x89PNG\r\n\x1a\n" + b"\0" * 64, timeout=30).raise_for_status()
    client.set_dataset_status("sm-broken", "Enabled")
    job = start(stack, lora_body(stack["model_id"], "sm-broken", dataset="sm-broken"))
    done = wait_for(stack, job["id"], finished)
    assert done["status"] == "Fail" and "broken.png" in done["error"], done
    assert done["attempts"] == 1 and done["checkpoint_id"] is None


def test_a_job_whose_sagemaker_training_job_vanished_fails_with_the_reason(stack):
    with stack["fake"].holding():
        job = start(stack, lora_body(stack["model_id"], "sm-vanished"))
    stack["fake"].vanish(job["sagemakerTrainName"])
    time.sleep(1.1)  # past the grace a run just created gets
    done = wait_for(stack, job["id"], finished, timeout_s=30)
    assert done["status"] == "Fail", done
    assert f"SageMaker has no training job {job['sagemakerTrainName']}" in done["error"]


def test_instance_types_on_the_aws_backend(stack):
    local = api(stack, "POST", "/train", json={**lora_body(stack["model_id"], "x"), "params": {
        **lora_body(stack["model_id"], "x")["params"],
        "training_params": {"dataset_name": DATASET, "training_instance_type": "local"}}})
    assert local.status_code == 400 and "ml.g5.xlarge" in local.json()["error"] \
        and "no local machine" in local.json()["error"]
    body = lora_body(stack["model_id"], "x")
    body["params"]["training_params"]["use_spot"] = "yes"
    spot = api(stack, "POST", "/train", json=body)
    assert spot.status_code == 400 and "use_spot must be true or false" in spot.json()["error"]


def test_the_sagemaker_role_reads_the_channels_and_writes_the_output_and_checkpoints():
    """The template lets the SageMaker role read every key a run's channels name and write its output."""
    from tests.aws.cfn import load_template, substitute

    statements = load_template()["Resources"]["SageMakerExecutionRole"]["Properties"]["Policies"][0][
        "PolicyDocument"]["Statement"]
    prefixes = {sid: [substitute(r, "sd-test").split("}/", 1)[1].removesuffix("*")
                      for r in next(st for st in statements if st["Sid"] == sid)["Resource"]]
                for sid in ("ReadModelsDatasetsRequests", "WriteResults")}
    for key in ("training/j/input/base.manifest", "models/Stable-diffusion/c/base.safetensors",
                "training-models/m/base.safetensors", "dataset/d/a.png", "training/j/checkpoints/latest.json"):
        assert any(key.startswith(p) for p in prefixes["ReadModelsDatasetsRequests"]), key
    for key in ("training/j/output/run/output/model.tar.gz", "training/j/checkpoints/progress/progress.json"):
        assert any(key.startswith(p) for p in prefixes["WriteResults"]), key
