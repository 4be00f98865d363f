"""Stand-in for modules.processing of v1.10.1: the processing objects (with `setup_prompts`), `Processed` (with
`js()`), `create_infotext`, `get_fixed_seed`/`fix_seed`, and a local `process_images` that follows
`process_images_inner` step by step (prompts and seeds per batch, the always-on scripts' hooks, infotexts, saving,
the grid rules) but paints each image in its prompt's colour instead of sampling."""

import json
import random
import uuid

import numpy as np
from PIL import Image

from modules import images, infotext_utils, scripts, sd_models, shared
from modules.shared import opts, state


def colour_of(prompt):
    """The colour of a prompt's images, the same as tests/webui/fake_middleware.py paints (uuid5 of the prompt)."""
    digest = uuid.uuid5(uuid.NAMESPACE_DNS, prompt).bytes
    return digest[0], digest[1], digest[2]


class StableDiffusionProcessing:
    def __init__(self, prompt="", negative_prompt="", styles=None, seed=-1, subseed=-1, subseed_strength=0,
                 seed_resize_from_h=-1, seed_resize_from_w=-1, sampler_name="Euler a", scheduler=None,
                 batch_size=1, n_iter=1, steps=20, cfg_scale=7.0, width=512, height=512, restore_faces=None,
                 tiling=None, do_not_save_samples=False, do_not_save_grid=False, override_settings=None,
                 outpath_samples=None, outpath_grids=None, denoising_strength=None, eta=None, s_min_uncond=None,
                 s_churn=None, s_tmax=None, s_tmin=None, s_noise=None, **kwargs):
        self.prompt, self.negative_prompt, self.styles = prompt, negative_prompt, styles or []
        self.seed, self.subseed, self.subseed_strength = seed, subseed, subseed_strength
        self.seed_resize_from_h, self.seed_resize_from_w = seed_resize_from_h, seed_resize_from_w
        self.sampler_name, self.scheduler, self.batch_size, self.n_iter = sampler_name, scheduler, batch_size, n_iter
        self.steps, self.cfg_scale, self.width, self.height = steps, cfg_scale, width, height
        self.restore_faces, self.tiling = restore_faces, tiling
        self.do_not_save_samples, self.do_not_save_grid = do_not_save_samples, do_not_save_grid
        self.override_settings = override_settings or {}
        self.override_settings_restore_afterwards = True
        self.outpath_samples, self.outpath_grids = outpath_samples, outpath_grids
        self.denoising_strength, self.eta = denoising_strength, eta
        self.s_min_uncond, self.s_churn, self.s_tmax, self.s_tmin, self.s_noise = (
            s_min_uncond, s_churn, s_tmax, s_tmin, s_noise)
        self.ddim_discretize = self.sampler_noise_scheduler_override = None
        self.token_merging_ratio = self.token_merging_ratio_hr = 0
        self.is_using_inpainting_conditioning = False
        self.is_api = False
        self.user = None
        self.scripts = None
        self.script_args = []
        self.comments = {}
        self.all_prompts = self.all_seeds = self.all_subseeds = self.all_negative_prompts = None
        self.main_prompt = self.main_negative_prompt = None
        self.prompts = self.negative_prompts = self.seeds = self.subseeds = None
        self.iteration = self.batch_index = 0
        self.extra_generation_params = {}
        self.sd_model_name = self.sd_model_hash = self.sd_vae_name = self.sd_vae_hash = None

    def comment(self, text):
        self.comments[text] = 1

    def get_token_merging_ratio(self, for_hr=False):
        return self.token_merging_ratio

    def save_samples(self):
        return opts.samples_save and not self.do_not_save_samples and not state.interrupted and not state.skipped

    def setup_prompts(self):
        if isinstance(self.prompt, list):
            self.all_prompts = self.prompt
        elif isinstance(self.negative_prompt, list):
            self.all_prompts = [self.prompt] * len(self.negative_prompt)
        else:
            self.all_prompts = self.batch_size * self.n_iter * [self.prompt]
        if isinstance(self.negative_prompt, list):
            self.all_negative_prompts = self.negative_prompt
        else:
            self.all_negative_prompts = [self.negative_prompt] * len(self.all_prompts)
        if len(self.all_prompts) != len(self.all_negative_prompts):
            raise RuntimeError(f"Received a different number of prompts ({len(self.all_prompts)}) and negative "
                               f"prompts ({len(self.all_negative_prompts)})")
        self.all_prompts = [shared.prompt_styles.apply_styles_to_prompt(x, self.styles) for x in self.all_prompts]
        self.all_negative_prompts = [shared.prompt_styles.apply_negative_styles_to_prompt(x, self.styles)
                                     for x in self.all_negative_prompts]
        self.main_prompt = self.all_prompts[0]
        self.main_negative_prompt = self.all_negative_prompts[0]

    def init(self, all_prompts, all_seeds, all_subseeds):
        pass


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    def __init__(self, enable_hr=False, denoising_strength=0.75, firstphase_width=0, firstphase_height=0,
                 hr_scale=2.0, hr_upscaler=None, hr_second_pass_steps=0, hr_resize_x=0, hr_resize_y=0,
                 hr_checkpoint_name=None, hr_sampler_name=None, hr_scheduler=None, hr_prompt="",
                 hr_negative_prompt="", **kwargs):
        super().__init__(denoising_strength=denoising_strength, **kwargs)
        self.enable_hr, self.hr_scale, self.hr_upscaler = enable_hr, hr_scale, hr_upscaler
        self.firstphase_width, self.firstphase_height = firstphase_width, firstphase_height
        self.hr_second_pass_steps, self.hr_resize_x, self.hr_resize_y = hr_second_pass_steps, hr_resize_x, hr_resize_y
        self.hr_checkpoint_name, self.hr_sampler_name, self.hr_scheduler = (
            hr_checkpoint_name, hr_sampler_name, hr_scheduler)
        self.hr_prompt, self.hr_negative_prompt = hr_prompt, hr_negative_prompt
        self.all_hr_prompts = self.all_hr_negative_prompts = None

    def setup_prompts(self):
        super().setup_prompts()
        if not self.enable_hr:
            return
        if self.hr_prompt == '':
            self.hr_prompt = self.prompt
        if self.hr_negative_prompt == '':
            self.hr_negative_prompt = self.negative_prompt
        if isinstance(self.hr_prompt, list):
            self.all_hr_prompts = self.hr_prompt
        else:
            self.all_hr_prompts = self.batch_size * self.n_iter * [self.hr_prompt]
        if isinstance(self.hr_negative_prompt, list):
            self.all_hr_negative_prompts = self.hr_negative_prompt
        else:
            self.all_hr_negative_prompts = self.batch_size * self.n_iter * [self.hr_negative_prompt]
        self.all_hr_prompts = [shared.prompt_styles.apply_styles_to_prompt(x, self.styles) for x in self.all_hr_prompts]
        self.all_hr_negative_prompts = [shared.prompt_styles.apply_negative_styles_to_prompt(x, self.styles)
                                        for x in self.all_hr_negative_prompts]


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    def __init__(self, init_images=None, resize_mode=0, denoising_strength=0.75, image_cfg_scale=None, mask=None,
                 mask_blur=None, inpainting_fill=0, inpaint_full_res=True, inpaint_full_res_padding=0,
                 inpainting_mask_invert=0, initial_noise_multiplier=None, **kwargs):
        super().__init__(denoising_strength=denoising_strength, **kwargs)
        self.init_images, self.resize_mode, self.image_cfg_scale = init_images, resize_mode, image_cfg_scale
        self.image_mask = mask
        self.mask_blur_x = self.mask_blur_y = 4
        self.mask_blur = mask_blur
        self.mask_round = True
        self.inpainting_fill, self.inpaint_full_res = inpainting_fill, inpaint_full_res
        self.inpaint_full_res_padding, self.inpainting_mask_invert = inpaint_full_res_padding, inpainting_mask_invert
        self.initial_noise_multiplier = (opts.initial_noise_multiplier if initial_noise_multiplier is None
                                         else initial_noise_multiplier)
        self.color_corrections = self.latent_mask = None

    @property
    def mask_blur(self):
        return self.mask_blur_x if self.mask_blur_x == self.mask_blur_y else None

    @mask_blur.setter
    def mask_blur(self, value):  # both directions; only an int (None, the default, leaves them)
        if isinstance(value, int):
            self.mask_blur_x = self.mask_blur_y = value

    def init(self, all_prompts, all_seeds, all_subseeds):
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        if len(self.init_images) > self.batch_size:
            raise RuntimeError(f"bad number of images passed: {len(self.init_images)}; expecting {self.batch_size} "
                               "or less")
        if len(self.init_images) > 1:
            self.batch_size = len(self.init_images)


