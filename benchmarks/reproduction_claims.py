"""The paper's claims (Section 4, Tables 1-3) checked against the reproduction rows, paired by seed.

Rows with the same seed share the evaluation prompts and the sampling noise (``reproduce_tables.py`` seeds
both from the row seed), so the per-seed difference between two rows removes most of the prompt-level noise
that makes each row's own interval wide. A claim is **supported** when the 95% interval of the paired
difference lies entirely on the paper's side of zero, **contradicted** when it lies entirely on the other
side, and **not resolved** otherwise. Every line also gives the claim's minimum detectable effect (80% power,
two-sided 5%, for this design: its seeds and the spread of its per-seed differences) and the verdict after Holm's
correction over the family of claims that ran (:mod:`benchmarks.stats`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from benchmarks.stats import Comparison, holm, seed_comparison

MID, THREE = "(middle)", "(three layers)"
M2T2_MID, M2T2_THREE, M5T5 = f"RSR M=2, T=2 {MID}", f"RSR M=2, T=2 {THREE}", f"RSR M=5, T=5 {THREE}"


@dataclass(frozen=True)
class Claim:
    """``better`` should beat ``worse`` on ``metric`` of ``table`` (higher is better unless ``lower``)."""

    text: str
    table: str  # t2i (GenEval), dpg or class
    better: str
    worse: str
    metric: str = "overall"
    lower: bool = False


CLAIMS = [
    Claim("Recursion helps: RSR M=2, T=2 beats RSR without recursion (M=2, T=1), middle layer (Table 2)", "t2i",
          M2T2_MID, "RSR w/o recursion M=2, T=1 (middle)"),
    Claim("Modulation helps: RSR M=2, T=2 beats RSR without modulation (M=1, T=2), middle layer (Table 2)", "t2i",
          M2T2_MID, "RSR w/o modulation M=1, T=2 (middle)"),
    Claim("RSR beats SFT (LoRA) on the middle layer (Table 2)", "t2i", M2T2_MID, "SFT (middle)"),
    Claim("RSR beats the base, middle layer (Table 2)", "t2i", M2T2_MID, "base"),
    Claim("Several layers help: RSR M=2, T=2 on three layers beats it on the middle layer (Table 2)", "t2i",
          M2T2_THREE, M2T2_MID),
    Claim("RSR beats SFT on three layers (Table 2)", "t2i", M2T2_THREE, "SFT (three layers)"),
    Claim("RSR M=5, T=5 on three layers beats RSR M=2, T=2 on three layers (Table 2, best row)", "t2i", M5T5,
          M2T2_THREE),
    Claim("Learned routing beats random routing, M=2, T=2, middle layer (referee's test)", "t2i", M2T2_MID,
          "RSR random routing M=2, T=2 (middle)"),
    Claim("RSR M=5, T=5 beats the base on DPG (Table 3)", "dpg", M5T5, "base"),
    Claim("RSR M=5, T=5 beats SFT on three layers on DPG (Table 3)", "dpg", M5T5, "SFT (three layers)"),
    Claim("RSR lowers FD against the base DiT (Table 1)", "class", "RSR M=2, T=2 (middle)", "base", "fid", True),
    Claim("RSR lowers FD against SFT (Table 1)", "class", "RSR M=2, T=2 (middle)", "SFT (middle)", "fid", True),
    Claim("RSR raises IS against the base DiT (Table 1)", "class", "RSR M=2, T=2 (middle)", "base",
          "inception_score"),
]


def _value(result: dict, table: str, metric: str) -> float | None:
    scores = {"t2i": lambda r: r["geneval"]["scores"], "dpg": lambda r: r.get("dpg", {}).get("scores", {}),
              "class": lambda r: r["metrics"]}[table](result)
    return scores.get(metric)


def compare(claim: Claim, rows: dict[str, dict[str, list[dict]]], scale: float) -> Comparison | None:
    """The paired difference better - worse over the shared seeds (``None``: a row or the metric is missing)."""
    table = rows.get(claim.table, {})
    if claim.better not in table or claim.worse not in table:
        return None
    pairs = [(_value(b, claim.table, claim.metric), _value(w, claim.table, claim.metric))
             for b, w in zip(table[claim.better], table[claim.worse])]
    diffs = [scale * (b - w) for b, w in pairs if b is not None and w is not None]
    return seed_comparison(diffs) if diffs else None


def verdict(claim: Claim, comparison: Comparison | None, rejected: bool) -> str:
    """supported / contradicted when the test rejects zero (``rejected``), by the side the mean lies on."""
    if comparison is None:
        return "not run"
    if math.isnan(comparison.se):
        return "not resolved (one seed)"
    if not rejected:
        return "not resolved"
    return "supported" if (comparison.mean < 0) == claim.lower else "contradicted"


def check(claim: Claim, rows: dict[str, dict[str, list[dict]]], scale: float) -> tuple[str, str]:
    """(verdict, the paired difference better - worse as ``mean ± half-width`` over the shared seeds)."""
    comparison = compare(claim, rows, scale)
    if comparison is None:
        return "not run", "-"
    rejected = not math.isnan(comparison.se) and comparison.p_value < 0.05
    if math.isnan(comparison.se):
        return verdict(claim, comparison, rejected), f"{comparison.mean:+.2f}"
    return verdict(claim, comparison, rejected), f"{comparison.mean:+.2f} ± {comparison.half_width:.2f}"


def claims_section(t2i: dict, dpg: dict, cls: dict) -> list[str]:
    rows = {"t2i": t2i, "dpg": dpg, "class": cls}
    lines = ["## The paper's claims, paired by seed", "",
             "Each line compares two rows seed by seed (same prompts and sampling noise per seed) and gives the "
             "mean paired difference with its 95% interval (GenEval/DPG in points, FD/IS in their units). "
             "**supported**: the interval is on the paper's side of zero; **contradicted**: on the other side; "
             "**not resolved**: it contains zero. Produced by `benchmarks/reproduction_claims.py` from the same "
             "rows as the tables.", ""]
    scales = [1.0 if claim.table == "class" else 100.0 for claim in CLAIMS]
    results = [(claim, *check(claim, rows, scale)) for claim, scale in zip(CLAIMS, scales)]
    comparisons = [compare(claim, rows, scale) for claim, scale in zip(CLAIMS, scales)]
    p_values = [c.p_value if c is not None and not math.isnan(c.se) else math.nan for c in comparisons]
    holm_rejected = holm(p_values)
    holm_verdicts = [verdict(claim, c, r) for claim, c, r in zip(CLAIMS, comparisons, holm_rejected)]
    counts = {v: sum(r[1].startswith(v) for r in results) for v in ("supported", "contradicted", "not resolved",
                                                                     "not run")}
    holm_counts = {v: sum(h.startswith(v) for h in holm_verdicts) for v in ("supported", "contradicted")}
    run = [(c, d) for c, v, d in results if v != "not run"]
    paper_way = sum((float(d.split()[0]) < 0) == c.lower for c, d in run)
    lines += [f"In short: of {len(results)} claims, {counts['supported']} supported, {counts['contradicted']} "
              f"contradicted, {counts['not resolved']} not resolved at this budget, {counts['not run']} not run; "
              f"the mean difference points the paper's way in {paper_way} of the {len(run)} that ran. After Holm's "
              f"correction for the {len(run)} claims: {holm_counts['supported']} supported, "
              f"{holm_counts['contradicted']} contradicted.", "",
              "| claim | metric | difference | MDE (80% power) | p | verdict | Holm verdict |",
              "| --- | --- | ---: | ---: | ---: | --- | --- |"]
    for (claim, verdict_text, diff), c, holm_text in zip(results, comparisons, holm_verdicts):
        usable = c is not None and not math.isnan(c.se)
        effect = f"{c.mde:.2f}" if usable else "-"
        p = f"{c.p_value:.3f}" if usable else "-"
        lines.append(f"| {claim.text} | {claim.metric} | {diff} | {effect} | {p} | {verdict_text} | {holm_text} |")
    lines += ["", f"*verdict*: each line's own two-sided 5% test (Student's t over the seeds' paired differences); "
              f"with {len(run)} tests about {0.05 * len(run):.1f} would exclude zero by chance alone if no row "
              "differed from another. *Holm verdict*: Holm's step-down correction over the claims that ran, "
              "family-wise 5% (`benchmarks.stats.holm`). *MDE*: the smallest true difference this design detects "
              "with 80% power, (t_0.975 + t_0.8) x standard error at the seeds' degrees of freedom "
              "(`benchmarks.stats.mde`); a claim whose paper-sized effect (1-3 GenEval points) is below its MDE "
              "cannot be resolved by these rows whatever the truth."]
    images = sorted({r["geneval"]["images"] for rs in t2i.values() for r in rs})
    if images:
        lines += ["", f"Why the intervals are wide: each GenEval seed scores {images[0]} images, so a category "
                  "with a handful of prompts moves by several points per image, and "
                  "with 3 seeds the 95% interval spans 4.3 standard errors on each side (Student's t, 2 degrees "
                  "of freedom). Effects of 1-3 points, the size the paper reports, would need many more seeds "
                  "or samples per prompt than the 2-hour budget allows; the bases are also weak (see "
                  "`shapes_bases.md`), which leaves fine-tuning little to build on."]
    return lines + [""]
