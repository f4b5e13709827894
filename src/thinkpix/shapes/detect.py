"""Classical detector for Shapes-world images, robust to how small models draw and strict about what a shape is.

It stands in for GenEval's Mask2Former detector plus CLIP colour classifier (djghosh13/geneval,
evaluation/evaluate_images.py) on this world's images. Steps:

1. **Foreground**: pixels whose brightest channel reaches ``FOREGROUND_LEVEL`` (100 of 255: an antialiased edge
   pixel at least ~40% covered). The background is black.
2. **Colour**: *core* pixels (brightest channel >= ``CORE_LEVEL``) take the palette colour whose direction
   (``rgb / max(rgb)``; every palette colour is a corner of the RGB cube) is nearest, or ``"unknown"`` when none
   is within ``MAX_CHROMA_DISTANCE`` (purple, orange, grey). Every other foreground pixel (antialiased or JPEG-
   bled edges, 4:2:0 chroma smear) takes the colour of its nearest core pixel, so edge colours never make
   objects of their own. A foreground blob without any core pixel is one object of unknown colour.
3. **Objects**: each colour's pixels are split into 8-connected components. Components under
   ``SPECK_FRACTION`` of the world's smallest object (``min_area``) are specks: stray pixels, not objects.
4. **Shape**: each component is fitted, by IoU, with the four outlines of
   :func:`~thinkpix.shapes.render.shape_inside` centred on the component's centroid (+-1 px), sized by its area
   (x 0.9-1.25), turned by -15..15 degrees. The best IoU is the detection's confidence; under ``min_iou`` the
   component is not a world shape (bars, ellipses, half-shapes cut by the border, blobs) and is dropped, as is
   a shape against the border that is smaller than the world's small one of its kind (its visible part).
   Components stretched beyond ``MAX_ELONGATION`` (ratio of principal axes; a world triangle has 1.15) are
   elongated bars or ellipses and never shapes.
5. **Touching objects of one colour** merge into one component. A component too large or too poor a fit for one
   shape is split at the saddle of its distance transform (markers: the parts left after peeling
   ``d`` pixels off, for increasing ``d``; the rest goes to the nearest marker), and an exact rectangle
   ``k`` times as long as wide into ``k`` squares. If every part then fits a shape the parts are the
   detections; otherwise the component is **ambiguous**: :attr:`DetectionResult.ambiguous` counts it and the
   GenEval scorer counts the image wrong (a merged pair can hide any count or shape).

Ties: detections are ranked by confidence rounded to ``CONFIDENCE_DECIMALS``, then area, then position, and the
scorer's colour rule accepts any choice among tied detections (:func:`~thinkpix.shapes.score.evaluate`), so the
verdict never depends on the order in which objects were drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from thinkpix.shapes.render import shape_inside, shape_mask
from thinkpix.shapes.scene import COLORS, SHAPES, SIZES, extent_for

DETECTOR_VERSION = "2"
"""Bumped whenever a change can move a verdict, so that caches of scored rows (``benchmarks``) key on it: "1" was
the detector before issue 18, "2" its first rewrite."""

FOREGROUND_LEVEL = 100
CORE_LEVEL = 160
MAX_CHROMA_DISTANCE = 0.35
"""Palette directions are >= 1 apart; purple (0.5, 0, 1) is 0.5 from blue and from magenta."""
UNKNOWN_COLOR = "unknown"
MIN_CORE_PIXELS = 6
MIN_CORE_SHARE = 0.15
SPECK_FRACTION = 0.5
MIN_IOU = 0.6
SPLIT_FRACTION = 0.8
"""Parts of a split component must be this share of the smallest world object (area, or side for squares)."""
MAX_ELONGATION = 1.55
CONFIDENCE_DECIMALS = 2
ANGLES = tuple(range(-15, 16, 5))
SCALES = (0.9, 1.0, 1.1, 1.25)
FILL = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5, "diamond": 0.5}
"""Area of each outline over its extent squared: sizes a fit from a component's area."""

_DIRECTIONS = np.array(list(COLORS.values()), dtype=np.float64) / 255.0
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
    """All detections in one image, the pixels that are neither background nor an object, and how many
    components were ambiguous (merged objects that could not be split)."""

    detections: tuple[Detection, ...]
    image_size: int
    stray_pixels: int
    ambiguous: int = 0

    @property
    def stray_fraction(self) -> float:
        return self.stray_pixels / float(self.image_size**2)

    def by_class(self, limit: int | None = None) -> dict[str, list[Detection]]:
        """GenEval's ``detected`` dict: class -> detections, most confident first (confidence rounded to
        ``CONFIDENCE_DECIMALS``; ties: larger, then top-to-bottom, left-to-right), at most ``limit`` per class."""
        grouped: dict[str, list[Detection]] = {}
        for det in sorted(self.detections, key=rank):
            grouped.setdefault(det.shape, []).append(det)
        return {shape: dets[:limit] for shape, dets in grouped.items()}


