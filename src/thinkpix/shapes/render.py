"""Numpy renderer: pure palette colours, no anti-aliasing, so detection is exact.

Shapes are rasterised by testing pixel centres against the shape's outline inside its box; the
outline is widened by at most half a pixel where needed so that every shape fills its box tightly
(its top and bottom rows and left and right columns are all non-empty). The detector reuses
:func:`shape_mask` as its templates.
"""

from __future__ import annotations

import numpy as np

from thinkpix.shapes.scene import BACKGROUND, COLORS, SHAPES, Scene, check_choice


def shape_mask(shape: str, width: int, height: int) -> np.ndarray:
    """Boolean ``(height, width)`` mask of ``shape`` stretched over a ``width`` x ``height`` box.

    circle: the inscribed ellipse; square: the full box; triangle: apex at the top centre, base on
    the bottom edge; diamond: the four edge midpoints joined.
    """
    check_choice("shape", shape, SHAPES)
    if width < 1 or height < 1:
        raise ValueError(f"mask size {width}x{height} must be at least 1x1")
    cols = np.arange(width) + 0.5
    rows = np.arange(height)[:, None].astype(np.float64)
    half_w = width / 2.0
    dist_x = np.abs(cols[None, :] - half_w)
    if shape == "square":
        return np.ones((height, width), dtype=bool)
    if shape == "circle":
        dist_y = np.abs(rows + 0.5 - height / 2.0)
        return (dist_x / half_w) ** 2 + (dist_y / (height / 2.0)) ** 2 <= 1.0
    if shape == "triangle":
        reach = (rows + 1.0) / height * half_w
    else:
        reach = np.minimum(rows + 1.0, height - rows) / (height / 2.0) * half_w
    return dist_x <= np.maximum(reach, 0.5)


def render_scene(scene: Scene, background: tuple[int, int, int] = BACKGROUND) -> np.ndarray:
    """RGB ``uint8`` image ``(image_size, image_size, 3)`` of ``scene`` on a plain ``background``."""
    size = scene.image_size
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = np.asarray(background, dtype=np.uint8)
    for obj in scene.objects:
        x1, y1, x2, y2 = obj.box
        mask = shape_mask(obj.shape, x2 - x1, y2 - y1)
        image[y1:y2, x1:x2][mask] = COLORS[obj.color]
    return image


def shape_coverage(shape: str, cx: float, cy: float, extent: float, image_size: int, angle: float = 0.0,
                   supersample: int = 4) -> np.ndarray:
    """Fraction ``(image_size, image_size)`` of each pixel covered by ``shape`` centred at ``(cx, cy)`` (pixel-edge
    coordinates) with side ``extent``, turned by ``angle`` degrees clockwise: the same outlines as
    :func:`shape_mask` (circle inscribed, square, triangle apex up, diamond), on ``supersample``^2 points a
    pixel. The detector fits these to what it sees; ``thinkpix.shapes.perturb`` draws with them."""
    check_choice("shape", shape, SHAPES)
    steps = (np.arange(image_size * supersample) + 0.5) / supersample
    xs, ys = np.meshgrid(steps - cx, steps - cy)
    theta = np.deg2rad(angle)
    half = extent / 2.0
    u = (np.cos(theta) * xs + np.sin(theta) * ys) / half
    v = (-np.sin(theta) * xs + np.cos(theta) * ys) / half
    inside = shape_inside(shape, u, v)
    return inside.reshape(image_size, supersample, image_size, supersample).mean(axis=(1, 3))


def shape_inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points ``(u, v)`` in the shape's own frame (centre 0, half-side 1, ``v`` down) lie inside it."""
    if shape == "square":
        return (np.abs(u) <= 1) & (np.abs(v) <= 1)
    if shape == "circle":
        return u * u + v * v <= 1
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1
    return (np.abs(u) <= (v + 1) / 2) & (v <= 1)
