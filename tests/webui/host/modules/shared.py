"""Stand-in for modules.shared: cmd_opts, opts (OptionInfo, add_option, set, save, data, defaults), state, styles."""

import argparse
import json

from modules.options import OptionInfo, categories, options_section  # noqa: F401 - as modules.shared has them

# The host's own options (modules/shared_options.py of v1.10.1) that the extension and the stand-in read, with
# their defaults: the real opts answers an unset option with its OptionInfo's default.
HOST_DEFAULTS = {
    "samples_save": True, "samples_format": "png", "grid_save": True, "grid_format": "png",
    "grid_only_if_multiple": True, "return_grid": True, "enable_pnginfo": True, "add_version_to_infotext": True,
    "add_model_hash_to_info": True, "add_model_name_to_info": True, "sd_model_checkpoint": None,
    "sd_vae": "Automatic", "CLIP_stop_at_last_layers": 1, "randn_source": "GPU", "eta_noise_seed_delta": 0,
    "eta_ancestral": 1.0, "eta_ddim": 0.0, "ddim_discretize": "uniform", "s_churn": 0.0, "s_tmin": 0.0,
    "s_tmax": 0.0, "s_noise": 1.0, "s_min_uncond": 0.0, "sigma_min": 0.0, "sigma_max": 0.0, "rho": 0.0,
    "always_discard_next_to_last_sigma": False, "sgm_noise_multiplier": False, "uni_pc_variant": "bh1",
    "uni_pc_skip_type": "time_uniform", "uni_pc_order": 3, "uni_pc_lower_order_final": True,
    "sd_noise_schedule": "Default", "skip_early_cond": 0.0, "beta_dist_alpha": 0.6, "beta_dist_beta": 0.6,
    "emphasis": "Original", "comma_padding_backtrack": 20, "tiling": False, "face_restoration": False,
    "initial_noise_multiplier": 1.0, "img2img_fix_steps": False, "use_old_emphasis_implementation": False,
    "use_old_karras_scheduler_sigmas": False, "use_old_scheduling": False, "token_merging_ratio": 0.0,
    "sd_vae_decode_method": "Full", "sd_vae_encode_method": "Full",
}


class Options:
    def __init__(self):
        super().__setattr__("data", {})
        super().__setattr__("data_labels", {key: OptionInfo(value) for key, value in HOST_DEFAULTS.items()})

    def __getattr__(self, item):
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        raise AttributeError(item)

    def __setattr__(self, key, value):
        self.data[key] = value

    def get_default(self, key):
        info = self.data_labels.get(key)
        return None if info is None else info.default

    def add_option(self, key, info):
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def set(self, key, value, is_api=False, run_callbacks=True):
        self.data[key] = value
        info = self.data_labels.get(key)
        if run_callbacks and info is not None and info.onchange is not None:
            info.onchange()
        return True

    def save(self, filename):
        with open(filename, "w") as file:
            json.dump(self.data, file)


class State:
    def __init__(self):
        self.interrupted = self.skipped = self.stopping_generation = False
        self.job = ""
        self.job_timestamp = "20261201000000"
        self.job_count = self.job_no = self.sampling_step = self.sampling_steps = 0
        self.textinfo = None
        self.progress_log = []  # test-only: every sampling_step written, to see the bar move

    def __setattr__(self, name, value):
        if name == "sampling_step" and "progress_log" in self.__dict__:
            self.progress_log.append(value)
        super().__setattr__(name, value)

    def interrupt(self):
        self.interrupted = True


class StyleDatabase:
    def __init__(self, styles):
        self.styles = styles  # name -> (prompt, negative_prompt) with "{prompt}" placeholders

    def apply_styles_to_prompt(self, prompt, styles):
        for name in styles:
            prompt = self.styles[name][0].replace("{prompt}", prompt)
        return prompt

    def apply_negative_styles_to_prompt(self, prompt, styles):
        for name in styles:
            prompt = self.styles[name][1].replace("{prompt}", prompt)
        return prompt


cmd_opts = argparse.Namespace(sd_aws_api_url=None, sd_aws_api_key=None, ckpt_dir=None, lora_dir=None,
                              embeddings_dir=None, hypernetwork_dir=None, vae_dir=None)
opts = Options()
state = State()
prompt_styles = StyleDatabase({})
config_filename = "config.json"
