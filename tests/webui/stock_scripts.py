"""Doubles of A1111 v1.10.1's stock scripts (scripts/xyz_grid.py, prompt_matrix.py, prompts_from_file.py,
sd_upscale.py, loopback.py, poor_mans_outpainting.py, outpainting_mk_2.py): what their run() does with `p` and
with the Processed that process_images returns, call for call (the UI, labels and drawing left out; tiles cut
without an upscaler; outpainting mk2's FFT-matched noise replaced by the unmasked area's mean colour). Written from reading those
files; they drive the same call pattern against whichever process_images the host has (local or the switch)."""

from __future__ import annotations

import math
import random
from copy import copy
from typing import Any

from PIL import Image, ImageDraw, ImageStat


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


def _outpainting_sides(init: Any, pixels: int, direction: list[str]) -> tuple[int, int, int, int, int, int]:
    """Both outpainting scripts: the size rounded up to 64, the pixels added on each side (left, right, up,
    down) shared out so the sides fill it."""
    left, right, up, down = (pixels if side in direction else 0 for side in ("left", "right", "up", "down"))
    target_w, target_h = math.ceil((init.width + left + right) / 64) * 64, math.ceil((init.height + up + down) / 64) * 64
    if left > 0:
        left = left * (target_w - init.width) // (left + right)
    if right > 0:
        right = target_w - init.width - left
    if up > 0:
        up = up * (target_h - init.height) // (up + down)
    if down > 0:
        down = target_h - init.height - up
    return target_w, target_h, left, right, up, down


def _inset_box(size: tuple[int, int], sides: tuple[int, int, int, int], inset: int) -> Image.Image:
    """White, black inside the sides, each side moved in by `inset` where it was extended."""
    left, right, up, down = sides
    mask = Image.new("L", size, "white")
    ImageDraw.Draw(mask).rectangle((left + (inset if left > 0 else 0), up + (inset if up > 0 else 0),
                                    size[0] - right - (inset if right > 0 else 0),
                                    size[1] - down - (inset if down > 0 else 0)), fill="black")
    return mask