def rank(det: Detection) -> tuple:
    """Sort key of :meth:`DetectionResult.by_class`; equal first two entries mean equally good detections."""
    return (-round(det.confidence, CONFIDENCE_DECIMALS), -det.area, det.box[1], det.box[0])


def as_rgb(image: object) -> np.ndarray:
    """``(N, N, 3)`` uint8 view of an array or PIL image; raises ``ValueError`` otherwise."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3 or array.shape[0] != array.shape[1]:
        raise ValueError(f"image must be a square RGB uint8 array, got shape {array.shape} dtype {array.dtype}")
    return array


def segment_colors(image: np.ndarray) -> np.ndarray:
    """Per-pixel labels: 0 background, ``k`` for the ``k``-th colour of ``COLORS`` (1-based), -1 unknown colour."""
    pixels = as_rgb(image).astype(np.float64)
    level = pixels.max(axis=-1)
    direction = pixels / np.maximum(level, 1.0)[..., None]
    dist = np.linalg.norm(direction[..., None, :] - _DIRECTIONS, axis=-1)
    core_labels = np.where(dist.min(axis=-1) <= MAX_CHROMA_DISTANCE, dist.argmin(axis=-1) + 1, -1)
    foreground = level >= FOREGROUND_LEVEL
    core = level >= CORE_LEVEL
    blobs, count = ndimage.label(foreground, structure=_EIGHT_CONNECTED)
    for blob in range(1, count + 1):
        # a colour holding only a sliver of a blob's core is edge bleeding (JPEG chroma, antialiasing): demoted
        in_blob = (blobs == blob) & core
        names, sizes = np.unique(core_labels[in_blob], return_counts=True)
        for name, size in zip(names, sizes):
            # an off-palette colour must hold most of the blob: JPEG shifts the hue of a palette object's rim
            share = 0.5 if name == -1 else MIN_CORE_SHARE
            if size < max(MIN_CORE_PIXELS, share * in_blob.sum()):
                core[in_blob & (core_labels == name)] = False
    labels = np.zeros(level.shape, dtype=np.int64)
    if core.any():
        _, (rows, cols) = ndimage.distance_transform_edt(~core, return_indices=True)
        labels[foreground] = core_labels[rows, cols][foreground]
    # a blob with no core left (dim or off-palette all through) is one object of unknown colour
    without_core = np.setdiff1d(np.unique(blobs[foreground]), np.unique(blobs[core]))
    labels[np.isin(blobs, without_core) & foreground] = -1
    return labels


def elongation(mask: np.ndarray) -> float:
    """Ratio of the principal axes of a mask's pixels (1 for a disc, square or diamond, 1.15 for a triangle)."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 3:
        return np.inf
    eig = np.linalg.eigvalsh(np.cov(np.stack([xs, ys])) + 1e-9 * np.eye(2))
    return float(np.sqrt(eig[1] / max(eig[0], 1e-9)))


def _exact_template(box_mask: np.ndarray) -> str | None:
    """The shape whose rendered mask (:func:`~thinkpix.shapes.render.shape_mask`) the square crop equals pixel
    for pixel: clean renders skip the fit (their fitted IoU would be about 1 anyway)."""
    height, width = box_mask.shape
    if height != width:
        return None
    return next((shape for shape in SHAPES if np.array_equal(box_mask, shape_mask(shape, width, height))), None)


def fit_shape(mask: np.ndarray) -> tuple[str, float]:
    """Best ``(shape, IoU)`` of outlines fitted to a boolean mask (in image coordinates; see step 4)."""
    ys, xs = np.nonzero(mask)
    exact = _exact_template(mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])
    if exact is not None:
        return exact, 1.0
    area = len(xs)
    top, left = max(ys.min() - 4, 0), max(xs.min() - 4, 0)
    crop = mask[top : ys.max() + 5, left : xs.max() + 5]
    height, width = crop.shape
    # outlines are drawn on the crop grid padded by one pixel, then slid by -1, 0, 1 px on each axis
    gy, gx = np.mgrid[-1 : height + 1, -1 : width + 1] + 0.5
    centre_x, centre_y = xs.mean() + 0.5 - left, ys.mean() + 0.5 - top
    best = ("", -1.0)
    for shape in SHAPES:
        # an outline's centroid: its centre, except a triangle's, 1/3 of the half-side below it (apex up)
        offset = 1.0 / 3.0 if shape == "triangle" else 0.0
        extents = np.sqrt(area / FILL[shape]) * np.array(SCALES)
        angles = np.deg2rad(ANGLES if shape != "circle" else (0,))
        half = np.repeat(extents, len(angles))[:, None, None] / 2.0
        theta = np.tile(angles, len(extents))[:, None, None]
        cx = centre_x + np.sin(theta) * offset * half
        cy = centre_y - np.cos(theta) * offset * half
        dx, dy = gx[None] - cx, gy[None] - cy
        inside = shape_inside(shape, (np.cos(theta) * dx + np.sin(theta) * dy) / half,
                              (-np.sin(theta) * dx + np.cos(theta) * dy) / half)
        for sy in range(3):
            for sx in range(3):
                moved = inside[:, sy : sy + height, sx : sx + width]
                iou = float(((moved & crop).sum(axis=(1, 2)) / (moved | crop).sum(axis=(1, 2))).max())
                if iou > best[1] + 1e-9:
                    best = (shape, iou)
    return best


