"""Stand-in for modules.processing: the processing objects, Processed and a local process_images."""

from PIL import Image


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
        self.outpath_samples, self.outpath_grids = outpath_samples, outpath_grids
        self.denoising_strength, self.eta = denoising_strength, eta
        self.s_min_uncond, self.s_churn, self.s_tmax, self.s_tmin, self.s_noise = (
            s_min_uncond, s_churn, s_tmax, s_tmin, s_noise)
        self.scripts = None
        self.script_args = []
        self.all_prompts = self.all_seeds = self.all_subseeds = self.all_negative_prompts = None
        self.extra_generation_params = {}
        self.sd_model_name = self.sd_model_hash = self.sd_vae_name = self.sd_vae_hash = None


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


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    def __init__(self, init_images=None, resize_mode=0, denoising_strength=0.75, image_cfg_scale=None, mask=None,
                 mask_blur=None, inpainting_fill=0, inpaint_full_res=True, inpaint_full_res_padding=0,
                 inpainting_mask_invert=0, initial_noise_multiplier=None, **kwargs):
        super().__init__(denoising_strength=denoising_strength, **kwargs)
        self.init_images, self.resize_mode, self.image_cfg_scale = init_images, resize_mode, image_cfg_scale
        self.image_mask = mask
        self.mask_blur_x = self.mask_blur_y = 4 if mask_blur is None else mask_blur
        self.inpainting_fill, self.inpaint_full_res = inpainting_fill, inpaint_full_res
        self.inpaint_full_res_padding, self.inpainting_mask_invert = inpaint_full_res_padding, inpainting_mask_invert
        self.initial_noise_multiplier = initial_noise_multiplier


class Processed:
    def __init__(self, p, images_list, seed=-1, info="", subseed=None, all_prompts=None, all_negative_prompts=None,
                 all_seeds=None, all_subseeds=None, index_of_first_image=0, infotexts=None, comments=""):
        self.images = images_list
        self.prompt, self.negative_prompt = p.prompt, p.negative_prompt
        self.seed, self.subseed, self.info = seed, subseed, info
        self.all_prompts = all_prompts or p.all_prompts or [self.prompt]
        self.all_negative_prompts = all_negative_prompts or p.all_negative_prompts or [self.negative_prompt]
        self.all_seeds = all_seeds or p.all_seeds or [self.seed]
        self.all_subseeds = all_subseeds or p.all_subseeds or [self.subseed]
        self.index_of_first_image = index_of_first_image
        self.infotexts = infotexts or [info] * len(images_list)
        self.comments = comments


def process_images(p):
    """Local generation: the real one loads model weights first; here, one grey image per batch item."""
    images = [Image.new("RGB", (p.width, p.height), (128, 128, 128)) for _ in range(p.batch_size * p.n_iter)]
    return Processed(p, images, p.seed, "generated locally")
