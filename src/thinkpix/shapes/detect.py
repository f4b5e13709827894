"""Classical detector for Shapes-world images: colour segmentation, components, template shapes.

It stands in for GenEval's Mask2Former detector plus CLIP colour classifier (djghosh13/geneval,
evaluation/evaluate_images.py) on this world's images:

1. every pixel takes the nearest of the background and palette colours (Euclidean RGB), or is
   *stray* when all are farther than ``max_distance``;
2. each palette colour's pixels are split into 8-connected components (``scipy.ndimage.label``);
   components under ``min_area`` pixels are specks and are dropped (their pixels count as stray);
3. each component's shape is the template (the renderer's own :func:`~thinkpix.shapes.render.shape_mask`
   stretched over the component's bounding box) with the highest IoU against the component's
   mask; that IoU is the detection's confidence. The templates differ in fill ratio (square 1.0,
   circle ~0.79, triangle and diamond ~0.5-0.6) and triangles put ~70% of their mass in the lower
   half where diamonds put 50%, which the IoU sees at once. Components whose best IoU is under
   ``min_iou`` are not shapes and are dropped too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from thinkpix.shapes.render import shape_mask
from thinkpix.shapes.scene import BACKGROUND, COLORS, SHAPES, SIZES, extent_for

DEFAULT_MAX_DISTANCE = 96.0
"""Half-way-ish between palette colours, which are all >= 255 apart (see ``scene.COLORS``)."""
MIN_IOU = 0.5

_REFERENCES = np.array([BACKGROUND, *COLORS.values()], dtype=np.float64)
_COLOR_NAMES = tuple(COLORS)
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Detection:
    """One detected object; ``box`` is ``(x1, y1, x2, y2)`` with exclusive ``x2``/``y2``."""

    shape: str
    color: str
    size: str
    box: tuple[int, int, int, int]
    area: int
    confidence: float


@dataclass(frozen=True)
class DetectionResult:
    """All detections in one image plus how many pixels are neither background nor an object."""

    detections: tuple[Detection, ...]
    image_size: int
    stray_pixels: int

    @property
    def stray_fraction(self) -> float:
        return self.stray_pixels / float(self.image_size**2)

    def by_class(self, limit: int | None = None) -> dict[str, list[Detection]]:
        """GenEval's ``detected`` dict: class -> detections, most confident first (ties: larger,
        then top-to-bottom, left-to-right), at most ``limit`` per class; absent classes are omitted."""
        grouped: dict[str, list[Detection]] = {}
        for det in sorted(self.detections, key=lambda d: (-d.confidence, -d.area, d.box[1], d.box[0])):
            grouped.setdefault(det.shape, []).append(det)
        return {shape: dets[:limit] for shape, dets in grouped.items()}


def as_rgb(image: object) -> np.ndarray:
    """``(N, N, 3)`` uint8 view of an array or PIL image; raises ``ValueError`` otherwise."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3 or array.shape[0] != array.shape[1]:
        raise ValueError(f"image must be a square RGB uint8 array, got shape {array.shape} dtype {array.dtype}")
    return array


def segment_colors(image: np.ndarray, max_distance: float = DEFAULT_MAX_DISTANCE) -> np.ndarray:
    """Per-pixel labels: 0 background, ``k`` for the ``k``-th colour of ``COLORS`` (1-based), -1 stray."""
    pixels = as_rgb(image).astype(np.float64)
    dist = np.linalg.norm(pixels[..., None, :] - _REFERENCES, axis=-1)
    labels = dist.argmin(axis=-1)
    labels[dist.min(axis=-1) > max_distance] = -1
    return labels


def classify_shape(mask: np.ndarray) -> tuple[str, float]:
    """Best-matching shape for a component mask cropped to its bounding box, and its IoU."""
    height, width = mask.shape
    best = ("", -1.0)
    for shape in SHAPES:
        template = shape_mask(shape, width, height)
        iou = float((mask & template).sum()) / float((mask | template).sum())
        if iou > best[1]:
            best = (shape, iou)
    return best


def size_of(box: tuple[int, int, int, int], image_size: int) -> str:
    """The size word whose pixel extent is nearest to the box's longer side."""
    side = max(box[2] - box[0], box[3] - box[1])
    return min(SIZES, key=lambda size: abs(extent_for(size, image_size) - side))


def detect_shapes(
    image: object,
    max_distance: float = DEFAULT_MAX_DISTANCE,
    min_area: int | None = None,
    min_iou: float = MIN_IOU,
) -> DetectionResult:
    """Detect the shapes in ``image`` (see the module docstring for the steps).

    ``min_area`` defaults to 0.6% of the image (6 px at 32x32), well under the smallest rendered
    shape (40 px at 32x32).
    """
    rgb = as_rgb(image)
    image_size = rgb.shape[0]
    min_area = max(4, round(0.006 * image_size**2)) if min_area is None else min_area
    labels = segment_colors(rgb, max_distance)
    detections = []
    for index, color in enumerate(_COLOR_NAMES, start=1):
        components, _ = ndimage.label(labels == index, structure=_EIGHT_CONNECTED)
        for number, slc in enumerate(ndimage.find_objects(components), start=1):
            mask = components[slc] == number
            area = int(mask.sum())
            if area < min_area:
                continue
            shape, iou = classify_shape(mask)
            if iou < min_iou:
                continue
            box = (slc[1].start, slc[0].start, slc[1].stop, slc[0].stop)
            detections.append(Detection(shape, color, size_of(box, image_size), box, area, iou))
    stray = int((labels != 0).sum()) - sum(det.area for det in detections)
    return DetectionResult(tuple(detections), image_size, stray)
