"""Scenes drawn the way small models draw them, and scenes the scorer must refuse: the detector's test bench.

A case is a GenEval metadata record, a list of :class:`Drawn` objects (any centre, size and tilt; they may touch
each other or the border) and an image drawn from them by :func:`draw` with the family's perturbations. Its
*truth* is what :func:`~thinkpix.shapes.score.evaluate` says on the drawn objects themselves (an oracle: true
shapes, colours and boxes; bars, specks and cut shapes are no objects; off-palette objects have unknown colour).

Families (:data:`ROBUSTNESS` keep the scene's meaning, :data:`STRICTNESS` add what is not a world shape):
``clean``, ``wobble`` and ``heavy wobble`` (outline lumps of a pixel, :data:`WOBBLE`), ``tilt`` (5-10 degrees),
``antialias``, ``jpeg`` (quality 70-90, 4:2:0 chroma), ``noise`` (Gaussian, sd 8-16), ``blur`` (Gaussian, sd
0.4-0.7 px), ``occlusion`` (a bite of up to 15% of one object), ``touching`` (two objects moved until they
touch), ``border`` (an object moved against the border), ``model-like`` (wobble, tilt, antialias and JPEG
together); ``bar`` (2-3.5 times as long as wide), ``ellipse`` (1.8-2.5), ``speck`` (a named shape shrunk to
:data:`SPECK_AREA` of the smallest object, :func:`speck_of`), ``half-shape`` (cut in half by the border),
``off-palette`` (an object in purple, orange or grey, :func:`_off_palette`) and ``same-colour touching``. Each
case is drawn twice: from a matching (metadata, scene) pair and from one corrupted by
:func:`~thinkpix.shapes.accuracy.corrupt` (or, for strictness families, with the needed object replaced by the
distractor), so each family reports accept rates on correct and on corrupted scenes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image
from scipy import ndimage

from thinkpix.shapes import prompts as P
from thinkpix.shapes.accuracy import corrupt
from thinkpix.shapes.detect import FILL, UNKNOWN_COLOR, Detection, DetectionResult, size_of
from thinkpix.shapes.metadata import TAGS
from thinkpix.shapes.render import shape_coverage
from thinkpix.shapes.scene import COLORS, SHAPES, Scene, extent_for
from thinkpix.shapes.score import evaluate

_EIGHT = np.ones((3, 3), dtype=bool)
OFF_PALETTE = {"purple": (128, 0, 255), "orange": (255, 128, 0), "grey": (128, 128, 128)}
WOBBLE = {"wobble": 0.06, "model-like": 0.06, "heavy wobble": 0.12}
"""Share of outline pixels toggled: "wobble" is a lump every ~4 px of outline at 32x32; "heavy wobble" doubles it
(a stress test beyond the acceptance bar: an 8-px circle then often looks as much like a diamond)."""
ROBUSTNESS = ("clean", "wobble", "heavy wobble", "tilt", "antialias", "jpeg", "noise", "blur", "occlusion",
              "touching", "border", "model-like")
STRICTNESS = ("bar", "ellipse", "speck", "half-shape", "off-palette", "same-colour touching")
FAMILIES = ROBUSTNESS + STRICTNESS
SPECK_AREA = (0.2, 0.4)
"""A speck's drawn area, as shares of the world's smallest object's: below the detector's ``SPECK_FRACTION``
(0.5), above the 6 pixels the old detector took for an object."""
FALSIFIED_BY_OFF_PALETTE = ("counting", "colors", "color_attr")
"""Tags whose prompts an off-palette object can make false (an extra counted shape, a lost stated colour): the
tags of the ``off-palette`` family's corrupted cases."""


@dataclass(frozen=True)
class Drawn:
    """One thing drawn: a world ``shape`` (or ``bar``/``ellipse``, which are no shapes), its fill ``rgb``,
    palette colour name (or ``unknown``), centre, side, tilt, aspect (width over height) and whether it counts
    as an object (cut shapes and specks do not)."""

    shape: str
    rgb: tuple[int, int, int]
    color: str
    cx: float
    cy: float
    extent: float
    angle: float = 0.0
    aspect: float = 1.0
    is_object: bool = True


def from_scene(scene: Scene) -> list[Drawn]:
    return [Drawn(o.shape, COLORS[o.color], o.color, o.x + o.extent / 2, o.y + o.extent / 2, float(o.extent))
            for o in scene.objects]


