"""The always-on scripts' hooks with cloud on: called as process_images/process_images_inner call them locally
(the same hooks, order and arguments; the host stand-in's ScriptRunner is v1.10.1's), except the model hooks
(no local sampling), ControlNet's (its units go with the request) and the switch's own. Double scripts: a prompt
changer like sd-dynamic-prompts (p.all_prompts in process), a recorder of every hook, a postprocess_image
watermark, a postprocess_batch_list inverter, a ControlNet stand-in and one that fails."""

from __future__ import annotations

import itertools
import re

import gradio as gr
import pytest

from tests.webui.conftest import make_p, switch_runner, user_sees
from tests.webui.test_extension import middleware_for  # noqa: F401 - the fixture
from tests.webui.test_stock_scripts import summary

CALLS: list[tuple] = []  # (script, hook, what it was given), in call order


def always_on_script() -> type:
    """The host's Script, always visible (the host stand-in is on sys.path only while the webui fixture runs)."""
    from modules import scripts

    class AlwaysOn(scripts.Script):
        def show(self, is_img2img):
            return scripts.AlwaysVisible

    return AlwaysOn


def make_doubles() -> list[type]:
    """The double script classes, each with the components its ui() gives (their values are its args)."""
    Script = always_on_script()

    class DynamicPrompts(Script):
        """As sd-dynamic-prompts' process(): the variants of {a|b} become p.all_prompts, one per image."""

        def title(self):
            return "Dynamic Prompts"

        def ui(self, is_img2img):
            return [gr.Checkbox(value=True, label="Dynamic Prompts enabled")]

        def process(self, p, is_enabled):
            if not is_enabled:
                return
            template = p.prompt
            match = re.search(r"\{([^}]*)\}", template)
            variants = [template[:match.start()] + choice + template[match.end():]
                        for choice in match.group(1).split("|")] if match else [template]
            p.all_prompts = list(itertools.islice(itertools.cycle(variants), len(p.all_prompts)))
            p.all_negative_prompts = [p.all_negative_prompts[0]] * len(p.all_prompts)
            p.prompt_for_display = template
            p.extra_generation_params["Template"] = template

    class HookRecorder(Script):
        """Records every hook with what it got (prompts, seeds, its args, batch values, image pixels)."""

        def title(self):
            return "Hook recorder"

        def ui(self, is_img2img):
            return [gr.Textbox(value="recorder arg", label="Recorder")]

        def _log(self, hook, p, *given):
            CALLS.append(("recorder", hook, list(p.prompts or []), list(p.seeds or []), *given))

        def before_process(self, p, arg):
            CALLS.append(("recorder", "before_process", p.prompt, arg))

        def process(self, p, arg):
            CALLS.append(("recorder", "process", list(p.all_prompts), list(p.all_seeds), arg))

        def before_process_batch(self, p, arg, **kwargs):
            self._log("before_process_batch", p, arg, kwargs["batch_number"], kwargs["prompts"], kwargs["seeds"],
                      kwargs["subseeds"] == p.subseeds)

        def process_batch(self, p, arg, **kwargs):
            self._log("process_batch", p, arg, sorted(kwargs))

        def process_before_every_sampling(self, p, arg, **kwargs):
            self._log("process_before_every_sampling", p, arg)

        def postprocess_batch(self, p, arg, **kwargs):
            images = kwargs["images"]
            self._log("postprocess_batch", p, arg, kwargs["batch_number"], tuple(images.shape),
                      [round(float(v), 6) for v in images[:, :, 0, 0].flatten()])

        def postprocess_batch_list(self, p, pp, arg, **kwargs):
            self._log("postprocess_batch_list", p, arg, kwargs["batch_number"], [tuple(x.shape) for x in pp.images])

        def postprocess_image(self, p, pp, arg):
            self._log("postprocess_image", p, arg, p.batch_index, pp.image.size, pp.image.getpixel((0, 0)))

        def postprocess_image_after_composite(self, p, pp, arg):
            self._log("postprocess_image_after_composite", p, arg, pp.image.getpixel((0, 0)))

        def postprocess(self, p, processed, arg):
            CALLS.append(("recorder", "postprocess", arg, len(processed.images), processed.all_prompts,
                          processed.index_of_first_image))

    class Watermark(Script):
        def title(self):
            return "Watermark"

        def ui(self, is_img2img):
            return []

        def postprocess_image(self, p, pp):
            image = pp.image.copy()
            image.paste((255, 255, 255), (0, 0, 4, 4))
            pp.image = image

    class InvertBatch(Script):
        def title(self):
            return "Invert batch"

        def ui(self, is_img2img):
            return [gr.Checkbox(value=True, label="Invert")]

        def postprocess_batch_list(self, p, pp, enabled, **kwargs):
            if enabled:
                pp.images = [1 - x for x in pp.images]

    class ControlNet(Script):
        def title(self):
            return "ControlNet"

        def ui(self, is_img2img):
            return [gr.State(value=None)]

        def process(self, p, *units):
            CALLS.append(("controlnet", "process"))

        def postprocess_image(self, p, pp, *units):
            CALLS.append(("controlnet", "postprocess_image"))

    class Failing(Script):
        def title(self):
            return "Failing"

        def ui(self, is_img2img):
            return []

        def process(self, p):
            raise RuntimeError("this script is broken")

    return [DynamicPrompts, HookRecorder, Watermark, InvertBatch, ControlNet, Failing]


