"""Doubles of A1111 v1.10.1's stock scripts (scripts/xyz_grid.py, prompt_matrix.py, prompts_from_file.py,
sd_upscale.py, loopback.py): what their run() does with `p` and with the Processed that process_images returns,
call for call (the UI, labels and drawing left out; tiles cut without an upscaler). Written from reading those
files; they drive the same call pattern against whichever process_images the host has (local or the switch)."""

from __future__ import annotations

import math
import random
from copy import copy
from typing import Any

from PIL import Image


def xyz_plot(p: Any, x_field: str, xs: list, y_field: str, ys: list, vary_seeds_x: bool = False) -> Any:
    """X/Y plot of two fields (apply_field), one z: draw_xyz_grid and the end of Script.run."""
    from modules import images, processing
    from modules.shared import opts, state

    processing.fix_seed(p)
    if not opts.return_grid:
        p.batch_size = 1
    grid_infotext: list = [None, None]
    result: Any = None
    list_size = len(xs) * len(ys)

    def cell(ix: int, iy: int) -> Any:
        if state.interrupted or state.stopping_generation:
            return processing.Processed(p, [], p.seed, "")
        pc = copy(p)
        pc.styles = pc.styles[:]
        setattr(pc, x_field, xs[ix])
        setattr(pc, y_field, ys[iy])
        if vary_seeds_x:
            pc.seed += ix
        res = processing.process_images(pc)
        if grid_infotext[1] is None:
            pc.extra_generation_params = copy(pc.extra_generation_params)
            pc.extra_generation_params["Script"] = "X/Y/Z plot"
            grid_infotext[1] = processing.create_infotext(pc, pc.all_prompts, pc.all_seeds, pc.all_subseeds)
        if grid_infotext[0] is None:
            grid_infotext[0] = processing.create_infotext(pc, pc.all_prompts, pc.all_seeds, pc.all_subseeds)
        return res

    for iy in range(len(ys)):
        for ix in range(len(xs)):
            processed = cell(ix, iy)
            if result is None:
                result = copy(processed)
                result.images, result.all_prompts = [None] * list_size, [None] * list_size
                result.all_seeds, result.infotexts = [None] * list_size, [None] * list_size
                result.index_of_first_image = 1
            idx = ix + iy * len(xs)
            if processed.images:
                result.images[idx], result.all_prompts[idx] = processed.images[0], processed.prompt
                result.all_seeds[idx], result.infotexts[idx] = processed.seed, processed.infotexts[0]
            else:
                result.images[idx] = Image.new("P", (result.width, result.height))
    grid = images.image_grid(result.images, rows=len(ys))
    result.images.insert(0, grid)
    result.all_prompts.insert(0, result.all_prompts[0])
    result.all_seeds.insert(0, result.all_seeds[0])
    result.infotexts.insert(0, result.infotexts[0])
    result.images.insert(0, images.image_grid(result.images[:1], rows=1))
    result.infotexts.insert(0, result.infotexts[0])
    result.infotexts[:2] = grid_infotext[:2]
    for _ in range(1):  # include_sub_grids off: drop the z sub-grid
        del result.images[1], result.all_prompts[1], result.all_seeds[1], result.infotexts[1]
    return result


