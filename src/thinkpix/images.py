"""Image grids for validation samples and the ``sample`` command."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image


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
