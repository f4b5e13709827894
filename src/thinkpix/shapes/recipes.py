"""Named recipes for Shapes-world training sets: which prompts a set draws and which scenes it keeps.

* ``pretrain``: what the shipped bases were pretrained on, and what ``reproduce_tables`` fine-tunes on
  (:func:`~thinkpix.shapes.prompts.training_samples`): a uniform tag of all six, a uniform training prompt
  of it, a scene for it. Held-out bindings are never *stated*, but an image may still *show* one it does
  not state: "a circle and a square" drawn with the circle left of the square shows the held-out fact
  ("circle", "left of", "square").
* ``compositional``: the fine-tuning task of the decisive reproduction (issue 24), modelled on the paper's
  separate fine-tuning set: only the four compositional tags the base is weak on (two_object, counting,
  position, color_attr), their training prompts only, and every scene redrawn until it shows no held-out
  binding at all, stated or not (:func:`depicted_bindings`). The held-out evaluation prompts then test
  compositions the fine-tuning images never contained.
* ``objects``: single objects and colours only (one object a scene, training prompts). A base pretrained on it
  has never drawn two objects, a count, a position or two bound attributes, so fine-tuning it on
  ``compositional`` leaves the adapters something to learn: on the shipped base, pretrained on ``pretrain``,
  the adapters change the loss by under 0.6% (``docs/results/finetune_task.md``).
* ``objects-pairs``: ``objects`` plus two_object, with every scene clean as in ``compositional``. A base
  pretrained on it can draw two objects in one image, which a LoRA fine-tuned on ``objects``' base could not
  teach it (``finetune_task.md``, session 9), but it has never counted, placed or bound attributes.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import permutations

import numpy as np

from thinkpix.shapes.geometry import relation_masks
from thinkpix.shapes.metadata import COUNTING_RANGE, TAGS
from thinkpix.shapes.prompts import (
    HELDOUT_BINDINGS,
    Sample,
    canonical_fact,
    scene_for_metadata,
    training_metadata,
    training_samples,
)
from thinkpix.shapes.scene import DEFAULT_IMAGE_SIZE, Scene, check_choice

COMPOSITIONAL_TAGS = ("two_object", "counting", "position", "color_attr")
MAX_REDRAWS = 1000


@dataclass(frozen=True)
class Recipe:
    """``tags`` drawn uniformly; with ``clean_scenes`` a scene that shows a held-out binding is redrawn."""

    name: str
    tags: tuple[str, ...]
    clean_scenes: bool
    summary: str


RECIPES = {
    recipe.name: recipe
    for recipe in (
        Recipe("pretrain", TAGS, False, "all six tags, the bases' pretraining distribution"),
        Recipe("compositional", COMPOSITIONAL_TAGS, True,
               "two_object, counting, position and color_attr training prompts; no image shows a held-out binding"),
        Recipe("objects", ("single_object", "colors"), False,
               "single_object and colors training prompts only: a base that has not learned composition"),
        Recipe("objects-pairs", ("single_object", "colors", "two_object"), True,
               "single_object, colors and two_object training prompts, no held-out binding shown: a base that draws "
               "two objects but has not learned counts, positions or attribute binding"),
    )
}


def depicted_bindings(objects: Iterable) -> frozenset[tuple]:
    """Every binding an image shows, stated by its prompt or not, in the form of
    :func:`~thinkpix.shapes.prompts.bindings`: each object's (colour, shape); (shape, count) for every shape
    drawn a countable number of times; and every canonical spatial fact between two objects of different
    shapes under GenEval's position rule. ``objects`` have ``shape``, ``color`` and ``box``: a scene's
    objects, or a detector's detections in a rendered image."""
    objects = list(objects)
    found = {("color", obj.color, obj.shape) for obj in objects}
    counts = Counter(obj.shape for obj in objects)
    found |= {("count", shape, n) for shape, n in counts.items() if n in COUNTING_RANGE}
    for a, b in permutations(objects, 2):
        if a.shape == b.shape:
            continue
        masks = relation_masks(a.box, b.box)
        found |= {("position", *canonical_fact(a.shape, rel, b.shape)) for rel, holds in masks.items() if holds}
    return frozenset(found)


def recipe_samples(recipe: str, seed: int, n: int | None = None,
                   image_size: int = DEFAULT_IMAGE_SIZE) -> Iterator[Sample]:
    """``n`` samples (forever if ``None``) of the named recipe, fully determined by ``seed``. ``pretrain``
    is :func:`~thinkpix.shapes.prompts.training_samples` itself, so the sets built before recipes existed
    are reproduced file for file."""
    check_choice("recipe", recipe, tuple(RECIPES))
    spec = RECIPES[recipe]
    if spec.name == "pretrain":
        yield from training_samples(seed, n, image_size)
        return
    rng = np.random.default_rng(seed)
    by_tag: dict[str, list[dict]] = {tag: [] for tag in spec.tags}
    for meta in training_metadata():
        if meta["tag"] in by_tag:
            by_tag[meta["tag"]].append(meta)
    drawn = 0
    while n is None or drawn < n:
        pool = by_tag[spec.tags[rng.integers(len(spec.tags))]]
        meta = pool[rng.integers(len(pool))]
        yield Sample(_clean_scene(meta, rng, image_size, spec.clean_scenes), meta["prompt"], copy.deepcopy(meta))
        drawn += 1


def _clean_scene(meta: dict, rng: np.random.Generator, image_size: int, clean: bool) -> Scene:
    for _ in range(MAX_REDRAWS):
        scene = scene_for_metadata(meta, rng, image_size, training=True)
        if not clean or not depicted_bindings(scene.objects) & HELDOUT_BINDINGS:
            return scene
    raise RuntimeError(f"no scene for {meta['prompt']!r} without a held-out binding in {MAX_REDRAWS} draws")