def coverage(obj: Drawn, image_size: int) -> np.ndarray:
    """Pixel coverage of one drawn thing (bars are squares and ellipses circles squeezed by ``aspect``)."""
    base = {"bar": "square", "ellipse": "circle"}.get(obj.shape, obj.shape)
    if obj.aspect == 1.0:
        return shape_coverage(base, obj.cx, obj.cy, obj.extent, image_size, obj.angle)
    big = int(np.ceil(image_size * max(obj.aspect, 1 / obj.aspect)))
    square = shape_coverage(base, big / 2, big / 2, obj.extent, big, obj.angle)
    zoomed = ndimage.zoom(square, (1 / max(1.0, 1 / obj.aspect), 1 / max(1.0, obj.aspect)), order=1)
    canvas = np.zeros((image_size, image_size))
    h, w = zoomed.shape
    y0, x0 = int(round(obj.cy - h / 2)), int(round(obj.cx - w / 2))
    ys, xs = slice(max(y0, 0), min(y0 + h, image_size)), slice(max(x0, 0), min(x0 + w, image_size))
    canvas[ys, xs] = zoomed[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    return canvas


def draw(objects: list[Drawn], image_size: int, rng: np.random.Generator, antialias: bool = False,
         wobble: float = 0.0) -> np.ndarray:
    """Float RGB image of ``objects`` on black, later ones on top; ``antialias`` blends edges by coverage,
    ``wobble`` > 0 adds and removes 1-pixel lumps on that share of each outline."""
    image = np.zeros((image_size, image_size, 3))
    for obj in objects:
        cov = coverage(obj, image_size)
        if wobble:
            cov = _wobble(cov >= 0.5, rng, wobble).astype(np.float64)
        alpha = cov if antialias else (cov >= 0.5).astype(np.float64)
        image = image * (1 - alpha[..., None]) + np.asarray(obj.rgb, dtype=np.float64) * alpha[..., None]
    return image


def _wobble(mask: np.ndarray, rng: np.random.Generator, rate: float) -> np.ndarray:
    """Toggle 1-pixel lumps along the outline: bumps on ``rate`` of the rim pixels outside, dents on ``rate`` of
    the edge pixels inside."""
    out = mask.copy()
    outline = mask ^ ndimage.binary_erosion(mask)
    rim = ndimage.binary_dilation(structure=_EIGHT, input=mask) & ~mask
    for ys, xs, value in ((*np.nonzero(rim), True), (*np.nonzero(outline), False)):
        pick = rng.random(len(ys)) < rate
        out[ys[pick], xs[pick]] = value
    return out


def finish(image: np.ndarray, family: str, rng: np.random.Generator) -> np.ndarray:
    """Image-level perturbations of ``family`` (noise, blur, JPEG), then uint8."""
    if family == "noise":
        image = image + rng.normal(0, rng.uniform(8, 16), image.shape)
    if family == "blur":
        image = ndimage.gaussian_filter(image, sigma=(rng.uniform(0.4, 0.7),) * 2 + (0,))
    image = np.clip(image, 0, 255).round().astype(np.uint8)
    if family in ("jpeg", "model-like"):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=int(rng.integers(70, 91)), subsampling=2)
        image = np.asarray(Image.open(buffer).convert("RGB"))
    return image


def oracle(objects: list[Drawn], image_size: int) -> DetectionResult:
    """What a perfect detector would report: every drawn object that counts, with its true box."""
    detections = []
    for obj in objects:
        if not obj.is_object or obj.shape not in SHAPES:
            continue
        ys, xs = np.nonzero(coverage(obj, image_size) >= 0.5)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        detections.append(Detection(obj.shape, obj.color, size_of(box, image_size), box, len(xs), 1.0))
    return DetectionResult(tuple(detections), image_size, 0)


def geometric(objects: list[Drawn], family: str, image_size: int, rng: np.random.Generator) -> list[Drawn]:
    """The per-object changes of a robustness family: tilt, touching, border, occlusion (a black bite)."""
    objects = list(objects)
    if family in ("tilt", "model-like"):
        objects = [replace(o, angle=float(rng.choice([-1, 1]) * rng.uniform(5, 10))) for o in objects]
    if family == "touching" and len(objects) >= 2:
        objects = _touch(objects, rng, image_size)
    if family == "border":
        k = int(rng.integers(len(objects)))
        o = objects[k]
        side = rng.integers(4)
        half = o.extent / 2
        cx = half if side == 0 else image_size - half if side == 1 else o.cx
        cy = half if side == 2 else image_size - half if side == 3 else o.cy
        moved = [*objects[:k], replace(o, cx=float(cx), cy=float(cy)), *objects[k + 1 :]]
        objects = objects if _overlaps(moved, k, image_size) else moved
    if family == "occlusion":
        k = int(rng.integers(len(objects)))
        o = objects[k]
        direction = rng.uniform(0, 2 * np.pi)
        radius = o.extent * 0.2
        objects.append(Drawn("circle", (0, 0, 0), "background", o.cx + np.cos(direction) * o.extent * 0.55,
                             o.cy + np.sin(direction) * o.extent * 0.55, 2 * radius, is_object=False))
    return objects


