"""Training through the public API on a real local middleware: `/model`, `/train`, `/trains`, training
processes (`sd-aws sagemaker train`) on the learnable tiny model, and the LoRA they make used in an inference
job. Steps are few and images 64 px."""

from __future__ import annotations

import copy
import io
import os
import signal
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from aws_extension.client import MiddlewareClient
from tests.helpers import start_middleware
from tests.inference.conftest import deploy

API_KEY = "training-key"
HEADERS = {"x-api-key": API_KEY}
BASE_NAME = "v1-5-pruned-emaonly.safetensors"  # the seed's base model name
DATASET = "sks-red"
RED = (220, 20, 20)
# As if this machine trained on a 2 GiB GPU: the tiny model's jobs fit (~1 GiB), a huge batch does not.
GPU_MEMORY_ENV = {"SD_AWS_LOCAL_TRAINING_GPU_MEMORY_GIB": "2"}

# The seed's POST /model and PUT /model bodies; only the file (a .safetensors, not a .tar) and the parts differ.
SEED_MODEL_BODY = {
    "model_type": "Stable-diffusion", "name": "testmodelcreation01",
    "filenames": [{"filename": BASE_NAME, "parts_number": 1}],
    "params": {"create_model_params": {"new_model_name": "testmodelcreation01", "ckpt_path": BASE_NAME,
                                       "from_hub": False, "new_model_url": "", "new_model_token": "",
                                       "extract_ema": False, "train_unfrozen": False, "is_512": True}}}


def seed_train_body(model_id: str, dataset_location: str, instance_type: str = "local") -> dict:
    """The seed's POST /train body (its model id, dataset location and instance type substituted)."""
    return {
        "train_type": "Stable-diffusion", "model_id": model_id,
        "params": {
            "training_params": {"data_tar_list": [dataset_location], "class_data_tar_list": [""],
                                "training_instance_type": instance_type},
            "config_params": {
                "concepts_list": [{
                    "class_data_dir": "", "class_guidance_scale": 7.5, "class_infer_steps": 40,
                    "class_negative_prompt": "", "class_prompt": "", "class_token": "",
                    "instance_prompt": "hanportraittest123", "num_class_images_per": 0,
                    "instance_data_dir": dataset_location, "instance_token": "", "is_valid": True,
                    "n_save_sample": 1, "sample_seed": -1, "save_guidance_scale": 7.5, "save_infer_steps": 20,
                    "save_sample_negative_prompt": "", "save_sample_prompt": "", "save_sample_template": ""}],
                "model_dir": "models/dreambooth/<your_model_name>", "model_name": "your_model_name",
                "pretrained_model_name_or_path": "models/dreambooth/<your_model_name>/working",
                "num_train_epochs": 100, "use_lora": True, "revision": ""}}}


def lora_body(model_id: str, name: str, **config) -> dict:
    return {"train_type": "Lora", "model_id": model_id,
            "params": {"training_params": {"dataset_name": DATASET, "training_instance_type": "local"},
                       "config_params": {"concepts_list": [{"instance_prompt": "sks", "n_save_sample": 1,
                                                            "save_infer_steps": 2}],
                                         "model_name": name, "resolution": 64, "max_train_steps": 4,
                                         "lora_learning_rate": 1e-3, "seed": 7, **config}}}


