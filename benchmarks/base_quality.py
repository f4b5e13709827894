"""How good are the shipped Shapes bases? The numbers in ``docs/results/shapes_bases.md``.

* ``shapes-t2i``: Shapes-GenEval on the training compositions (what the base was taught: single objects
  and colours should be good) and on the held-out compositions (what fine-tuning is measured on), plus
  the two tags the issue's bar names, ``single_object`` and ``colors``, with ``--focus-samples`` images per
  prompt (GenEval's split has only 4 and 20 such prompts) and a 95% Wilson interval.
* ``shapes-class``: for every class it was trained on, the share of samples in which the detector finds
  exactly that coloured shape (GenEval's ``colors`` rule), the share the ``shapes`` extractor classifies
  as that class, and FID / precision / recall against real renders with the ``shapes`` extractor.

    python -m benchmarks.base_quality --out docs/results/shapes_bases_scores.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from thinkpix.eval.extractors import extract_features, get_extractor
from thinkpix.eval.fid import compute_metrics, load_images
from thinkpix.eval.geneval import generate_geneval, score_geneval_folder
from thinkpix.sampling import load_target
from thinkpix.shapes.dataset import make_dataset
from thinkpix.shapes.prompts import colors_metadata, evaluation_metadata, training_metadata
from thinkpix.shapes.score import score_image


def t2i_scores(model: str, work: Path, samples: dict[str, int], steps: int) -> dict:
    target = load_target(model)
    result = {}
    for split, records in (("train", training_metadata()), ("eval", evaluation_metadata())):
        folder = generate_geneval(target, records, work / f"geneval-{split}", samples=samples[split], steps=steps,
                                  progress=False)
        scores, images = score_geneval_folder(folder)
        result[split] = {"scores": scores, "images": len(images), "prompts": len(records)}
    return result


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial rate (Wilson 1927): sound at rates near 0 or 1 and small n."""
    p = successes / n
    centre, half = p + z * z / (2 * n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, float((centre - half) / (1 + z * z / n))), min(1.0, float((centre + half) / (1 + z * z / n)))


def focus_scores(model: str, work: Path, samples: int, steps: int) -> dict:
    """``single_object`` and ``colors`` prompts of both splits (held-out colours are unseen colour-shape pairs)."""
    target = load_target(model)
    train, held_out = training_metadata(), evaluation_metadata()
    groups = {"single_object": ("single", [r for r in train if r["tag"] == "single_object"]),
              "colors (training pairs)": ("colors-train", [r for r in train if r["tag"] == "colors"]),
              "colors (held-out pairs)": ("colors-held-out", [r for r in held_out if r["tag"] == "colors"])}
    result = {}
    for name, (folder_name, records) in groups.items():
        folder = generate_geneval(target, records, work / folder_name, samples=samples, steps=steps, seed=1000,
                                  progress=False)
        _, images = score_geneval_folder(folder)
        correct = sum(r.correct for r in images)
        result[name] = {"accuracy": correct / len(images), "ci95": wilson(correct, len(images)),
                        "images": len(images), "prompts": len(records)}
    return result


def class_scores(model: str, work: Path, per_class: int, steps: int) -> dict:
    target = load_target(model)
    reference = make_dataset(work / "reference", n=per_class * 20, seed=12345, variant="class", split="train")
    classes = sorted(p.name for p in reference.iterdir() if p.is_dir())
    labels = [c for c in classes for _ in range(per_class)]
    images = np.concatenate([target.sample(labels[i : i + 100], seed=i, steps=steps)
                             for i in range(0, len(labels), 100)])
    images = (images * 255).round().clip(0, 255).astype(np.uint8)
    extractor = get_extractor("shapes")
    features = extract_features(extractor, images)
    names = extractor.config["class_names"]  # the extractor's logits are over these classes
    detected, classified = [], []
    for k, (label, image) in enumerate(zip(labels, images)):
        color, shape = label.split("_")
        detected.append(score_image(image, colors_metadata(color, shape)).correct)
        classified.append(names[int(features.logits[k].argmax())] == label)
    metrics = compute_metrics(extract_features(extractor, load_images(reference)), features)
    return {"classes": len(classes), "images": len(images), "detector_accuracy": float(np.mean(detected)),
            "extractor_accuracy": float(np.mean(classified)), "metrics": metrics}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--t2i", default="shapes-t2i")
    parser.add_argument("--class-model", default="shapes-class")
    parser.add_argument("--samples", type=int, default=4, help="GenEval images per held-out prompt")
    parser.add_argument("--train-samples", type=int, default=1, help="images per training prompt (342 prompts)")
    parser.add_argument("--focus-samples", type=int, default=16,
                        help="images per single-object / colours prompt for the focused measurement")
    parser.add_argument("--per-class", type=int, default=25)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--work", default="runs/base_quality")
    parser.add_argument("--out", default="docs/results/shapes_bases_scores.json")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    samples = {"train": args.train_samples, "eval": args.samples}
    out = {"t2i": t2i_scores(args.t2i, Path(args.work) / "t2i", samples, args.steps)} if args.t2i != "none" else {}
    if args.t2i != "none":
        out["t2i_focus"] = focus_scores(args.t2i, Path(args.work) / "t2i-focus", args.focus_samples, args.steps)
    if args.class_model != "none":
        out["class"] = class_scores(args.class_model, Path(args.work) / "class", args.per_class, args.steps)
    out["seconds"] = time.perf_counter() - started
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
