"""Pilot for the decisive reproduction's fine-tuning budget, on TRAINING prompts only (never held-out ones).

SFT (LoRA on the middle layer, the weakest adapter of the table) is fine-tuned on the ``compositional``
recipe (``thinkpix shapes make-dataset --recipe compositional``: the training bindings of two_object,
counting, position and color_attr; no image shows a held-out binding) along a ladder of step budgets: one
run per seed, checkpointed at each rung and resumed, which at a constant rate equals separate runs. At each
rung it samples a fixed set of training prompts (the four compositional tags, plus single_object and colors
to see what the fine-tuning costs elsewhere) with the base's exact sampling noise, so SFT and the base are
compared image by image. Each (seed, rung) is one cached JSON, so an interrupted pilot resumes::

    nohup nice -n 10 python -m benchmarks.finetune_pilot > pilot.log 2>&1 &

Writes ``docs/results/finetune_pilot.md`` (and ``.json``); ``docs/results/finetune_task.md`` reads it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

import numpy as np

from benchmarks.shapes_rows import Row, cached, describe_base, finetuned, fingerprint, seed_everything, spread
from thinkpix.eval.geneval import generate_geneval, score_geneval_folder
from thinkpix.shapes.dataset import make_dataset
from thinkpix.shapes.prompts import HELDOUT_BINDINGS, training_metadata
from thinkpix.shapes.recipes import COMPOSITIONAL_TAGS, depicted_bindings, recipe_samples

BASE = "shapes-t2i"  # the default base (``--base``): the shipped one
ROW = Row("SFT (middle)", "sft", {"layers": "middle"})
ARMS = {
    "lr1e-3": ROW,
    "lr3e-3": Row("SFT (middle), lr 3e-3", "sft", {"layers": "middle", "learning_rate": 3e-3}),
    "lr3e-4": Row("SFT (middle), lr 3e-4", "sft", {"layers": "middle", "learning_rate": 3e-4}),
    "lr1e-3-linear": Row("SFT (middle), lr 1e-3 decayed", "sft", {"layers": "middle", "lr_scheduler": "linear"}),
    "lr3e-3-linear": Row("SFT (middle), lr 3e-3 decayed", "sft",
                         {"layers": "middle", "learning_rate": 3e-3, "lr_scheduler": "linear"}),
    "lr1e-3-cfg": Row("SFT (middle), 10% empty captions", "sft", {"layers": "middle", "condition_dropout": 0.1}),
    "lr1e-3-linear-cfg": Row("SFT (middle), lr 1e-3 decayed, 10% empty captions", "sft",
                             {"layers": "middle", "lr_scheduler": "linear", "condition_dropout": 0.1}),
    "n8000-cfg": Row("SFT (middle), 8000 images, 10% empty captions", "sft",
                     {"layers": "middle", "condition_dropout": 0.1}),
    "three": Row("SFT (three layers)", "sft", {"layers": "three"}),
}
"""Pilot arms by name: the preset's constant rate (1e-3), a higher one, a lower one (for a base that already draws
much of what the recipe shows, which 1e-3 may move off what it knows faster than it learns), 1e-3 and 3e-3
decayed linearly to 0 at the budget (the shipped base is the end of a cool-down, and its constant-rate stretches
barely moved it: ``shapes_bases.md``), and arms that keep training the unconditional model: the presets replace
no caption by the empty prompt, so an adapter changes the unconditional prediction that classifier-free guidance
amplifies (4x) without ever being trained on it; the base was pretrained with 10% empty captions. The 8000-image arm
sees each image 4 times in 1000 steps instead of 32 (over-fitting). ``three``: the adapter on three layers (the
table's larger SFT row), where one layer may lack the capacity to teach a base something it has never drawn."""
ARM_IMAGES = {ARMS["n8000-cfg"].name: 8000}
"""Fine-tuning images of the arms that do not use ``TRAIN_IMAGES`` (the first ``n`` of the same stream)."""


def arm_images(arm: Row) -> int:
    return ARM_IMAGES.get(arm.name, TRAIN_IMAGES)


def decays(arm: Row) -> bool:
    """A decayed arm's schedule depends on its budget, so each rung is its own run (a constant-rate ladder
    trains once and resumes)."""
    return arm.fields.get("lr_scheduler", "constant") != "constant"
LADDER = (250, 1000)
TRAIN_IMAGES = 1000  # the paper fine-tunes on 1000 MSCOCO images
BATCH_SIZE = 32
IMAGES_PER_TAG = {"two_object": 48, "counting": 48, "position": 48, "color_attr": 48, "single_object": 24,
                  "colors": 24}
SAMPLE_SEED = 4242  # sampling noise of every pilot image (a selection seed no held-out number uses)
SAMPLE_STEPS = 20
RULE_MARGIN = 0.02  # the budget rule (chosen_budget): within 2 points of the best rung's gain ...
RULE_FLOOR = 0.10  # ... and at least 10% compositional, where a 3-point effect shows in both directions


def design_key() -> str:
    """Short hash of everything a cached pilot result depends on besides the base (which has its own)."""
    design = [ROW.name, ROW.method, ROW.fields, ROW.preset, TRAIN_IMAGES, BATCH_SIZE, IMAGES_PER_TAG, SAMPLE_SEED,
              SAMPLE_STEPS]
    return hashlib.sha256(json.dumps(design, sort_keys=True).encode()).hexdigest()[:8]


def pilot_records() -> list[dict]:
    """``IMAGES_PER_TAG`` records per tag, cycling through the tag's training prompts evenly spread (a tag
    with few prompts repeats them, each repeat with its own noise)."""
    records = []
    for tag, count in IMAGES_PER_TAG.items():
        prompts = [meta for meta in training_metadata() if meta["tag"] == tag]
        chosen = spread(prompts, count)
        records += [chosen[i % len(chosen)] for i in range(count)] if len(chosen) < count else chosen
    return records


def sample_images(target, out: Path) -> Path:
    """Sample ``target`` on the pilot records into a GenEval folder (one image a record)."""
    return generate_geneval(target, pilot_records(), out, samples=1, seed=SAMPLE_SEED, steps=SAMPLE_STEPS,
                            progress=False)


def score_folder(folder: Path) -> dict:
    """Per-image verdicts (in record order) and per-tag scores of a folder of pilot images."""
    scores, results = score_geneval_folder(folder)
    return {"scores": scores, "correct": [bool(r.correct) for r in results], "tags": [r.tag for r in results],
            "prompts": [r.prompt for r in results]}


def score_images(target, out: Path) -> dict:
    """Per-image verdicts (in record order) and per-tag scores of ``target`` on the pilot records."""
    return score_folder(sample_images(target, out))


def unstated_held_out(recipe: str, n: int = TRAIN_IMAGES) -> dict[str, int]:
    """Per tag, how many of the first ``n`` images of ``recipe`` (seed 0) show a held-out binding."""
    found: dict[str, int] = {}
    for sample in recipe_samples(recipe, seed=0, n=n):
        if depicted_bindings(sample.scene.objects) & HELDOUT_BINDINGS:
            found[sample.metadata["tag"]] = found.get(sample.metadata["tag"], 0) + 1
    return found


def leak_sentence(leaks: dict[str, dict[str, int]]) -> str:
    counts = "; ".join(f"`{recipe}` {sum(tags.values())}" + (" (" + ", ".join(f"{t} {k}" for t, k in tags.items()) + ")"
                                                             if tags else "") for recipe, tags in leaks.items())
    return (f"Held-out bindings shown but not stated, in the first {TRAIN_IMAGES} images of each recipe (seed 0; "
            f"`thinkpix.shapes.recipes.depicted_bindings`): {counts}.")


def compositional_overall(correct: np.ndarray, tags: list[str]) -> float:
    """The unweighted mean of the four compositional tags' scores."""
    tags = np.asarray(tags)
    return float(np.mean([correct[tags == tag].mean() for tag in COMPOSITIONAL_TAGS]))


def paired_interval(diff: np.ndarray, tags: list[str], prompts: list[str], reps: int = 4000,
                    seed: int = 0) -> tuple[float, float, float]:
    """Mean paired difference of the compositional overall and its 95% percentile interval from a bootstrap
    over prompts within each tag (repeats of a prompt move together). Training-seed noise is not in it:
    the per-seed rows show that part."""
    rng = np.random.default_rng(seed)
    tags, prompts = np.asarray(tags), np.asarray(prompts)
    clusters = {tag: [np.flatnonzero((tags == tag) & (prompts == p)) for p in dict.fromkeys(prompts[tags == tag])]
                for tag in COMPOSITIONAL_TAGS}
    draws = np.empty(reps)
    for k in range(reps):
        per_tag = []
        for groups in clusters.values():
            picked = rng.integers(len(groups), size=len(groups))
            per_tag.append(np.concatenate([groups[i] for i in picked]))
        draws[k] = np.mean([diff[index].mean() for index in per_tag])
    point = float(np.mean([diff[tags == tag].mean() for tag in COMPOSITIONAL_TAGS]))
    low, high = np.percentile(draws, [2.5, 97.5])
    return point, float(low), float(high)


def run(base_model: str, work: Path, rows_dir: Path, arms: list[str], seeds: list[int], ladder: list[int]) -> dict:
    """The base's verdicts, then every (arm, rung, seed) not cached yet, rung by rung (an interrupted pilot has
    every seed at the lower rungs). Returns the base's result."""
    sizes = {TRAIN_IMAGES, *(arm_images(ARMS[name]) for name in arms)}
    data = {n: make_dataset(work / ("data" if n == TRAIN_IMAGES else f"data-n{n}"), n=n, seed=0,
                            recipe="compositional") for n in sizes}
    base = cached(rows_dir / "base.json", lambda: score_images(
        finetuned(base_model, data[TRAIN_IMAGES], Row("base", "base"), 0, 0, BATCH_SIZE, work / "base")[0],
        work / "base" / "geneval"))
    for name in arms:
        arm, images = ARMS[name], arm_images(ARMS[name])
        for steps in ladder:
            for seed in seeds:
                def compute(arm=arm, seed=seed, steps=steps, images=images) -> dict:
                    seed_everything(seed)
                    out = work / arm.slug / (f"seed{seed}-steps{steps}" if decays(arm) else f"seed{seed}")
                    target, cost = finetuned(base_model, data[images], arm, seed, steps, BATCH_SIZE, out / "train",
                                             resume=True)
                    return {**cost, **score_images(target, out / f"geneval-step{steps}")}

                result = cached(rows_dir / arm.slug / f"seed{seed}-step{steps}.json", compute)
                print(f"[pilot] {arm.name} seed {seed} step {steps}: {result['scores']}", flush=True)
    return base


def finished(rows_dir: Path) -> dict[tuple[str, int], dict[int, dict]]:
    """Every cached (arm, rung) with its results by seed."""
    found: dict[tuple[str, int], dict[int, dict]] = {}
    for arm in ARMS.values():
        for path in sorted((rows_dir / arm.slug).glob("seed*-step*.json")):
            seed, steps = (int(x) for x in re.fullmatch(r"seed(\d+)-step(\d+)", path.stem).groups())
            found.setdefault((arm.name, steps), {})[seed] = json.loads(path.read_text())
    return dict(sorted(found.items(), key=lambda item: (item[0][0] != ROW.name, item[0])))


def rung_line(name: str, steps: int, results: list[dict], base: dict, cols: list[str]) -> tuple[str, dict]:
    """One table line (and its summary) for the results of an arm's rung, seed-averaged, paired to the base."""
    tags, base_correct = base["tags"], np.asarray(base["correct"], dtype=float)
    correct = np.mean([np.asarray(r["correct"], dtype=float) for r in results], axis=0)
    point, low, high = paired_interval(correct - base_correct, tags, base["prompts"])
    per_seed = [100 * (compositional_overall(np.asarray(r["correct"], float), tags)
                       - compositional_overall(base_correct, tags)) for r in results]
    train = sum(r["train_seconds"] for r in results) / len(results)
    scores = {c: float(np.mean([r["scores"][c] for r in results])) for c in cols}
    epochs = steps * BATCH_SIZE / ARM_IMAGES.get(name, TRAIN_IMAGES)
    line = (f"| {name} | {steps} | {epochs:.0f} | {len(results)} | "
            f"{100 * compositional_overall(correct, tags):.1f} | " + " | ".join(f"{100 * scores[c]:.1f}" for c in cols)
            + f" | {100 * point:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] "
            f"(seeds: {', '.join(f'{d:+.1f}' for d in per_seed)}) | {train:.0f} |")
    return line, {"name": name, "steps": steps, "seeds": len(results), "difference": point, "interval": [low, high],
                  "per_seed": per_seed, "scores": scores, "compositional": compositional_overall(correct, tags)}


def chosen_budget(summary: list[dict]) -> tuple[int | None, str]:
    """The budget rule of ``finetune_task.md`` on the rungs of ``ROW`` with at least two seeds: the best rung (largest
    compositional gain over the base) must exclude zero; the budget is then the smallest rung whose gain is within
    ``RULE_MARGIN`` of the best's and whose compositional score reaches ``RULE_FLOOR`` (below it a comparison of
    adapters sits at the scorer's floor). Returns (steps or None, the reason in words)."""
    rungs = sorted((r for r in summary if r["name"] == ROW.name and r["seeds"] >= 2), key=lambda r: r["steps"])
    if not rungs:
        return None, f"no rung of {ROW.name} has two seeds yet"
    best = max(rungs, key=lambda r: r["difference"])
    if best["interval"][0] <= 0:
        return None, f"the best rung ({best['steps']} steps) does not beat the base: its interval includes zero"
    near = [r for r in rungs if r["difference"] >= best["difference"] - RULE_MARGIN]
    floor = [r for r in near if r["compositional"] >= RULE_FLOOR]
    if not floor:
        top = max(r["compositional"] for r in near)
        return None, (f"no rung within {100 * RULE_MARGIN:.0f} points of the best reaches the floor of "
                      f"{100 * RULE_FLOOR:.0f}% compositional (at most {100 * top:.1f}%)")
    return floor[0]["steps"], (f"{floor[0]['steps']} steps: the smallest rung within {100 * RULE_MARGIN:.0f} points "
                               f"of the best ({best['steps']} steps) at or above {100 * RULE_FLOOR:.0f}% compositional")


def report(base_model: str, base: dict, rows_dir: Path, out: Path, command: str) -> None:
    tags = base["tags"]
    cols = [*COMPOSITIONAL_TAGS, "single_object", "colors"]
    lines = ["# Fine-tuning pilot: SFT vs base on training prompts", "",
             f"Produced by `{command}` (the table holds every cached arm and rung). Base {describe_base(base_model)}. "
             f"SFT: LoRA rank 16 on the middle layer (preset `{ROW.preset}`, constant rate, batch {BATCH_SIZE}), "
             f"fine-tuned on {TRAIN_IMAGES} images of the `compositional` recipe (seed 0), one run per seed "
             "checkpointed at each rung of the step ladder and resumed. Scored on "
             f"{len(tags)} images of training prompts ({', '.join(f'{t} {n}' for t, n in IMAGES_PER_TAG.items())}; "
             f"one image per record, sampling seed {SAMPLE_SEED}, {SAMPLE_STEPS} steps, guidance 4 with the base's "
             "interval), the same noise for every row. Percent. *compositional* = mean of the four compositional "
             "tags; its difference to the base is paired image by image (seed-averaged), with a 95% bootstrap "
             "interval over prompts within each tag (sampling and prompt noise; the per-seed differences show the "
             "training-seed spread). *train s*: seconds of the run's last leg (from the rung below; a decayed arm's "
             "whole run), on a shared machine.", "",
             "| row | steps | epochs | seeds | " + " | ".join(["compositional", *cols]) + " | vs base (compositional) "
             "| train s |", "| --- |" + " ---: |" * (len(cols) + 6)]
    lines.append(f"| base | 0 | 0 | - | {100 * compositional_overall(np.asarray(base['correct'], float), tags):.1f} | "
                 + " | ".join(f"{100 * base['scores'][c]:.1f}" for c in cols) + " | - | - |")
    summary = {}
    for (name, steps), by_seed in finished(rows_dir).items():
        line, summary[f"{name} @ {steps}"] = rung_line(name, steps, list(by_seed.values()), base, cols)
        lines.append(line)
    steps, reason = chosen_budget(list(summary.values()))
    lines += ["", f"**Budget rule** (`finetune_task.md`, `chosen_budget`): {'chosen: ' if steps else 'none chosen: '}"
              f"{reason}."]
    leaks = {recipe: unstated_held_out(recipe) for recipe in ("pretrain", "compositional", "objects")}
    lines += ["", leak_sentence(leaks)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"summary": summary, "budget": steps, "budget_reason": reason,
                                                    "unstated_held_out": leaks}, indent=2))