class Processed:
    def __init__(self, p, images_list, seed=-1, info="", subseed=None, all_prompts=None, all_negative_prompts=None,
                 all_seeds=None, all_subseeds=None, index_of_first_image=0, infotexts=None, comments=""):
        self.images = images_list
        self.prompt, self.negative_prompt = p.prompt, p.negative_prompt
        self.seed, self.subseed, self.subseed_strength, self.info = seed, subseed, p.subseed_strength, info
        self.comments = "".join(f"{comment}\n" for comment in p.comments)
        self.width, self.height, self.sampler_name, self.cfg_scale = p.width, p.height, p.sampler_name, p.cfg_scale
        self.steps, self.batch_size, self.restore_faces = p.steps, p.batch_size, p.restore_faces
        self.sd_model_name, self.sd_model_hash = p.sd_model_name, p.sd_model_hash
        self.seed_resize_from_w, self.seed_resize_from_h = p.seed_resize_from_w, p.seed_resize_from_h
        self.denoising_strength = getattr(p, "denoising_strength", None)
        self.extra_generation_params = p.extra_generation_params
        self.index_of_first_image = index_of_first_image
        self.styles, self.job_timestamp, self.clip_skip = p.styles, state.job_timestamp, opts.CLIP_stop_at_last_layers
        self.prompt = self.prompt if not isinstance(self.prompt, list) else self.prompt[0]
        self.negative_prompt = self.negative_prompt if not isinstance(self.negative_prompt, list) else self.negative_prompt[0]
        self.seed = int(self.seed if not isinstance(self.seed, list) else self.seed[0]) if self.seed is not None else -1
        self.subseed = int(self.subseed if not isinstance(self.subseed, list) else self.subseed[0]) if self.subseed is not None else -1
        self.all_prompts = all_prompts or p.all_prompts or [self.prompt]
        self.all_negative_prompts = all_negative_prompts or p.all_negative_prompts or [self.negative_prompt]
        self.all_seeds = all_seeds or p.all_seeds or [self.seed]
        self.all_subseeds = all_subseeds or p.all_subseeds or [self.subseed]
        self.infotexts = infotexts or [info] * len(images_list)
        self.version = program_version()

    def js(self):
        obj = {"prompt": self.all_prompts[0], "all_prompts": self.all_prompts,
               "negative_prompt": self.all_negative_prompts[0], "all_negative_prompts": self.all_negative_prompts,
               "seed": self.seed, "all_seeds": self.all_seeds, "subseed": self.subseed,
               "all_subseeds": self.all_subseeds, "subseed_strength": self.subseed_strength, "width": self.width,
               "height": self.height, "sampler_name": self.sampler_name, "cfg_scale": self.cfg_scale,
               "steps": self.steps, "batch_size": self.batch_size, "sd_model_name": self.sd_model_name,
               "sd_model_hash": self.sd_model_hash, "index_of_first_image": self.index_of_first_image,
               "infotexts": self.infotexts, "styles": self.styles, "job_timestamp": self.job_timestamp,
               "clip_skip": self.clip_skip, "version": self.version}
        return json.dumps(obj, default=lambda o: None)

    def infotext(self, p, index):
        return create_infotext(p, self.all_prompts, self.all_seeds, self.all_subseeds, comments=[],
                               position_in_batch=index % self.batch_size, iteration=index // self.batch_size)


def get_fixed_seed(seed):
    if seed == '' or seed is None:
        seed = -1
    elif isinstance(seed, str):
        try:
            seed = int(seed)
        except ValueError:
            seed = -1
    if seed == -1:
        return int(random.randrange(4294967294))
    return seed


def fix_seed(p):
    p.seed = get_fixed_seed(p.seed)
    p.subseed = get_fixed_seed(p.subseed)


def program_version():
    import launch

    res = launch.git_tag()
    return None if res == "<none>" else res


def _seed_params(p, all_seeds, all_subseeds, index, use_main_prompt):
    return {
        "Seed": p.all_seeds[0] if use_main_prompt else all_seeds[index],
        "Variation seed": (None if p.subseed_strength == 0 else
                           (p.all_subseeds[0] if use_main_prompt else all_subseeds[index])),
        "Variation seed strength": (None if p.subseed_strength == 0 else p.subseed_strength),
    }


def _generation_params(p, seed_params):
    clip_skip = getattr(p, 'clip_skip', opts.CLIP_stop_at_last_layers)
    return {
        "Steps": p.steps, "Sampler": p.sampler_name, "Schedule type": p.scheduler, "CFG scale": p.cfg_scale,
        "Image CFG scale": getattr(p, 'image_cfg_scale', None), "Seed": seed_params["Seed"],
        "Size": f"{p.width}x{p.height}", "Model hash": p.sd_model_hash if opts.add_model_hash_to_info else None,
        "Model": p.sd_model_name if opts.add_model_name_to_info else None,
        "Variation seed": seed_params["Variation seed"],
        "Variation seed strength": seed_params["Variation seed strength"],
        "Denoising strength": p.extra_generation_params.get("Denoising strength"),
        "Clip skip": None if clip_skip <= 1 else clip_skip,
        "RNG": opts.randn_source if opts.randn_source != "GPU" else None,
        "Tiling": "True" if p.tiling else None,
        **p.extra_generation_params,
        "Version": program_version() if opts.add_version_to_infotext else None,
    }


def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0,
                    use_main_prompt=False, index=None, all_negative_prompts=None):
    """v1.10.1's create_infotext, with the keys a model-less host can fill."""
    if use_main_prompt:
        index = 0
    elif index is None:
        index = position_in_batch + iteration * p.batch_size
    if all_negative_prompts is None:
        all_negative_prompts = p.all_negative_prompts
    prompt_text = p.main_prompt if use_main_prompt else all_prompts[index]
    negative_prompt = p.main_negative_prompt if use_main_prompt else all_negative_prompts[index]
    generation_params = _generation_params(p, _seed_params(p, all_seeds, all_subseeds, index, use_main_prompt))
    for key, value in generation_params.items():
        if isinstance(value, list):
            generation_params[key] = value[index]
        elif callable(value):
            generation_params[key] = value(p=p, index=index)
    generation_params_text = ", ".join([k if k == v else f'{k}: {infotext_utils.quote(v)}'
                                        for k, v in generation_params.items() if v is not None])
    negative_prompt_text = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt_text}{negative_prompt_text}\n{generation_params_text}".strip()


