"""The plain-language answer at the top of ``docs/results/reproduction.md``, generated from the claims'
verdicts (never written by hand): does RSR beat LoRA, by how much, where, and at what extra compute."""

from __future__ import annotations

from benchmarks.compositional_verdicts import (
    ACCEPTED_MDE,
    ONE_SEED,
    mean_of_recorded,
    paired,
    points,
    sample_cpu_seconds,
    train_cpu_seconds,
    verdict,
)
from benchmarks.stats import Comparison, holm

# Each RSR row against LoRA (SFT) at its placement: the question users ask first, with both gates.
VERSUS_LORA = [("RSR M=2, T=2 (middle)", "SFT (middle)"), ("RSR M=2, T=2 (middle), paper gate", "SFT (middle)"),
               ("RSR M=2, T=2 (three layers)", "SFT (three layers)"),
               ("RSR M=2, T=2 (three layers), paper gate", "SFT (three layers)"),
               ("RSR M=5, T=5 (three layers)", "SFT (three layers)")]


def in_words(comparison: Comparison, seeds: int) -> str:
    said = verdict(comparison, seeds)
    if said == ONE_SEED:
        return "one seed so far: no verdict"
    if said == "supported":
        return f"beats LoRA by {100 * comparison.mean:.1f} points"
    if said == "contradicted":
        return f"trails LoRA by {-100 * comparison.mean:.1f} points"
    if comparison.mde <= ACCEPTED_MDE:
        return f"no difference resolved; a gain of {100 * comparison.mde:.1f} points or more would have shown"
    return f"not resolved yet; only a gain of {100 * comparison.mde:.1f} points or more would show"


def cost_over(rsr: list[dict], sft: list[dict]) -> tuple[float, float, float]:
    """RSR's training CPU, sampling CPU and trainable parameters as multiples of SFT's."""
    train, sample = (mean_of_recorded(rsr, value) / mean_of_recorded(sft, value)
                     for value in (train_cpu_seconds, sample_cpu_seconds))
    return train, sample, rsr[0]["trainable_params"] / sft[0]["trainable_params"]


def spread(ratios: list[float]) -> str:
    return f"{ratios[0]:.2f}x" if len(ratios) == 1 else f"{ratios[0]:.2f}-{ratios[-1]:.2f}x"


def headline(lines: list[dict], results: dict[str, list[dict]]) -> list[str]:
    """The question users ask first, answered from the claims against LoRA (Holm-corrected verdicts): does RSR
    beat it, by how much, where, and at what cost."""
    found, costs = [], []
    for line in lines:
        claim, c = line["claim"], line.get("comparison")
        if not claim.worse.startswith("SFT") or c is None or line["verdict"] == ONE_SEED:
            continue
        where = "on the middle layer" if "middle" in claim.worse else "on three layers"
        low, high = 100 * (c.mean - c.half_width), 100 * (c.mean + c.half_width)
        if line["holm"] in ("supported", "contradicted"):
            said = f"{'beats' if line['holm'] == 'supported' else 'trails'} LoRA by {abs(100 * c.mean):.1f} points"
            found.append((line["holm"], f"{where} it {said} ({low:+.1f} to {high:+.1f}, {line['seeds']} seeds)"))
        else:
            reach = "would have shown" if c.mde <= ACCEPTED_MDE else "would show; more seeds are planned"
            found.append(("ruled out" if c.mde <= ACCEPTED_MDE else "open",
                          f"{where} no difference is resolved ({points(c)} points, {line['seeds']} seeds; a gain "
                          f"of {100 * c.mde:.1f} points or more {reach})"))
        costs.append(cost_over(results[claim.better], results[claim.worse]))
    if not found:
        return []
    kinds = {kind for kind, _ in found}
    answer = ("It depends on the placement" if {"supported", "contradicted"} <= kinds else "Yes" if "supported" in
              kinds else "No: LoRA is better" if "contradicted" in kinds else "Not resolved yet" if "open" in kinds
              else "Not measurably")
    train, sample, params = (spread(sorted({round(c[i], 2) for c in costs})) for i in range(3))
    said = "; ".join(text for _, text in found)
    return [f"**Does RSR (M=2, T=2, recommended gate) beat LoRA here? {answer}.** {said[0].upper()}{said[1:]}"
            f". It takes {train} SFT's training CPU time and {sample} its sampling CPU time, with {params} its "
            f"trainable parameters. {outside_the_claims(lines, results)}", ""]


