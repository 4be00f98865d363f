"""Stand-in for modules.shared: cmd_opts, opts (OptionInfo, add_option, set, save, data), state, styles."""

import argparse
import json


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                 category_id=None):
        self.default, self.label, self.component, self.component_args = default, label, component, component_args
        self.onchange, self.section = onchange, section


class Options:
    def __init__(self):
        self.data = {}
        self.data_labels = {}

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
        self.interrupted = False
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