def _loaded_model(p):
    """What process_images_inner reads from the loaded model (the real one fails here with no checkpoint)."""
    info = sd_models.get_closet_checkpoint_match(p.override_settings.get("sd_model_checkpoint")
                                                 or opts.sd_model_checkpoint or "")
    if info is None:
        raise RuntimeError("No checkpoints found.")
    p.sd_model_name, p.sd_model_hash = info.name.rsplit(".", 1)[0], info.shorthash


def _set_up(p):
    _loaded_model(p)
    seed, subseed = get_fixed_seed(p.seed), get_fixed_seed(p.subseed)
    if p.restore_faces is None:
        p.restore_faces = opts.face_restoration
    if p.tiling is None:
        p.tiling = opts.tiling
    p.setup_prompts()
    p.all_seeds = seed if isinstance(seed, list) else [
        int(seed) + (x if p.subseed_strength == 0 else 0) for x in range(len(p.all_prompts))]
    p.all_subseeds = subseed if isinstance(subseed, list) else [int(subseed) + x for x in range(len(p.all_prompts))]
    if p.scripts is not None:
        p.scripts.process(p)
    p.init(p.all_prompts, p.all_seeds, p.all_subseeds)


def _infotext(p, index=0, use_main_prompt=False):
    return create_infotext(p, p.prompts, p.seeds, p.subseeds, use_main_prompt=use_main_prompt, index=index,
                           all_negative_prompts=p.negative_prompts)