def _overlaps(objects: list[Drawn], k: int, image_size: int) -> bool:
    """Whether object ``k``, grown by a pixel, meets any other object (touching counts) or leaves the image."""
    grown = ndimage.binary_dilation(structure=_EIGHT, input=coverage(objects[k], image_size) >= 0.5)
    if coverage(objects[k], image_size).sum() < 0.95 * _area(objects[k]):
        return True
    return any((grown & (coverage(o, image_size) >= 0.5)).any() for n, o in enumerate(objects) if n != k)


def _area(obj: Drawn) -> float:
    return float(coverage(replace(obj, cx=32.0, cy=32.0), 64).sum())


def _touch(objects: list[Drawn], rng: np.random.Generator, image_size: int = 32) -> list[Drawn]:
    """Slide object ``j`` along the line of centres towards ``i`` until their outlines touch, for a pair whose
    move meets no third object."""
    for _ in range(5):
        i, j = (int(n) for n in rng.choice(len(objects), 2, replace=False))
        a, moved = objects[i], objects[j]
        mask_a = coverage(a, image_size) >= 0.5
        step = np.array([a.cx - moved.cx, a.cy - moved.cy])
        step = step / max(np.linalg.norm(step), 1e-9) * 0.25
        for _ in range(400):
            trial = replace(moved, cx=moved.cx + step[0], cy=moved.cy + step[1])
            if (ndimage.binary_dilation(structure=_EIGHT, input=coverage(trial, image_size) >= 0.5) & mask_a).any():
                break
            moved = trial
        candidate = [*objects[:j], moved, *objects[j + 1 :]]
        others = [o for n, o in enumerate(candidate) if n != i]
        if not _overlaps(others, others.index(moved), image_size):
            return candidate
    return objects