def size_of(box: tuple[int, int, int, int], image_size: int) -> str:
    """The size word whose pixel extent is nearest to the box's longer side."""
    side = max(box[2] - box[0], box[3] - box[1])
    return min(SIZES, key=lambda size: abs(extent_for(size, image_size) - side))


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def _as_shape(mask: np.ndarray, min_iou: float) -> tuple[str, float] | None:
    if elongation(mask) > MAX_ELONGATION:
        return None
    shape, iou = fit_shape(mask)
    return (shape, iou) if iou >= min_iou else None


def _split(mask: np.ndarray, min_part: float, min_side: float) -> list[np.ndarray]:
    """Parts of a component that may be several touching objects (step 5), each of ``min_part`` pixels (an
    exact rectangle: ``min_side`` pixels wide) at least; ``[]`` when it does not split."""
    x1, y1, x2, y2 = _box(mask)
    width, height = x2 - x1, y2 - y1
    short, long = min(width, height), max(width, height)
    if mask[y1:y2, x1:x2].mean() >= 0.9 and round(long / short) >= 2 and short >= min_side:
        k = round(long / short)
        cuts = np.linspace(x1 if width > height else y1, x2 if width > height else y2, k + 1).round().astype(int)
        parts = []
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            part = np.zeros_like(mask)
            if width > height:
                part[:, lo:hi] = mask[:, lo:hi]
            else:
                part[lo:hi, :] = mask[lo:hi, :]
            parts.append(part)
        return parts
    depth = ndimage.distance_transform_edt(mask)
    for level in np.arange(1.5, depth.max(), 0.5):
        markers, count = ndimage.label(depth >= level, structure=_EIGHT_CONNECTED)
        if count < 2:
            continue
        _, (rows, cols) = ndimage.distance_transform_edt(markers == 0, return_indices=True)
        owner = np.where(mask, markers[rows, cols], 0)
        parts = [owner == k for k in range(1, count + 1)]
        if all(part.sum() >= min_part for part in parts):
            return parts
    return []


def _cut_by_border(box: tuple[int, int, int, int], area: int, shape: str, image_size: int) -> bool:
    """A shape against the border and smaller than the world's small one of its kind is the visible part of a
    cut shape (the top of a triangle cut at the bottom is a smaller triangle), not a shape."""
    on_border = min(box[:2]) == 0 or max(box[2:]) == image_size
    return on_border and area < SPLIT_FRACTION * FILL[shape] * extent_for("small", image_size) ** 2


def detect_shapes(image: object, min_area: int | None = None, min_iou: float = MIN_IOU) -> DetectionResult:
    """Detect the shapes in ``image`` (see the module docstring for the steps).

    ``min_area`` defaults to ``SPECK_FRACTION`` of the smallest world object's area (a small triangle: 9 px at
    32x32); a component more than 1.6 times a large square, or a poor fit at least twice ``min_area``, is
    tried as touching objects.
    """
    rgb = as_rgb(image)
    image_size = rgb.shape[0]
    smallest = FILL["triangle"] * extent_for("small", image_size) ** 2
    min_area = max(4, round(SPECK_FRACTION * smallest)) if min_area is None else min_area
    largest = extent_for("large", image_size) ** 2
    labels = segment_colors(rgb)
    detections, ambiguous = [], 0
    for index, color in [(-1, UNKNOWN_COLOR), *enumerate(_COLOR_NAMES, start=1)]:
        components, count = ndimage.label(labels == index, structure=_EIGHT_CONNECTED)
        for number in range(1, count + 1):
            mask = components == number
            area = int(mask.sum())
            if area < min_area:
                continue
            fitted = _as_shape(mask, min_iou) if area <= 1.6 * largest else None
            parts = [(mask, fitted)] if fitted is not None else []
            if fitted is None and area >= 2 * min_area:
                pieces = _split(mask, SPLIT_FRACTION * smallest, SPLIT_FRACTION * extent_for("small", image_size))
                fits = [_as_shape(part, min_iou) for part in pieces]
                if pieces and all(fit is not None for fit in fits):
                    parts = list(zip(pieces, fits))
                elif pieces and area >= 2 * smallest:  # a neck, yet not shapes: merged objects, unreadable
                    ambiguous += 1
            for part, (shape, iou) in parts:
                box = _box(part)
                if _cut_by_border(box, int(part.sum()), shape, image_size):
                    continue
                detections.append(Detection(shape, color, size_of(box, image_size), box, int(part.sum()), iou))
    stray = int((labels != 0).sum()) - sum(det.area for det in detections)
    return DetectionResult(tuple(detections), image_size, stray, ambiguous)

