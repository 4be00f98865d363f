"""Stand-in for modules.images: save_image (numbered PNGs with the infotext) and image_grid."""

import os

from PIL import Image, PngImagePlugin


def save_image(image, path, basename, seed=None, prompt=None, extension="png", info=None, short_filename=False,
               no_prompt=False, grid=False, pnginfo_section_name="parameters", p=None, existing_info=None,
               forced_filename=None, suffix="", save_to_dirs=None):
    os.makedirs(path, exist_ok=True)
    number = len(os.listdir(path))
    filename = os.path.join(path, f"{number:05d}-{basename or seed}.{extension}")
    pnginfo = PngImagePlugin.PngInfo()
    pnginfo.add_text(pnginfo_section_name, info or "")
    image.save(filename, pnginfo=pnginfo)
    return filename, None


def image_grid(imgs, batch_size=1, rows=None):
    rows = rows or 1
    cols = (len(imgs) + rows - 1) // rows
    w, h = imgs[0].size
    grid = Image.new("RGB", (cols * w, rows * h))
    for index, img in enumerate(imgs):
        grid.paste(img, (index % cols * w, index // cols * h))
    return grid