def command_line(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The command that reproduces this report: every flag that differs from its default, except ``--threads``."""
    parts = ["python -m benchmarks.finetune_pilot"]
    for dest, value in vars(args).items():
        if dest != "threads" and value != parser.get_default(dest):
            shown = " ".join(map(str, value)) if isinstance(value, list) else str(value)
            parts.append(f"--{dest.replace('_', '-')} {shown}")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=BASE, help="the base to fine-tune: a shipped name or a pipeline folder")
    parser.add_argument("--arms", nargs="+", default=["lr1e-3"], choices=tuple(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--ladder", type=int, nargs="+", default=list(LADDER), help="step budgets, ascending")
    parser.add_argument("--work", default="runs/finetune_pilot",
                        help="data and adapters, under <work>/<base fingerprint>")
    parser.add_argument("--rows-dir", default="docs/results/finetune_pilot_rows")
    parser.add_argument("--out", default="docs/results/finetune_pilot.md")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    rows_dir = Path(args.rows_dir) / f"{fingerprint(args.base)}-{design_key()}"
    # adapters live under the base's fingerprint: a resumed rung never continues a run of another base
    base = run(args.base, Path(args.work) / fingerprint(args.base), rows_dir, args.arms, args.seeds,
               sorted(args.ladder))
    report(args.base, base, rows_dir, Path(args.out), command_line(parser, args))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
