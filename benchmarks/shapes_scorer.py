"""The Shapes scorer's accept/reject rates per perturbation family, and what the new detector does to the bases.

    python -m benchmarks.shapes_scorer --cases 240 --out docs/results/shapes_scorer.md \
        --v2 runs/v2base/seed0 --v1 runs/demo/samples/base --rates-cache runs/shapes_scorer_rates.json

* per family of :mod:`thinkpix.shapes.perturb`, ``--cases`` matching and ``--cases`` corrupted scenes (seed 0 for
  every family), scored by the current detector and by the detector of ``--old-ref`` (the git revision before the
  rewrite), against the truth of what was drawn;
* the rule checks of :mod:`thinkpix.shapes.accuracy` on clean renders (``--n`` pairs);
* the shipped ``shapes-t2i`` base sampled under protocol v1 and v2 (folders written by
  ``thinkpix generate geneval --model shapes-t2i --protocol v1|v2 --seed 0 --out ...``; the demo's
  ``runs/demo/samples/base`` is the v1 one), scored by both detectors, with the v2 overall's 95% interval
  (:mod:`benchmarks.stats`).

``--rates-cache FILE`` keeps the per-family rates (the slow part) under a key of the detector's
``DETECTOR_VERSION``, the detector's and the bench's sources, ``--cases`` and ``--old-ref``, so that scoring new base
samples reuses them while nothing they depend on changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
import types
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.stats import cells, paired_estimate
from thinkpix.eval.geneval import score_geneval_images
from thinkpix.shapes import detect as detect_module
from thinkpix.shapes import perturb as perturb_module
from thinkpix.shapes.accuracy import measure_scorer_accuracy, to_markdown
from thinkpix.shapes.detect import DETECTOR_VERSION, DetectionResult, detect_shapes
from thinkpix.shapes.metadata import TAGS
from thinkpix.shapes.perturb import FAMILIES, ROBUSTNESS, make_case
from thinkpix.shapes.score import GenEvalResult, evaluate, summarize

OLD_REF = "97af03c"
"""The last revision with the template-in-bounding-box detector."""


def old_detector(ref: str):
    """``detect_shapes`` of the detector at git revision ``ref``, returning this revision's result type."""
    source = subprocess.run(["git", "show", f"{ref}:src/thinkpix/shapes/detect.py"], capture_output=True, text=True,
                            check=True).stdout
    module = types.ModuleType("thinkpix_old_detect")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{ref}:detect.py", "exec"), module.__dict__)  # noqa: S102 - our own history

    def detect(image, **_):
        old = module.detect_shapes(image)
        return DetectionResult(old.detections, old.image_size, old.stray_pixels)

    return detect


def rates_key(cases: int, old_ref: str) -> str:
    """What the family rates depend on: the detector (its version and source), the bench, the case count and the
    old revision; a cached table is reused only under the same key."""
    sources = [Path(module.__file__).read_bytes() for module in (detect_module, perturb_module)]
    digest = hashlib.sha256(b"".join(sources)).hexdigest()[:16]
    return f"detector {DETECTOR_VERSION} sources {digest} cases {cases} old {old_ref}"


def cached_family_rates(cases: int, detectors: dict, cache: Path | None, key: str) -> tuple[dict, float]:
    """:func:`family_rates` and the seconds they took, read from ``cache`` (JSON) when it was written under
    ``key``, else computed (and saved there)."""
    if cache is not None and cache.exists():
        stored = json.loads(cache.read_text())
        if stored.get("key") == key:
            rates = {family: {name: {side: tuple(pair) for side, pair in by.items()} for name, by in rows.items()}
                     for family, rows in stored["rates"].items()}
            return rates, stored["seconds"]
    started = time.perf_counter()
    rates = family_rates(cases, detectors)
    seconds = time.perf_counter() - started
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "seconds": seconds, "rates": rates}, indent=1))
    return rates, seconds


def family_rates(cases: int, detectors: dict) -> dict:
    """``{family: {detector: {"correct": (accepted, n), "corrupted": (accepted, n)}}}``."""
    out = {}
    for family in FAMILIES:
        rng = np.random.default_rng(0)
        counts = {name: Counter() for name in detectors}
        totals = Counter()
        for index in range(cases):
            for corrupted in (False, True):
                case = make_case(family, index, corrupted, rng)
                truth = "correct" if case.truth else "corrupted"
                totals[truth] += 1
                for name, detect in detectors.items():
                    counts[name][truth] += evaluate(detect(case.image), case.metadata)[0]
        out[family] = {name: {k: (counts[name][k], totals[k]) for k in ("correct", "corrupted")} for name in detectors}
        print(family, out[family], flush=True)
    return out