def api(stack, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(method, stack["url"] + path, headers=HEADERS, timeout=60, **kwargs)


def ok(response: requests.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def write_images(folder: Path, count: int = 2) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"red-{i}.png"
        Image.new("RGB", (64, 64), RED).save(path)
        paths.append(path)
    (folder / "red-0.txt").write_text("sks")
    return [*paths, folder / "red-0.txt"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, learnable_checkpoint):
    tmp = tmp_path_factory.mktemp("training")
    server = start_middleware(tmp / "data", API_KEY, env={"SD_AWS_DEVICE": "cpu", **GPU_MEMORY_ENV})
    client = MiddlewareClient(server.url, API_KEY, timeout_s=60)
    try:
        base = tmp / BASE_NAME
        base.write_bytes(learnable_checkpoint.read_bytes())
        checkpoint = client.upload_checkpoint_files("Stable-diffusion", [base])
        client.create_dataset_from_files(DATASET, write_images(tmp / "images"))
        built = {"server": server}
        built |= {"url": server.url, "client": client, "data_dir": tmp / "data", "tmp": tmp,
                 "checkpoint_id": checkpoint["id"]}
        model = ok(api(built, "POST", "/model", json={"model_type": "Stable-diffusion", "name": "tiny-base",
                                                      "checkpoint_id": checkpoint["id"]}))["job"]
        built["model_id"] = model["id"]
        created = ok(api(built, "PUT", "/model", json={"model_id": model["id"], "status": "Creating"}))
        assert created["job"]["jobStatus"] == "Complete", created
        yield built
    finally:
        built["server"].stop()


def wait_for(stack, job_id: str, until, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = ok(api(stack, "GET", f"/train/{job_id}"))["job"]
        if until(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"training {job_id} did not get there: {job}")


def finished(job: dict) -> bool:
    return job["status"] in ("Complete", "Fail", "Stopped")


def trainer_pids(data_dir: Path, job_id: str) -> list[int]:
    """PIDs of the `sagemaker train` processes working in this job's folder."""
    root = str((data_dir / "trainings" / job_id).resolve())
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if " sagemaker train" in cmdline and os.readlink(proc / "cwd") == root:
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


# -- the seed's bodies ---------------------------------------------------------------------------------------
def test_the_seeds_model_bodies_upload_and_prepare_a_base(stack, learnable_checkpoint):
    created = ok(api(stack, "POST", "/model", json=SEED_MODEL_BODY))
    job = created["job"]
    assert job["status"] == "Initialed" and job["model_type"] == "Stable-diffusion"
    assert job["model_name"] == "testmodelcreation01"
    (part_url,) = created["s3PresignUrl"][BASE_NAME]
    etag = requests.put(part_url, data=learnable_checkpoint.read_bytes(), timeout=60).headers["ETag"]
    answer = ok(api(stack, "PUT", "/model", json={"model_id": job["id"], "status": "Creating",
                                                  "multi_parts_tags": {BASE_NAME: [{"ETag": etag, "PartNumber": 1}]}}))
    assert answer["job"]["id"] == job["id"] and answer["job"]["jobType"] == "Stable-diffusion"
    assert answer["job"]["jobStatus"] == "Complete", answer
    listed = {m["id"]: m for m in ok(api(stack, "GET", "/models"))["models"]}
    assert listed[job["id"]]["status"] == "Complete" and listed[job["id"]]["sha256"]
    assert job["id"] in {m["id"] for m in ok(api(stack, "GET", "/models?status=Complete"))["models"]}
    again = api(stack, "PUT", "/model", json={"model_id": job["id"], "status": "Creating"})
    assert again.status_code == 409 and "Complete" in again.json()["error"]


def test_the_seeds_train_body_creates_an_initial_job(stack):
    location = stack["client"].list_datasets()[0]["s3"]
    created = ok(api(stack, "POST", "/train", json=seed_train_body(stack["model_id"], location)))
    job = created["job"]
    assert created["s3PresignUrl"] is None
    assert job["status"] == "Initial" and job["trainType"] == "Lora"  # use_lora: true, as in the original
    assert job["dataset_name"] == DATASET and job["modelName"] == "your_model_name"
    assert job["total_steps"] == 100 * 2  # 100 epochs of the dataset's 2 images
    assert job["params"]["config_params"]["num_train_epochs"] == 100
    assert job["id"] in {j["id"] for j in ok(api(stack, "GET", "/trains?status=Initial"))["trainJobs"]}
    on_sagemaker = api(stack, "POST", "/train", json=seed_train_body(stack["model_id"], location, "ml.g5.2xlarge"))
    assert on_sagemaker.status_code == 400
    assert "ml.g5.2xlarge is a SageMaker training instance" in on_sagemaker.json()["error"]


def test_from_hub_is_refused_with_what_to_do(stack):
    body = copy.deepcopy(SEED_MODEL_BODY)
    body["params"]["create_model_params"]["from_hub"] = True
    response = api(stack, "POST", "/model", json=body)
    assert response.status_code == 400 and "import the model by URL first" in response.json()["error"]


def test_extract_ema_of_a_checkpoint_without_ema_fails_with_the_reason(stack):
    model = ok(api(stack, "POST", "/model", json={
        "name": "ema-base", "checkpoint_id": stack["checkpoint_id"],
        "params": {"create_model_params": {"extract_ema": True}}}))["job"]
    answer = ok(api(stack, "PUT", "/model", json={"model_id": model["id"], "status": "Creating"}))
    assert answer["job"]["jobStatus"] == "Fail" and "has no EMA weights" in answer["job"]["error"]


# -- a LoRA, from a dataset to an inference job ------------------------------------------------------------
def test_a_lora_job_completes_and_its_lora_is_used_in_an_inference_job(stack):
    job = ok(api(stack, "POST", "/train", json=lora_body(stack["model_id"], "sks-red-lora",
                                                          save_preview_every=2)))["job"]
    started = ok(api(stack, "PUT", "/train", json={"train_job_id": job["id"], "status": "Training"}))["job"]
    assert started["status"] == "Training"
    twice = api(stack, "PUT", "/train", json={"train_job_id": job["id"], "status": "Training"})
    assert twice.status_code == 409 and "already Training" in twice.json()["error"]
    done = wait_for(stack, job["id"], finished)
    assert done["status"] == "Complete", done
    assert (done["step"], done["total_steps"]) == (4, 4) and done["loss"] > 0 and done["error"] is None
    assert len(done["samples"]) == 2
    sample = requests.get(done["samples"][-1], timeout=30)
    assert sample.status_code == 200 and Image.open(io.BytesIO(sample.content)).size == (64, 64)
    assert requests.get(done["samples"][-1].split("?")[0], timeout=30).status_code in (401, 403)  # signed only

    checkpoint = stack["client"].get_checkpoint(done["checkpoint_id"])
    assert (checkpoint["type"], checkpoint["status"], checkpoint["name"]) == ("Lora", "Active", ["sks-red-lora.safetensors"])
    assert checkpoint["sha256"] and checkpoint["params"]["training_job_id"] == job["id"]
    assert "sks-red-lora.safetensors" in ok(api(stack, "GET", "/inference/get-lora-list"))
    assert {j["id"]: j for j in ok(api(stack, "GET", "/trains?status=Complete&types=Lora"))["trainJobs"]}[
        job["id"]]["checkpoint_id"] == done["checkpoint_id"]
    stopped = api(stack, "PUT", "/train", json={"train_job_id": job["id"], "status": "Stopped"})
    assert stopped.status_code == 409 and "Complete" in stopped.json()["error"]

    client = stack["client"]
    deploy(client, "train-check")
    try:
        inference = client.create_inference({
            "task_type": "txt2img", "models": {"Stable-diffusion": [BASE_NAME]}, "sagemaker_endpoint_name": "train-check",
            "prompt": "sks <lora:sks-red-lora:1>", "width": 64, "height": 64, "steps": 2, "seed": 1})
        result = client.wait_for_job(inference["inference_id"], timeout_s=300)
        assert result["status"] == "succeed", result
        param = requests.get(client.inference_param_url(inference["inference_id"]), timeout=30).json()
        assert "sks-red-lora" in param["info"]
    finally:
        client.request("DELETE", "/endpoints", json={"delete_endpoint_list": ["train-check"]})


# -- stop, resume, crashes ---------------------------------------------------------------------------------
def test_stop_keeps_the_state_and_training_resumes_from_it(stack):
    job = ok(api(stack, "POST", "/train", json=lora_body(stack["model_id"], "stop-resume", max_train_steps=400,
                                                          save_state_every=2)))["job"]
    ok(api(stack, "PUT", "/train", json={"train_job_id": job["id"], "status": "Training"}))
    waiting = ok(api(stack, "POST", "/train", json=lora_body(stack["model_id"], "waiting")))["job"]
    ok(api(stack, "PUT", "/train", json={"train_job_id": waiting["id"], "status": "Training"}))
    queued = ok(api(stack, "GET", f"/train/{waiting['id']}"))["job"]  # one training slot: it waits
    assert (queued["status"], queued["queue_position"], queued["step"]) == ("Training", 0, 0)
    assert ok(api(stack, "PUT", "/train", json={"train_job_id": waiting["id"], "status": "Stopped"}))["job"][
        "status"] == "Stopped"
    wait_for(stack, job["id"], lambda j: j["step"] >= 2 or finished(j))
    stopped = ok(api(stack, "PUT", "/train", json={"train_job_id": job["id"], "status": "Stopped"}))["job"]
    assert stopped["status"] == "Stopped", stopped
    assert 2 <= stopped["step"] < 400
    again = api(stack, "PUT", "/train", json={"train_job_id": job["id"], "status": "Stopped"})
    assert again.status_code == 409
    assert trainer_pids(stack["data_dir"], job["id"]) == []
    ok(api(stack, "PUT", "/train", json={"train_job_id": job["id"], "status": "Training"}))
    resumed = wait_for(stack, job["id"], lambda j: j["step"] >= stopped["step"] + 1 or finished(j))
    assert resumed["status"] == "Training"
    ok(api(stack, "PUT", "/train", json={"train_job_id": job["id"], "status": "Stopped"}))


def test_a_killed_training_process_resumes_once_and_completes(stack):
    job = ok(api(stack, "POST", "/train", json=lora_body(stack["model_id"], "killed-once", max_train_steps=12,
                                                          save_state_every=2)))["job"]
    ok(api(stack, "PUT", "/train", json={"train_job_id": job["id"], "status": "Training"}))
    wait_for(stack, job["id"], lambda j: j["step"] >= 3 or finished(j))
    (pid,) = trainer_pids(stack["data_dir"], job["id"])
    os.kill(pid, signal.SIGKILL)
    done = wait_for(stack, job["id"], finished)
    assert done["status"] == "Complete", done
    assert done["attempts"] == 2 and done["step"] == 12


def test_a_process_that_dies_twice_fails_with_the_reason(stack):
    job = ok(api(stack, "POST", "/train", json=lora_body(stack["model_id"], "killed-twice", max_train_steps=400,
                                                          save_state_every=2)))["job"]
    ok(api(stack, "PUT", "/train", json={"train_job_id": job["id"], "status": "Training"}))
    for attempt in (1, 2):
        wait_for(stack, job["id"], lambda j, a=attempt: (j["attempts"] == a and j["step"] >= 1) or finished(j))
        pids = []
        while not pids:
            pids = trainer_pids(stack["data_dir"], job["id"])
        os.kill(pids[0], signal.SIGKILL)
    done = wait_for(stack, job["id"], finished)
    assert done["status"] == "Fail" and "killed (SIGKILL)" in done["error"], done
    assert trainer_pids(stack["data_dir"], job["id"]) == []


def _lora_tensors(stack, checkpoint_id: str) -> dict:
    from safetensors.torch import load_file

    checkpoint = stack["client"].get_checkpoint(checkpoint_id)
    (filename,) = checkpoint["name"]
    return load_file(stack["data_dir"] / "blobs" / "models" / "Lora" / checkpoint_id / filename)


def test_after_a_middleware_crash_a_training_job_resumes_to_the_weights_of_an_uninterrupted_run(stack):
    body = lora_body(stack["model_id"], "crash-resumed", max_train_steps=12, save_state_every=2)
    job = ok(api(stack, "POST", "/train", json=body))["job"]
    ok(api(stack, "PUT", "/train", json={"train_job_id": job["id"], "status": "Training"}))
    wait_for(stack, job["id"], lambda j: j["step"] >= 3 or finished(j))
    assert trainer_pids(stack["data_dir"], job["id"])
    stack["server"].stop(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while trainer_pids(stack["data_dir"], job["id"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert trainer_pids(stack["data_dir"], job["id"]) == []  # it died with the middleware
    server = start_middleware(stack["data_dir"], API_KEY, env={"SD_AWS_DEVICE": "cpu", **GPU_MEMORY_ENV})
    stack.update(server=server, url=server.url, client=MiddlewareClient(server.url, API_KEY, timeout_s=60))
    resumed = wait_for(stack, job["id"], finished)
    assert resumed["status"] == "Complete", resumed
    assert resumed["attempts"] == 1  # a restart is not the job's failure

    reference = ok(api(stack, "POST", "/train", json=lora_body(stack["model_id"], "uninterrupted",
                                                                max_train_steps=12, save_state_every=2)))["job"]
    ok(api(stack, "PUT", "/train", json={"train_job_id": reference["id"], "status": "Training"}))
    uninterrupted = wait_for(stack, reference["id"], finished)
    assert uninterrupted["status"] == "Complete", uninterrupted
    ours, theirs = _lora_tensors(stack, resumed["checkpoint_id"]), _lora_tensors(stack, uninterrupted["checkpoint_id"])
    assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)


# -- bad input ---------------------------------------------------------------------------------------------
def _config(**changes):
    return lambda body: body["params"]["config_params"].update(changes)


def _training(**changes):
    return lambda body: body["params"]["training_params"].update(changes)


@pytest.mark.parametrize(("change", "status", "words"), [
    (lambda body: body.update(model_id="00000000-0000-4000-8000-000000000000"), 404, "does not exist"),
    (_training(dataset_name="no-such-dataset"), 400, "dataset 'no-such-dataset' does not exist"),
    (_config(no_such_field=1), 400, "config_params.no_such_field"),
    (_config(num_train_epochs=0, max_train_steps=0), 400, "num_train_epochs must be between 1"),
    (_config(num_train_epochs=10**6, max_train_steps=0), 400, "num_train_epochs must be between 1"),
    (_config(lora_unet_rank=0), 400, "lora_unet_rank must be between 1 and 1024"),
    (_config(lora_unet_rank=1025), 400, "lora_unet_rank must be between 1 and 1024"),
    (_config(resolution=100), 400, "resolution must be a multiple of 64"),
    (_config(resolution=4096), 400, "resolution must be between"),
    (_training(training_instance_type="gpu-big"), 400, "training_instance_type 'gpu-big' is unknown"),
    (lambda body: body.update(train_type="Hypernetwork"), 400, "train_type must be one of"),
], ids=["unknown-model", "dataset-missing", "unknown-field", "epochs-0", "epochs-1e6", "rank-0", "rank-1025",
        "resolution-100", "resolution-4096", "instance-type", "train-type"])
def test_bad_training_bodies_are_refused_naming_the_field(stack, change, status, words):
    body = lora_body(stack["model_id"], "bad")
    change(body)
    response = api(stack, "POST", "/train", json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_a_model_that_is_not_complete_is_refused(stack):
    model = ok(api(stack, "POST", "/model", json={"name": "not-ready", "checkpoint_id": stack["checkpoint_id"]}))
    response = api(stack, "POST", "/train", json=lora_body(model["job"]["id"], "bad"))
    assert response.status_code == 400 and "is Initialed" in response.json()["error"]


@pytest.mark.parametrize(("files", "enable", "words"), [
    ({"red.png": None}, False, "is Initialed; enable it first"),
    ({"only.txt": b"sks"}, True, "has no images"),
    ({"red.png": None, "notes.pdf": b"%PDF-1.4"}, True, "notes.pdf, which is not an image"),
    ({"fake.png": b"not a png at all"}, True, "fake.png is not a png image"),
], ids=["not-enabled", "empty", "non-image", "broken-image"])
def test_bad_datasets_are_refused_naming_the_file(stack, files, enable, words):
    client = stack["client"]
    name = f"bad-{abs(hash(tuple(files))) % 10**8}-{int(enable)}"
    urls = client.create_dataset(name, [{"filename": f, "name": f, "type": "image"} for f in files])["s3PresignUrl"]
    for filename, data in files.items():
        if data is None:
            buffer = io.BytesIO()
            Image.new("RGB", (64, 64), RED).save(buffer, "PNG")
            data = buffer.getvalue()
        assert requests.put(urls[filename], data=data, timeout=30).status_code == 200
    if enable:
        client.set_dataset_status(name, "Enabled")
    body = lora_body(stack["model_id"], "bad")
    body["params"]["training_params"]["dataset_name"] = name
    response = api(stack, "POST", "/train", json=body)
    assert response.status_code == 400, response.text
    assert words in response.json()["error"] and "training_params.dataset_name" in response.json()["error"]


def test_unknown_training_job_and_bad_status(stack):
    missing = api(stack, "PUT", "/train", json={"train_job_id": "nope", "status": "Training"})
    assert missing.status_code == 404
    bad = api(stack, "PUT", "/train", json={"train_job_id": "nope", "status": "Complete"})
    assert bad.status_code == 422


def test_model_uploads_with_bad_parts_or_archives_are_refused(stack):
    archive = copy.deepcopy(SEED_MODEL_BODY)
    archive["filenames"][0]["filename"] = "v1-5-pruned-emaonly.safetensors.tar"  # the seed's own file name
    response = api(stack, "POST", "/model", json=archive)
    assert response.status_code == 400 and "not an archive" in response.json()["error"]
    both = api(stack, "POST", "/model", json=SEED_MODEL_BODY | {"checkpoint_id": stack["checkpoint_id"]})
    assert both.status_code == 400 and "either checkpoint_id" in both.json()["error"]
    job = ok(api(stack, "POST", "/model", json=SEED_MODEL_BODY | {"name": "bad-parts"}))["job"]
    wrong = api(stack, "PUT", "/model", json={"model_id": job["id"], "status": "Creating",
                                              "multi_parts_tags": {BASE_NAME: [{"ETag": '"0"', "PartNumber": 1}]}})
    assert wrong.status_code == 400 and BASE_NAME in wrong.json()["error"]
    listed = {m["id"]: m for m in ok(api(stack, "GET", "/models"))["models"]}
    assert listed[job["id"]]["status"] == "Initialed"  # fix the parts and PUT again


def test_an_image_the_trainer_cannot_read_fails_the_job_naming_it(stack):
    client = stack["client"]
    urls = client.create_dataset("broken-image", [{"filename": "broken.png", "name": "broken.png",
                                                   "type": "image"}])["s3PresignUrl"]
    requests.put(urls["broken.png"], data=b"\x89PNG\r\n\x1a\n" + b"\0" * 64, timeout=30).raise_for_status()
    client.set_dataset_status("broken-image", "Enabled")
    body = lora_body(stack["model_id"], "broken")
    body["params"]["training_params"]["dataset_name"] = "broken-image"
    job = ok(api(stack, "POST", "/train", json=body))["job"]
    ok(api(stack, "PUT", "/train", json={"train_job_id": job["id"], "status": "Training"}))
    done = wait_for(stack, job["id"], finished)
    assert done["status"] == "Fail" and "broken.png" in done["error"], done
    assert done["attempts"] == 1 and done["checkpoint_id"] is None  # a reason: no second start


# -- the GPU memory check ----------------------------------------------------------------------------------
def test_settings_that_cannot_fit_the_gpu_are_refused_with_what_would(stack):
    body = lora_body(stack["model_id"], "too-big", resolution=2048, train_batch_size=64)
    response = api(stack, "POST", "/train", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error.startswith("config_params: this job needs ~") and "this machine's GPU has 2 GiB" in error
    assert "it would fit with gradient_checkpointing true and mixed_precision fp16" in error


# -- several concepts ----------------------------------------------------------------------------------------
def _blue_dataset(stack) -> str:
    client = stack["client"]
    if "sks-blue" not in {d["datasetName"] for d in client.list_datasets()}:
        folder = stack["tmp"] / "blue"
        folder.mkdir(exist_ok=True)
        paths = []
        for i in range(3):
            paths.append(folder / f"blue-{i}.png")
            Image.new("RGB", (64, 64), (30, 40, 220)).save(paths[-1])
        client.create_dataset_from_files("sks-blue", paths)
    return "sks-blue"


def test_a_job_of_two_concepts_trains_each_dataset_in_its_own_folder(stack):
    blue = _blue_dataset(stack)
    body = lora_body(stack["model_id"], "two-concepts", max_train_steps=2)
    del body["params"]["training_params"]["dataset_name"]
    body["params"]["config_params"]["concepts_list"] = [
        {"instance_prompt": "sks", "dataset_name": DATASET, "n_save_sample": 0},
        {"instance_prompt": "zwx", "instance_data_dir": f"s3://bucket/dataset/{blue}", "n_save_sample": 0}]
    job = ok(api(stack, "POST", "/train", json=body))["job"]
    assert job["dataset_name"] == DATASET
    ok(api(stack, "PUT", "/train", json={"train_job_id": job["id"], "status": "Training"}))
    done = wait_for(stack, job["id"], finished)
    assert done["status"] == "Complete", done
    channel = stack["data_dir"] / "trainings" / job["id"] / "input" / "data" / "instance"
    assert sorted(p.relative_to(channel).as_posix() for p in channel.rglob("*") if p.is_file()) == [
        "0/red-0.png", "0/red-0.txt", "0/red-1.png", "1/blue-0.png", "1/blue-1.png", "1/blue-2.png"]
    epochs = lora_body(stack["model_id"], "two-epochs", num_train_epochs=3, max_train_steps=0)
    epochs["params"]["training_params"] = {"data_tar_list": [DATASET, blue], "training_instance_type": "local"}
    epochs["params"]["config_params"]["concepts_list"] = [{"instance_prompt": "sks"}, {"instance_prompt": "zwx"}]
    assert ok(api(stack, "POST", "/train", json=epochs))["job"]["total_steps"] == 3 * (2 + 3)


@pytest.mark.parametrize(("training", "concepts", "words"), [
    ({"dataset_name": DATASET}, [{"instance_prompt": "sks"}, {"instance_prompt": "zwx"}],
     "config_params.concepts_list[1].dataset_name is missing"),
    ({"dataset_name": DATASET}, [{"instance_prompt": "sks", "dataset_name": "sks-blue"}],
     "training_params.dataset_name and config_params.concepts_list[0].dataset_name name different datasets"),
    ({"data_tar_list": [DATASET, "sks-blue"]}, [{"instance_prompt": "sks"}],
     "training_params.data_tar_list lists 2 datasets and the job trains 1 concept(s)"),
    ({"dataset_name": DATASET}, [{"instance_prompt": "sks"}, {"instance_prompt": "zwx", "dataset_name": "nope"}],
     "config_params.concepts_list[1].dataset_name: dataset 'nope' does not exist"),
    ({"dataset_name": DATASET}, [{"instance_prompt": "sks"}, {"dataset_name": "sks-blue"}],
     "config_params.concepts_list[1].instance_prompt: concepts_list[1] needs an instance_prompt"),
], ids=["second-without-dataset", "two-names-for-one", "more-datasets-than-concepts", "unknown-dataset",
        "second-without-prompt"])
def test_concepts_and_their_datasets_are_checked(stack, training, concepts, words):
    _blue_dataset(stack)
    body = lora_body(stack["model_id"], "bad-concepts")
    body["params"]["training_params"] = {**training, "training_instance_type": "local"}
    body["params"]["config_params"]["concepts_list"] = concepts
    response = api(stack, "POST", "/train", json=body)
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]
