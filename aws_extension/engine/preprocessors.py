"""ControlNet preprocessors (a unit's `module`) that need no annotator model, as sd-webui-controlnet runs them.

A preprocessor turns the unit's input image into the control image ("detected map"); the map is then
resized to the generation size with the unit's resize mode like any control image. Modules that need
annotator weights (depth, openpose, lineart, ...) are refused by name in params.py.

- `canny`: the image scaled so that its short side is `processor_res` (sd-webui-controlnet's
  `resize_image_with_pad`: cubic up, area down, padded to a multiple of 64 and cropped back), then
  `cv2.Canny(low = threshold_a, high = threshold_b)`, as 3 channels.
- `invert`: 255 minus the image (for white-background line art), at the image's own size.

With `pixel_perfect`, `processor_res` is derived from the image and the generation size instead
(sd-webui-controlnet's `pixel_perfect_resolution`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# name -> (default processor_res, default threshold_a, default threshold_b); None: the module does not use it
PREPROCESSORS: dict[str, tuple[int | None, float | None, float | None]] = {
    "none": (None, None, None),
    "canny": (512, 100, 200),
    "invert": (None, None, None),
}
# sd-webui-controlnet's UI names for the same modules
ALIASES = {"invert (from white bg & black line)": "invert"}


@dataclass(frozen=True)
class Preprocessor:
    module: str
    processor_res: int | None = None
    threshold_a: float | None = None
    threshold_b: float | None = None
    pixel_perfect: bool = False

    def detected_map(self, image: Image.Image, width: int, height: int, resize_mode: str) -> Image.Image:
        """The control image for a generation of `width`x`height` with `resize_mode`."""
        if self.module == "none":
            return image
        pixels = np.asarray(image.convert("RGB"))
        if self.module == "invert":
            return Image.fromarray(255 - pixels)
        resolution = self.processor_res or 512
        if self.pixel_perfect:
            resolution = pixel_perfect_resolution(pixels.shape[0], pixels.shape[1], height, width, resize_mode)
        return Image.fromarray(_canny(pixels, resolution, self.threshold_a or 100, self.threshold_b or 200))


def pixel_perfect_resolution(raw_height: int, raw_width: int, height: int, width: int, resize_mode: str) -> int:
    """The processor resolution at which the map needs no further scaling for the generation size."""
    k_height, k_width = height / raw_height, width / raw_width
    k = min(k_height, k_width) if resize_mode == "Resize and Fill" else max(k_height, k_width)
    return int(np.round(k * min(raw_height, raw_width)))


def _canny(pixels: np.ndarray, resolution: int, low: float, high: float) -> np.ndarray:
    import cv2

    raw_height, raw_width = pixels.shape[:2]
    k = resolution / min(raw_height, raw_width)
    target_height, target_width = int(np.round(raw_height * k)), int(np.round(raw_width * k))
    resized = cv2.resize(pixels, (target_width, target_height),
                         interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    padded = np.pad(resized, [[0, -target_height % 64], [0, -target_width % 64], [0, 0]], mode="edge")
    edges = cv2.Canny(padded, low, high)[:target_height, :target_width]
    return np.repeat(edges[:, :, None], 3, axis=2)
