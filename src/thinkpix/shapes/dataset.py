"""Export Shapes-world images as ordinary image datasets.

* ``variant="caption"``: ``<out>/00000.png ...`` plus ``<out>/metadata.jsonl`` with lines
  ``{"file_name": "00000.png", "text": "a photo of ..."}``, the layout the Hugging Face
  ``imagefolder`` loader reads. ``split="train"`` draws from
  :func:`~thinkpix.shapes.prompts.training_samples` (``recipe="pretrain"``) or from another named recipe
  of :mod:`~thinkpix.shapes.recipes` (``recipe="compositional"``: the fine-tuning task of the decisive
  reproduction); ``split="eval"`` cycles through the held-out
  :func:`~thinkpix.shapes.prompts.evaluation_metadata` prompts.
* ``variant="class"``: single-object images in ``<out>/<colour>_<shape>/00000.png``, one class per
  (colour, shape) pair, the ``torchvision.datasets.ImageFolder`` layout. ``split="train"`` uses the
  pairs outside :data:`~thinkpix.shapes.prompts.HELDOUT_COLOR_SHAPES`, ``split="eval"`` only those.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from thinkpix.shapes.prompts import (
    HELDOUT_COLOR_SHAPES,
    evaluation_metadata,
    scene_for_metadata,
)
from thinkpix.shapes.recipes import RECIPES, recipe_samples
from thinkpix.shapes.render import render_scene
from thinkpix.shapes.scene import (
    COLORS,
    DEFAULT_IMAGE_SIZE,
    SHAPES,
    ObjectSpec,
    check_choice,
    check_image_size,
    place_objects,
    random_spec,
)

VARIANTS = ("caption", "class")
SPLITS = ("train", "eval")


def class_names(split: str = "train") -> list[str]:
    """``<colour>_<shape>`` class folder names of a split, in a fixed order."""
    check_choice("split", split, SPLITS)
    held_out = split == "eval"
    return [f"{c}_{s}" for s in SHAPES for c in COLORS if ((c, s) in HELDOUT_COLOR_SHAPES) == held_out]


def _save(image: np.ndarray, path: Path) -> None:
    """Write through a temporary file and rename, so that a process reading the folder while another
    (re)writes the same deterministic set never sees a half-written PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)


def make_dataset(
    out_dir: str | Path,
    n: int,
    seed: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
    variant: str = "caption",
    split: str = "train",
    recipe: str = "pretrain",
) -> Path:
    """Write ``n`` images of ``variant``, ``split`` and (captioned training sets only) ``recipe`` to
    ``out_dir`` (see the module docstring); deterministic in ``seed``. Returns ``out_dir``."""
    check_choice("variant", variant, VARIANTS)
    check_choice("split", split, SPLITS)
    check_choice("recipe", recipe, tuple(RECIPES))
    if recipe != "pretrain" and (variant, split) != ("caption", "train"):
        raise ValueError(f"recipe={recipe!r} draws captioned training sets only: use variant='caption', "
                         f"split='train' (got variant={variant!r}, split={split!r})")
    check_image_size(image_size)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be a positive int")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if variant == "class":
        rng = np.random.default_rng(seed)
        classes = class_names(split)
        for index in range(n):
            color, shape = classes[index % len(classes)].split("_")
            spec = random_spec(rng, shape)
            scene = place_objects([ObjectSpec(shape, color, spec.size)], rng, image_size)
            _save(render_scene(scene), out / f"{color}_{shape}" / f"{index:05d}.png")
        return out
    if split == "train":
        pairs = ((s.scene, s.prompt) for s in recipe_samples(recipe, seed, n, image_size))
    else:
        rng = np.random.default_rng(seed)
        prompts = evaluation_metadata()
        metas = (prompts[index % len(prompts)] for index in range(n))
        pairs = ((scene_for_metadata(meta, rng, image_size), meta["prompt"]) for meta in metas)
    lines = []
    for index, (scene, prompt) in enumerate(pairs):
        name = f"{index:05d}.png"
        _save(render_scene(scene), out / name)
        lines.append(json.dumps({"file_name": name, "text": prompt}))
    tmp = out / f".metadata.jsonl.{os.getpid()}.tmp"
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, out / "metadata.jsonl")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m thinkpix.shapes.dataset OUT --n N --seed S [--image-size 32] [--variant caption] [--recipe R]``"""
    parser = argparse.ArgumentParser(description="Export a Shapes-world image dataset.")
    parser.add_argument("out_dir")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    parser.add_argument("--variant", choices=VARIANTS, default="caption")
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("--recipe", choices=tuple(RECIPES), default="pretrain")
    args = parser.parse_args(argv)
    out = make_dataset(args.out_dir, args.n, args.seed, args.image_size, args.variant, args.split, args.recipe)
    print(f"wrote {args.n} {args.variant} images to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
