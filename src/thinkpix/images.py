"""Reading images as 8-bit RGB the way a user expects."""

from __future__ import annotations

import numpy as np
from PIL import Image


def rgb8(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB. 16- and 32-bit integer images (``I;16*`` / ``I``, e.g. 16-bit grayscale PNGs) are
    scaled from their 0..65535 range; PIL's ``convert("RGB")`` clips them to 255, so they would read as white."""
    if image.mode.startswith("I"):
        values = np.asarray(image).astype(np.float64)
        gray = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)
