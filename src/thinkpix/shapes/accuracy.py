"""Measure how often the Shapes-world scorers are right, and write the figures as markdown.

Ground truth: a prompt is drawn (tags in turn, prompts uniformly from
:func:`~thinkpix.shapes.prompts.all_metadata`), a scene is built from its metadata and rendered,
and the GenEval scorer must call the pair correct. Corrupted: the same pair is changed so it no
longer matches -- a colour changed or two colours swapped, a relation flipped, a count off by one,
an object missing from the image or a class the image lacks named in the prompt -- and the scorer
must call it wrong. The same is done for dense prompts with the DPG-style scorer (a GT render must
score 1.0; an image with an object missing or a stated colour changed must score below 1.0).

    python -m thinkpix.shapes.accuracy --n 1000 --seed 0

``docs/results/shapes_scorer.md`` holds these figures next to the detector's accept rates per perturbation family
(``thinkpix.shapes.perturb``); ``python -m benchmarks.shapes_scorer`` writes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from thinkpix.shapes import prompts as P
from thinkpix.shapes.detect import detect_shapes
from thinkpix.shapes.dpg import DpgItem, dpg_items, scene_for_item
from thinkpix.shapes.dpg_score import score_dpg_image
from thinkpix.shapes.geometry import OPPOSITE
from thinkpix.shapes.metadata import COUNTING_RANGE, TAGS
from thinkpix.shapes.render import render_scene
from thinkpix.shapes.scene import COLORS, DEFAULT_IMAGE_SIZE, SHAPES, Scene
from thinkpix.shapes.score import evaluate


def _other(rng: np.random.Generator, options: Sequence, *avoid) -> object:
    choices = [option for option in options if option not in avoid]
    return choices[rng.integers(len(choices))]


def _drop_object(scene: Scene, rng: np.random.Generator) -> Scene:
    keep = list(scene.objects)
    keep.pop(int(rng.integers(len(keep))))
    return Scene(tuple(keep), scene.image_size)


def corrupt(meta: dict, scene: Scene, rng: np.random.Generator) -> tuple[dict, Scene, str]:
    """A (metadata, scene) pair that no longer matches, and the name of the corruption."""
    tag, inc = meta["tag"], meta["include"]
    kinds = {
        "single_object": ["class changed"],
        "two_object": ["object missing", "class changed"],
        "counting": ["count off by one", "object missing"],
        "colors": ["colour changed"],
        "position": ["relation flipped", "object missing"],
        "color_attr": ["colour changed", "colours swapped", "object missing"],
    }[tag]
    kind = kinds[rng.integers(len(kinds))]
    if kind == "object missing":
        return meta, _drop_object(scene, rng), kind
    if kind == "class changed":
        absent = _other(rng, SHAPES, *(item["class"] for item in inc))
        if tag == "single_object":
            return P.single_object_metadata(absent), scene, kind
        first, second = (absent, inc[1]["class"]) if rng.random() < 0.5 else (inc[0]["class"], absent)
        return P.two_object_metadata(first, second), scene, kind
    if kind == "count off by one":
        count = inc[0]["count"]
        new = _other(rng, [c for c in (count - 1, count + 1) if c in COUNTING_RANGE])
        return P.counting_metadata(inc[0]["class"], new), scene, kind
    if kind == "relation flipped":
        relation = OPPOSITE[inc[1]["position"][0]]
        return P.position_metadata(inc[1]["class"], relation, inc[0]["class"]), scene, kind
    colors = [item["color"] for item in inc]
    if kind == "colours swapped":
        colors.reverse()
    else:
        k = int(rng.integers(len(colors)))
        colors[k] = _other(rng, tuple(COLORS), colors[k])
    if tag == "colors":
        return P.colors_metadata(colors[0], inc[0]["class"]), scene, kind
    return P.color_attr_metadata(colors[0], inc[0]["class"], colors[1], inc[1]["class"]), scene, kind


def corrupt_dpg_scene(item: DpgItem, scene: Scene, rng: np.random.Generator) -> tuple[Scene, str]:
    """The scene with one object removed or one object of a colour-stated group recoloured."""
    stated = {g.shape for g in item.groups if g.color is not None}
    recolourable = [k for k, obj in enumerate(scene.objects) if obj.shape in stated]
    if recolourable and rng.random() < 0.5:
        k = recolourable[rng.integers(len(recolourable))]
        objects = list(scene.objects)
        objects[k] = dataclasses.replace(objects[k], color=_other(rng, tuple(COLORS), objects[k].color))
        return Scene(tuple(objects), scene.image_size), "colour changed"
    return _drop_object(scene, rng), "object missing"


@dataclasses.dataclass
class AccuracyReport:
    """Counts behind the accuracy figures (``*_ok`` are right verdicts out of ``n``)."""

    n: int
    seed: int
    image_size: int
    gt_ok: Counter
    gt_total: Counter
    corrupt_ok: Counter
    corrupt_total: Counter
    dpg_gt_ok: int
    dpg_gt_mean: float
    dpg_corrupt_ok: Counter
    dpg_corrupt_total: Counter
    seconds: float

    @property
    def gt_accuracy(self) -> float:
        return sum(self.gt_ok.values()) / sum(self.gt_total.values())

    @property
    def rejection_rate(self) -> float:
        return sum(self.corrupt_ok.values()) / sum(self.corrupt_total.values())

    @property
    def dpg_gt_accuracy(self) -> float:
        return self.dpg_gt_ok / self.n

    @property
    def dpg_rejection_rate(self) -> float:
        return sum(self.dpg_corrupt_ok.values()) / sum(self.dpg_corrupt_total.values())


def measure_scorer_accuracy(n: int = 1000, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE) -> AccuracyReport:
    """Score ``n`` ground-truth and ``n`` corrupted pairs for GenEval and for DPG prompts each."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    by_tag = {tag: [m for m in P.all_metadata() if m["tag"] == tag] for tag in TAGS}
    gt_ok, gt_total, bad_ok, bad_total = Counter(), Counter(), Counter(), Counter()
    for index in range(n):
        tag = TAGS[index % len(TAGS)]
        meta = by_tag[tag][rng.integers(len(by_tag[tag]))]
        scene = P.scene_for_metadata(meta, rng, image_size)
        gt_total[tag] += 1
        gt_ok[tag] += evaluate(detect_shapes(render_scene(scene)), meta)[0]
        bad_meta, bad_scene, kind = corrupt(meta, scene, rng)
        bad_total[kind] += 1
        bad_ok[kind] += not evaluate(detect_shapes(render_scene(bad_scene)), bad_meta)[0]
    dpg_ok, dpg_scores, dpg_bad_ok, dpg_bad_total = 0, [], Counter(), Counter()
    for item in dpg_items(n, seed):
        scene = scene_for_item(item, rng, image_size)
        score = score_dpg_image(item, render_scene(scene)).score
        dpg_scores.append(score)
        dpg_ok += score == 1.0
        bad_scene, kind = corrupt_dpg_scene(item, scene, rng)
        dpg_bad_total[kind] += 1
        dpg_bad_ok[kind] += score_dpg_image(item, render_scene(bad_scene)).score < 1.0
    return AccuracyReport(
        n,
        seed,
        image_size,
        gt_ok,
        gt_total,
        bad_ok,
        bad_total,
        dpg_ok,
        float(np.mean(dpg_scores)),
        dpg_bad_ok,
        dpg_bad_total,
        time.perf_counter() - start,
    )


