"""A1111's own scripts with cloud on produce what they produce locally: each script double (stock_scripts.py)
runs once against the host's local process_images and once through the switch to the fake middleware, and the
two Processed agree in everything the scripts and the page read (images, prompts, seeds, infotexts, js())."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tests.webui import stock_scripts
from tests.webui.conftest import make_p, switch_runner, user_sees
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


def test_outpainting_latent_mask_is_refused_before_sending(cloud, capsys):
    """poor_mans_outpainting / outpainting_mk_2 set p.latent_mask, which the engine cannot apply yet: refused
    with one sentence (and the script stops, as after Interrupt) rather than images that differ."""
    p = make_p(cloud, switch_runner(cloud, is_img2img=True), on=True, img2img=True,
               mask=Image.new("L", (64, 64), "white"))
    p.latent_mask = Image.new("L", (64, 64), "white")
    assert user_sees(cloud, p, capsys).startswith("The cloud engine cannot apply a latent mask yet")
    assert cloud.server.inference_bodies() == []
