"""Stand-in for modules.scripts: Script, AlwaysVisible, the script loader and the always-on runner."""

import importlib.util
import inspect
import os
import sys
from collections import namedtuple

AlwaysVisible = object()
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
