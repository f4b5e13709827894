"""The training log of a run, from its TensorBoard event files: the loss tables of ``docs/results/shapes_bases.md``.

    python -m benchmarks.training_log runs/pretrain/t2i --steps 100 1000 2000 3000 4000 5000 5750 6500 7000
    python -m benchmarks.training_log runs/demo/finetune --steps 1 10 20 300 --window 1 \
        --tags routing/layer4/expert0_usage routing/layer4/gate_entropy

A resumed run writes one event file per launch; where launches overlap (a run killed after its last
checkpoint repeats the steps since), the latest launch wins, which is the history of the shipped weights.
Several run folders may be given (a run continued from a copied checkpoint in another folder); their event
files are merged by the same rule.
Each cell is the mean of the ``--window`` logged values up to that step, since single-batch losses of
rectified flow swing by a factor of two.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_scalars(run_dirs: str | Path | list[str | Path],
                 tags: tuple[str, ...] = ("train/loss", "train/lr")) -> dict[str, dict[int, float]]:
    """``tag -> {step: value}`` over every event file under ``run_dirs``; later files (by write time) win."""
    run_dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else run_dirs
    files = sorted((f for d in run_dirs for f in Path(d).rglob("events.out.tfevents.*")),
                   key=lambda p: float(p.name.split(".")[3]))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files under {', '.join(map(str, run_dirs))}")
    out: dict[str, dict[int, float]] = {tag: {} for tag in tags}
    for path in files:
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in tags:
            if tag in acc.Tags()["scalars"]:
                out[tag].update({event.step: event.value for event in acc.Scalars(tag)})
    return out


def windowed_means(series: dict[int, float], steps: list[int], window: int) -> list[float | None]:
    """Mean of the ``window`` logged values at or before each step (None where nothing was logged)."""
    known = np.array(sorted(series))
    values = np.array([series[s] for s in known])
    means = []
    for step in steps:
        upto = values[known <= step][-window:]
        means.append(float(upto.mean()) if len(upto) else None)
    return means


def markdown(steps: list[int], rows: dict[str, list[float | None]]) -> str:
    cell = lambda v: "" if v is None else (f"{v:.3f}" if v >= 1e-2 else f"{v:.1e}")  # noqa: E731
    lines = ["| step | " + " | ".join(map(str, steps)) + " |", "|---|" + "---|" * len(steps)]
    lines += [f"| {name} | " + " | ".join(cell(v) for v in values) + " |" for name, values in rows.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="+",
                        help="one run, or the folders of a run continued elsewhere (any order: later launches win)")
    parser.add_argument("--steps", type=int, nargs="+", required=True)
    parser.add_argument("--window", type=int, default=25)
    parser.add_argument("--tags", nargs="+", default=None,
                        help="scalars to tabulate, windowed like the loss (default: train/loss and train/lr)")
    parser.add_argument("--json", default=None, help="also write the table's numbers to this file")
    args = parser.parse_args(argv)
    if args.tags:
        scalars = read_scalars(args.run_dir, tuple(args.tags))
        missing = [tag for tag in args.tags if not scalars[tag]]
        if missing:
            parser.error(f"no values logged for {missing} under {' '.join(args.run_dir)}")
        rows = {tag: windowed_means(scalars[tag], args.steps, args.window) for tag in args.tags}
    else:
        scalars = read_scalars(args.run_dir)
        rows = {"loss": windowed_means(scalars["train/loss"], args.steps, args.window)}
        if scalars["train/lr"]:  # runs from before the schedules existed logged no rate
            rows["learning rate"] = [scalars["train/lr"].get(s) for s in args.steps]
    print(markdown(args.steps, rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": args.steps, "window": args.window, **rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
