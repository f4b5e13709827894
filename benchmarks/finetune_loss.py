"""How much a fine-tuning pilot's adapters changed the model, in its own objective: the flow-matching loss of the
base and of each adapter on the fine-tuning images, on fresh images of the same recipe, and on those fresh images
with the empty prompt (the unconditional branch that classifier-free guidance amplifies).

Every model sees the same images, timesteps and noise (one generator per image set), so the differences are
paired. Adapters are the final weights (``<arm>/<seed folder>/train/rsr``) that ``benchmarks.finetune_pilot``
left under its ``--work`` folder (in the base's fingerprint)::

    python -m benchmarks.finetune_loss                  # -> docs/results/finetune_loss.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.finetune_pilot import ARMS, BASE, TRAIN_IMAGES
from benchmarks.shapes_rows import fingerprint
from thinkpix.models.checkpoint import load_rsr
from thinkpix.pipelines import TrainTarget, load_pipeline
from thinkpix.shapes.dataset import make_dataset
from thinkpix.train.data import load_image_folder
from thinkpix.train.objectives import flow_matching_loss, training_scheduler

IMAGES = 512  # of each set
BATCH = 64
DRAWS = 4  # (timestep, noise) draws per image
FRESH_SEED = 7  # the fresh images: the compositional recipe drawn with another seed than the fine-tuning set's 0


def mean_loss(target: TrainTarget, data, empty_prompt: bool, seed: int) -> float:
    scheduler, generator = training_scheduler(target.pipeline.scheduler), torch.Generator().manual_seed(seed)
    total = 0.0
    with torch.no_grad():
        for start in range(0, IMAGES, BATCH):
            index = torch.arange(start, start + BATCH)
            x0 = target.latents(data.pixels(index), generator)
            cond = target.conditions(captions=["" if empty_prompt else data.captions[i] for i in index.tolist()])
            for _ in range(DRAWS):
                total += float(flow_matching_loss(lambda x, t, c=cond: target.denoise(target.transformer, x, t, c),
                                                  x0, scheduler, generator))
    return total / (IMAGES // BATCH * DRAWS)


def adapters(work: Path) -> list[tuple[str, Path]]:
    """(arm name and seed folder, final weights) of every finished pilot run under ``work``."""
    found = []
    for arm in ARMS.values():
        for weights in sorted((work / arm.slug).glob("seed*/train/rsr")):
            found.append((f"{arm.name}, {weights.parents[1].name}", weights))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=BASE, help="the base the pilot fine-tuned (its --base)")
    parser.add_argument("--work", default="runs/finetune_pilot", help="the pilot's --work folder")
    parser.add_argument("--out", default="docs/results/finetune_loss.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work) / fingerprint(args.base)  # where the pilot keeps this base's adapters
    tuned = load_image_folder(make_dataset(work / "data", n=TRAIN_IMAGES, seed=0, recipe="compositional"))
    fresh = load_image_folder(make_dataset(work / "data-fresh", n=IMAGES, seed=FRESH_SEED, recipe="compositional"))
    sets = {"fine-tuning images": (tuned, False), "fresh images": (fresh, False),
            "fresh images, empty prompt": (fresh, True)}
    rows = []
    for name, weights in [("base", None), *adapters(work)]:
        target = TrainTarget(load_pipeline(args.base))
        if weights is not None:
            load_rsr(target.transformer, weights)
        target.transformer.eval()
        rows.append((name, [mean_loss(target, data, empty, seed) for seed, (data, empty) in enumerate(sets.values())]))
        print(name, rows[-1][1], flush=True)
    base = rows[0][1]
    flags = (("base", args.base), ("work", args.work), ("out", args.out))
    command = "".join(f" --{flag} {value}" for flag, value in flags if value != parser.get_default(flag))
    lines = ["# What the pilot's adapters changed: the flow-matching loss", "",
             f"Produced by `python -m benchmarks.finetune_loss{command}` (adapters of `benchmarks.finetune_pilot` "
             f"in `{work}`, base `{args.base}`). Mean loss over {IMAGES} images x {DRAWS} (timestep, noise) draws, "
             "the same draws for every model; in brackets the change against the base. A ladder arm's weights are "
             "those of its highest rung.", "",
             "| model | " + " | ".join(sets) + " |", "| --- |" + " ---: |" * len(sets)]
    for name, values in rows:
        lines.append(f"| {name} | " + " | ".join(
            f"{v:.5f}" + ("" if name == "base" else f" ({100 * (v / b - 1):+.2f}%)") for v, b in zip(values, base))
            + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