def place_free(objects: list[Drawn], new: Drawn, rng: np.random.Generator, image_size: int,
               tries: int = 100) -> list[Drawn] | None:
    """``objects`` plus ``new`` moved to a random spot where it touches nothing (``None`` if none is found)."""
    half = new.extent / 2 + 1  # extent is the long side of bars and ellipses
    taken = np.zeros((image_size, image_size), dtype=bool)
    for obj in objects:
        taken |= coverage(obj, image_size) >= 0.5
    shape = coverage(replace(new, cx=image_size / 2, cy=image_size / 2), image_size) >= 0.5
    for _ in range(tries):
        cx, cy = (int(v) for v in rng.integers(int(np.ceil(half)), int(image_size - half) + 1, 2))
        moved = np.roll(shape, (cy - image_size // 2, cx - image_size // 2), axis=(0, 1))
        if not (ndimage.binary_dilation(structure=_EIGHT, input=moved) & taken).any():
            return [*objects, replace(new, cx=float(cx), cy=float(cy))]
    return None

def _place_on_border(objects: list[Drawn], new: Drawn, rng: np.random.Generator, image_size: int,
                     tries: int = 100) -> list[Drawn] | None:
    """``objects`` plus ``new`` centred on a random point of the border (so cut in half), touching nothing."""
    taken = np.zeros((image_size, image_size), dtype=bool)
    for obj in objects:
        taken |= coverage(obj, image_size) >= 0.5
    for _ in range(tries):
        along, side = float(rng.uniform(new.extent / 2, image_size - new.extent / 2)), int(rng.integers(4))
        edge = 0.0 if side % 2 == 0 else float(image_size)
        moved = replace(new, cx=edge, cy=along) if side < 2 else replace(new, cx=along, cy=edge)
        if not (ndimage.binary_dilation(structure=_EIGHT, input=coverage(moved, image_size) >= 0.5) & taken).any():
            return [*objects, moved]
    return None


def _distractor(family: str, rng: np.random.Generator, like: Drawn, image_size: int) -> Drawn:
    """The thing a strictness family adds: not a world shape (or, ``off-palette``, a shape of unknown colour)."""
    if family == "bar":
        aspect = rng.uniform(2.0, 3.5)
        return replace(like, shape="bar", extent=like.extent, aspect=aspect if rng.random() < 0.5 else 1 / aspect,
                       angle=0.0)
    if family == "ellipse":
        aspect = rng.uniform(1.8, 2.5)
        return replace(like, shape="ellipse", aspect=aspect if rng.random() < 0.5 else 1 / aspect, angle=0.0)
    if family == "half-shape":
        shape = SHAPES[rng.integers(len(SHAPES))]
        side = rng.integers(4)
        cx = 0.0 if side == 0 else float(image_size) if side == 1 else like.cx
        cy = 0.0 if side == 2 else float(image_size) if side == 3 else like.cy
        return replace(like, shape=shape, cx=cx, cy=cy, is_object=False)
    name = list(OFF_PALETTE)[rng.integers(len(OFF_PALETTE))]
    return replace(like, rgb=OFF_PALETTE[name], color=UNKNOWN_COLOR)


def strict_objects(family: str, objects: list[Drawn], meta: dict, corrupted: bool, rng: np.random.Generator,
                   image_size: int) -> list[Drawn]:
    """Corrupted: a needed object becomes the distractor. Correct: the distractor is added somewhere free (a speck
    has the shape of a named object, so that read as a shape it would break a count). ``off-palette``: see
    :func:`_off_palette`."""
    k = int(rng.integers(len(objects)))  # every object of a matching scene is one the prompt names
    if family == "speck":
        distractor = speck_of(objects[k], rng, image_size)
    else:
        distractor = _distractor(family, rng, objects[k], image_size)
    if family == "off-palette":
        return _off_palette(objects, k, distractor, meta, corrupted, rng, image_size)
    if corrupted:
        return [*objects[:k], distractor, *objects[k + 1 :]]
    if family == "half-shape":
        return _place_on_border(objects, distractor, rng, image_size) or objects
    return place_free(objects, distractor, rng, image_size) or objects


def speck_of(obj: Drawn, rng: np.random.Generator, image_size: int) -> Drawn:
    """``obj`` shrunk to a speck: the same shape, no object, drawn over :data:`SPECK_AREA` of the world's smallest
    object's area (its side shrinks until the drawing is no larger, wherever on the pixel grid it lands)."""
    smallest = FILL["triangle"] * extent_for("small", image_size) ** 2
    low, high = (share * smallest for share in SPECK_AREA)
    extent = float(np.sqrt(rng.uniform(low, high) / FILL[obj.shape]))
    speck = replace(obj, extent=extent, angle=0.0, is_object=False)
    while (coverage(speck, image_size) >= 0.5).sum() > high:
        speck = replace(speck, extent=0.9 * speck.extent)
    return speck


def _off_palette(objects: list[Drawn], k: int, distractor: Drawn, meta: dict, corrupted: bool,
                 rng: np.random.Generator, image_size: int) -> list[Drawn]:
    """Corrupted (a tag of :data:`FALSIFIED_BY_OFF_PALETTE`): a counted shape gains a small one of unknown colour, or a
    needed object of a colour prompt is drawn off the palette (its stated colour is lost). Correct: a needed object
    of an uncoloured prompt is drawn off the palette (it still counts), or a colour prompt gains an off-palette
    object of a shape it does not name."""
    coloured = any("color" in item for item in meta["include"])
    if corrupted and not coloured:  # small, to find room in a crowded counting scene
        small = replace(distractor, extent=float(extent_for("small", image_size)))
        return place_free(objects, small, rng, image_size) or objects
    if corrupted or not coloured:
        return [*objects[:k], distractor, *objects[k + 1 :]]
    absent = [s for s in SHAPES if s not in {item["class"] for item in meta["include"]}]
    return place_free(objects, replace(distractor, shape=absent[rng.integers(len(absent))]), rng,
                      image_size) or objects


@dataclass(frozen=True)
class Case:
    """One test image: the prompt's metadata, the image, and whether the prompt is true of what was drawn."""

    family: str
    metadata: dict
    image: np.ndarray
    truth: bool


def make_case(family: str, index: int, corrupted: bool, rng: np.random.Generator, image_size: int = 32) -> Case:
    """Case ``index`` of ``family`` (tags in turn; ``same-colour touching`` always counts), matching or corrupted."""
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is not allowed; allowed values: {', '.join(FAMILIES)}")
    tags = FALSIFIED_BY_OFF_PALETTE if family == "off-palette" and corrupted else TAGS
    tag = "counting" if family == "same-colour touching" else tags[index % len(tags)]
    records = [m for m in P.all_metadata() if m["tag"] == tag]
    meta = records[rng.integers(len(records))]
    scene = P.scene_for_metadata(meta, rng, image_size)
    if family == "same-colour touching":
        colour = scene.objects[0].color
        scene = Scene(tuple(replace(o, color=colour) for o in scene.objects), image_size)
    if corrupted and family not in STRICTNESS[:-1]:
        meta, scene, _ = corrupt(meta, scene, rng)
    objects = from_scene(scene)
    if family in STRICTNESS[:-1]:
        objects = strict_objects(family, objects, meta, corrupted, rng, image_size)
    else:
        objects = geometric(objects, "touching" if family == "same-colour touching" else family, image_size, rng)
    image = draw(objects, image_size, rng, antialias=family in ("antialias", "model-like"),
                 wobble=WOBBLE.get(family, 0.0))
    return Case(family, meta, finish(image, family, rng), evaluate(oracle(objects, image_size), meta)[0])
