"""Run by the WebUI at every start (cwd = the WebUI root): installs the few light packages the extension
needs into the WebUI's Python, only when missing. gradio and Pillow come with the WebUI."""

import launch

REQUIREMENTS = {"requests": "requests>=2.28", "tqdm": "tqdm>=4.60"}

for module_name, requirement in REQUIREMENTS.items():
    if not launch.is_installed(module_name):
        launch.run_pip(f"install \"{requirement}\"", f"sd-aws requirement: {requirement}")