def prompt_matrix(p: Any, different_seeds: bool = False) -> Any:
    """Prompt matrix on the positive prompt, comma-delimited, parts at the end."""
    from modules import images, processing

    processing.fix_seed(p)
    original_prompt = p.prompt[0] if isinstance(p.prompt, list) else p.prompt
    parts = original_prompt.split("|")
    all_prompts = []
    for combination_num in range(2 ** (len(parts) - 1)):
        selected = [text.strip().strip(',') for n, text in enumerate(parts[1:]) if combination_num & (1 << n)]
        all_prompts.append(", ".join([parts[0]] + selected))
    p.n_iter = math.ceil(len(all_prompts) / p.batch_size)
    p.do_not_save_grid = True
    p.prompt = all_prompts
    p.seed = [p.seed + (i if different_seeds else 0) for i in range(len(all_prompts))]
    p.prompt_for_display = original_prompt
    processed = processing.process_images(p)
    grid = images.image_grid(processed.images, p.batch_size, rows=1 << ((len(parts) - 1) // 2))
    processed.images.insert(0, grid)
    processed.index_of_first_image = 1
    processed.infotexts.insert(0, processed.infotexts[0])
    return processed


def prompts_from_file(p: Any, jobs: list[dict], iterate_seed: bool = False) -> Any:
    """Prompts from file: one copy of p per line, its fields set from the line's --options (given parsed here)."""
    from modules import processing

    p.do_not_save_grid = True
    if iterate_seed and p.seed == -1:
        p.seed = int(random.randrange(4294967294))
    images_out, all_prompts, infotexts = [], [], []
    for args in jobs:
        copy_p = copy(p)
        for key, value in args.items():
            setattr(copy_p, key, value)
        proc = processing.process_images(copy_p)
        images_out += proc.images
        if iterate_seed:
            p.seed = p.seed + (p.batch_size * p.n_iter)
        all_prompts += proc.all_prompts
        infotexts += proc.infotexts
    return processing.Processed(p, images_out, p.seed, "", all_prompts=all_prompts, infotexts=infotexts)


def sd_upscale(p: Any, tile: int) -> Any:
    """SD upscale with the "None" upscaler: the init image cut in tiles, batches of tiles through img2img."""
    from modules import processing

    processing.fix_seed(p)
    p.extra_generation_params["SD upscale overlap"] = 0
    p.extra_generation_params["SD upscale upscaler"] = "None"
    initial_info, seed, img = None, p.seed, p.init_images[0]
    work = [img.crop((x, y, x + tile, y + tile)) for y in range(0, img.height, tile) for x in range(0, img.width, tile)]
    batch_size, upscale_count = p.batch_size, p.n_iter
    p.n_iter, p.do_not_save_grid, p.do_not_save_samples = 1, True, True
    batch_count = math.ceil(len(work) / batch_size)
    result_images = []
    for n in range(upscale_count):
        p.seed = seed + n
        work_results = []
        for i in range(batch_count):
            p.batch_size = batch_size
            p.init_images = work[i * batch_size:(i + 1) * batch_size]
            processed = processing.process_images(p)
            if initial_info is None:
                initial_info = processed.info
            p.seed = processed.seed + 1
            work_results += processed.images
        combined = Image.new("RGB", img.size)
        for index, tile_image in enumerate(work_results):
            combined.paste(tile_image.resize((tile, tile)), (index * tile % img.width, index * tile // img.width * tile))
        result_images.append(combined)
    return processing.Processed(p, result_images, seed, initial_info)


def loopback(p: Any, loops: int, final_denoising_strength: float) -> Any:
    """Loopback with the "Linear" curve and no interrogation."""
    from modules import images, processing
    from modules.shared import opts, state

    processing.fix_seed(p)
    batch_count = p.n_iter
    p.extra_generation_params = {"Final denoising strength": final_denoising_strength, "Denoising curve": "Linear"}
    p.batch_size = p.n_iter = 1
    initial_seed = initial_info = None
    initial_strength, original_init_image, history = p.denoising_strength, p.init_images, []
    for _ in range(batch_count):
        p.init_images, p.denoising_strength = original_init_image, initial_strength
        for i in range(loops):
            p.n_iter, p.batch_size, p.do_not_save_grid = 1, 1, True
            processed = processing.process_images(p)
            if state.interrupted or state.stopping_generation:
                break
            if initial_seed is None:
                initial_seed, initial_info = processed.seed, processed.info
            p.seed = processed.seed + 1
            progress = (i + 1) / (loops - 1) if loops > 1 else 0
            p.denoising_strength = initial_strength + (final_denoising_strength - initial_strength) * progress
            p.init_images = [processed.images[0]]
            if batch_count == 1:
                history.append(processed.images[0])
    grids = [images.image_grid(history, rows=1)] if len(history) > 1 and opts.return_grid else []
    return processing.Processed(p, grids + history, initial_seed, initial_info)
