"""The Training tab inside the host: its button adds a finished LoRA to the WebUI's own txt2img prompt box, which
the extension finds through on_after_component as the host builds its page (modules.ui.create_ui)."""

from __future__ import annotations


def _click_of(config: dict, elem_id: str) -> tuple[int, dict]:
    button = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id)
    index, click = next((i, d) for i, d in enumerate(config["dependencies"])
                        if button in [t[0] if isinstance(t, list | tuple) else t for t in d["targets"]])
    return click.get("id", index), click


def test_the_lora_button_writes_into_the_txt2img_prompt(webui):
    from modules import ui

    demo = ui.create_ui()
    config = demo.get_config_file()
    ids = {c.get("props", {}).get("elem_id"): c["id"] for c in config["components"]}
    fn_id, click = _click_of(config, "sd_aws_train_use_lora")
    prompt = ids["txt2img_prompt"]
    assert click["inputs"] == [ids["sd_aws_train_lora"], prompt]
    assert click["outputs"] == [prompt, ids["sd_aws_train_status"]]
    button = next(c for c in config["components"] if c["id"] == ids["sd_aws_train_use_lora"])
    assert button["props"].get("visible", True) is not False
    assert "(copy it into your prompt)" not in next(c for c in config["components"]
                                                    if c["id"] == ids["sd_aws_train_lora"])["props"]["label"]

    handler = demo.fns[fn_id].fn  # what gradio runs for the click, with the two input values
    update, status = handler("<lora:sks-red:1>", "a photo of sks, masterpiece")
    assert update["value"] == "a photo of sks, masterpiece <lora:sks-red:1>"
    assert status == "Done: Added `<lora:sks-red:1>` to the txt2img prompt."
    update, status = handler("", "a photo of sks")
    assert "value" not in update and status.startswith("Error: No finished LoRA is shown")