def to_markdown(report: AccuracyReport, command: str) -> str:
    """The report as a markdown page (numbers only from ``report``)."""

    def rows(ok: Counter, total: Counter) -> list[str]:
        return [f"| {key} | {ok[key]} / {total[key]} | {ok[key] / total[key]:.2%} |" for key in total]

    lines = [
        "# Shapes-world scorer accuracy",
        "",
        f"Produced by `{command}` ({report.image_size}x{report.image_size} images, seed {report.seed},"
        f" {report.seconds:.1f} s on CPU). Written by `thinkpix.shapes.accuracy`; rerun to refresh.",
        "",
        "## GenEval-style scorer",
        "",
        f"- ground-truth renders judged correct: **{sum(report.gt_ok.values())} / {report.n}"
        f" = {report.gt_accuracy:.2%}**",
        f"- corrupted pairs rejected: **{sum(report.corrupt_ok.values())} / {report.n} = {report.rejection_rate:.2%}**",
        "",
        "| ground truth, by tag | correct | rate |",
        "| --- | --- | --- |",
        *rows(report.gt_ok, report.gt_total),
        "",
        "| corruption | rejected | rate |",
        "| --- | --- | --- |",
        *rows(report.corrupt_ok, report.corrupt_total),
        "",
        "## DPG-style scorer",
        "",
        f"- ground-truth renders scoring 1.0: **{report.dpg_gt_ok} / {report.n} = {report.dpg_gt_accuracy:.2%}**"
        f" (mean score {report.dpg_gt_mean:.4f})",
        f"- corrupted renders scoring below 1.0: **{sum(report.dpg_corrupt_ok.values())} / {report.n}"
        f" = {report.dpg_rejection_rate:.2%}**",
        "",
        "| corruption | scored below 1.0 | rate |",
        "| --- | --- | --- |",
        *rows(report.dpg_corrupt_ok, report.dpg_corrupt_total),
        "",
        "Ground-truth images are noise-free palette renders, on which the classical detector is exact, so"
        " these figures check the scorers' rules and the prompt/scene construction, not robustness to"
        " generated images (tests/test_shapes_scene.py separately checks detection under pixel noise).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the accuracy; with ``--out`` also write the markdown report."""
    parser = argparse.ArgumentParser(description="Measure the Shapes-world scorers' accuracy.")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    report = measure_scorer_accuracy(args.n, args.seed, args.image_size)
    command = f"python -m thinkpix.shapes.accuracy --n {args.n} --seed {args.seed} --image-size {args.image_size}"
    if args.out is not None:
        command += f" --out {args.out}"
    text = to_markdown(report, command)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
