"""The vocabulary and the wire shapes: one rule each, stdlib only."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from aws_extension.vocabulary import (
    MODEL_TYPES,
    CheckpointStatus,
    DeploymentStatus,
    EndpointStatus,
    JobStatus,
    PromptSyntaxError,
    lora_call,
    lora_names,
    model_stem,
    prompt_uses_embedding,
    split_extra_networks,
    without_hash_suffix,
)
from aws_extension.wire import InvocationAnswer, InvocationRequest, ParamFile, WireError

SHA = "a" * 64


def test_statuses_know_which_are_terminal():
    assert [s for s in JobStatus if s.is_terminal] == ["succeed", "failed", "cancelled"]
    assert not JobStatus.CANCELLING.is_terminal and not JobStatus.CREATED.is_terminal
    assert [s for s in EndpointStatus if s.is_terminal] == ["Deleted"]
    assert {s.value for s in DeploymentStatus if s.is_terminal} == {"failed", "deleted"}
    assert CheckpointStatus.FAILED.is_terminal and not CheckpointStatus.DISABLED.is_terminal
    # they travel as their strings
    assert json.dumps({"s": JobStatus.SUCCEED}) == '{"s": "succeed"}' and f"{EndpointStatus.IN_SERVICE}" == "InService"
    assert JobStatus("inprogress") is JobStatus.INPROGRESS
    assert MODEL_TYPES == ("Stable-diffusion", "Lora", "embeddings", "hypernetworks", "ControlNet", "VAE")


def test_extra_networks_as_a1111_reads_them():
    text, calls = split_extra_networks("a cat <lora:foo:0.5>, <lyco:bar:1:0.25> <hypernet:h:1> <LORA:x:1>")
    assert text == "a cat ,   "
    assert [(c.kind, c.name, c.is_lora) for c in calls] == [
        ("lora", "foo", True), ("lyco", "bar", True), ("hypernet", "h", False), ("LORA", "x", False)]
    assert lora_call(calls[0]).unet_weight == 0.5
    assert (lora_call(calls[1]).text_encoder_weight, lora_call(calls[1]).unet_weight) == (1.0, 0.25)
    named = lora_call(split_extra_networks("<lora:n:te=0.3:unet=0.7>")[1][0])
    assert (named.text_encoder_weight, named.unet_weight) == (0.3, 0.7)
    assert lora_call(split_extra_networks("<lora:plain>")[1][0]).text_encoder_weight == 1.0
    with pytest.raises(PromptSyntaxError, match="bad weight"):
        lora_call(split_extra_networks("<lora:n:heavy>")[1][0])
    assert lora_names(["<lora:a:1> <lora:b:1>", "<lora:a:0.5>", None]) == ["a", "b"]


def test_names_stems_and_embeddings():
    assert without_hash_suffix("control_v11p_sd15_canny [d14c016b]") == "control_v11p_sd15_canny"
    assert without_hash_suffix("model.safetensors") == "model.safetensors"
    assert model_stem("sub/foo.safetensors") == "sub/foo" and model_stem("foo") == "foo"
    assert model_stem("v1.5-pruned") == "v1.5-pruned"  # not a model suffix: the name is the stem
    assert prompt_uses_embedding(["a photo, easyneg"], "easyneg.pt")
    assert not prompt_uses_embedding(["a photo, easyneg-v2"], "easyneg.pt")  # part of another word
    assert not prompt_uses_embedding(["myeasyneg"], "easyneg.safetensors")
    assert prompt_uses_embedding(["", "(easyneg:1.2)"], "easyneg")


def _request(**overrides) -> dict:
    return {"task": "txt2img", "job_id": "j1", "params": {"prompt": "x"},
            "models": [{"type": "Lora", "name": "l.safetensors", "sha256": SHA.upper(), "url": "http://h/l"}],
            "output": {"image_urls": ["http://h/0.png"]}, **overrides}


def test_invocation_request_round_trip_and_errors_name_the_field():
    request = InvocationRequest.from_json(_request())
    assert request.models[0].sha256 == SHA and request.output.image_urls == ["http://h/0.png"]
    assert InvocationRequest.from_json(request.to_json()) == request
    for body, field in [
        (_request(task="upscale"), "Unknown task 'upscale'"),
        (_request(job_id=5), "job_id"),
        (_request(models={"type": "Lora"}), "models must be a list"),
        (_request(models=[{"type": "Nope", "name": "a", "sha256": SHA, "url": "http://h"}]), "models[0].type"),
        (_request(models=[{"type": "Lora", "name": 5, "sha256": SHA, "url": "http://h"}]), "models[0].name"),
        (_request(models=[{"type": "Lora", "name": "a", "sha256": SHA, "url": "file:///etc"}]), "models[0].url"),
        (_request(params=None), "params (or params_url) is required"),
        (_request(params=[1]), "params must be a JSON object"),
        (_request(output={"image_urls": "http://h"}), "output.image_urls"),
        (_request(output={"image_urls": ["ftp://h"]}), "output.image_urls[0]"),
        ([], "The request body must be a JSON object"),
    ]:
        with pytest.raises(WireError, match=field.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            InvocationRequest.from_json(body)


def test_invocation_answer_is_read_leniently_and_checked_where_it_matters():
    answer = InvocationAnswer.from_json({"status": "succeed", "job_id": "j", "image_count": 2, "info": "{}",
                                         "parameters": {"a": 1}, "timings": {"run_s": 1.5, "other_s": 2},
                                         "images": ["b64"], "from_a_newer_worker": True})
    assert answer.image_count == 2 and answer.timings.run_s == 1.5 and "images" not in answer.summary()
    assert InvocationAnswer.from_json(answer.to_json()) == answer
    assert InvocationAnswer.from_json({"status": "failed", "error": "boom"}).error == "boom"
    for bad in ({"status": "done"}, {"status": "succeed", "image_count": -1}, {"status": "succeed", "image_count": "2"}, "x"):
        with pytest.raises(WireError):
            InvocationAnswer.from_json(bad)
    assert ParamFile({"p": 1}, "{}", "ep", "j").to_json() == {"parameters": {"p": 1}, "info": "{}",
                                                              "endpoint_name": "ep", "inference_id": "j"}


def test_the_shared_modules_import_nothing_heavy():
    code = ("import sys, aws_extension.vocabulary, aws_extension.wire; "
            "print(sorted(m for m in ('torch', 'PIL', 'pydantic', 'fastapi', 'requests') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
