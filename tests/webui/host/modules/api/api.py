"""Stand-in for modules.api.api: imports process_images by name, as the WebUI does."""

from modules.processing import process_images


def text2imgapi(p):
    return process_images(p)
