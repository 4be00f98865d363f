"""Stand-in for modules.scripts of v1.10.1: Script with its always-on hooks, the hooks' argument objects, the
script loader and the always-on part of ScriptRunner (its hook calls: the scripts that override a hook, in
load order, each with its slice of p.script_args; an error is reported and the next script runs)."""

import importlib.util
import inspect
import os
import sys
from collections import namedtuple

from modules import errors

AlwaysVisible = object()


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


class PostprocessBatchListArgs:
    def __init__(self, images):
        self.images = images


class PostSampleArgs:
    def __init__(self, samples):
        self.samples = samples
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data = []


class Script:
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False

    def title(self):
        raise NotImplementedError

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def after_extra_networks_activate(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch_list(self, p, pp, *args, **kwargs):
        pass

    def post_sample(self, p, ps, *args):
        pass

    def postprocess_image(self, p, pp, *args):
        pass

    def postprocess_image_after_composite(self, p, pp, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass


def load_scripts(extension_dir):
    """Load <extension>/scripts/*.py by file path as the WebUI does, the extension folder first on sys.path
    while each loads (A1111 removes it afterwards)."""
    scripts_data.clear()
    scripts_dir = os.path.join(extension_dir, "scripts")
    for filename in sorted(os.listdir(scripts_dir)):
        if not filename.endswith(".py"):
            continue
        path = os.path.join(scripts_dir, filename)
        sys.path.insert(0, extension_dir)
        try:
            spec = importlib.util.spec_from_file_location(filename, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(extension_dir)
        for value in module.__dict__.values():
            if inspect.isclass(value) and issubclass(value, Script):
                scripts_data.append(ScriptClassData(value, path, extension_dir, module))


class ScriptRunner:
    """The always-on part of the WebUI's ScriptRunner: ui() gives each script its slice of script_args."""

    def __init__(self, is_img2img):
        self.is_img2img = is_img2img
        self.alwayson_scripts = []
        self.inputs = [None]  # index 0 is the selectable-script dropdown, as in the WebUI

    def setup_ui(self):
        for data in scripts_data:
            script = data.script_class()
            script.filename = data.path
            if script.show(self.is_img2img) is AlwaysVisible:
                script.alwayson = True
                controls = script.ui(self.is_img2img) or []
                script.args_from, script.args_to = len(self.inputs), len(self.inputs) + len(controls)
                self.inputs.extend(controls)
                self.alwayson_scripts.append(script)
        return self.inputs

    def script_args_from_api(self, alwayson_scripts):
        """What the API does with {"alwayson_scripts": {title: {"args": [...]}}}: the values at args_from."""
        args = [None] * len(self.inputs)
        for script in self.alwayson_scripts:
            defaults = [getattr(c, "value", None) for c in self.inputs[script.args_from:script.args_to]]
            given = alwayson_scripts.get(script.title().lower(), {}).get("args", [])
            args[script.args_from:script.args_to] = [*given, *defaults[len(given):]]
        return args

    def ordered_scripts(self, method_name):
        """The always-on scripts that override `method_name` (the host's order without user sorting)."""
        return [script for script in self.alwayson_scripts
                if getattr(script.__class__, method_name, None) is not getattr(Script, method_name, None)]

    def _call(self, method_name, p, leading=(), **kwargs):
        for script in self.ordered_scripts(method_name):
            try:
                script_args = p.script_args[script.args_from:script.args_to]
                getattr(script, method_name)(p, *leading, *script_args, **kwargs)
            except Exception:  # noqa: BLE001 - as the host: reported, the next script runs
                errors.report(f"Error running {method_name}: {script.filename}", exc_info=True)

    def before_process(self, p):
        self._call("before_process", p)

    def process(self, p):
        self._call("process", p)

    def process_before_every_sampling(self, p, **kwargs):
        self._call("process_before_every_sampling", p, **kwargs)

    def before_process_batch(self, p, **kwargs):
        self._call("before_process_batch", p, **kwargs)

    def after_extra_networks_activate(self, p, **kwargs):
        self._call("after_extra_networks_activate", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._call("process_batch", p, **kwargs)

    def postprocess(self, p, processed):
        self._call("postprocess", p, (processed,))

    def postprocess_batch(self, p, images, **kwargs):
        self._call("postprocess_batch", p, images=images, **kwargs)

    def postprocess_batch_list(self, p, pp, **kwargs):
        self._call("postprocess_batch_list", p, (pp,), **kwargs)

    def post_sample(self, p, ps):
        self._call("post_sample", p, (ps,))

    def postprocess_image(self, p, pp):
        self._call("postprocess_image", p, (pp,))

    def postprocess_image_after_composite(self, p, pp):
        self._call("postprocess_image_after_composite", p, (pp,))
