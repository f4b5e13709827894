"""Scenes of the Shapes world: 1 to 4 flat-coloured shapes on a plain black background.

A :class:`Scene` is a frozen dataclass of :class:`ShapeObject` s with pixel positions. Placement
(:func:`place_objects`) draws positions with a ``numpy.random.Generator`` only, so a seed fixes the
scene, and it enforces a gap of empty pixels between all objects: nothing overlaps or touches, so
the classical detector in :mod:`thinkpix.shapes.detect` sees every object as its own component.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from thinkpix.shapes.geometry import RELATIONS, relation_masks, separated

SHAPES = ("circle", "square", "triangle", "diamond")
PLURALS = {shape: shape + "s" for shape in SHAPES}

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
}
"""Corners of the RGB cube: every pair of colours (and the background) is >= 255 apart."""

BACKGROUND: tuple[int, int, int] = (0, 0, 0)

SIZES = ("small", "large")
SIZE_FRACTIONS = {"small": 0.25, "large": 0.375}
"""Object side as a fraction of the image side: 8 and 12 px at 32 px, 16 and 24 px at 64 px."""

MIN_OBJECTS = 1
MAX_OBJECTS = 4
DEFAULT_IMAGE_SIZE = 32
MIN_IMAGE_SIZE = 32
BORDER = 1


def check_choice(field: str, value: object, allowed: Sequence) -> None:
    """Raise ``ValueError`` naming ``field``, the bad ``value`` and the ``allowed`` values."""
    if value not in allowed:
        raise ValueError(f"{field}={value!r} is not allowed; allowed values: {', '.join(map(str, allowed))}")


def check_image_size(image_size: int) -> None:
    """Raise ``ValueError`` unless ``image_size`` is an int >= :data:`MIN_IMAGE_SIZE`."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size={image_size!r} must be an int >= {MIN_IMAGE_SIZE}")


def extent_for(size: str, image_size: int) -> int:
    """Side in pixels (even, so shapes are symmetric on the pixel grid) of a ``size`` object."""
    check_choice("size", size, SIZES)
    return 2 * round(SIZE_FRACTIONS[size] * image_size / 2)


def gap_for(image_size: int) -> int:
    """Minimum number of empty pixels between two objects."""
    return max(2, image_size // 16)


@dataclass(frozen=True)
class ObjectSpec:
    """What to draw, without a position."""

    shape: str
    color: str
    size: str = "small"

    def __post_init__(self) -> None:
        check_choice("shape", self.shape, SHAPES)
        check_choice("color", self.color, tuple(COLORS))
        check_choice("size", self.size, SIZES)


@dataclass(frozen=True)
class ShapeObject:
    """One placed object: a ``shape`` filling the square cell ``[x, x+extent) x [y, y+extent)``."""

    shape: str
    color: str
    size: str
    x: int
    y: int
    extent: int

    def __post_init__(self) -> None:
        ObjectSpec(self.shape, self.color, self.size)
        if self.extent < 4:
            raise ValueError(f"extent={self.extent} must be >= 4 pixels")

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``(x1, y1, x2, y2)`` with exclusive ``x2``/``y2``; the rendered mask fills it tightly."""
        return (self.x, self.y, self.x + self.extent, self.y + self.extent)


@dataclass(frozen=True)
class Scene:
    """1 to 4 non-touching objects in a square image of ``image_size`` pixels."""

    objects: tuple[ShapeObject, ...]
    image_size: int = DEFAULT_IMAGE_SIZE

    def __post_init__(self) -> None:
        check_image_size(self.image_size)
        object.__setattr__(self, "objects", tuple(self.objects))
        check_object_count(len(self.objects))
        boxes = np.array([obj.box for obj in self.objects])
        if boxes.min() < 0 or boxes.max() > self.image_size:
            raise ValueError(f"an object lies outside the {self.image_size}x{self.image_size} image")
        gap = gap_for(self.image_size)
        for i in range(1, len(boxes)):
            if not separated(boxes[i : i + 1], boxes[:i], gap)[0]:
                raise ValueError(f"object {i} overlaps or comes within {gap} px of another object")


def check_object_count(count: int, field: str = "number of objects") -> None:
    """Raise ``ValueError`` unless ``MIN_OBJECTS <= count <= MAX_OBJECTS``."""
    if isinstance(count, bool) or not isinstance(count, int) or not MIN_OBJECTS <= count <= MAX_OBJECTS:
        raise ValueError(f"{field}={count!r} is out of range; allowed values: {MIN_OBJECTS} to {MAX_OBJECTS}")


def random_spec(rng: np.random.Generator, shape: str, colors: Sequence[str] | None = None) -> ObjectSpec:
    """A ``shape`` with a colour drawn from ``colors`` (default: all colours) and a random size."""
    palette = tuple(colors) if colors is not None else tuple(COLORS)
    return ObjectSpec(shape, palette[rng.integers(len(palette))], SIZES[rng.integers(len(SIZES))])


def place_objects(
    specs: Sequence[ObjectSpec],
    rng: np.random.Generator,
    image_size: int = DEFAULT_IMAGE_SIZE,
    relation: tuple[int, str, int] | None = None,
    max_restarts: int = 200,
) -> Scene:
    """Place ``specs`` at random non-touching positions and return the :class:`Scene`.

    Every object picks uniformly among all positions that keep the gap to the objects already
    placed. ``relation=(i, rel, j)`` additionally makes object ``i`` stand ``rel`` of object ``j``
    under GenEval's position rule (:func:`~thinkpix.shapes.geometry.relation_masks`); ``j`` and ``i``
    are placed first. If the image fills up, placement restarts (at most ``max_restarts`` times).
    """
    check_image_size(image_size)
    check_object_count(len(specs))
    order = list(range(len(specs)))
    if relation is not None:
        i, rel, j = relation
        check_choice("relation", rel, RELATIONS)
        if i == j or not (0 <= i < len(specs) and 0 <= j < len(specs)):
            raise ValueError(f"relation indices ({i}, {j}) must be two different objects of {len(specs)}")
        order = [j, i] + [k for k in order if k not in (i, j)]
    gap = gap_for(image_size)
    for _ in range(max_restarts):
        boxes: dict[int, np.ndarray] = {}
        for k in order:
            extent = extent_for(specs[k].size, image_size)
            coords = np.arange(BORDER, image_size - extent - BORDER + 1)
            xs, ys = np.meshgrid(coords, coords)
            cand = np.stack([xs.ravel(), ys.ravel(), xs.ravel() + extent, ys.ravel() + extent], axis=1)
            ok = separated(cand, np.array(list(boxes.values())), gap) if boxes else np.ones(len(cand), bool)
            if relation is not None and k == relation[0]:
                ok &= relation_masks(cand, boxes[relation[2]])[relation[1]]
            choices = np.flatnonzero(ok)
            if choices.size == 0:
                break
            boxes[k] = cand[choices[rng.integers(choices.size)]]
        else:
            objects = tuple(
                ShapeObject(
                    s.shape, s.color, s.size, int(boxes[k][0]), int(boxes[k][1]), extent_for(s.size, image_size)
                )
                for k, s in enumerate(specs)
            )
            return Scene(objects, image_size)
    raise RuntimeError(f"could not place {len(specs)} objects in {max_restarts} attempts")
