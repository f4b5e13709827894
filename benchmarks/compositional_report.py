"""The decisive reproduction's report: ``docs/results/reproduction.md`` from the cached rows of
``benchmarks.reproduce_compositional`` (which calls :func:`write_report`; ``--report-only`` redraws it).

Every comparison is paired image by image (the rows share prompts and noise) with the crossed seed x prompt
model of ``benchmarks.stats``. A row without training randomness (the base) pairs with every seed of the other
row: its images are the same whatever the seed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.reproduction_claims import Claim
from benchmarks.stats import Comparison, compare_verdicts, holm, row_interval
from thinkpix.images import make_labelled_grid
from thinkpix.shapes.recipes import COMPOSITIONAL_TAGS

TAGS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
GRID_ROWS = ["base", "SFT (middle)", "RSR M=2, T=2 (middle)"]
GRID_IMAGES = 2  # images of each tag in the sample grid (first sample of evenly spread prompts)
# Each RSR row against LoRA (SFT) at its placement: the question users ask first, with both gates.
VERSUS_LORA = [("RSR M=2, T=2 (middle)", "SFT (middle)"), ("RSR M=2, T=2 (middle), paper gate", "SFT (middle)"),
               ("RSR M=2, T=2 (three layers)", "SFT (three layers)"),
               ("RSR M=2, T=2 (three layers), paper gate", "SFT (three layers)"),
               ("RSR M=5, T=5 (three layers)", "SFT (three layers)")]
ACCEPTED_MDE = 0.03  # the line: a claim left unresolved must still rule out effects of 3 points or more


def held_out_verdicts(result: dict) -> list[dict]:
    return result["geneval"]["verdicts"]


def train_prompt_verdicts(result: dict) -> list[dict]:
    """The training-prompt images of the four compositional tags (the fine-tuning distribution) as verdict
    dicts; the repeats of a prompt are its samples."""
    found, index, seen = [], {}, {}
    scored = result["train_prompts"]
    for tag, prompt, correct in zip(scored["tags"], scored["prompts"], scored["correct"]):
        if tag in COMPOSITIONAL_TAGS:
            i = index.setdefault((tag, prompt), len(index))
            seen[i] = seen.get(i, -1) + 1
            found.append({"prompt_index": i, "sample_index": seen[i], "tag": tag, "correct": correct})
    return found


def untrained(rows: list[dict]) -> bool:
    """One result with no training steps (the base): its images are the same whatever the seed."""
    return len(rows) == 1 and not rows[0].get("train_steps")


def by_seed(rows: list[dict], verdicts, seeds: list[int]) -> dict[int, list[dict]]:
    if untrained(rows):
        return {seed: verdicts(rows[0]) for seed in seeds}
    return {r["seed"]: verdicts(r) for r in rows if r["seed"] in seeds}


def paired(better: list[dict], worse: list[dict], verdicts=held_out_verdicts) -> tuple[Comparison, int] | None:
    """``better`` minus ``worse`` on the seeds both have (against the base: every seed of the other row), and
    how many seeds that is; None when there is nothing to pair."""
    trained = [rows for rows in (better, worse) if rows and not untrained(rows)]
    if not better or not worse or not trained:
        return None
    seeds = sorted(set.intersection(*({r["seed"] for r in rows} for rows in trained)))
    if not seeds:
        return None
    return compare_verdicts(by_seed(better, verdicts, seeds), by_seed(worse, verdicts, seeds)), len(seeds)


ONE_SEED = "no verdict: one seed"  # its interval has no seed-to-seed term, so it would understate the noise


def verdict(comparison: Comparison, seeds: int) -> str:
    if seeds < 2:
        return ONE_SEED
    low, high = comparison.mean - comparison.half_width, comparison.mean + comparison.half_width
    return "supported" if low > 0 else "contradicted" if high < 0 else "not resolved"


def claim_lines(claims: list[Claim], results: dict[str, list[dict]]) -> list[dict]:
    """Per claim: the paired comparison (None when a row is missing), seeds, verdicts uncorrected and Holm's
    (whose family is the claims with two seeds or more)."""
    found = [paired(results.get(c.better, []), results.get(c.worse, [])) for c in claims]
    rejected = holm([f[0].p_value if f and f[1] > 1 else math.nan for f in found])
    lines = []
    for claim, result, holm_rejects in zip(claims, found, rejected):
        if result is None:
            lines.append({"claim": claim, "comparison": None})
            continue
        comparison, seeds = result
        said = verdict(comparison, seeds)
        lines.append({"claim": claim, "comparison": comparison, "seeds": seeds, "verdict": said,
                      "holm": said if holm_rejects or said == ONE_SEED else "not resolved"})
    return lines


def points(comparison: Comparison) -> str:
    return f"{100 * comparison.mean:+.2f} ± {100 * comparison.half_width:.2f}"


def held_out_table(design: list, results: dict[str, list[dict]]) -> list[str]:
    lines = ["| row | gate | seeds | overall | " + " | ".join(TAGS) + " |",
             "| --- | --- |" + " ---: |" * (len(TAGS) + 2)]
    for plan in design:
        rows = results.get(plan.row.name)
        if not rows:
            continue
        overall = row_interval({r["seed"]: held_out_verdicts(r) for r in rows}, prompts="random")
        tags = [100 * np.mean([r["geneval"]["scores"][t] for r in rows]) for t in TAGS]
        lines.append(f"| {plan.row.name} | {plan.gate or '-'} | {len(rows)} | {100 * overall.mean:.1f} ± "
                     f"{100 * overall.half_width:.1f} | " + " | ".join(f"{t:.1f}" for t in tags) + " |")
    return lines


def train_cpu_seconds(result: dict) -> float | None:
    """CPU seconds of a (row, seed)'s whole training: per step as timed (a resumed run times only the steps it
    ran) times its steps; None where it was recorded on the wall clock only (rows before session 12)."""
    if not result["train_steps"]:
        return 0.0
    timed = result.get("train_steps_timed")
    return result["train_cpu_seconds"] / timed * result["train_steps"] if timed else None


def sample_cpu_seconds(result: dict) -> float | None:
    return result["geneval"].get("sample_cpu_seconds")


def mean_of_recorded(rows: list[dict], value) -> float:
    """Mean over the seeds that recorded ``value`` (NaN when none did)."""
    values = [v for v in map(value, rows) if v is not None]
    return float(np.mean(values)) if values else math.nan


def cost_table(design: list, results: dict[str, list[dict]]) -> list[str]:
    """The fine-tuning distribution (training prompts, four compositional tags) against the base, and the cost."""
    base = results.get("base", [])
    lines = ["| row | training prompts (4 tags) | vs base, paired | MDE | trainable params | train CPU s | held-out "
             "sample CPU s | vs base (CPU) | train s (wall) | held-out sample s (wall) | latent steps |",
             "| --- |" + " ---: |" * 10]
    base_cpu = mean_of_recorded(base, sample_cpu_seconds)
    for plan in design:
        rows = results.get(plan.row.name)
        if not rows:
            continue
        own = 100 * np.mean([np.mean([v["correct"] for v in train_prompt_verdicts(r)]) for r in rows])
        gain = paired(rows, base, train_prompt_verdicts) if plan.row.name != "base" else None
        cpu = mean_of_recorded(rows, sample_cpu_seconds)
        steps = [r["geneval"]["latent_steps"] for r in rows if r["geneval"].get("latent_steps")]
        cells = [f"{own:.1f}", points(gain[0]) if gain else "-", f"{100 * gain[0].mde:.2f}" if gain else "-",
                 f"{int(np.mean([r['trainable_params'] for r in rows])):,}",
                 seconds_cell(mean_of_recorded(rows, train_cpu_seconds)), seconds_cell(cpu),
                 "-" if math.isnan(cpu / base_cpu) else f"{cpu / base_cpu:.2f}x",
                 f"{np.mean([r['train_seconds'] for r in rows]):.0f}",
                 f"{np.mean([r['geneval']['sample_seconds'] for r in rows]):.0f}",
                 f"{np.mean(steps):.2f}" if steps else "-"]
        lines.append(f"| {plan.row.name} | " + " | ".join(cells) + " |")
    return lines


def seconds_cell(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds:.0f}"


def claims_table(lines: list[dict]) -> list[str]:
    table = ["| claim | difference (held-out overall, points) | MDE (80% power) | p | seeds | verdict | Holm |",
             "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for line in lines:
        c = line["comparison"]
        table.append(f"| {line['claim'].text} | not run | - | - | - | not run | not run |" if c is None else
                     f"| {line['claim'].text} | {points(c)} | {100 * c.mde:.2f} | {c.p_value:.3f} | {line['seeds']} | "
                     f"{line['verdict']} | {line['holm']} |")
    return table


def forest_plot(lines: list[dict], path: Path) -> Path | None:
    """Paired differences with their 95% intervals, and each claim's MDE marked on both sides of zero."""
    ran = [line for line in lines if line["comparison"] is not None]
    if not ran:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.55 * len(ran) + 1.2))
    for y, line in enumerate(reversed(ran)):
        c, judged = line["comparison"], line["verdict"] != ONE_SEED
        ax.errorbar(100 * c.mean, y, xerr=100 * c.half_width, fmt="o", capsize=3,
                    color="black" if judged else "grey", mfc="black" if judged else "white")
        ax.plot([-100 * c.mde, 100 * c.mde], [y, y], "|", color="tab:red", markersize=12)
    ax.axvline(0, color="grey", lw=0.8)
    for edge in (-100 * ACCEPTED_MDE, 100 * ACCEPTED_MDE):
        ax.axvline(edge, color="grey", lw=0.8, ls=":")
    ax.set_yticks(range(len(ran)), [f"{line['claim'].text} ({line['seeds']} seeds)" if line["verdict"] != ONE_SEED
                                  else f"{line['claim'].text} (1 seed: no verdict)" for line in reversed(ran)],
                  fontsize=7)
    ax.set_xlabel("paired difference, held-out overall (points)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def sample_grid(folders: dict[str, Path], results: dict[str, list[dict]], path: Path) -> Path | None:
    """Base vs SFT vs RSR on the same held-out prompts and noise (seed 0), each tile marked by the scorer."""
    seed0 = {name: r for name in GRID_ROWS for r in results.get(name, []) if r["seed"] == 0}
    # a row whose images are sampled but whose result is not written yet (still scoring) is left out
    rows = [name for name in seed0 if name in folders and (folders[name] / "sampled.json").is_file()]
    if len(rows) < 2:
        return None
    first = {name: {(v["prompt_index"], v["sample_index"]): v for v in held_out_verdicts(seed0[name])}
             for name in rows}
    chosen = []
    for tag in TAGS:
        prompts = sorted({p for (p, s), v in first[rows[0]].items() if v["tag"] == tag and s == 0})
        chosen += [prompts[i * len(prompts) // GRID_IMAGES] for i in range(GRID_IMAGES)]
    images, labels, marks = [], [], []
    for name in rows:
        for prompt in chosen:
            folder = folders[name] / f"{prompt:05d}"
            images.append(np.asarray(Image.open(folder / "samples" / "00000.png").convert("RGB")))
            labels.append(f"{name}: {json.loads((folder / 'metadata.jsonl').read_text())['prompt']}")
            marks.append(bool(first[name][(prompt, 0)]["correct"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_labelled_grid(np.stack(images), labels, ncols=len(chosen), marks=marks)).save(path)
    return path


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
            "trainable parameters. The paper gate and M=5, T=5 are in the table below, outside the claims.", ""]


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
           budget_choice: str) -> list[str]:
    """The plain-language answer at the top, generated from the claims (never written by hand)."""
    said = [f"**Status: {finished} of {planned} (row, seed) jobs finished.**" + (
        " The run resumes from the committed cache; rows and verdicts below change as seeds are added."
        if finished < planned else ""), "", *headline(lines, results), *versus_lora(results),
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


def earlier_design(path: Path) -> list[str]:
    """The claims and power sections of the paper-tables report (its own rows and command), quoted until the
    decisive rows replace them, so that this report always carries the best evidence there is."""
    if not path.is_file():
        return []
    sections, keep = [], False
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            keep = line.startswith(("## The paper's claims", "## Power"))
            line = "#" + line if keep else line
        if keep:
            sections.append(line)
    return ["## The earlier design, for comparison (`paper_tables_v1.md`)", "",
            "Quoted from `paper_tables_v1.md` (`python -m benchmarks.reproduce_tables`: fine-tuning on the bases' "
            "pretraining distribution for 250 steps, protocol v1, 3 seeds, the detector of its session), not from "
            "the rows above.", "", *sections, ""] if sections else []


def write_report(context: dict, design: list, claims: list[Claim], results: dict[str, list[dict]],
                 folders: dict[str, Path], out: Path) -> None:
    """``context``: command, base, budget, protocol, held_out_images, finished, planned (strings and counts),
    budget_choice, verified (lines on the jobs recomputed from nothing) and rows_reproduced (a line on which rows
    have a reproduced job)."""
    lines = claim_lines(claims, results)
    forest = forest_plot(lines, out.with_name("reproduction_forest.png"))
    grid = sample_grid(folders, results, out.with_name("reproduction_samples.png"))
    text = ["# The decisive reproduction: does RSR beat LoRA on held-out compositions?", "",
            f"Produced by `{context['command']}` from the cached rows in `docs/results/compositional_rows/`. "
            "The paper-tables design of earlier sessions (fine-tuning on the bases' own pretraining distribution "
            "for 250 steps) stays reproducible under its own name: `paper_tables_v1.md`, "
            "`python -m benchmarks.reproduce_tables`.", "", "## The answer so far", "",
            *answer(lines, results, context["finished"], context["planned"], context["budget_choice"]),
            "",
            "## Design", "",
            f"- Fine-tuning: every row fine-tunes {context['base']} on the `compositional` recipe (training bindings "
            "of two_object, counting, position and color_attr; no image shows a held-out binding) at "
            f"{context['budget']} (`finetune_task.md` gives the pilot that chose it on training prompts).",
            f"- Held-out evaluation: Shapes-GenEval `{context['protocol']}`, {context['held_out_images']} images a "
            "row and seed, noise fixed per (prompt, sample), the same for every row and training seed.",
            "- Statistics (`benchmarks/stats.py`): every difference is paired image by image; its 95% interval and "
            "minimum detectable effect (80% power) come from the crossed model over training seeds and prompts. "
            "Holm's correction is over the claims of the table below.",
            "- Training seeds: the commands at the end list each row's; the five middle-layer rows of the central "
            "claims get 8, chosen on the seed-to-seed spread of their differences alone (`finetune_task.md`, "
            "\"Session 15\").",
            "- Not in this design: the DPG and class-conditional (Table 1) analogues on this fine-tuning design. "
            "The text-to-image rows alone fill several hours of two processes on the 2-core machine "
            "(`finetune_task.md`), so the budget does not allow them.", "",
            "## Held-out compositions (percent; overall with its 95% interval over seeds and prompts)", "",
            *held_out_table(design, results), "",
            "## The fine-tuning distribution and the cost", "",
            "Training prompts of the four compositional tags (the 192 of the pilot's 240 images, selection seed), "
            "paired to the base image by image: this shows whether fine-tuning changed the model where it was "
            "trained. CPU seconds are the process's own (one torch thread), means over the seeds that recorded them "
            "(the first rows, run before session 12, recorded the wall clock only: -); wall-clock seconds count what "
            "other jobs on the 2 cores took as well.", "",
            *cost_table(design, results), "", "## The claims", "", *claims_table(lines), ""]
    if forest:
        text += [f"![claims]({forest.name})", "",
                 "Forest plot: paired difference and 95% interval per claim; the red ticks mark +-MDE (80% power), "
                 "the dotted lines +-3 points (the MDE a claim left unresolved must reach); a hollow grey point has "
                 "one seed and no verdict.", ""]
    if grid:
        text += [f"![samples]({grid.name})", "",
                 "Base, SFT and RSR (middle layer, seed 0) on the same held-out prompts and noise; each tile is "
                 "framed by the scorer's verdict.", ""]
    text += earlier_design(out.with_name("paper_tables_v1.md"))
    text += ["## Reproducing a row", "", "Each row's cached numbers come back from (one process; start the same "
             "command in more processes to split the jobs; with `--verify` the command recomputes the cached jobs "
             "from nothing in a scratch folder and compares every image's verdict with the cache):", "", "```bash"]
    text += [f"python -m benchmarks.reproduce_compositional --rows \"{plan.row.name}\" --seeds "
             + " ".join(str(s) for s in range(plan.seeds)) for plan in design]
    text += ["```", ""]
    if context.get("verified"):
        text += ["Jobs recomputed from nothing with `--verify` (training, sampling and scoring; one CPU thread), "
                 "compared image by image with the cache:", "", *context["verified"], "",
                 context["rows_reproduced"], "",
                 "A job reproduces bit for bit on a CPU of its own kind (the same processor and kernel "
                 "instructions). On another CPU the last bits differ, and a learned gate's argmax can turn that "
                 "into another adapter: another draw of the same training seed, which the seed-to-seed spread "
                 "already counts (`finetune_task.md`, \"Session 15: reproducing a job, and the CPU it ran on\" "
                 "and \"Session 16\").", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(text) + "\n")
