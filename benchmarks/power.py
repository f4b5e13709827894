"""Power of Shapes-GenEval designs: the minimum detectable effect (MDE) of a comparison for a given number of training
seeds and images per tag, from what the cached reproduction rows show.

Model of one comparison's overall difference on one seed (points): ``d_s = delta + alpha_s + e_s`` with
``alpha_s`` the training-seed effect (variance ``sigma_seed^2``) and ``e_s`` the sampling noise of the images,
``var(e_s) = sum_t (p_A,t (1 - p_A,t) + p_B,t (1 - p_B,t)) / (36 n_t)`` for per-tag accuracies ``p`` and ``n_t``
images a tag -- the variance of two *independent* rows. Protocol v2 pairs the rows image by image (same noise), which
can only lower it when the rows' verdicts agree more often than chance, so the MDEs below are upper bounds in that
respect. ``sigma_seed^2`` is estimated from the rows as the seeds' observed variance of ``d_s`` minus the v1 sampling
variance (floored at 0), and the analysis is Student's t over seeds (``S - 1`` degrees of freedom), as the claim
lines do: ``MDE = (t_0.975 + t_0.8) * sqrt((sigma_seed^2 + var(e)) / S)``.
"""

from __future__ import annotations

import math

import numpy as np

from benchmarks.stats import mde
from thinkpix.shapes.metadata import TAGS
from thinkpix.shapes.protocol import get_protocol

COMPARISONS = {
    "RSR vs SFT (middle layer)": ("RSR M=2, T=2 (middle)", "SFT (middle)"),
    "learned vs random routing (M=2, T=2, middle)": ("RSR M=2, T=2 (middle)", "RSR random routing M=2, T=2 (middle)"),
}
SEED_SD_SENSITIVITY = 1.0
"""A training-seed sd (points) assumed instead of the estimate, to show how much the seed count matters."""


def _design_images(protocol: str, scale: int = 1) -> dict[str, int]:
    return {tag: n * scale for tag, n in get_protocol(protocol).images_per_tag().items()}


DESIGNS = [
    ("current rows: v1, 3 seeds", _design_images("v1"), 3),
    ("v2, 3 seeds", _design_images("v2"), 3),
    ("v2, 5 seeds", _design_images("v2"), 5),
    ("v2, 10 seeds", _design_images("v2"), 10),
    ("v2 x 2 images a prompt, 5 seeds", _design_images("v2", 2), 5),
]


def sampling_variance(rates_a: dict[str, float], rates_b: dict[str, float], images: dict[str, int]) -> float:
    """Variance (points^2) of one seed's overall difference from sampling, rows independent."""
    return 1e4 * sum((rates_a[t] * (1 - rates_a[t]) + rates_b[t] * (1 - rates_b[t])) / images[t]
                     for t in TAGS) / len(TAGS) ** 2


def components(rows_a: list[dict], rows_b: list[dict]) -> dict:
    """Per-tag mean accuracies of both rows, the seeds' observed sd of the overall difference and the estimated
    training-seed sd (points), from cached rows of protocol v1."""
    rates = [{t: float(np.mean([r["geneval"]["scores"][t] for r in rows])) for t in TAGS} for rows in (rows_a, rows_b)]
    diffs = [100 * (a["geneval"]["scores"]["overall"] - b["geneval"]["scores"]["overall"])
             for a, b in zip(rows_a, rows_b)]
    observed = float(np.var(diffs, ddof=1))
    v1 = sampling_variance(*rates, _design_images("v1"))
    return {"rates": rates, "observed_sd": math.sqrt(observed), "seed_sd": math.sqrt(max(observed - v1, 0.0)),
            "v1_sampling_sd": math.sqrt(v1), "seeds": len(diffs)}


def design_mde(parts: dict, images: dict[str, int], seeds: int, seed_sd: float | None = None) -> float:
    """The MDE (points) of a design with ``seeds`` seeds and ``images`` per tag."""
    sd = parts["seed_sd"] if seed_sd is None else seed_sd
    se = math.sqrt((sd**2 + sampling_variance(*parts["rates"], images)) / seeds)
    return mde(se, seeds - 1)


def power_section(t2i: dict[str, list[dict]]) -> list[str]:
    """The power table of ``docs/results/paper_tables_v1.md`` (empty when a comparison's rows are missing)."""
    present = {name: pair for name, pair in COMPARISONS.items() if all(p in t2i for p in pair)}
    if not present:
        return []
    parts = {name: components(t2i[a], t2i[b]) for name, (a, b) in present.items()}
    lines = ["## Power: what design resolves a 3-point difference", "",
             "Minimum detectable effect (GenEval overall, points; 80% power, two-sided 5%) of the two comparisons "
             "that matter most, for the budget the rows above used and for larger designs under Shapes-GenEval v2 "
             "(`thinkpix.shapes.protocol`). Produced by `benchmarks/power.py` from the cached rows (model and "
             "assumptions in its docstring: sampling noise of independent rows, so upper bounds for v2's paired "
             "images; seed effect estimated from the rows). The rows' accuracies come from the detector they were "
             "scored with when they ran (before the rewrite described in `shapes_scorer.md`); the rows cache scores, "
             "not images, so they cannot be rescored without sampling again.", ""]
    for name, c in parts.items():
        lines.append(f"- {name}: seeds' observed sd of the overall difference {c['observed_sd']:.2f} points "
                     f"({c['seeds']} seeds); the v1 sampling sd of independent rows {c['v1_sampling_sd']:.2f} "
                     "(larger: the rows' shared noise already pairs them); estimated training-seed sd "
                     f"{c['seed_sd']:.2f}.")
    names = list(parts)
    lines += ["", "| design | images a tag | " + " | ".join(f"MDE {n}" for n in names) + " | "
              + " | ".join(f"MDE {n}, seed sd {SEED_SD_SENSITIVITY:g}" for n in names) + " |",
              "| --- | --- |" + " ---: |" * (2 * len(names))]
    reached = []
    for label, images, seeds in DESIGNS:
        mdes = [design_mde(parts[n], images, seeds) for n in names]
        robust = [design_mde(parts[n], images, seeds, SEED_SD_SENSITIVITY) for n in names]
        if max(mdes) <= 3.0:
            reached.append(label)
        counts = f"{min(images.values())}-{max(images.values())}"
        lines.append(f"| {label} | {counts} | " + " | ".join(f"{m:.2f}" for m in mdes + robust) + " |")
    lines += ["", "Designs with both MDEs at or under 3 points (seed sd as estimated): "
              + ("; ".join(reached) if reached else "none of those listed") + ". A seed sd of "
              f"{SEED_SD_SENSITIVITY:g} point (the estimate rests on {parts[names[0]]['seeds']} seeds) shows how "
              "much more seeds buy than images once the images per tag are balanced.", ""]
    return lines
