"""Box geometry shared by scene placement, scoring and the DPG-style question answering.

Boxes are ``(x1, y1, x2, y2)`` in pixel-edge coordinates (``x2``/``y2`` exclusive), the layout of
the mmdet boxes that GenEval scores.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

POSITION_THRESHOLD = 0.1
"""GenEval's ``position_threshold`` default (djghosh13/geneval, evaluation/evaluate_images.py)."""

RELATIONS = ("left of", "right of", "above", "below")
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def relation_masks(box_a: ArrayLike, box_b: ArrayLike, threshold: float = POSITION_THRESHOLD) -> dict:
    """Vectorised GenEval ``relative_position``: which relations hold for A relative to B.

    Follows djghosh13/geneval, evaluation/evaluate_images.py, ``relative_position``: the offset
    between box centres is shrunk towards zero on each axis by ``threshold * (dim_a + dim_b)``
    (widths for x, heights for y); if nothing is left the objects have no relation; otherwise the
    shrunk offset is divided by the norm of the *original* offset and a relation holds when its
    component passes 0.5 (x < -0.5 left of, x > 0.5 right of, y < -0.5 above, y > 0.5 below; image
    y grows downwards). ``box_a`` and ``box_b`` broadcast over leading dimensions (shape ``(..., 4)``);
    the result maps each relation in :data:`RELATIONS` to a boolean array of the broadcast shape.
    """
    a = np.asarray(box_a, dtype=np.float64)
    b = np.asarray(box_b, dtype=np.float64)
    center_a = (a[..., :2] + a[..., 2:4]) / 2.0
    center_b = (b[..., :2] + b[..., 2:4]) / 2.0
    dims = np.abs(a[..., 2:4] - a[..., :2]) + np.abs(b[..., 2:4] - b[..., :2])
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - threshold * dims, 0.0) * np.sign(offset)
    moved = np.any(np.abs(revised) >= 1e-3, axis=-1)
    norm = np.linalg.norm(offset, axis=-1)
    safe_norm = np.where(norm > 0, norm, 1.0)
    dx = revised[..., 0] / safe_norm
    dy = revised[..., 1] / safe_norm
    return {
        "left of": moved & (dx < -0.5),
        "right of": moved & (dx > 0.5),
        "above": moved & (dy < -0.5),
        "below": moved & (dy > 0.5),
    }


def relative_position(box_a: ArrayLike, box_b: ArrayLike, threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Set of relations of box A relative to box B under GenEval's rule (see :func:`relation_masks`)."""
    masks = relation_masks(box_a, box_b, threshold)
    return {rel for rel in RELATIONS if bool(masks[rel])}


def separated(boxes: np.ndarray, others: np.ndarray, gap: int) -> np.ndarray:
    """True for each row of ``boxes`` (``(K, 4)``) that keeps at least ``gap`` empty pixels to every
    row of ``others`` (``(P, 4)``) along x or along y, i.e. the boxes neither overlap nor touch."""
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 1, 4)
    others = np.asarray(others, dtype=np.int64).reshape(1, -1, 4)
    apart = (
        (boxes[..., 0] >= others[..., 2] + gap)
        | (others[..., 0] >= boxes[..., 2] + gap)
        | (boxes[..., 1] >= others[..., 3] + gap)
        | (others[..., 1] >= boxes[..., 3] + gap)
    )
    return apart.all(axis=1)
