"""The WebUI settings that change images, read as the host would apply them (`p.override_settings` first, then
`shared.opts`), and the `override_settings` a cloud request carries: only those that differ from A1111's
defaults; one the cloud engine does not honour is refused here, before anything is sent."""

from __future__ import annotations

from typing import Any

from modules import shared

from aws_extension import payload

# A1111 v1.10.1's settings that change the pixels of a generation, with their defaults (modules/shared_options.py;
# `k_sched_type` is the v1.5–1.6 name infotexts of that time still carry). sd_vae and the checkpoint are models:
# request.py sends them.
IMAGE_SETTINGS: dict[str, Any] = {
    "randn_source": "GPU", "eta_ancestral": 1.0, "eta_ddim": 0.0, "eta_noise_seed_delta": 0, "ddim_discretize": "uniform",
    "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0, "s_min_uncond": 0.0, "sigma_min": 0.0,
    "sigma_max": 0.0, "rho": 0.0, "always_discard_next_to_last_sigma": False, "sgm_noise_multiplier": False,
    "k_sched_type": "Automatic", "uni_pc_variant": "bh1", "uni_pc_skip_type": "time_uniform", "uni_pc_order": 3,
    "uni_pc_lower_order_final": True, "sd_noise_schedule": "Default", "skip_early_cond": 0.0,
    "beta_dist_alpha": 0.6, "beta_dist_beta": 0.6, "CLIP_stop_at_last_layers": 1, "emphasis": "Original",
    "comma_padding_backtrack": 20, "use_old_emphasis_implementation": False, "use_old_karras_scheduler_sigmas": False,
    "use_old_scheduling": False, "img2img_fix_steps": False, "sd_vae_decode_method": "Full",
    "sd_vae_encode_method": "Full", "token_merging_ratio": 0.0, "enable_quantization": False, "sd_unet": "Automatic",
    # the built-in Hypertile extension's (its script is not run on the cloud: hooks.LOCAL_MODEL_SCRIPTS)
    "hypertile_enable_unet": False, "hypertile_enable_unet_secondpass": False, "hypertile_enable_vae": False,
}


class UnsupportedSetting(ValueError):
    """A setting with a non-default value that the cloud engine cannot apply; the message names it."""


def _same(value: Any, default: Any) -> bool:
    """Equal as A1111 would apply them: numbers by value (an infotext gives "0.0" or 0), the rest as given."""
    if isinstance(default, bool):
        return str(value).lower() == str(default).lower()
    if isinstance(default, int | float):
        try:
            return float(value) == float(default)
        except (TypeError, ValueError):
            return False
    return str(value) == str(default)


def _setting(p: Any, key: str, default: Any) -> Any:
    override_settings = getattr(p, "override_settings", None) or {}
    return override_settings[key] if key in override_settings else getattr(shared.opts, key, default)


def changed_settings(p: Any) -> dict[str, Any]:
    """The image settings of `p` (overrides, then the WebUI's settings) whose value is not A1111's default."""
    changed = {}
    for key, default in IMAGE_SETTINGS.items():
        value = _setting(p, key, default)
        if value is not None and not _same(value, default):
            changed[key] = value
    return changed


def override_settings_for_cloud(p: Any) -> dict[str, Any]:
    """The `override_settings` to send; raises UnsupportedSetting for one the engine does not honour."""
    changed = changed_settings(p)
    honoured = payload.OVERRIDE_SETTINGS_HONOURED  # read at each call: the engine's list, growing
    refused = [key for key in changed if key not in honoured]
    if refused:
        shown = ", ".join(f"{key} = {changed[key]!r} (A1111's default: {IMAGE_SETTINGS[key]!r})" for key in refused)
        raise UnsupportedSetting(f"The cloud engine cannot apply the setting {shown} yet: set it back to the default "
                                 "(Settings, or remove it from Override settings) or turn cloud off for this image.")
    return changed
