"""``thinkpix shapes ...``: the Shapes world's command-line subcommands.

``add_shapes_parser(sub)`` adds ``shapes make-dataset`` and ``shapes prompts`` to the main parser's
subparsers; each sets ``func(args) -> exit code``. A bad value raises ``ValueError`` with a one-line
message, which the main command prints as ``thinkpix shapes: error: ...``.
"""

from __future__ import annotations

import argparse

from thinkpix.argtypes import positive_int
from thinkpix.shapes.dataset import SPLITS, VARIANTS, make_dataset
from thinkpix.shapes.metadata import write_metadata_jsonl
from thinkpix.shapes.prompts import evaluation_metadata, training_metadata
from thinkpix.shapes.recipes import RECIPES
from thinkpix.shapes.scene import DEFAULT_IMAGE_SIZE


def _make_dataset(args: argparse.Namespace) -> int:
    out = make_dataset(args.out, args.n, args.seed, args.image_size, args.variant, args.split, args.recipe)
    recipe = f", {args.recipe} recipe" if args.recipe != "pretrain" else ""
    print(f"wrote {args.n} {args.variant} images ({args.split} split{recipe}) to {out}")
    return 0


def _prompts(args: argparse.Namespace) -> int:
    records = training_metadata() if args.split == "train" else evaluation_metadata()
    path = write_metadata_jsonl(args.out, records)
    print(f"wrote {len(records)} {args.split} prompts (GenEval metadata) to {path}")
    return 0


def add_shapes_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``shapes make-dataset`` and ``shapes prompts`` to ``subparsers``; returns the ``shapes`` parser."""
    shapes = subparsers.add_parser(
        "shapes",
        help="Shapes world: export image datasets and GenEval-format prompt lists",
        description="The Shapes world: procedural scenes of flat shapes that mirror GenEval and DPG-Bench.",
    )
    commands = shapes.add_subparsers(dest="shapes_command", required=True, metavar="{make-dataset,prompts}")

    make = commands.add_parser(
        "make-dataset",
        help="write a training or held-out image dataset",
        description=(
            "Write N rendered images. --variant caption: <out>/00000.png ... plus metadata.jsonl "
            '({"file_name", "text"} lines, the Hugging Face imagefolder layout). --variant class: '
            "single-object images in <out>/<colour>_<shape>/ (the torchvision ImageFolder layout). "
            "The eval split holds only the compositions held out of training."
        ),
    )
    make.add_argument("--out", required=True, help="output folder (created if missing)")
    make.add_argument("--n", type=positive_int, required=True, help="number of images")
    make.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files (default 0)")
    make.add_argument(
        "--image-size",
        type=int,
        default=DEFAULT_IMAGE_SIZE,
        help=f"image side in pixels (default {DEFAULT_IMAGE_SIZE})",
    )
    make.add_argument(
        "--variant", choices=VARIANTS, default="caption", help="caption or class layout (default caption)"
    )
    make.add_argument("--split", choices=SPLITS, default="train", help="train or held-out eval split (default train)")
    make.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        default="pretrain",
        help="which training prompts and scenes (captioned train split only): "
        + "; ".join(f"{r.name}: {r.summary}" for r in RECIPES.values())
        + " (default pretrain)",
    )
    make.set_defaults(func=_make_dataset)

    prompts = commands.add_parser(
        "prompts",
        help="write the GenEval-format prompt metadata of a split",
        description=(
            "Write one GenEval metadata record per line (tag, prompt, include, exclude): the format of "
            "GenEval's evaluation_metadata.jsonl, read by thinkpix's Shapes scorer."
        ),
    )
    prompts.add_argument(
        "--split", choices=SPLITS, default="eval", help="train or held-out eval prompts (default eval)"
    )
    prompts.add_argument("--out", required=True, help="output .jsonl file (parent folders are created)")
    prompts.set_defaults(func=_prompts)
    return shapes
