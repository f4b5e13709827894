"""The decisive reproduction's report: ``docs/results/reproduction.md`` from the cached rows of
``benchmarks.reproduce_compositional`` (which calls :func:`write_report`; ``--report-only`` redraws it): the
tables, the forest plot and the sample grid. The verdicts come from ``benchmarks.compositional_verdicts``, the
answer at the top from ``benchmarks.compositional_answer``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.compositional_answer import answer
from benchmarks.compositional_verdicts import (
    ACCEPTED_MDE,
    ONE_SEED,
    claim_lines,
    held_out_verdicts,
    mean_of_recorded,
    paired,
    points,
    sample_cpu_seconds,
    train_cpu_seconds,
    train_prompt_verdicts,
)
from benchmarks.reproduction_claims import Claim
from benchmarks.stats import row_interval
from thinkpix.images import make_labelled_grid

TAGS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
GRID_ROWS = ["base", "SFT (middle)", "RSR M=2, T=2 (middle)"]
GRID_IMAGES = 2  # images of each tag in the sample grid (first sample of evenly spread prompts)


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
    unfinished (the jobs not finished yet, in words),
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
            *answer(lines, results, context["finished"], context["planned"], context["budget_choice"],
                    context.get("unfinished", "")),
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
                 "instructions). An AMD processor with AVX-512 also gives back the jobs of an AMD processor with "
                 "AVX2 when the AVX2 kernels are forced (`ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 "
                 "ONEDNN_MAX_CPU_ISA=AVX2`); an Intel processor does not. On another CPU the last bits differ, and "
                 "a learned gate's argmax can turn that into another adapter: another draw of the same training "
                 "seed, which the seed-to-seed spread already counts (`finetune_task.md`, \"Session 15: "
                 "reproducing a job, and the CPU it ran on\", \"Session 16\" and \"Session 17\").", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(text) + "\n")
