"""The tab inside the host: its settings section and category, the URL check, the model-folder list read
again, action messages that stay, what an instance type means on a local middleware."""

from __future__ import annotations

import pytest

from tests.webui.conftest import make_p, switch_runner, user_sees
from tests.webui.test_extension import ENDPOINTS, middleware_for  # noqa: F401 - the fixture


def test_settings_have_their_own_section_and_category(webui):
    from modules.options import category_of

    webui.script_callbacks.ui_settings_callback()
    for key in ("sd_aws_api_url", "sd_aws_api_key"):
        info = webui.shared.opts.data_labels[key]
        assert info.section == ("sd_aws", "Amazon SageMaker") and category_of(info) == "Amazon SageMaker"


@pytest.mark.parametrize(("typed", "saved"), [
    ("127.0.0.1:8080", "http://127.0.0.1:8080"), ("localhost:8080/", "http://localhost:8080"),
    ("abc.execute-api.us-east-1.amazonaws.com/prod", "https://abc.execute-api.us-east-1.amazonaws.com/prod"),
    ("http://10.0.0.5:8080", "http://10.0.0.5:8080")])
def test_the_url_setting_gets_its_scheme(webui, typed, saved):
    webui.script_callbacks.ui_settings_callback()
    webui.shared.opts.set("sd_aws_api_url", typed)  # "Apply settings"
    assert webui.shared.opts.data["sd_aws_api_url"] == saved


def test_a_url_that_is_no_url_is_one_sentence(webui, capsys):
    from aws_extension.ui.sagemaker_tab import SageMakerTab
    from aws_extension.webui.host import WebUIConnectionStore

    webui.shared.opts.data["sd_aws_api_url"] = "ftp://files.example"
    message = user_sees(webui, make_p(webui, switch_runner(webui), on=True), capsys)
    assert message.startswith("The API URL ftp://files.example is not an http(s) URL")
    tab = SageMakerTab(WebUIConnectionStore())
    assert tab.save_settings("http://exa mple:80", "")[0].startswith("Error: The API URL http://exa mple:80 has no")
    assert tab.endpoint_table()[2].startswith("Error: The API URL ftp://files.example is not")


def test_local_model_files_are_listed_again_when_used(webui):
    from aws_extension.ui.sagemaker_tab import SageMakerTab
    from aws_extension.webui.host import WebUIConnectionStore, model_folders

    tab = SageMakerTab(WebUIConnectionStore(), model_folders())
    assert tab.local_file_choices("Lora")["choices"] == ["style.safetensors"]
    (webui.models / "Lora" / "new-style.safetensors").write_bytes(b"lora 2")  # added while the WebUI runs
    update = tab.local_file_choices("Lora", ["style.safetensors", "gone.safetensors"])
    assert update["choices"] == ["new-style.safetensors", "style.safetensors"]
    assert update["value"] == ["style.safetensors"]  # the selection stays, without files no longer there


def test_actions_keep_their_message_and_local_middleware_defaults_to_local(webui, middleware_for):  # noqa: F811
    from aws_extension.ui.sagemaker_tab import INSTANCE_TYPE_NOTE, SageMakerTab
    from aws_extension.webui.host import WebUIConnectionStore

    middleware_for()
    tab = SageMakerTab(WebUIConnectionStore())
    rows, choices = tab.endpoint_rows()  # what runs after Deploy/Delete: no message output
    assert [row[0] for row in rows["data"]] == [e["endpoint_name"] for e in ENDPOINTS] and "choices" in choices
    assert tab.default_instance_type() == "local" and "local" in INSTANCE_TYPE_NOTE
    webui.shared.opts.data["sd_aws_api_url"] = "https://abc.execute-api.us-east-1.amazonaws.com/prod"
    assert tab.default_instance_type() == "ml.g5.xlarge"


def test_the_rendered_tab_wires_actions_to_the_table_only(webui):
    """In the served config, Deploy / Yes, delete / Create dataset are followed by a refresh that writes the
    table and the choices but not the message the action just wrote."""
    import gradio as gr

    tabs = webui.script_callbacks.ui_tabs_callback()
    with gr.Blocks(analytics_enabled=False) as demo:
        for blocks, _, _ in tabs:
            blocks.render()
    config = demo.get_config_file()
    ids = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    statuses = {"sd_aws_endpoints_status", "sd_aws_datasets_status"}
    deps = config["dependencies"]

    def targets(dep: dict) -> set:
        return {ids.get(t[0] if isinstance(t, list | tuple) else t) for t in dep.get("targets", [])}

    for button in ("sd_aws_deploy", "sd_aws_confirm_delete", "sd_aws_create_dataset"):
        index, click = next((i, d) for i, d in enumerate(deps) if button in targets(d))
        index = click.get("id", index)
        then = [d for d in deps if d.get("trigger_after") == index]
        assert {ids.get(o) for o in click["outputs"]} & statuses, button  # the action writes its message
        assert then and all(not ({ids.get(o) for o in d["outputs"]} & statuses) for d in then), button
