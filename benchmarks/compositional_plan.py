"""What the decisive reproduction costs: one row's measured cost per training step and per sampled image, and
the run plan of the whole design on this machine (``python -m benchmarks.reproduce_compositional --plan``).

Each kind of row (its method and fields; a recommended-gate row is measured with the paper gate until #19's
preset exists, the per-step work is the same) trains ``STEPS`` steps on the compositional recipe and samples
``IMAGES`` held-out images, timed apart from loading; the measurement is cached per kind in
``<rows-dir>/cost-<base fingerprint>.json``. A row's cost is then the budget's steps times the seconds per step
plus its held-out and training-prompt images times the seconds per image. Timings are taken under whatever else
runs on the machine; the load average is stored with them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from benchmarks.finetune_pilot import IMAGES_PER_TAG
from benchmarks.shapes_rows import Budget, Row, finetuned, fingerprint, geneval_row, spread
from thinkpix.shapes.dataset import make_dataset
from thinkpix.shapes.prompts import evaluation_metadata

STEPS = 20
IMAGES = 32


def measure(row: Row, base: str, budget: Budget, data: Path, out: Path) -> dict:
    """Seconds per training step and per sampled image of ``row`` (not counting model loading)."""
    target, cost = finetuned(base, data, Row(row.name, row.method, row.fields), 0, STEPS, budget.batch_size,
                             out / "train")
    records = spread(evaluation_metadata(), IMAGES // 2)
    sampled = geneval_row(target, records, out / "geneval", Budget(1, 1, samples=2,
                                                                   sample_steps=budget.sample_steps), seed=0)
    return {"seconds_per_step": cost["train_seconds"] / STEPS if row.method != "base" else 0.0,
            "seconds_per_image": sampled["sample_seconds"] / sampled["images"],
            "load_average": os.getloadavg()[0], "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def kind(row: Row) -> str:
    return json.dumps([row.method, row.fields], sort_keys=True)


def print_plan(design: list, budget: Budget, protocol_name: str, held_out_images: int, work: Path, rows_dir: Path,
               base: str = "shapes-t2i") -> int:
    """Measure every kind of row of ``design`` not measured yet, then print (and write to
    ``<rows-dir>/plan-<held-out images>.md``) the hours each row and the whole design take."""
    path = rows_dir / f"cost-{fingerprint(base)}.json"
    measured = json.loads(path.read_text()) if path.is_file() else {}
    for plan in design:
        if kind(plan.row) not in measured:
            data = make_dataset(work / "data", n=budget.train_images, seed=0, recipe="compositional")
            measured[kind(plan.row)] = measure(plan.row, base, budget, data, work / "cost" / plan.row.slug)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(measured, indent=2))
    images = held_out_images + sum(IMAGES_PER_TAG.values())
    lines = [f"Run plan at {budget.finetune_steps} steps, batch {budget.batch_size}; per (row, seed): "
             f"{held_out_images} held-out images (`{protocol_name}`) + {sum(IMAGES_PER_TAG.values())} "
             "training-prompt images. Measured by `python -m benchmarks.reproduce_compositional --plan` "
             f"({STEPS} steps and {IMAGES} images per kind of row, one torch thread, shared machine).", "",
             "| row | gate | seeds | s/step | s/image | minutes per seed | hours, all seeds | load avg |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    total = 0.0
    for plan in design:
        cost = measured[kind(plan.row)]
        seconds = budget.finetune_steps * cost["seconds_per_step"] + images * cost["seconds_per_image"]
        total += seconds * plan.seeds
        lines.append(f"| {plan.row.name} | {plan.gate or '-'} | {plan.seeds} | {cost['seconds_per_step']:.2f} | "
                     f"{cost['seconds_per_image']:.2f} | {seconds / 60:.1f} | {seconds * plan.seeds / 3600:.2f} | "
                     f"{cost['load_average']:.1f} |")
    lines += ["", f"Total: {total / 3600:.1f} hours in one process; about {total / 7200:.1f} hours in two "
              "(the same command in two processes) when each gets a core."]
    print("\n".join(lines))
    (rows_dir / f"plan-{held_out_images}.md").write_text("\n".join(lines) + "\n")
    return 0
