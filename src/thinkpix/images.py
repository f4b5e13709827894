"""Images: reading files as 8-bit RGB, and grids for validation samples, the ``sample`` command, the demo report,
the routing analysis and the FrozenLake strips.

A grid meant for people labels every tile with its prompt (and, where a scorer ran, a pass/fail mark)
and enlarges small tiles with nearest-neighbour upscaling, so a 32-pixel Shapes sample stays crisp.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

MIN_TILE_PX = 128  # small tiles are upscaled by an integer factor to at least this many pixels
CAPTION_FONT_PX = 11
CAPTION_LINES = 3  # longer prompts are cut with an ellipsis
MARK_COLORS = {True: (22, 140, 60), False: (200, 30, 30)}  # pass: green, fail: red
MARK_WORDS = {True: "pass", False: "FAIL"}


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


def save_png(image: np.ndarray, path: str | Path, text: dict | None = None) -> Path:
    """Write one uint8 (H, W, 3) image; every ``text`` entry becomes a PNG text chunk (``Image.open(path).text``
    reads them back), numbers and lists written as JSON, None entries left out."""
    info = PngInfo()
    for key, value in (text or {}).items():
        if value is not None:
            info.add_text(key, value if isinstance(value, str) else json.dumps(value))
    Image.fromarray(image).save(path, pnginfo=info)
    return Path(path)


def upscale_factor(size: int, min_px: int = MIN_TILE_PX) -> int:
    """The integer nearest-neighbour factor that makes a ``size``-pixel tile at least ``min_px`` wide."""
    return max(1, math.ceil(min_px / size))


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


def wrap_caption(text: str, font, width: int, max_lines: int = CAPTION_LINES) -> list[str]:
    """Word-wrap ``text`` to lines at most ``width`` pixels wide; a cut last line ends with an ellipsis."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        while lines[-1] and font.getlength(lines[-1] + "...") > width:
            lines[-1] = lines[-1][:-1]
        lines[-1] += "..."
    return lines


def make_labelled_grid(images, labels: Sequence[str], ncols: int | None = None,
                       marks: Sequence[bool | None] | None = None, min_tile_px: int = MIN_TILE_PX,
                       pad: int = 6) -> np.ndarray:
    """Tiles upscaled (nearest-neighbour) to at least ``min_tile_px``, each with its label underneath.

    ``marks[i]`` True/False frames tile i in green/red and starts its caption with pass/FAIL (a scorer's
    verdict); None leaves it unmarked.
    """
    images = to_uint8(images)
    n, h, w, _ = images.shape
    if len(labels) != n or (marks is not None and len(marks) != n):
        raise ValueError(f"{n} images need {n} labels (got {len(labels)}) and as many marks")
    scale = upscale_factor(max(h, w), min_tile_px)
    tile_h, tile_w = h * scale, w * scale
    font = ImageFont.load_default(size=CAPTION_FONT_PX)
    line_px = CAPTION_FONT_PX + 3
    marks = list(marks) if marks is not None else [None] * n
    captions = [wrap_caption((f"{MARK_WORDS[m]}: " if m is not None else "") + str(label), font, tile_w)
                for label, m in zip(labels, marks)]
    caption_h = line_px * max(len(c) for c in captions) + 4
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    cell_h, cell_w = tile_h + caption_h + pad, tile_w + pad
    canvas = Image.new("RGB", (ncols * cell_w + pad, nrows * cell_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (image, caption, mark) in enumerate(zip(images, captions, marks)):
        r, c = divmod(i, ncols)
        x, y = pad + c * cell_w, pad + r * cell_h
        canvas.paste(Image.fromarray(image).resize((tile_w, tile_h), Image.NEAREST), (x, y))
        if mark is not None:
            draw.rectangle((x - 3, y - 3, x + tile_w + 2, y + tile_h + 2), outline=MARK_COLORS[mark], width=3)
        for k, line in enumerate(caption):
            fill = MARK_COLORS[mark] if k == 0 and mark is not None else (0, 0, 0)
            draw.text((x, y + tile_h + 3 + k * line_px), line, fill=fill, font=font)
    return np.asarray(canvas)


def label_rows_and_columns(image: np.ndarray, cell_px: int, gap_px: int, column_labels: Sequence[str],
                           row_labels: Sequence[str]) -> np.ndarray:
    """``image`` (a table of ``cell_px`` tiles, ``gap_px`` apart) with a header band naming each column and a left
    band naming each row, e.g. the step numbers and the decoded/true rows of a FrozenLake strip."""
    font = ImageFont.load_default(size=CAPTION_FONT_PX)
    left = int(max(font.getlength(label) for label in row_labels)) + 8
    top = CAPTION_FONT_PX + 8
    h, w = image.shape[:2]
    canvas = Image.new("RGB", (left + w, top + h), "white")
    canvas.paste(Image.fromarray(image), (left, top))
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(column_labels):
        x = left + j * (cell_px + gap_px) + (cell_px - font.getlength(label)) / 2
        draw.text((x, 3), label, fill=(0, 0, 0), font=font)
    for i, label in enumerate(row_labels):
        draw.text((3, top + i * (cell_px + gap_px) + (cell_px - CAPTION_FONT_PX) / 2), label, fill=(0, 0, 0),
                  font=font)
    return np.asarray(canvas)


def save_grid(images, path: str | Path, ncols: int | None = None, scale: int = 1,
              labels: Sequence[str] | None = None, marks: Sequence[bool | None] | None = None) -> Path:
    """Write a grid PNG: labelled and upscaled when ``labels`` are given (see ``make_labelled_grid``),
    otherwise plain tiles enlarged ``scale`` times."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = make_labelled_grid(images, labels, ncols, marks) if labels is not None else make_grid(images, ncols,
                                                                                                  scale=scale)
    Image.fromarray(grid).save(path)
    return path
