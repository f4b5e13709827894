"""Which classifier-free guidance do the Shapes bases sample with? ``docs/results/guidance_interval.md``.

Plain CFG at scale 4 made the shipped text-to-image base draw an empty black image for most uncoloured
single-object prompts ("a photo of a triangle"): at high noise the guided velocity points away from the
unconditional mean, which holds more foreground than one object does, and the sample collapses to the
background. Kynkäänniemi et al. 2024 ("Applying Guidance in a Limited Interval Improves Sample and
Distribution Quality in Diffusion Models") guide only in a middle band of noise levels. This sweep
measures guidance applied at noise levels ``0 <= sigma <= high`` for several ``high`` and scales, on
*training* prompts and a selection seed that no reported measurement uses (``base_quality`` draws seeds
0 and 1000), and picks the ``high`` with the best selection score at the scale every reported number uses
(``--choose-scale``, 4; the other scales show what a stronger guidance would do):

* ``shapes-t2i``: the mean of Shapes-GenEval ``overall`` on the 342 training prompts (one image each) and
  the single-object accuracy (4 prompts x 16 images); colours (20 training pairs x 4 images) and the share
  of images where the detector finds nothing are reported too;
* ``shapes-class``: the share of samples where the detector finds exactly the named coloured shape.

Each setting's numbers are cached in ``--work``, so two processes can split the grid (``--highs``) and a
last run over the whole grid writes the report; ``--ship`` then writes the chosen intervals into the shipped
bases' ``model_index.json`` (their weights do not change):

    python -m benchmarks.guidance_interval --out docs/results/guidance_interval.md --ship
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.base_quality import wilson
from benchmarks.shapes_rows import fingerprint
from thinkpix.eval.geneval import generate_geneval, score_geneval_folder
from thinkpix.pipelines import SHIPPED, TrainTarget
from thinkpix.sampling import load_target
from thinkpix.shapes.detect import detect_shapes
from thinkpix.shapes.prompts import colors_metadata, training_metadata
from thinkpix.shapes.score import score_image


def use_interval(target: TrainTarget, high: float) -> None:
    """Make ``(0, high)`` the pipeline's default interval, as a shipped base carries it (``high`` 1: plain CFG)."""
    target.pipeline.register_to_config(guidance_interval=None if high >= 1 else [0.0, high])


def empty_share(folder: Path) -> float:
    files = sorted(folder.glob("*/samples/*.png"))
    return sum(not detect_shapes(np.asarray(Image.open(f).convert("RGB"))).detections for f in files) / len(files)


def t2i_setting(target: TrainTarget, work: Path, scale: float, seed: int, steps: int) -> dict:
    train = training_metadata()
    groups = {"train": (train, 1), "single_object": ([r for r in train if r["tag"] == "single_object"], 16),
              "colors": ([r for r in train if r["tag"] == "colors"], 4)}
    out = {}
    for name, (records, samples) in groups.items():
        folder = generate_geneval(target, records, work / name, samples=samples, seed=seed, steps=steps,
                                  guidance_scale=scale, progress=False)
        scores, images = score_geneval_folder(folder)
        correct = sum(r.correct for r in images)
        out[name] = {"overall": scores["overall"], "accuracy": correct / len(images),
                     "ci95": wilson(correct, len(images)), "images": len(images), "empty": empty_share(folder)}
    out["selection"] = (out["train"]["overall"] + out["single_object"]["accuracy"]) / 2
    return out


def class_setting(target: TrainTarget, scale: float, seed: int, steps: int, per_class: int) -> dict:
    trained = sorted({r["include"][0]["color"] + "_" + r["include"][0]["class"] for r in training_metadata()
                      if r["tag"] == "colors"})  # the 20 classes the class base was trained on
    labels = [c for c in trained for _ in range(per_class)]
    images = np.concatenate([target.sample(labels[i : i + 100], seed=seed + i, steps=steps, guidance_scale=scale)
                             for i in range(0, len(labels), 100)])
    images = (images * 255).round().clip(0, 255).astype(np.uint8)
    correct = [score_image(image, colors_metadata(*label.split("_"))).correct for label, image in zip(labels, images)]
    empty = [not detect_shapes(image).detections for image in images]
    return {"accuracy": float(np.mean(correct)), "ci95": wilson(int(np.sum(correct)), len(correct)),
            "images": len(images), "empty": float(np.mean(empty)), "selection": float(np.mean(correct))}


def cached(path: Path, compute, *args) -> dict:
    """``compute(*args)`` with its run time, read from ``path`` when an earlier run wrote it."""
    if path.is_file():
        return json.loads(path.read_text())
    started = time.perf_counter()
    result = compute(*args)
    result["seconds"] = time.perf_counter() - started
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return result


