"""Stand-in for modules.ui.create_ui, in the order A1111 v1.10.1 builds the page: the txt2img tab first (its
prompt box, announced to the extensions' on_after_component with its elem_id), then the extensions' tabs
(on_ui_tabs), then the page that renders every tab's Blocks inside `gr.Tabs(elem_id="tabs")`."""

import gradio as gr

from modules import script_callbacks


def create_ui():
    with gr.Blocks(analytics_enabled=False) as txt2img_interface:
        prompt = gr.Textbox(label="Prompt", elem_id="txt2img_prompt", show_label=False, lines=3)
        script_callbacks.after_component_callback(prompt, label="Prompt", elem_id="txt2img_prompt")
    interfaces = [(txt2img_interface, "txt2img", "txt2img")]
    interfaces += script_callbacks.ui_tabs_callback()
    with gr.Blocks(analytics_enabled=False, title="Stable Diffusion") as demo, gr.Tabs(elem_id="tabs"):
        for interface, label, ifid in interfaces:
            with gr.TabItem(label, id=ifid, elem_id=f"tab_{ifid}"):
                interface.render()
    return demo