def outside_the_claims(lines: list[dict], results: dict[str, list[dict]]) -> str:
    """The comparisons against LoRA that are not claims (the paper gate, M=5, T=5): those that resolve a
    difference are named with both verdicts, Holm's over these comparisons alone, as leads rather than findings."""
    claimed = {(line["claim"].better, line["claim"].worse) for line in lines}
    found = [(rsr, pair) for rsr, sft in VERSUS_LORA if (rsr, sft) not in claimed
             and (pair := paired(results.get(rsr, []), results.get(sft, []))) and pair[1] > 1]
    rejected = holm([comparison.p_value for _, (comparison, _) in found])
    leads, family = [], f"{len(found)} comparison{'s' if len(found) > 1 else ''} outside the claims"
    for (rsr, (c, seeds)), holm_rejects in zip(found, rejected):
        if verdict(c, seeds) != "not resolved":
            low, high = 100 * (c.mean - c.half_width), 100 * (c.mean + c.half_width)
            leads.append(f"{rsr} {'beats' if c.mean > 0 else 'trails'} LoRA by {abs(100 * c.mean):.1f} points "
                         f"({low:+.1f} to {high:+.1f}, {seeds} seeds, p = {c.p_value:.3f}; "
                         f"{'still' if holm_rejects else 'not'} resolved after Holm over the {family})"
                         + against_the_base(results, rsr))
    if not leads:
        return "The paper gate and M=5, T=5 (the table below, outside the claims) resolve no difference from LoRA."
    return (f"Outside the planned claims, {'; '.join(leads)}: {'a lead' if len(leads) == 1 else 'leads'} to test "
            "as a planned claim on fresh seeds, not a finding.")


def against_the_base(results: dict[str, list[dict]], name: str) -> str:
    """A lead over LoRA may be RSR gaining or LoRA losing ground: the row's own paired difference from the base."""
    found = paired(results.get(name, []), results.get("base", []))
    return f" and {points(found[0])} points against the base" if found else ""


def versus_lora(results: dict[str, list[dict]]) -> list[str]:
    """In short: every RSR row against SFT at its placement, in words, with what it costs over SFT."""
    table = ["| RSR row | gate | vs SFT, held-out points | seeds | in words | train CPU vs SFT | sample CPU vs SFT | "
             "params vs SFT |", "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |"]
    for rsr_name, sft_name in VERSUS_LORA:
        rsr, sft = results.get(rsr_name, []), results.get(sft_name, [])
        found = paired(rsr, sft)
        if found is None:
            continue
        comparison, seeds = found
        train, cpu, params = cost_over(rsr, sft)
        table.append(f"| {rsr_name} | {rsr[0]['gate']} | {points(comparison)} | {seeds} | "
                     f"{in_words(comparison, seeds)} | {train:.2f}x | {cpu:.2f}x | {params:.1f}x |")
    if len(table) == 2:
        return []
    return ["**In short: RSR against LoRA (SFT) at the same placement**, paired image by image on the held-out "
            "prompts. The recommended-gate lines at M=2, T=2 are the claims below; the other lines are "
            "descriptive and outside Holm's family.", "", *table, ""]


def answer(lines: list[dict], results: dict[str, list[dict]], finished: int, planned: int,
           budget_choice: str, unfinished: str = "") -> list[str]:
    """The plain-language answer at the top, generated from the claims (never written by hand); ``unfinished``
    names the planned jobs not finished yet."""
    said = [f"**Status: {finished} of {planned} (row, seed) jobs finished.**" + (
        (f" Not finished yet: {unfinished}." if unfinished else "") + " The run resumes from the committed cache; "
        "rows and verdicts below change as seeds are added." if finished < planned else ""), "",
        *headline(lines, results), *versus_lora(results),
        f"**How the budget was chosen.** {budget_choice}", ""]
    for line in lines:
        c = line["comparison"]
        if c is None:
            said.append(f"- {line['claim'].text}: not run yet.")
            continue
        if line["verdict"] == ONE_SEED:
            said.append(f"- {line['claim'].text}: {points(c)} points on one seed: **no verdict** until a second "
                        "seed measures the seed-to-seed spread.")
            continue
        reach = ("resolved" if line["verdict"] != "not resolved" else
                 f"an effect of {100 * c.mde:.1f} points or more would have been seen with 80% power")
        said.append(f"- {line['claim'].text}: {points(c)} points ({line['seeds']} seeds, MDE {100 * c.mde:.1f}): "
                    f"**{line['verdict']}** uncorrected, **{line['holm']}** after Holm; {reach}.")
    return said
