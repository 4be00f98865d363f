"""Stand-in for modules.txt2img: calls process_images through the module, as the WebUI does."""

from modules import processing


def txt2img(p):
    return processing.process_images(p)
