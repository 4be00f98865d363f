"""The always-on scripts' hooks on the cloud path, called where A1111 v1.10's `process_images` and
`process_images_inner` call them, in the same order, with the same arguments (`modules/scripts.py`'s
ScriptRunner: each script with its slice of `p.script_args`; an error is reported as the host reports it and
the next script runs).

Called: before_process, process, before_process_batch, process_batch, postprocess_batch (the batch as a
[B, 3, H, W] tensor in 0..1), postprocess_batch_list, postprocess_image, postprocess_image_after_composite,
postprocess. Not called: the scripts whose work the cloud does itself (ControlNet: its units go with the
request; the cloud switch) or that only configure the local model (`LOCAL_MODEL_SCRIPTS`), and the hooks that
act on the local model's sampling (`MODEL_HOOKS`); a script that is on for the image (it added infotext
parameters in before_process or process) and has such hooks is refused before anything is sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from modules import errors, scripts
from PIL import Image

from aws_extension.webui.request import CONTROLNET_SCRIPT_TITLES

if TYPE_CHECKING:  # the host has torch; the extension imports it only for the batch hooks, which take tensors
    import torch

# What A1111 calls inside its sampling, on the local model's tensors (latents, conditioning, the UNet):
# there is no local sampling on the cloud path, so these never run there (docs/architecture.md, WebUI).
MODEL_HOOKS = ("process_before_every_sampling", "after_extra_networks_activate", "post_sample", "on_mask_blend",
               "before_hr", "postprocess_maskoverlay")
# Always-on scripts whose hooks only configure the local model (A1111's built-in Hypertile reads shared.sd_model
# in `process`, which would load the local checkpoint): skipped; their settings are refused when on
# (image_settings.IMAGE_SETTINGS).
LOCAL_MODEL_SCRIPTS = ("Hypertile",)
# The hooks where a script that works in MODEL_HOOKS says it is on, by adding its infotext parameters.
SETUP_HOOKS = ("before_process", "process")


class ModelHookScript(ValueError):
    """An always-on script that is on for this image and does its work in hooks the cloud cannot run."""


def images_to_batch(images: list[Image.Image]) -> torch.Tensor:
    """Images as the host's decoded batch: [B, 3, H, W] float32 in 0..1 (empty: no images). Each 8-bit level
    becomes the middle of the values the host rounds down to it, so the host's `255 * x` to uint8 gives the same
    pixels back."""
    import torch

    if not images:
        return torch.empty(0)
    pixels = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.minimum((pixels + 0.5) / 255, 1.0), 3, 1)))


def batch_image(sample: torch.Tensor) -> Image.Image:
    """One [3, H, W] sample as process_images_inner makes it an image: 255 * x, truncated to uint8."""
    return Image.fromarray((255.0 * np.moveaxis(sample.cpu().numpy(), 0, 2)).astype(np.uint8))


def _overrides(script: Any, hook: str) -> bool:
    """Whether the script has its own `hook` (the host calls a hook only on those)."""
    return getattr(type(script), hook, None) is not getattr(scripts.Script, hook, None)


class ScriptHooks:
    """The hooks of `p.scripts` (None: no scripts, nothing to call) without the scripts in `skipped_titles`."""

    def __init__(self, p: Any, skipped_titles: Iterable[str]):
        self.p = p
        self.runner = getattr(p, "scripts", None)
        self.skipped = {title.lower() for title in (*skipped_titles, *CONTROLNET_SCRIPT_TITLES, *LOCAL_MODEL_SCRIPTS)}
        self.active_model_hooks: dict[str, list[str]] = {}  # script title → its model hooks, for a script that is on

    def scripts_for(self, hook: str) -> list:
        """The always-on scripts that have `hook`, in the host's order (its user-sortable callback order)."""
        if self.runner is None or hook in MODEL_HOOKS:
            return []
        ordered = getattr(self.runner, "ordered_scripts", None)
        candidates = ordered(hook) if callable(ordered) else [
            script for script in self.runner.alwayson_scripts if _overrides(script, hook)]
        return [script for script in candidates if script.title().lower() not in self.skipped]

    def call(self, hook: str, *leading: Any, **kwargs: Any) -> None:
        """`script.<hook>(p, *leading, *its script args, **kwargs)` for each script, as the ScriptRunner does."""
        for script in self.scripts_for(hook):
            params_before = self._param_names()
            try:
                script_args = self.p.script_args[script.args_from:script.args_to]
                getattr(script, hook)(self.p, *leading, *script_args, **kwargs)
            except Exception:  # noqa: BLE001 - as the host's ScriptRunner: reported, the next script runs
                errors.report(f"Error running {hook}: {script.filename}", exc_info=True)
            model_hooks = [name for name in MODEL_HOOKS if _overrides(script, name)]
            if hook in SETUP_HOOKS and model_hooks and self._param_names() - params_before:
                self.active_model_hooks[script.title()] = model_hooks

    def _param_names(self) -> set[str]:
        return set(getattr(self.p, "extra_generation_params", None) or {})

    def refuse_model_hook_scripts(self) -> None:
        """ModelHookScript naming each script that is on (it wrote its infotext parameters in before_process or
        process) and works in hooks of the local sampling, which the cloud would silently go without."""
        if self.active_model_hooks:
            shown = "; ".join(f"{title} ({', '.join(hooks)})" for title, hooks in self.active_model_hooks.items())
            raise ModelHookScript(f"The cloud cannot run what these scripts do during sampling: {shown}: turn them "
                                  "off or turn cloud off for this image.")

    def before_batch(self, n: int) -> None:
        """before_process_batch and process_batch of batch `n` (A1111 parses extra networks between them)."""
        p = self.p
        self.call("before_process_batch", batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
        if p.prompts:
            self.call("process_batch", batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)

    def _reset_batch_prompts(self, n: int) -> None:
        """As the host after postprocess_batch: the batch's prompts again (a hook may have edited them)."""
        p, window = self.p, slice(n * self.p.batch_size, (n + 1) * self.p.batch_size)
        p.prompts, p.negative_prompts = p.all_prompts[window], p.all_negative_prompts[window]

    def has_pre_batch_hooks(self) -> bool:
        return bool(self.scripts_for("before_process_batch") or self.scripts_for("process_batch"))

    def after_batch(self, n: int, images: list[Image.Image]) -> list[Image.Image]:
        """postprocess_batch, then postprocess_batch_list (which may change the batch's images), then
        postprocess_image and postprocess_image_after_composite for each image: the batch's final images."""
        p = self.p
        if self.scripts_for("postprocess_batch") or self.scripts_for("postprocess_batch_list"):
            batch = images_to_batch(images)
            self.call("postprocess_batch", images=batch, batch_number=n)
            self._reset_batch_prompts(n)
            batch_list = scripts.PostprocessBatchListArgs(list(batch))
            self.call("postprocess_batch_list", batch_list, batch_number=n)
            images = [batch_image(sample) for sample in batch_list.images]
        else:
            self._reset_batch_prompts(n)
        final = []
        for i, image in enumerate(images):
            p.batch_index = i
            for hook in ("postprocess_image", "postprocess_image_after_composite"):
                if self.scripts_for(hook):
                    args = scripts.PostprocessImageArgs(image)
                    self.call(hook, args)
                    image = args.image
            final.append(image)
        return final