MODEL_HOOKS = ("process_before_every_sampling",)


@pytest.fixture
def hosted(webui, middleware_for):  # noqa: F811
    """The extension and the double scripts loaded (after it, as extensions load after each other)."""
    webui.server = middleware_for()
    for cls in make_doubles():
        webui.scripts.scripts_data.append(webui.scripts.ScriptClassData(cls, f"doubles/{cls.__name__}.py", "doubles",
                                                                        None))
    CALLS.clear()
    return webui


def _inverted(colour: tuple[int, ...]) -> tuple[int, ...]:
    """1 - x of the host's sample of `colour` (the middle of its 8-bit level), truncated as the host does."""
    return tuple(max(254 - c, 0) for c in colour)


def _both(webui, capsys, **fields) -> tuple[dict, dict, list, list, str]:
    """process_images locally and on the cloud on fresh p's: the results, the hook calls of each, the console."""
    runner = switch_runner(webui)
    results, calls = [], []
    for on in (False, True):
        CALLS.clear()
        p = make_p(webui, runner, on=on, do_not_save_samples=True, **fields)
        results.append(summary(webui.processing.process_images(p)))
        calls.append(list(CALLS))
    return results[0], results[1], calls[0], calls[1], capsys.readouterr().err


def test_hooks_run_on_the_cloud_as_locally(hosted, capsys):
    local, remote, local_calls, cloud_calls, console = _both(hosted, capsys, prompt="a {red|blue} fox", batch_size=2,
                                                             n_iter=2, styles=[])
    assert remote == local
    assert local["all_prompts"] == ["a red fox", "a blue fox"] * 2 and local["info"]["Template"] == "a {red|blue} fox"
    inverted = _inverted(hosted.processing.colour_of("a red fox"))
    assert local["images"][1] == ((64, 64), (255, 255, 255))  # the watermark, after the grid
    assert [b["prompt"] for b in hosted.server.inference_bodies()] == ["a red fox", "a blue fox"] * 2
    assert ("recorder", "postprocess_image_after_composite", ["a red fox", "a blue fox"], [42, 43], "recorder arg",
            (255, 255, 255)) in cloud_calls
    batch = next(c for c in cloud_calls if c[1] == "postprocess_batch")
    assert batch[5:7] == (0, (2, 3, 64, 64))
    assert [round(v * 255 - 0.5) for v in batch[7][:3]] == list(hosted.processing.colour_of("a red fox"))
    assert local_calls.count(("controlnet", "process")) == 1 and not [c for c in cloud_calls if c[0] == "controlnet"]
    assert [c for c in local_calls if c[1] not in MODEL_HOOKS and c[0] != "controlnet"] == cloud_calls
    assert [c[1] for c in local_calls if c[1] in MODEL_HOOKS] == ["process_before_every_sampling"] * 2
    assert [c[1] for c in cloud_calls[:2]] == ["before_process", "process"] and cloud_calls[-1][1] == "postprocess"
    # a failing script is reported as the host reports it, and the job goes on (both times)
    assert console.count("*** Error running process: doubles/Failing.py") == 2 and "this script is broken" in console
    recorded = next(c for c in cloud_calls if c[1] == "postprocess_image")  # before the watermark, after the inverter
    assert recorded[4:] == ("recorder arg", 0, (64, 64), inverted)


def test_batch_list_hook_changes_the_images_on_both(hosted, capsys):
    local, remote, _, _, _ = _both(hosted, capsys, prompt="a green hill", styles=[])
    assert remote == local
    image = local["images"][0]
    assert image == ((64, 64), (255, 255, 255))  # watermarked corner
    # the rest of the image is the inverted colour: read a pixel away from the corner
    p = make_p(hosted, switch_runner(hosted), on=True, prompt="a green hill", do_not_save_samples=True, styles=[])
    processed = hosted.processing.process_images(p)
    assert processed.images[0].getpixel((32, 32)) == _inverted(hosted.processing.colour_of("a green hill"))


def test_without_batch_hooks_consecutive_batches_stay_one_request(hosted, capsys):
    _only(hosted, "Watermark")
    local, remote, _, _, _ = _both(hosted, capsys, prompt="a cat", batch_size=2, n_iter=3, styles=[])
    assert remote == local and len(local["images"]) == 7
    assert [(b["batch_size"], b["n_iter"]) for b in hosted.server.inference_bodies()] == [(2, 3)]
    assert all(pixel == (255, 255, 255) for _, pixel in local["images"][1:])


