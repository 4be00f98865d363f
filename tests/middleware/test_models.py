"""Model resolution (`services/models.py`) on both stores: the matching rules on what the keywords find, and
a look-up whose reads do not grow with the catalogue."""

from __future__ import annotations

import pytest

from aws_extension.middleware.errors import InvalidRequest
from aws_extension.middleware.records import Checkpoint, CheckpointFile
from aws_extension.middleware.services.checkpoints import CheckpointService
from aws_extension.middleware.services.models import ModelResolver
from aws_extension.vocabulary import CheckpointStatus
from tests.middleware.test_store import store  # noqa: F401 - the store fixture, on SQLite and DynamoDB

SD = "Stable-diffusion"


@pytest.fixture
def catalogue(store):  # noqa: F811
    service = CheckpointService(store, None, max_parts=1, max_files=4, completion_wait_s=1)  # type: ignore[arg-type]
    made = []

    def add(kind: str, *names: str, status=CheckpointStatus.ACTIVE) -> Checkpoint:
        n = len(made)
        record = Checkpoint(id=f"ck-{n:03d}", type=kind, status=status, created=100.0 + n, source="upload",
                            s3_location="", files=[CheckpointFile(filename=name, key=f"models/{kind}/ck-{n:03d}/{name}",
                                                                  sha256=f"{n:03d}{i}".ljust(64, "0"))
                                                   for i, name in enumerate(names)])
        service.records.create(record)
        made.append(record)
        return record

    add.service = service
    yield add
    service._completions.shutdown()


def _resolve(add, models, **params):
    return [(m.type, m.name, m.key.split("/")[2]) for m in ModelResolver(add.service.active).resolve(models, params)]


def test_names_stems_titles_subfolders_and_hashes(catalogue):
    older = catalogue(SD, "base.safetensors", "sub/deep.safetensors")
    catalogue(SD, "base.ckpt")  # newer, same stem
    catalogue(SD, "gone.safetensors", status=CheckpointStatus.DISABLED)
    assert _resolve(catalogue, {SD: ["base.safetensors"]}) == [(SD, "base.safetensors", older.id)]  # exact name first
    assert _resolve(catalogue, {SD: ["base"]}) == [(SD, "base.ckpt", "ck-001")]  # a stem: the newest file
    assert _resolve(catalogue, {SD: ["base.safetensors [6ce0161689]"]})[0][2] == older.id  # an A1111 title
    assert _resolve(catalogue, {SD: ["sub/deep"]}) == [(SD, "sub/deep.safetensors", older.id)]
    assert _resolve(catalogue, {SD: [{"name": "anything", "sha256": older.files[1].sha256.upper()}]})[0][1] == \
        "sub/deep.safetensors"
    with pytest.raises(InvalidRequest) as missing:
        _resolve(catalogue, {SD: ["gone.safetensors"], "Lora": ["deep"]}, prompt="<lora:nope:1>")
    assert all(name in missing.value.message for name in ("'gone.safetensors'", "'deep'", "'nope'"))


def test_prompt_models_vae_controlnet_and_embeddings(catalogue):
    catalogue(SD, "m.safetensors")
    catalogue("Lora", "style.safetensors")
    catalogue("VAE", "v.safetensors")
    catalogue("ControlNet", "canny.safetensors")
    catalogue("embeddings", "bad-hands v2.pt", "(odd).pt", "emb.pt", "unused.pt")
    newer = catalogue("embeddings", "emb.safetensors")
    params = {"prompt": "a cat <lora:style:0.5>, bad-hands v2, emb", "negative_prompt": "(odd) emb-x xemb",
              "override_settings": {"sd_vae": "v.safetensors"},
              "alwayson_scripts": {"controlnet": {"args": [{"model": "canny [abc]"}, {"model": "None"}]}}}
    assert [(t, n) for t, n, _ in _resolve(catalogue, {SD: ["m"]}, **params)] == [
        (SD, "m.safetensors"), ("Lora", "style.safetensors"), ("embeddings", "emb.safetensors"),
        ("embeddings", "bad-hands v2.pt"), ("embeddings", "(odd).pt"), ("embeddings", "emb.pt"),
        ("VAE", "v.safetensors"), ("ControlNet", "canny.safetensors")]
    assert _resolve(catalogue, {SD: ["m"]}, prompt="emb-x, xemb")[1:] == []  # part of another word: not it
    assert newer.id in {k for *_, k in _resolve(catalogue, {SD: ["m"]}, prompt="emb")}


@pytest.mark.parametrize("store", ["dynamodb"], indirect=True)
def test_a_resolution_reads_the_same_however_large_the_catalogue(catalogue, store):  # noqa: F811
    calls: list[str] = []
    store.client.meta.events.register("before-call.dynamodb", lambda model, **_: calls.append(model.name))
    catalogue(SD, "m.safetensors")
    catalogue("Lora", "style.safetensors")
    counts = []
    for more in (3, 30):
        for n in range(more):
            catalogue(SD, f"other-{more}-{n}.safetensors")
        calls.clear()
        _resolve(catalogue, {SD: ["m"]}, prompt="a cat <lora:style:1>, with many words in it")
        counts.append(list(calls))
    assert counts[0] == counts[1] == ["BatchGetItem", "BatchGetItem"]