def poor_mans_outpainting(p: Any, pixels: int, mask_blur: int, inpainting_fill: int, direction: list[str]) -> Any:
    """Poor man's outpainting: the enlarged image cut in p.width x p.height tiles overlapping by `pixels`; each
    tile that reaches into the new border is inpainted alone, with a latent mask less blurred than its mask."""
    from modules import images, processing
    from modules.shared import opts, state

    initial_seed = initial_info = None
    p.mask_blur = mask_blur * 2
    p.inpainting_fill, p.inpaint_full_res = inpainting_fill, False
    init = p.init_images[0]
    target_w, target_h, left, right, up, down = _outpainting_sides(init, pixels, direction)
    img = Image.new("RGB", (target_w, target_h))
    img.paste(init, (left, up))
    mask = _inset_box(img.size, (left, right, up, down), mask_blur * 2)
    latent_mask = _inset_box(img.size, (left, right, up, down), mask_blur // 2)
    grids = [images.split_grid(image, tile_w=p.width, tile_h=p.height, overlap=pixels)
             for image in (img, mask, latent_mask)]
    p.n_iter = p.batch_size = 1
    p.do_not_save_grid = p.do_not_save_samples = True

    def inside(x: int, w: int, y: int, h: int) -> bool:
        return x >= left and x + w <= img.width - right and y >= up and y + h <= img.height - down

    work = []
    for rows in zip(*(grid.tiles for grid in grids)):
        (y, h, row), (_, _, mask_row), (_, _, latent_row) = rows
        for tile, mask_tile, latent_tile in zip(row, mask_row, latent_row):
            if not inside(tile[0], tile[1], y, h):
                work.append((tile[2], mask_tile[2], latent_tile[2]))
    state.job_count = len(work)
    results = []
    for tile, mask_tile, latent_tile in work:
        p.init_images, p.image_mask, p.latent_mask = [tile], mask_tile, latent_tile
        processed = processing.process_images(p)
        if initial_seed is None:
            initial_seed, initial_info = processed.seed, processed.info
        p.seed = processed.seed + 1
        results += processed.images
    index = 0
    for y, h, row in grids[0].tiles:
        for tile in row:
            if not inside(tile[0], tile[1], y, h):
                tile[2] = results[index] if index < len(results) else Image.new("RGB", (p.width, p.height))
                index += 1
    combined = images.combine_grid(grids[0])
    if opts.samples_save:
        images.save_image(combined, p.outpath_samples, "", initial_seed, p.prompt, opts.samples_format,
                          info=initial_info, p=p)
    return processing.Processed(p, [combined], initial_seed, initial_info)


def _matched_noise(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The double's stand-in for get_matched_noise: the masked (white) area in the unmasked area's mean colour."""
    keep = mask.convert("L").point(lambda value: 255 - value)
    mean = tuple(int(c) for c in ImageStat.Stat(image, keep).mean) if keep.getbbox() else (0, 0, 0)
    return Image.composite(Image.new("RGB", image.size, mean), image, mask.convert("L"))


def outpainting_mk_2(p: Any, pixels: int, mask_blur: int, direction: list[str], noise_q: float = 1.0,
                     color_variation: float = 0.05) -> Any:
    """Outpainting mk2: one side at a time, each an img2img of the batch's images grown by that side (cropped
    to at most p's size), with a latent mask that stops twice the blur short of the old edge."""
    from modules import images, processing
    from modules.shared import opts, state

    initial_seed_and_info: list = [None, None]
    process_width, process_height = p.width, p.height
    p.inpaint_full_res, p.inpainting_fill = False, 1
    p.do_not_save_samples = p.do_not_save_grid = True
    init_img = p.init_images[0]
    _, _, left, right, up, down = _outpainting_sides(init_img, pixels, direction)
    blur_x = mask_blur if left > 0 or right > 0 else 0
    blur_y = mask_blur if up > 0 or down > 0 else 0
    p.mask_blur_x, p.mask_blur_y = blur_x * 4, blur_y * 4

    def expand(init: list, count: int, expand_pixels: int, is_left: bool = False, is_right: bool = False,
               is_top: bool = False, is_bottom: bool = False) -> list:
        horizontal, vertical = is_left or is_right, is_top or is_bottom
        grow_w, grow_h = (expand_pixels if horizontal else 0), (expand_pixels if vertical else 0)
        to_process, outputs = [], []
        for n in range(count):
            res_w, res_h = init[n].width + grow_w, init[n].height + grow_h
            img = Image.new("RGB", (math.ceil(res_w / 64) * 64, math.ceil(res_h / 64) * 64))
            img.paste(init[n], (grow_w if is_left else 0, grow_h if is_top else 0))
            mask = Image.new("RGB", img.size, "white")
            ImageDraw.Draw(mask).rectangle((
                expand_pixels + blur_x if is_left else 0, expand_pixels + blur_y if is_top else 0,
                mask.width - expand_pixels - blur_x if is_right else res_w,
                mask.height - expand_pixels - blur_y if is_bottom else res_h), fill="black")
            outputs.append(_matched_noise(img, mask))
            target_w = min(process_width, init[n].width + grow_w) if horizontal else img.width
            target_h = min(process_height, init[n].height + grow_h) if vertical else img.height
            p.width, p.height = (target_w if horizontal else img.width), (target_h if vertical else img.height)
            crop = (0 if is_left else outputs[n].width - target_w, 0 if is_top else outputs[n].height - target_h,
                    target_w if is_left else outputs[n].width, target_h if is_top else outputs[n].height)
            mask = mask.crop(crop)
            p.image_mask = mask
            to_process.append(outputs[n].crop(crop))
        p.init_images = to_process
        latent_mask = Image.new("RGB", (p.width, p.height), "white")
        ImageDraw.Draw(latent_mask).rectangle((
            expand_pixels + blur_x * 2 if is_left else 0, expand_pixels + blur_y * 2 if is_top else 0,
            mask.width - expand_pixels - blur_x * 2 if is_right else res_w,
            mask.height - expand_pixels - blur_y * 2 if is_bottom else res_h), fill="black")
        p.latent_mask = latent_mask
        proc = processing.process_images(p)
        if initial_seed_and_info[0] is None:
            initial_seed_and_info[:] = [proc.seed, proc.info]
        for n in range(count):
            outputs[n].paste(proc.images[n], (0 if is_left else outputs[n].width - proc.images[n].width,
                                              0 if is_top else outputs[n].height - proc.images[n].height))
            outputs[n] = outputs[n].crop((0, 0, res_w, res_h))
        return outputs

    batch_count, batch_size = p.n_iter, p.batch_size
    p.n_iter = 1
    state.job_count = batch_count * sum(1 for side in (left, right, up, down) if side > 0)
    all_processed = []
    for _ in range(batch_count):
        imgs = [init_img] * batch_size
        for pixels_of_side, side in ((left, "is_left"), (right, "is_right"), (up, "is_top"), (down, "is_bottom")):
            if pixels_of_side > 0:
                imgs = expand(imgs, batch_size, pixels_of_side, **{side: True})
        all_processed += imgs
    grid = images.image_grid(all_processed)
    unwanted_grid = len(all_processed) < 2 and opts.grid_only_if_multiple
    all_images = ([grid] if opts.return_grid and not unwanted_grid else []) + all_processed
    res = processing.Processed(p, all_images, initial_seed_and_info[0], initial_seed_and_info[1])
    if opts.samples_save:
        for img in all_processed:
            images.save_image(img, p.outpath_samples, "", res.seed, p.prompt, opts.samples_format, info=res.info, p=p)
    if opts.grid_save and not unwanted_grid:
        images.save_image(grid, p.outpath_grids, "grid", res.seed, p.prompt, opts.grid_format, info=res.info,
                          grid=True, p=p)
    return res