def _sampled(p):
    """The batch as decode_latent_batch and the clamp leave it ([B, 3, H, W] in 0..1): each image its prompt's
    colour (values whose 255 * x truncates to that colour)."""
    import torch  # A1111 imports it at the top; here only the hooks' batches need it (the UI venvs have none)

    colours = torch.tensor([colour_of(prompt) for prompt in p.prompts], dtype=torch.float32)
    return ((colours + 0.5) / 255).clamp(max=1.0)[:, :, None, None].repeat(1, 1, p.height, p.width)


def _run_batch(p, n, output_images, infotexts):
    """One pass of process_images_inner's loop, the scripts' hooks where it calls them; False when there is
    nothing left to do."""
    p.iteration = n
    if state.interrupted or state.stopping_generation:
        return False
    p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
    p.negative_prompts = p.all_negative_prompts[n * p.batch_size:(n + 1) * p.batch_size]
    p.seeds = p.all_seeds[n * p.batch_size:(n + 1) * p.batch_size]
    p.subseeds = p.all_subseeds[n * p.batch_size:(n + 1) * p.batch_size]
    if p.scripts is not None:
        p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
    if len(p.prompts) == 0:
        return False
    if p.scripts is not None:
        p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
        p.scripts.process_before_every_sampling(p=p, x=None, noise=None, c=None, uc=None)  # in p.sample()
    x_samples = _sampled(p)
    if p.scripts is not None:
        ps = scripts.PostSampleArgs(x_samples)
        p.scripts.post_sample(p, ps)
        p.scripts.postprocess_batch(p, x_samples, batch_number=n)
        p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
        p.negative_prompts = p.all_negative_prompts[n * p.batch_size:(n + 1) * p.batch_size]
        batch_params = scripts.PostprocessBatchListArgs(list(x_samples))
        p.scripts.postprocess_batch_list(p, batch_params, batch_number=n)
        x_samples = batch_params.images
    save_samples = p.save_samples()
    for i, x_sample in enumerate(x_samples):
        p.batch_index = i
        image = Image.fromarray((255. * np.moveaxis(x_sample.cpu().numpy(), 0, 2)).astype(np.uint8))
        if p.scripts is not None:
            pp = scripts.PostprocessImageArgs(image)
            p.scripts.postprocess_image(p, pp)
            image = pp.image
            pp = scripts.PostprocessImageArgs(image)  # after apply_overlay (none here)
            p.scripts.postprocess_image_after_composite(p, pp)
            image = pp.image
        if save_samples:
            images.save_image(image, p.outpath_samples, "", p.seeds[i], p.prompts[i], opts.samples_format,
                              info=_infotext(p, i), p=p)
        text = _infotext(p, i)
        infotexts.append(text)
        if opts.enable_pnginfo:
            image.info["parameters"] = text
        output_images.append(image)
    return True


