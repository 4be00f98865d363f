"""The cloud switch against the host's own rules: image settings forwarded or refused before sending, the grid
rules of process_images_inner on the UI and API paths, infotexts that "reuse parameters" reads back."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from tests.webui.conftest import make_p, switch_runner, user_sees
from tests.webui.test_extension import middleware_for  # noqa: F401 - the fixture


@pytest.fixture
def cloud(webui, middleware_for):  # noqa: F811
    webui.server = middleware_for()
    return webui


@pytest.fixture
def honoured(monkeypatch):
    """The engine's list as the engine owners extend it (read at each call by the switch)."""
    from aws_extension import payload

    def set_to(*keys: str) -> None:
        monkeypatch.setattr(payload, "OVERRIDE_SETTINGS_HONOURED", tuple(keys))
    return set_to


def test_settings_at_their_defaults_send_nothing(cloud):
    cloud.shared.opts.data.update(randn_source="GPU", eta_ancestral=1.0, CLIP_stop_at_last_layers=1)
    p = make_p(cloud, switch_runner(cloud), on=True, override_settings={"eta_noise_seed_delta": "0",
                                                                         "sd_model_checkpoint": "tiny"})
    cloud.processing.process_images(p)
    assert cloud.server.inference_bodies()[0]["override_settings"] == {}


def test_changed_image_settings_are_forwarded_from_opts_and_overrides(cloud, honoured):
    honoured("CLIP_stop_at_last_layers", "sd_vae", "randn_source", "eta_noise_seed_delta", "s_noise")
    cloud.shared.opts.data.update(CLIP_stop_at_last_layers=2, eta_noise_seed_delta=31337, samples_format="jpg")
    p = make_p(cloud, switch_runner(cloud), on=True, override_settings={"randn_source": "CPU", "s_noise": 1.0})
    processed = cloud.processing.process_images(p)
    assert cloud.server.inference_bodies()[0]["override_settings"] == {
        "randn_source": "CPU", "eta_noise_seed_delta": 31337, "CLIP_stop_at_last_layers": 2}
    assert processed.images


def test_a_setting_the_engine_does_not_honour_is_refused_before_sending(cloud, honoured, capsys):
    honoured("CLIP_stop_at_last_layers", "sd_vae")
    p = make_p(cloud, switch_runner(cloud), on=True, override_settings={"randn_source": "CPU"})
    message = user_sees(cloud, p, capsys)
    assert "randn_source = 'CPU'" in message and "default: 'GPU'" in message
    assert cloud.server.inference_bodies() == []
    cloud.shared.opts.data["eta_ancestral"] = 0.5  # from the WebUI's settings, not only from pasted overrides
    message = user_sees(cloud, make_p(cloud, switch_runner(cloud), on=True), capsys)
    assert "eta_ancestral = 0.5" in message and cloud.server.inference_bodies() == []


def test_the_middleware_would_have_failed_the_job_on_an_unhonoured_setting(cloud):
    """The far side as it is: the refusal in the WebUI is what keeps the job from failing there."""
    from aws_extension.client import ApiError, MiddlewareClient

    with pytest.raises(ApiError, match="override_settings.sd_noise_schedule: this setting is not supported"):
        MiddlewareClient(cloud.server.url, None).create_inference({"prompt": "x", "override_settings":
                                                                   {"sd_noise_schedule": "Zero Terminal SNR"}})


@pytest.mark.parametrize(("options", "batch_size", "grid"), [
    ({}, 2, True), ({"return_grid": False}, 2, False), ({}, 1, False),
    ({"grid_only_if_multiple": False}, 1, True), ({"return_grid": False, "grid_save": False}, 2, False)])
def test_grid_rules_on_the_page_are_the_hosts(cloud, options, batch_size, grid):
    cloud.shared.opts.data.update(options)
    results = []
    for on in (False, True):
        p = make_p(cloud, switch_runner(cloud), on=on, batch_size=batch_size, prompt="grid rules")
        processed = cloud.processing.process_images(p)
        results.append((len(processed.images), processed.index_of_first_image, len(processed.infotexts)))
    images = batch_size + (1 if grid else 0)
    assert results[0] == results[1] == (images, 1 if grid else 0, images)
    saved_grids = cloud.data / "outputs" / "grids"
    want_saved = options.get("grid_save", True) and (batch_size > 1 or not options.get("grid_only_if_multiple", True))
    assert (len(list(saved_grids.iterdir())) if saved_grids.exists() else 0) == (2 if want_saved else 0)


def test_the_api_gets_no_grid(cloud):
    import modules.api.api

    answers = []
    for on in (False, True):
        p = make_p(cloud, switch_runner(cloud), on=on, batch_size=4, prompt="api batch")
        status, answer = modules.api.api.call(modules.api.api.text2imgapi, p)
        assert status == 200
        answers.append((len(answer["images"]), json.loads(answer["info"])["index_of_first_image"]))
    assert answers == [(4, 0), (4, 0)]
    assert not (cloud.data / "outputs").exists()  # save_images false: nothing saved either


def test_infotext_says_the_webui_version_and_reads_back_to_the_same_parameters(cloud):
    from modules.infotext_utils import parse_generation_parameters

    cloud.shared.opts.data["CLIP_stop_at_last_layers"] = 2
    parsed = []
    for on in (False, True):
        p = make_p(cloud, switch_runner(cloud), on=on, prompt="a lake, at dawn", negative_prompt="fog")
        processed = cloud.processing.process_images(p)
        parsed.append(parse_generation_parameters(processed.infotexts[0]))
        saved = sorted((cloud.data / "outputs" / "samples").iterdir())[-1]
        assert Image.open(saved).info["parameters"] == processed.infotexts[0]
    local, remote = parsed
    assert remote.pop("Cloud") == "sd-aws 0.1.0" and remote["Version"] == "v1.10.1"
    assert remote == local and local["Clip skip"] == "2" and local["Prompt"] == "a lake, at dawn"


def test_the_api_answer_carries_the_cloud_images_with_their_infotexts(cloud):
    import modules.api.api

    p = make_p(cloud, switch_runner(cloud), on=True, prompt="api text")
    status, answer = modules.api.api.call(modules.api.api.text2imgapi, p)
    info = json.loads(answer["info"])
    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
    assert status == 200 and image.size == (64, 64) and "Version: v1.10.1, Cloud: sd-aws 0.1.0" in info["infotexts"][0]
    assert info["all_seeds"] == [42] and info["version"] == "v1.10.1"