def test_a_prompt_changed_in_before_process_batch_is_what_is_sent(hosted, capsys):
    Script = always_on_script()

    class Suffix(Script):
        def title(self):
            return "Suffix"

        def ui(self, is_img2img):
            return []

        def before_process_batch(self, p, **kwargs):
            kwargs["prompts"][:] = [f"{prompt}, batch {kwargs['batch_number']}" for prompt in kwargs["prompts"]]

    _only(hosted, extra=(Suffix,))
    local, remote, _, _, _ = _both(hosted, capsys, prompt="a dog", batch_size=2, n_iter=2, styles=[])
    assert remote == local
    assert [(b["prompt"], b["seed"], b["batch_size"]) for b in hosted.server.inference_bodies()] == [
        ("a dog, batch 0", 42, 2), ("a dog, batch 1", 44, 2)]
    assert [pixel for _, pixel in local["images"][1:]] == (
        [hosted.processing.colour_of("a dog, batch 0")] * 2 + [hosted.processing.colour_of("a dog, batch 1")] * 2)


def test_no_hooks_after_a_user_error(hosted, capsys):
    hosted.shared.opts.data["sd_model_checkpoint"] = "missing.safetensors"
    p = make_p(hosted, switch_runner(hosted), on=True, prompt="a cat", styles=[])
    processed = hosted.processing.process_images(p)
    assert processed.images == [] and "checkpoint" in processed.info
    assert [c[1] for c in CALLS if c[0] == "recorder"] == ["before_process"]  # as a host job that raised


def _only(webui, *names: str, extra: tuple = ()) -> None:
    """Keep the switch and the named doubles (and `extra` classes) as the loaded scripts."""
    kept = [data for data in webui.scripts.scripts_data
            if data.script_class.__name__ in ("CloudSwitchScript", *names)]
    kept += [webui.scripts.ScriptClassData(cls, f"doubles/{cls.__name__}.py", "doubles", None) for cls in extra]
    webui.scripts.scripts_data[:] = kept


def _soft_inpainting_double(enabled: bool) -> type:
    """As A1111's built-in soft inpainting: on, its process() writes its infotext parameters; its work is in
    on_mask_blend and post_sample, inside the local sampling."""
    Script = always_on_script()

    class SoftInpainting(Script):
        def title(self):
            return "Soft Inpainting"

        def ui(self, is_img2img):
            return [gr.Checkbox(value=enabled, label="Soft inpainting")]

        def process(self, p, on):
            if on:
                p.mask_round = False
                p.extra_generation_params["Soft inpainting enabled"] = True

        def on_mask_blend(self, p, mba, on):
            CALLS.append(("soft", "on_mask_blend"))

        def post_sample(self, p, ps, on):
            CALLS.append(("soft", "post_sample"))

    return SoftInpainting


def test_a_script_on_that_works_inside_sampling_is_refused_before_sending(hosted, capsys):
    _only(hosted, extra=(_soft_inpainting_double(True),))
    p = make_p(hosted, switch_runner(hosted), on=True, prompt="a cat", styles=[])
    assert user_sees(hosted, p, capsys) == (
        "The cloud cannot run what these scripts do during sampling: Soft Inpainting (post_sample, on_mask_blend): "
        "turn them off or turn cloud off for this image.")
    assert hosted.server.inference_bodies() == [] and CALLS == []


def test_a_script_off_that_works_inside_sampling_does_not_stop_the_job(hosted, capsys):
    _only(hosted, extra=(_soft_inpainting_double(False),))
    local, remote, _, _, _ = _both(hosted, capsys, prompt="a cat", styles=[])
    assert remote == local and len(hosted.server.inference_bodies()) == 1


def test_hypertile_is_not_run_on_the_cloud_and_its_settings_are_refused(hosted, capsys):
    """A1111's Hypertile reads shared.sd_model in process() (loading the local checkpoint): not called."""
    Script = always_on_script()

    class Hypertile(Script):
        def title(self):
            return "Hypertile"

        def ui(self, is_img2img):
            return []

        def process(self, p):
            CALLS.append(("hypertile", "process"))

    _only(hosted, extra=(Hypertile,))
    local, remote, local_calls, cloud_calls, _ = _both(hosted, capsys, prompt="a cat", styles=[])
    assert remote == local and local_calls == [("hypertile", "process")] and cloud_calls == []
    hosted.shared.opts.data["hypertile_enable_unet"] = True
    p = make_p(hosted, switch_runner(hosted), on=True, prompt="a cat", styles=[])
    assert user_sees(hosted, p, capsys).startswith("The cloud engine cannot apply the setting hypertile_enable_unet")