def ship_interval(asset: str, key: str) -> None:
    """Make the ``high`` of ``key`` (``high@scale``) the default interval of the shipped base ``asset``."""
    high = float(key.split("@")[0])
    index = SHIPPED[asset] / "model_index.json"
    config = json.loads(index.read_text())
    config["guidance_interval"] = None if high >= 1 else [0.0, high]
    index.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def shipped(kind: str, args: argparse.Namespace) -> str:
    if kind in args.shipped:
        return "written into the shipped base's `model_index.json` by this run (`--ship`)"
    return "not written into the shipped base by this run"


def report(results: dict, args: argparse.Namespace) -> str:
    lines = ["# Guidance interval for the Shapes bases", "",
             f"Written by `python -m benchmarks.guidance_interval` (selection seed {args.seed}, {args.steps} Euler "
             "steps; guidance at noise levels `0 <= sigma <= high`, `high = 1` is plain CFG). Training prompts "
             "only; the reported base scores (`shapes_bases.md`) use other seeds. Brackets: 95% Wilson intervals. "
             "The chosen setting is the best of several on one seed, so its selection score overstates what it "
             "scores on other seeds; `shapes_bases.md` has those.", ""]
    if "t2i" in results:
        lines += ["## `shapes-t2i`", "", f"Weights fingerprint `{results['weights']['t2i']}`.", "",
                  "| high | scale | selection | training overall | single object (64) | colours (80) | "
                  "empty images, single object |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for key, r in results["t2i"].items():
            high, scale = key.split("@")
            single = r["single_object"]
            lines.append(f"| {high} | {scale} | {pct(r['selection'])} | {pct(r['train']['overall'])} | "
                         f"{pct(single['accuracy'])} [{pct(single['ci95'][0])}-{pct(single['ci95'][1])}] | "
                         f"{pct(r['colors']['accuracy'])} | {pct(single['empty'])} |")
        lines += ["", f"Chosen: `{results['chosen']['t2i']}` (high@scale; the best selection score at scale "
                  f"{args.choose_scale:g}); {shipped('t2i', args)}.", ""]
    if "class" in results:
        lines += ["## `shapes-class`", "", f"Weights fingerprint `{results['weights']['class']}`. Detector finds "
                  f"exactly the named coloured shape, {args.per_class} samples per trained class.", "",
                  "| high | scale | exact class | empty images |", "| ---: | ---: | ---: | ---: |"]
        for key, r in results["class"].items():
            high, scale = key.split("@")
            lines.append(f"| {high} | {scale} | {pct(r['accuracy'])} [{pct(r['ci95'][0])}-{pct(r['ci95'][1])}] | "
                         f"{pct(r['empty'])} |")
        lines += ["", f"Chosen: `{results['chosen']['class']}` (high@scale; the best exact-class rate at scale "
                  f"{args.choose_scale:g}); {shipped('class', args)}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--t2i", default="shapes-t2i", help="text-to-image pipeline, or 'none'")
    parser.add_argument("--class-model", default="shapes-class", help="class pipeline, or 'none'")
    parser.add_argument("--highs", type=float, nargs="+", default=[1.0, 0.9, 0.8, 0.7, 0.6, 0.4])
    parser.add_argument("--scales", type=float, nargs="+", default=[4.0, 7.0])
    parser.add_argument("--choose-scale", type=float, default=4.0,
                        help="the guidance scale of the reported measurements; the interval is chosen at it")
    parser.add_argument("--seed", type=int, default=7000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--work", default="runs/guidance_interval")
    parser.add_argument("--out", default="docs/results/guidance_interval.md")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ship", nargs="*", choices=["t2i", "class"], default=None,
                        help="write the chosen interval into these shipped bases' model_index.json (no value: both)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.shipped = [] if args.ship is None else (args.ship or ["t2i", "class"])
    work = Path(args.work)
    results: dict = {"chosen": {}, "weights": {}}
    for kind, model in (("t2i", args.t2i), ("class", args.class_model)):
        if model == "none":
            continue
        target, results[kind] = load_target(model), {}
        results["weights"][kind] = fingerprint(model, sampler=False)  # the sweep sets the interval itself
        for high in args.highs:
            use_interval(target, high)
            for scale in args.scales:
                key = f"{high:g}@{scale:g}"
                folder = work / kind / results["weights"][kind] / f"h{high:g}-g{scale:g}"
                if kind == "t2i":
                    result = cached(folder / "result.json", t2i_setting, target, folder, scale, args.seed, args.steps)
                else:
                    result = cached(folder / "result.json", class_setting, target, scale, args.seed, args.steps,
                                    args.per_class)
                results[kind][key] = result
                print(kind, key, f"selection {pct(results[kind][key]['selection'])}", flush=True)
        candidates = [k for k in results[kind] if float(k.split("@")[1]) == args.choose_scale]
        results["chosen"][kind] = max(candidates, key=lambda k: results[kind][k]["selection"])
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=2))
    Path(args.out).write_text(report(results, args))
    for kind, asset in (("t2i", "shapes-t2i"), ("class", "shapes-class")):
        if kind in args.shipped:
            ship_interval(asset, results["chosen"][kind])
    print(report(results, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