def _grid(p, output_images, infotexts):
    """The grid rules of process_images_inner; the index of the first image."""
    unwanted_grid_because_of_img_count = len(output_images) < 2 and opts.grid_only_if_multiple
    if not ((opts.return_grid or opts.grid_save) and not p.do_not_save_grid and not unwanted_grid_because_of_img_count):
        return 0
    grid = images.image_grid(output_images, p.batch_size)
    index_of_first_image = 0
    if opts.return_grid:
        infotexts.insert(0, _infotext(p, use_main_prompt=True))
        output_images.insert(0, grid)
        index_of_first_image = 1
    if opts.grid_save:
        images.save_image(grid, p.outpath_grids, "grid", p.all_seeds[0], p.all_prompts[0], opts.grid_format,
                          info=_infotext(p, use_main_prompt=True), p=p, grid=True)
    return index_of_first_image


def process_images(p):
    """process_images → process_images_inner of v1.10.1, without a model: each image is its prompt's colour."""
    if p.scripts is not None:
        p.scripts.before_process(p)
    _set_up(p)
    infotexts, output_images = [], []
    for n in range(p.n_iter):
        if not _run_batch(p, n, output_images, infotexts):
            break
    if not infotexts:
        infotexts.append(Processed(p, []).infotext(p, 0))
    index_of_first_image = _grid(p, output_images, infotexts)
    res = Processed(p, images_list=output_images, seed=p.all_seeds[0], info=infotexts[0], subseed=p.all_subseeds[0],
                    index_of_first_image=index_of_first_image, infotexts=infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res
