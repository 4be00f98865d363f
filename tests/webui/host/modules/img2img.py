"""Stand-in for modules.img2img: imports process_images by name, as the WebUI does."""

from modules.processing import process_images


def img2img(p):
    return process_images(p)
