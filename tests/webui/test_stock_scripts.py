"""A1111's own scripts with cloud on produce what they produce locally: each script double (stock_scripts.py)
runs once against the host's local process_images and once through the switch to the fake middleware, and the
two Processed agree in everything the scripts and the page read (images, prompts, seeds, infotexts, js())."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tests.webui import stock_scripts
from tests.webui.conftest import make_p, switch_runner
from tests.webui.test_extension import middleware_for  # noqa: F401 - the fixture

CLOUD_ONLY = ("Cloud",)


def _parsed(text: str) -> dict:
    from modules.infotext_utils import parse_generation_parameters

    return {k: v for k, v in parse_generation_parameters(text or "").items() if k not in CLOUD_ONLY}


def summary(processed) -> dict:
    """What a script or the page reads from a Processed; infotexts parsed as "reuse parameters" reads them."""
    js = json.loads(processed.js())
    for key in ("infotexts", "subseed", "all_subseeds"):  # subseed -1 is random each run (no variation here)
        js.pop(key)
    return {"images": [(image.size, image.convert("RGB").getpixel((0, 0))) for image in processed.images],
            "all_prompts": processed.all_prompts, "all_seeds": processed.all_seeds, "seed": processed.seed,
            "index_of_first_image": processed.index_of_first_image, "info": _parsed(processed.info),
            "infotexts": [_parsed(text) for text in processed.infotexts], "js": js}


def local_and_cloud(webui, run, img2img: bool = False, **fields) -> tuple[dict, dict, list[dict]]:
    """The script run locally and on the cloud, each on a fresh p; the cloud requests sent."""
    runner = switch_runner(webui, is_img2img=img2img)
    results = []
    for on in (False, True):
        p = make_p(webui, runner, on=on, img2img=img2img, do_not_save_samples=True, **fields)
        results.append(summary(run(p)))
    return results[0], results[1], webui.server.inference_bodies()


@pytest.fixture
def cloud(webui, middleware_for):  # noqa: F811
    webui.server = middleware_for()
    return webui


def test_xyz_plot(cloud):
    local, remote, sent = local_and_cloud(
        cloud, lambda p: stock_scripts.xyz_plot(p, "steps", [3, 4], "cfg_scale", [5.0, 7.0], vary_seeds_x=True),
        prompt="a red fox")
    assert remote == local
    assert len(local["images"]) == 5 and local["all_seeds"] == [42, 43, 42, 43]
    assert [(b["steps"], b["cfg_scale"], b["seed"]) for b in sent] == [(3, 5.0, 42), (4, 5.0, 43), (3, 7.0, 42),
                                                                       (4, 7.0, 43)]
    assert local["infotexts"][0]["Script"] == "X/Y/Z plot"


def test_prompt_matrix_sends_one_prompt_and_one_seed_per_request(cloud):
    local, remote, sent = local_and_cloud(cloud, stock_scripts.prompt_matrix, prompt="a fox|red|running",
                                          batch_size=2)
    assert remote == local
    assert local["all_prompts"] == ["a fox", "a fox, red", "a fox, running", "a fox, red, running"]
    assert local["all_seeds"] == [42] * 4 and local["index_of_first_image"] == 1 and len(local["images"]) == 5
    assert [(b["prompt"], b["seed"], b["batch_size"], b["n_iter"]) for b in sent] == [
        ("a fox", 42, 1, 1), ("a fox, red", 42, 1, 1), ("a fox, running", 42, 1, 1), ("a fox, red, running", 42, 1, 1)]


def test_prompt_matrix_with_different_seeds(cloud):
    local, remote, sent = local_and_cloud(cloud, lambda p: stock_scripts.prompt_matrix(p, different_seeds=True),
                                          prompt="a fox|red")
    assert remote == local and local["all_seeds"] == [42, 43]
    assert [(b["prompt"], b["seed"]) for b in sent] == [("a fox", 42), ("a fox, red", 43)]


def test_prompts_from_file(cloud):
    jobs = [{"prompt": "a cat"}, {"prompt": "a dog", "steps": 5, "batch_size": 2}]
    local, remote, sent = local_and_cloud(cloud, lambda p: stock_scripts.prompts_from_file(p, jobs, iterate_seed=True))
    assert remote == local
    assert local["all_prompts"] == ["a cat", "a dog", "a dog"] and len(local["images"]) == 3  # no grids
    assert [(b["prompt"], b["seed"], b["steps"], b["batch_size"]) for b in sent] == [("a cat", 42, 4, 1),
                                                                                     ("a dog", 43, 5, 2)]


def test_sd_upscale(cloud):
    init = Image.new("RGB", (128, 64), "blue")

    def run(p):
        p.init_images = [init]
        return stock_scripts.sd_upscale(p, tile=64)

    local, remote, sent = local_and_cloud(cloud, run, img2img=True, batch_size=2, prompt="tiles")
    assert remote == local and len(local["images"]) == 1 and local["images"][0][0] == (128, 64)
    assert local["info"]["SD upscale upscaler"] == "None" and local["info"]["Seed"] == "42"
    assert [(b["seed"], b["batch_size"], len(b["init_images"])) for b in sent] == [(42, 1, 1), (43, 1, 1)]


def test_loopback(cloud):
    local, remote, sent = local_and_cloud(cloud, lambda p: stock_scripts.loopback(p, 3, 0.5), img2img=True,
                                          prompt="a house")
    assert remote == local and len(local["images"]) == 4  # the grid of the three loops, then the loops
    assert local["info"]["Final denoising strength"] == "0.5" and local["info"]["Denoising strength"] == "0.75"
    assert [(b["seed"], b["denoising_strength"]) for b in sent] == [(42, 0.75), (43, 0.625), (44, 0.5)]


def test_batches_of_one_prompt_stay_one_request_and_fill_p_like_the_host(cloud):
    local, remote, sent = local_and_cloud(cloud, cloud.processing.process_images, batch_size=2, n_iter=3,
                                          styles=[])
    assert remote == local and local["all_seeds"] == [42, 43, 44, 45, 46, 47]
    assert [(b["seed"], b["batch_size"], b["n_iter"]) for b in sent] == [(42, 2, 3)]
    p = make_p(cloud, switch_runner(cloud), on=True, batch_size=2, n_iter=3, seed=-1, subseed=-1)
    cloud.processing.process_images(p)
    assert len(p.all_prompts) == len(p.all_seeds) == len(p.all_subseeds) == len(p.all_negative_prompts) == 6
    assert p.all_seeds == [p.all_seeds[0] + i for i in range(6)] and p.iteration == 2
    assert p.prompts == p.all_prompts[4:] and p.seeds == p.all_seeds[4:]
    assert cloud.server.inference_bodies()[-1]["seed"] == p.all_seeds[0] != -1
    from modules import processing

    assert processing.create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds).startswith("a red fox")


def test_styles_are_applied_per_prompt_as_the_host_does(cloud):
    cloud.shared.prompt_styles.styles["photo"] = ("{prompt}, photo", "cartoon, {prompt}")
    local, remote, sent = local_and_cloud(cloud, stock_scripts.prompt_matrix, prompt="a fox|red", styles=["photo"])
    assert remote == local and local["all_prompts"] == ["a fox, photo", "a fox, red, photo"]
    assert [(b["prompt"], b["negative_prompt"]) for b in sent] == [
        ("a fox, photo", "cartoon, badhands, blurry"), ("a fox, red, photo", "cartoon, badhands, blurry")]
    assert all("styles" not in b for b in sent)


def _recording_process_images(webui, monkeypatch) -> list[dict]:
    """What each process_images call of a script gets (the switch's wrapper, as the scripts call it by name)."""
    seen: list[dict] = []
    wrapper = webui.processing.process_images

    def process_images(p):
        seen.append({"size": (p.width, p.height), "mask": _png(p.image_mask), "latent_mask": _png(p.latent_mask),
                     "init_images": [_png(image) for image in p.init_images], "mask_blur": (p.mask_blur_x,
                     p.mask_blur_y), "inpainting_fill": p.inpainting_fill, "inpaint_full_res": p.inpaint_full_res})
        return wrapper(p)

    monkeypatch.setattr(webui.processing, "process_images", process_images)
    return seen


def _png(image) -> tuple | None:
    return None if image is None else (image.mode, image.size, image.tobytes())


def _decoded(value: str) -> tuple:
    import base64
    import io

    return _png(Image.open(io.BytesIO(base64.b64decode(value))))


def _outpainting_on_both(webui, monkeypatch, run, **fields) -> tuple[dict, dict, list[dict], list[dict]]:
    """Local and cloud results, what process_images got each time (the same on both), and the requests."""
    seen = _recording_process_images(webui, monkeypatch)
    local, remote, sent = local_and_cloud(webui, run, img2img=True, **fields)
    half = len(seen) // 2
    assert seen[:half] == seen[half:] and half > 0
    return local, remote, seen[half:], sent


def _sent_as_seen(sent: list[dict], seen: list[dict]) -> None:
    """Each request carries the masks, init image, size and inpaint settings its process_images call had, and
    passes the middleware's strict payload check."""
    from aws_extension.payload import PayloadLimits, validate_payload
    from aws_extension.settings import WorkerSettings, load

    limits = PayloadLimits.from_settings(load(WorkerSettings))
    for body in sent:
        validate_payload(body["task_type"], body, limits)
    requests = iter(sent)
    for call in seen:
        for init_image in call["init_images"]:  # several init images: one request each, in order
            body = next(requests)
            assert (body["width"], body["height"]) == call["size"]
            assert _decoded(body["mask"]) == call["mask"] and _decoded(body["latent_mask"]) == call["latent_mask"]
            assert [_decoded(image) for image in body["init_images"]] == [init_image]
            assert (body["mask_blur_x"], body["mask_blur_y"]) == call["mask_blur"]
            assert (body["inpainting_fill"], body["inpaint_full_res"]) == (call["inpainting_fill"], False)
    assert next(requests, None) is None


def _engine_runs(body: dict, request: pytest.FixtureRequest) -> None:
    """The real engine (tiny model) makes the image of a sent request, at its size. The hosts' UI venvs
    (.ci/ui.sh) have no engine: there the test ends here, and the main venv's run checks this too."""
    import io

    pytest.importorskip("diffusers", reason="the engine is not installed in this venv (the main venv runs it)")
    tiny_models_dir = request.getfixturevalue("tiny_models_dir")

    from aws_extension.engine.base import ModelSet
    from aws_extension.engine.diffusers_engine import DiffusersEngine

    models = ModelSet(checkpoint=tiny_models_dir / "Stable-diffusion" / "tiny-sd.safetensors", files={})
    result = DiffusersEngine().generate(body["task_type"], body, models)
    assert Image.open(io.BytesIO(result.images[0])).size == (body["width"], body["height"])


def test_poor_mans_outpainting(cloud, monkeypatch, request):
    init = Image.new("RGB", (64, 64), "blue")

    def run(p):
        p.init_images = [init]
        return stock_scripts.poor_mans_outpainting(p, pixels=32, mask_blur=4, inpainting_fill=0,
                                                   direction=["left", "right", "up", "down"])

    local, remote, seen, sent = _outpainting_on_both(cloud, monkeypatch, run, prompt="a garden")
    assert remote == local and len(local["images"]) == 1 and local["images"][0][0] == (128, 128)
    assert len(seen) == 8  # the 3x3 tiles of 64 over 128x128 but the one inside the old image
    assert all(call["mask"] != call["latent_mask"] for call in seen)  # blurred 8 in, latent 2 in
    _sent_as_seen(sent, seen)
    assert [b["seed"] for b in sent] == list(range(42, 50)) and seen[0]["mask_blur"] == (8, 8)
    _engine_runs(sent[0], request)


def test_outpainting_mk2(cloud, monkeypatch, request):
    init = Image.new("RGB", (64, 64), "blue")

    def run(p):
        p.init_images = [init]
        return stock_scripts.outpainting_mk_2(p, pixels=32, mask_blur=4, direction=["left", "down"])

    local, remote, seen, sent = _outpainting_on_both(cloud, monkeypatch, run, prompt="a garden", width=128,
                                                     height=128, batch_size=2)
    assert remote == local and len(local["images"]) == 3  # the grid, then the two grown images
    assert [image[0] for image in local["images"]] == [(256, 128), (128, 128), (128, 128)]
    assert [call["size"] for call in seen] == [(128, 64), (128, 128)] and seen[0]["mask_blur"] == (16, 16)
    assert all(call["mask"] != call["latent_mask"] for call in seen)  # the latent mask stops 2x the blur short
    _sent_as_seen(sent, seen)
    assert [(b["seed"], b["batch_size"]) for b in sent] == [(42, 1), (43, 1), (42, 1), (43, 1)]
    _engine_runs(sent[0], request)


def test_a_latent_mask_without_a_mask_is_not_sent(cloud):
    """A1111 uses p.latent_mask only with an image mask; the engine refuses it alone."""
    p = make_p(cloud, switch_runner(cloud, is_img2img=True), on=True, img2img=True)
    p.latent_mask = Image.new("L", (64, 64), "white")
    cloud.processing.process_images(p)
    assert "latent_mask" not in cloud.server.inference_bodies()[-1]
