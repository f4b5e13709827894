"""Images: reading files as 8-bit RGB, and grids for validation samples and the ``sample`` command."""

from __future__ import annotations

import math
from pathlib import Path

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


def to_uint8(images) -> np.ndarray:
    """(N, H, W, 3) float in [0, 1] (or uint8) to uint8."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return images


def make_grid(images, ncols: int | None = None, pad: int = 2, scale: int = 1) -> np.ndarray:
    """Tile (N, H, W, 3) images into one (rows*H, cols*W, 3) uint8 array with ``pad`` pixels between."""
    images = to_uint8(images)
    n, h, w, _ = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, ncols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = image
    if scale > 1:
        grid = grid.repeat(scale, 0).repeat(scale, 1)
    return grid


def save_grid(images, path: str | Path, ncols: int | None = None, scale: int = 1) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_grid(images, ncols, scale=scale)).save(path)
    return path
