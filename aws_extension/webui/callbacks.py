"""Registration with the WebUI: settings section, the Amazon SageMaker tab, the process_images patch."""

from __future__ import annotations

from modules import script_callbacks, shared

from aws_extension.ui.compat import gr
from aws_extension.ui.sagemaker_tab import SageMakerTab
from aws_extension.webui import host
from aws_extension.webui.switch import ProcessImagesPatch

TAB_TITLE = "Amazon SageMaker"
TAB_ELEM_ID = "sd_aws"


def add_settings() -> None:
    shared.opts.add_option(host.API_URL_OPTION, shared.OptionInfo(
        "", "Middleware API URL (e.g. https://xxxx.execute-api.us-east-1.amazonaws.com/prod)",
        section=host.SETTINGS_SECTION))
    shared.opts.add_option(host.API_KEY_OPTION, shared.OptionInfo(
        "", "API key (kept in a file only you can read; never shown again once saved)", gr.Textbox,
        {"type": "password"}, onchange=host.move_api_key_option_to_file, section=host.SETTINGS_SECTION))


def sagemaker_tab() -> list[tuple[gr.Blocks, str, str]]:
    blocks = SageMakerTab(host.WebUIConnectionStore(), host.model_folders()).build_blocks()
    return [(blocks, TAB_TITLE, TAB_ELEM_ID)]


def register() -> None:
    """Called each time the host loads scripts/sd_aws.py (start and "Reload UI")."""
    patch = ProcessImagesPatch()
    patch.install()
    script_callbacks.on_ui_settings(add_settings)
    script_callbacks.on_ui_tabs(sagemaker_tab)
    script_callbacks.on_script_unloaded(patch.uninstall)
