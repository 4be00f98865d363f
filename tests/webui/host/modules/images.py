"""Stand-in for modules.images: save_image (numbered PNGs with the infotext), image_grid, and split_grid /
combine_grid (the tiles of v1.10.1's, which poor man's outpainting and SD upscale walk; combined without the
overlap's gradient blend)."""

import math
import os
from collections import namedtuple

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


Grid = namedtuple("Grid", ["tiles", "tile_w", "tile_h", "image_w", "image_h", "overlap"])


def split_grid(image, tile_w=512, tile_h=512, overlap=64):
    """Tiles of tile_w x tile_h spread evenly over the image, the last ones flush with its edges:
    Grid.tiles = [[y, tile_h, [[x, tile_w, tile], ...]], ...]."""
    w, h = image.size
    cols = math.ceil((w - overlap) / (tile_w - overlap))
    rows = math.ceil((h - overlap) / (tile_h - overlap))
    dx = (w - tile_w) / (cols - 1) if cols > 1 else 0
    dy = (h - tile_h) / (rows - 1) if rows > 1 else 0
    grid = Grid([], tile_w, tile_h, w, h, overlap)
    for row in range(rows):
        y = int(row * dy)
        y = h - tile_h if y + tile_h >= h else y
        tiles = []
        for col in range(cols):
            x = int(col * dx)
            x = w - tile_w if x + tile_w >= w else x
            tiles.append([x, tile_w, image.crop((x, y, x + tile_w, y + tile_h))])
        grid.tiles.append([y, tile_h, tiles])
    return grid


def combine_grid(grid):
    combined = Image.new("RGB", (grid.image_w, grid.image_h))
    for y, _, row in grid.tiles:
        for x, _, tile in row:
            combined.paste(tile, (x, y))
    return combined