def _rate(pair: tuple[int, int]) -> str:
    accepted, n = pair
    return f"{accepted} / {n} = {accepted / n:.1%}" if n else "-"


def base_scores(folder: Path, detect_old) -> dict:
    """Per-image verdicts of a GenEval folder under the new and the old detector."""
    new = score_geneval_images(folder)
    old = []
    for verdict in new:
        meta_path = folder / f"{verdict['prompt_index']:05d}" / "metadata.jsonl"
        meta = json.loads(meta_path.read_text().splitlines()[0])
        path = folder / f"{verdict['prompt_index']:05d}" / "samples" / f"{verdict['sample_index']:05d}.png"
        with Image.open(path) as image:
            old.append({**verdict, "correct": evaluate(detect_old(np.asarray(image.convert("RGB"))), meta)[0]})
    return {"new": new, "old": old}


def _summary(verdicts: list[dict]) -> dict:
    return summarize(GenEvalResult(v["tag"], v["prompt"], v["correct"], "") for v in verdicts)


def markdown(rates: dict, accuracy_text: str, bases: dict, command: str, seconds: tuple[float, float],
             cases: int) -> str:
    lines = ["# Shapes-world scorer: robustness, strictness, and the bases under the new detector", "",
             f"Produced by `{command}` (the family rates {seconds[0]:.0f} s, the rest {seconds[1]:.0f} s, on 2 "
             f"shared CPU cores) with detector version {DETECTOR_VERSION}. Written by "
             "`benchmarks/shapes_scorer.py`; the detector is `thinkpix.shapes.detect` (its docstring gives every "
             "rule), the test bench `thinkpix.shapes.perturb` (every family's strength is in its docstring).", "",
             "## Accept rates per perturbation family", "",
             f"Each family draws {cases} matching and {cases} corrupted (metadata, scene) pairs with fixed seeds "
             "(seed 0, tags in turn). *Correct* and *corrupted* are decided by the truth of what was drawn (the "
             "scorer's rules applied to the true objects: bars, specks and cut shapes are no objects, off-palette "
             "objects have unknown colour), so the columns are: share of correct scenes accepted (want >= 97%) and "
             "share of corrupted scenes accepted (want <= 2%). *old*: the detector before this rewrite "
             f"(git `{OLD_REF}`).", "",
             "| family | kind | correct accepted | corrupted accepted | old: correct accepted "
             "| old: corrupted accepted |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for family, by in rates.items():
        kind = "robustness" if family in ROBUSTNESS else "strictness"
        lines.append(f"| {family} | {kind} | {_rate(by['new']['correct'])} | {_rate(by['new']['corrupted'])} | "
                     f"{_rate(by['old']['correct'])} | {_rate(by['old']['corrupted'])} |")
    misses = [f for f, by in rates.items() if f != "heavy wobble" and (
        by["new"]["correct"][0] < 0.97 * by["new"]["correct"][1]
        or by["new"]["corrupted"][0] > 0.02 * max(by["new"]["corrupted"][1], 1))]
    lines += ["", "Families missing the bar (97% / 2%), `heavy wobble` aside: "
              + (", ".join(f"`{f}`" for f in misses) if misses else "none") + ".", ""]
    if "heavy wobble" in rates:
        heavy = rates["heavy wobble"]["new"]
        lines += [f"`heavy wobble` toggles twice the outline share of `wobble` (`thinkpix.shapes.perturb.WOBBLE`), "
                  "beyond the issue's lumps \"of a pixel\": a stress test, reported and not part of the bar. It "
                  f"accepts {_rate(heavy['correct'])} of correct and {_rate(heavy['corrupted'])} of corrupted "
                  "scenes.", ""]
    if bases:
        lines += _bases_section(bases)
    lines += ["## Rule checks on clean renders (`thinkpix.shapes.accuracy`)", "",
              *accuracy_text.splitlines()[4:]]
    return "\n".join(lines) + "\n"


def _bases_section(bases: dict) -> list[str]:
    lines = ["## The shipped `shapes-t2i` base under the new detector", "",
             "Seed 0, 20 sampling steps, the base's own guidance interval; the same images scored by both detectors "
             "(percent). The v1 images are the demo's base samples (`thinkpix demo` writes them to "
             "`runs/demo/samples/base`, 86 held-out prompts x 2), the v2 ones come from `thinkpix generate geneval "
             "--model shapes-t2i --protocol v2 --seed 0 --out runs/v2base/seed0`.", "",
             "| protocol | images | detector | overall | " + " | ".join(TAGS) + " |",
             "| --- | ---: | --- | ---: |" + " ---: |" * len(TAGS)]
    for protocol, scored in bases.items():
        for name in ("old", "new"):
            scores = _summary(scored[name])
            lines.append(f"| {protocol} | {len(scored[name])} | {name} | {100 * scores['overall']:.1f} | "
                         + " | ".join(f"{100 * scores[t]:.1f}" for t in TAGS) + " |")
    lines.append("")
    for protocol, scored in bases.items():
        only_new = sum(n["correct"] and not o["correct"] for n, o in zip(scored["new"], scored["old"]))
        only_old = sum(o["correct"] and not n["correct"] for n, o in zip(scored["new"], scored["old"]))
        lines.append(f"- {protocol}: the detectors disagree on {only_new + only_old} of {len(scored['new'])} images "
                     f"({only_new} accepted by the new one only, {only_old} by the old one only).")
    if "v2" in bases:
        data = cells({0: bases["v2"]["new"]})
        fixed, random = paired_estimate(data, prompts="fixed"), paired_estimate(data, prompts="random")
        lines += ["", f"v2, new detector, one seed: overall {100 * fixed.mean:.1f} with a 95% half-width of "
                  f"**{100 * fixed.half_width:.2f} points** with the prompt set held fixed (the protocol lists "
                  "every held-out prompt, so only sampling noise is left) and "
                  f"{100 * random.half_width:.2f} points with prompts treated as drawn from a larger population "
                  "(stratified by tag; `single_object` and `counting` have only 4 prompts each, so this one is "
                  "dominated by how different those 4 prompts are). `benchmarks.stats.paired_estimate`.", "",
                  "What v2 needs: with per-tag accuracies p_t and n_t images a tag, the overall's sampling variance "
                  "is sum_t p_t (1 - p_t) / (36 n_t); a half-width of 2.5 points needs n_t >= "
                  f"{_needed(bases['v2']['new'])} at the base's measured rates (and 256 at the worst case p = 0.5); "
                  "v2 has 184-192.", ""]
    return lines


def _needed(verdicts: list[dict]) -> int:
    scores = _summary(verdicts)
    total = sum(scores[t] * (1 - scores[t]) for t in TAGS)
    return int(np.ceil(total / 36 / (0.025 / 1.96) ** 2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=240, help="matching and corrupted cases per family")
    parser.add_argument("--n", type=int, default=1000, help="pairs for the rule checks on clean renders")
    parser.add_argument("--v1", type=Path, default=None, help="base samples under protocol v1 (GenEval folder)")
    parser.add_argument("--v2", type=Path, default=None, help="base samples under protocol v2 (GenEval folder)")
    parser.add_argument("--old-ref", default=OLD_REF)
    parser.add_argument("--out", type=Path, default=Path("docs/results/shapes_scorer.md"))
    parser.add_argument("--rates-cache", type=Path, default=None,
                        help="JSON file keeping the per-family rates; reused while detector, bench and --cases match")
    args = parser.parse_args(argv)
    old = old_detector(args.old_ref)
    rates, rate_seconds = cached_family_rates(args.cases, {"new": detect_shapes, "old": old}, args.rates_cache,
                                              rates_key(args.cases, args.old_ref))
    started = time.perf_counter()
    bases = {name: base_scores(folder, old) for name, folder in (("v1", args.v1), ("v2", args.v2)) if folder}
    accuracy = to_markdown(measure_scorer_accuracy(args.n, 0), "")
    command = f"python -m benchmarks.shapes_scorer --cases {args.cases} --n {args.n} --out {args.out}"
    command += "".join(f" --{k} {getattr(args, k)}" for k in ("v1", "v2") if getattr(args, k))
    seconds = (rate_seconds, time.perf_counter() - started)
    args.out.write_text(markdown(rates, accuracy, bases, command, seconds, args.cases))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
