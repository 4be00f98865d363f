"""Registration with the WebUI: settings section, the Amazon SageMaker tab, the process_images patch."""

from __future__ import annotations

from modules import options, script_callbacks, shared

from aws_extension.ui.compat import gr
from aws_extension.ui.sagemaker_tab import SageMakerTab
from aws_extension.webui import host
from aws_extension.webui.switch import ProcessImagesPatch

TAB_TITLE = "Amazon SageMaker"
TAB_ELEM_ID = "sd_aws"
TXT2IMG_PROMPT_ELEM_ID = "txt2img_prompt"  # A1111's (and Forge's) txt2img prompt box (ui_toprow.Toprow)
_host_components: dict[str, gr.components.Component] = {}  # the host's components the tabs write into


def register_settings_category() -> str | None:
    """Our own heading in the Settings list (A1111 1.7+ and Forge: modules.options.categories); without it
    the section shows under "Uncategorized". None on a host without categories."""
    categories = getattr(options, "categories", None)
    if categories is None:
        return None
    category_id, label = host.SETTINGS_CATEGORY
    categories.register_category(category_id, label)
    return category_id


def add_settings() -> None:
    category_id = register_settings_category()
    section = {"section": host.SETTINGS_SECTION, **({"category_id": category_id} if category_id else {})}
    shared.opts.add_option(host.API_URL_OPTION, shared.OptionInfo(
        "", "Middleware API URL (e.g. https://xxxx.execute-api.us-east-1.amazonaws.com/prod or "
            "http://127.0.0.1:8080)", onchange=host.normalise_api_url_option, **section))
    key_label = "API key (kept in a file only you can read; never shown again once saved)"
    if host.gradio_auth_enabled():  # people log in: this key is only for calls without a logged-in user
        key_label = ("Shared API key, for the WebUI's API only (each person logged in saves their own key in the "
                     "Amazon SageMaker tab's Settings)")
    shared.opts.add_option(host.API_KEY_OPTION, shared.OptionInfo(
        "", key_label, gr.Textbox,
        {"type": "password"}, onchange=host.move_api_key_option_to_file, **section))


def remember_host_component(component: gr.components.Component, **kwargs) -> None:
    """on_after_component: keep the txt2img prompt box, which the host builds before the extensions' tabs, so
    the Training tab's button can add a LoRA to it."""
    if kwargs.get("elem_id") == TXT2IMG_PROMPT_ELEM_ID:
        _host_components[TXT2IMG_PROMPT_ELEM_ID] = component


def sagemaker_tab() -> list[tuple[gr.Blocks, str, str]]:
    blocks = SageMakerTab(host.WebUIConnectionStore(), host.model_folders(),
                          txt2img_prompt=_host_components.get(TXT2IMG_PROMPT_ELEM_ID)).build_blocks()
    return [(blocks, TAB_TITLE, TAB_ELEM_ID)]


def register() -> None:
    """Called each time the host loads scripts/sd_aws.py (start and "Reload UI")."""
    patch = ProcessImagesPatch()
    patch.install()
    script_callbacks.on_ui_settings(add_settings)
    script_callbacks.on_after_component(remember_host_component)
    script_callbacks.on_ui_tabs(sagemaker_tab)
    script_callbacks.on_script_unloaded(patch.uninstall)
