"""The paper's claims (Section 4, Tables 1-3) checked against the reproduction rows, paired by seed.

Rows with the same seed share the evaluation prompts and the sampling noise (``reproduce_tables.py`` seeds
both from the row seed), so the per-seed difference between two rows removes most of the prompt-level noise
that makes each row's own interval wide. A claim is **supported** when the 95% interval of the paired
difference lies entirely on the paper's side of zero, **contradicted** when it lies entirely on the other
side, and **not resolved** otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from benchmarks.shapes_rows import mean_ci

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


def check(claim: Claim, rows: dict[str, dict[str, list[dict]]], scale: float) -> tuple[str, str]:
    """(verdict, the paired difference better - worse as ``mean ± half-width`` over the shared seeds)."""
    table = rows.get(claim.table, {})
    if claim.better not in table or claim.worse not in table:
        return "not run", "-"
    pairs = [(_value(b, claim.table, claim.metric), _value(w, claim.table, claim.metric))
             for b, w in zip(table[claim.better], table[claim.worse])]
    diffs = [scale * (b - w) for b, w in pairs if b is not None and w is not None]
    if not diffs:
        return "not run", "-"
    mean, half = mean_ci(diffs)
    sign = -1.0 if claim.lower else 1.0
    if math.isnan(half):
        verdict = "not resolved (one seed)"
    elif sign * mean - half > 0:
        verdict = "supported"
    elif sign * mean + half < 0:
        verdict = "contradicted"
    else:
        verdict = "not resolved"
    return verdict, f"{mean:+.2f} ± {half:.2f}" if not math.isnan(half) else f"{mean:+.2f}"


def claims_section(t2i: dict, dpg: dict, cls: dict) -> list[str]:
    rows = {"t2i": t2i, "dpg": dpg, "class": cls}
    lines = ["## The paper's claims, paired by seed", "",
             "Each line compares two rows seed by seed (same prompts and sampling noise per seed) and gives the "
             "mean paired difference with its 95% interval (GenEval/DPG in points, FD/IS in their units). "
             "**supported**: the interval is on the paper's side of zero; **contradicted**: on the other side; "
             "**not resolved**: it contains zero. Produced by `benchmarks/reproduction_claims.py` from the same "
             "rows as the tables.", ""]
    results = [(claim, *check(claim, rows, 1.0 if claim.table == "class" else 100.0)) for claim in CLAIMS]
    counts = {v: sum(r[1].startswith(v) for r in results) for v in ("supported", "contradicted", "not resolved",
                                                                     "not run")}
    run = [(c, d) for c, v, d in results if v != "not run"]
    paper_way = sum((float(d.split()[0]) < 0) == c.lower for c, d in run)
    lines += [f"In short: of {len(results)} claims, {counts['supported']} supported, {counts['contradicted']} "
              f"contradicted, {counts['not resolved']} not resolved at this budget, {counts['not run']} not run; "
              f"the mean difference points the paper's way in {paper_way} of the {len(run)} that ran.", "",
              "| claim | metric | difference | verdict |", "| --- | --- | ---: | --- |"]
    lines += [f"| {claim.text} | {claim.metric} | {diff} | {verdict} |" for claim, verdict, diff in results]
    lines += ["", f"Each verdict is its own 95% test and no multiple-comparison correction is applied: with {len(run)} "
              f"tests, about {0.05 * len(run):.1f} would exclude zero by chance alone if no row differed from "
              "another, so one supported or contradicted line is weak evidence by itself."]
    images = sorted({r["geneval"]["images"] for rs in t2i.values() for r in rs})
    if images:
        lines += ["", f"Why the intervals are wide: each GenEval seed scores {images[0]} images, so a category "
                  "with a handful of prompts moves by several points per image, and "
                  "with 3 seeds the 95% interval spans 4.3 standard errors on each side (Student's t, 2 degrees "
                  "of freedom). Effects of 1-3 points, the size the paper reports, would need many more seeds "
                  "or samples per prompt than the 2-hour budget allows; the bases are also weak (see "
                  "`shapes_bases.md`), which leaves fine-tuning little to build on."]
    return lines + [""]
