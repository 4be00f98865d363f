"""Stand-in for modules.txt2img: the selected script or process_images (through the module, as the WebUI
calls it), then what the page gets: images, the generation info JSON, the info and comments as HTML."""

import html

from modules import processing
from modules.call_queue import wrap_gradio_call_no_job


def plaintext_to_html(text, classname=None):
    content = "<br>\n".join(html.escape(x) for x in text.split('\n'))
    return f"<p class='{classname}'>{content}</p>" if classname else f"<p>{content}</p>"


def txt2img(p, script=None, script_args=()):
    processed = script.run(p, *script_args) if script is not None else None
    if processed is None:
        processed = processing.process_images(p)
    return (processed.images, processed.js(), plaintext_to_html(processed.info),
            plaintext_to_html(processed.comments, classname="comments"))


txt2img_from_page = wrap_gradio_call_no_job(txt2img)  # what the Generate button runs
