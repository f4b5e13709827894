"""The paper's tables reproduced on the Shapes world, 3 seeds a row, mean and 95% confidence interval.

* Table 2 analogue: Shapes-GenEval on the held-out compositions for base, SFT, the recursion and
  modulation ablations, RSR on the middle layer and on three layers, RSR M=5, T=5, and random routing
  (the referee's control: same parameters, no learned gate).
* Table 3 analogue: Shapes-DPG for the rows the paper reports (three layers).
* Table 1 analogue: the class-conditional DiT base with SFT and RSR, FD / sFD / IS / precision / recall
  with the ``shapes`` feature extractor against real renders.

Every row is fine-tuned on the ``pretrain`` recipe (the bases' own pretraining distribution; the decisive
reproduction on the ``compositional`` fine-tuning task is ``benchmarks.reproduce_compositional``) at one
fixed budget per mode (``QUICK`` or ``FULL``); each finished (row, seed)
is one JSON under ``--rows-dir`` (keyed by the base's weights and the budget), and a rerun skips
finished rows, so the full mode resumes after an interruption, also in a later session::

    python -m benchmarks.reproduce_tables --quick            # < 20 min on 2 cores
    nohup python -m benchmarks.reproduce_tables > repro.log 2>&1 &   # about 2 h on 2 cores
    python -m benchmarks.reproduce_tables --rows "RSR M=2, T=2 (middle)" --seeds 0   # one row, one seed

Writes ``docs/results/paper_tables_v1.md`` (``--out``; quick runs write into ``--work``) and a ``.json`` next to it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.power import power_section
from benchmarks.reproduction_claims import claims_section
from benchmarks.shapes_rows import (
    Budget,
    Row,
    cached,
    describe_base,
    finetuned,
    fingerprint,
    fmt_ci,
    geneval_row,
    seed_everything,
    spread,
)
from thinkpix.eval.dpg import dpg_prompts, generate_dpg, score_dpg_folder
from thinkpix.eval.extractors import extract_features, get_extractor
from thinkpix.eval.fid import compute_metrics, load_images
from thinkpix.eval.geneval import format_scores
from thinkpix.shapes.dataset import make_dataset
from thinkpix.shapes.prompts import evaluation_metadata

QUICK = Budget(train_images=256, finetune_steps=20, batch_size=16, geneval_prompts=24, samples=1, sample_steps=10,
               dpg_prompts=12, class_samples=200)
FULL = Budget(train_images=2000, finetune_steps=250, batch_size=32, geneval_prompts=None, samples=2, sample_steps=20,
              dpg_prompts=60, class_samples=1000, class_finetune_steps=250)

MID, THREE = {"layers": "middle"}, {"layers": "three"}
T2I_ROWS = [
    Row("base", "base"),
    Row("SFT (middle)", "sft", MID),
    Row("RSR w/o recursion M=2, T=1 (middle)", "rsr", {**MID, "num_experts": 2, "latent_steps": 1}),
    Row("RSR w/o modulation M=1, T=2 (middle)", "rsr", {**MID, "num_experts": 1, "latent_steps": 2}),
    Row("RSR M=2, T=2 (middle)", "rsr", {**MID, "num_experts": 2, "latent_steps": 2}),
    Row("SFT (three layers)", "sft", THREE),
    Row("RSR M=2, T=2 (three layers)", "rsr", {**THREE, "num_experts": 2, "latent_steps": 2}),
    Row("RSR M=5, T=5 (three layers)", "rsr", {**THREE, "num_experts": 5, "latent_steps": 5}),
    Row("RSR random routing M=2, T=2 (middle)", "rsr", {**MID, "num_experts": 2, "latent_steps": 2,
                                                          "routing": "random"}),
]
DPG_ROWS = {"base", "SFT (three layers)", "RSR M=2, T=2 (three layers)", "RSR M=5, T=5 (three layers)"}
CLASS_ROWS = [
    Row("base", "base"),
    Row("SFT (middle)", "sft", MID),
    Row("RSR M=2, T=2 (middle)", "rsr", {**MID, "num_experts": 2, "latent_steps": 2}),
]


def t2i_row(row: Row, seed: int, budget: Budget, work: Path, data: Path) -> dict:
    seed_everything(seed)
    out = work / "t2i" / row.slug / f"seed{seed}"
    target, cost = finetuned("shapes-t2i", data, row, seed, budget.finetune_steps, budget.batch_size, out / "train")
    records = spread(evaluation_metadata(), budget.geneval_prompts)
    result = {**cost, "geneval": geneval_row(target, records, out / "geneval", budget, seed)}
    if row.name in DPG_ROWS:
        started = time.perf_counter()
        folder = generate_dpg(target, dpg_prompts(budget.dpg_prompts, split="eval"), out / "dpg",
                              samples=budget.samples, seed=seed, steps=budget.sample_steps, progress=False)
        result["dpg"] = {"scores": score_dpg_folder(folder)[0], "sample_seconds": time.perf_counter() - started}
    return result


def class_row(row: Row, seed: int, budget: Budget, work: Path, data: Path, reference: Path) -> dict:
    seed_everything(seed)
    out = work / "class" / row.slug / f"seed{seed}"
    steps = budget.class_finetune_steps or budget.finetune_steps
    target, cost = finetuned("shapes-class", data, row, seed, steps, budget.batch_size, out / "train")
    # the classes of the reference renders (the training split's): held-out colour-shape pairs were never trained
    classes = sorted(p.name for p in reference.iterdir() if p.is_dir())
    labels = [classes[i] for i in np.random.default_rng(seed).integers(0, len(classes), budget.class_samples)]
    started = time.perf_counter()
    images = np.concatenate([target.sample(labels[i : i + 100], seed=seed + i, steps=budget.sample_steps)
                             for i in range(0, len(labels), 100)])
    seconds = time.perf_counter() - started
    images = (images * 255).round().clip(0, 255).astype(np.uint8)
    extractor = get_extractor("shapes")
    metrics = compute_metrics(extract_features(extractor, load_images(reference)), extract_features(extractor, images))
    return {**cost, "metrics": metrics, "sample_seconds": seconds, "images": len(images)}


def seed_results(folder: Path, seeds: list[int], report_only: bool, compute) -> list[dict]:
    """One result per seed, cached as ``<folder>/seed<k>.json`` (computed when missing); with ``report_only``
    only the finished seeds, nothing computed."""
    paths = [folder / f"seed{seed}.json" for seed in seeds]
    if report_only:
        return [json.loads(p.read_text()) for p in paths if p.is_file()]
    return [cached(path, lambda s=seed: compute(s)) for path, seed in zip(paths, seeds)]


def _cost(results: list[dict]) -> str:
    train = sum(r["train_seconds"] for r in results) / len(results)
    sample = sum(r.get("geneval", r)["sample_seconds"] for r in results) / len(results)
    return f"{train:.0f} s / {sample:.0f} s"


def write_report(out: Path, budget: Budget, mode: str, t2i: dict, dpg: dict, cls: dict, seeds: list[int],
                 command: str, rows_dir: Path) -> None:
    geneval_cols = ["overall", "single_object", "two_object", "counting", "colors", "position", "color_attr"]
    lines = ["# The paper's tables on the Shapes world", "",
             f"Produced by `{command}` ({mode} budget: {budget}). Seeds {seeds}; each cell is the mean over "
             "seeds with the half-width of its 95% confidence interval (Student's t). Cost = mean fine-tuning "
             "time / mean sampling time of the row on this machine (2 shared CPU cores). Bases: "
             f"{describe_base('shapes-t2i')}, {describe_base('shapes-class')} (`benchmarks.shapes_rows.fingerprint`; "
             "see `docs/results/shapes_bases.md`).", ""]
    if t2i:
        lines += ["## Table 2 analogue: Shapes-GenEval, held-out compositions (percent)", "",
                  "| row | " + " | ".join(geneval_cols) + " | params | cost | seeds |",
                  "| --- |" + " ---: |" * (len(geneval_cols) + 3)]
        for name, results in t2i.items():
            cells = [fmt_ci([r["geneval"]["scores"][c] for r in results])
                     if all(c in r["geneval"]["scores"] for r in results) else "-" for c in geneval_cols]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {results[0]['trainable_params']:,} | "
                         f"{_cost(results)} | {len(results)} |")
        lines.append("")
    if dpg:
        order = ["overall", "entity", "attribute", "relation", "global", "other"]
        cols = [c for c in order if any(c in r["dpg"]["scores"] for rs in dpg.values() for r in rs)]
        lines += ["## Table 3 analogue: Shapes-DPG (percent)", "", "| row | " + " | ".join(cols) + " |",
                  "| --- |" + " ---: |" * len(cols)]
        for name, results in dpg.items():
            lines.append(f"| {name} | " + " | ".join(fmt_ci([r["dpg"]["scores"][c] for r in results]) for c in cols)
                         + " |")
        lines.append("")
    if cls:
        cols = ["fid", "sfid", "inception_score", "precision", "recall"]
        lines += ["## Table 1 analogue: class-conditional DiT, `shapes` features", "",
                  "| row | FD | sFD | IS | precision | recall | params | cost |", "| --- |" + " ---: |" * 7]
        for name, results in cls.items():
            cells = [fmt_ci([r["metrics"][c] for r in results], scale=1.0, digits=2 if c in ("fid", "sfid") else 3)
                     for c in cols]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {results[0]['trainable_params']:,} | "
                         f"{sum(r['train_seconds'] for r in results) / len(results):.0f} s / "
                         f"{sum(r['sample_seconds'] for r in results) / len(results):.0f} s |")
        lines.append("")
    lines += claims_section(t2i, dpg, cls)
    lines += power_section(t2i)
    lines += ["## Rerunning one row", "",
              f"Finished rows are cached per seed under `{rows_dir}/<table>-<base "
              "fingerprint>-<budget>/<row>/seed<k>.json` and skipped on a rerun; delete a row's folder to "
              "recompute it. One row alone (its report goes to `--out`, so this report is left as it is):", "",
              "| row | method and fields | command |", "| --- | --- | --- |"]
    for table, rows in (("t2i", T2I_ROWS), ("class", CLASS_ROWS)):
        for row in rows:
            lines.append(f"| {row.name} ({table}) | {row.describe()} | `python -m benchmarks.reproduce_tables "
                         f"--tables {table} --rows '{row.name}' --out runs/{table}-{row.slug}.md` |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"budget": budget.__dict__, "t2i": t2i, "dpg": dpg,
                                                    "class": cls}, indent=2))
    if t2i:
        print(format_scores({name: rs[0]["geneval"]["scores"] for name, rs in t2i.items()}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small budget: the whole run in < 20 min on 2 cores")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=None, help="only these row names")
    parser.add_argument("--tables", nargs="+", default=["t2i", "class"], choices=["t2i", "class"])
    parser.add_argument("--work", default="runs/reproduce", help="data, checkpoints and samples of every row")
    parser.add_argument("--rows-dir", default=None,
                        help="finished rows, one JSON each (default: docs/results/reproduction_rows for the full "
                             "mode, so that finished rows are committed and a later session resumes from them)")
    parser.add_argument("--out", default=None,
                        help="report path (default docs/results/paper_tables_v1.md; quick: <work>/reproduction.md)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true",
                        help="write the report from the finished rows only (no training; unfinished rows left out)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    budget, mode = (QUICK, "quick") if args.quick else (FULL, "full")
    work = Path(args.work) / f"{mode}-{budget.key()}"
    out = Path(args.out or (work / "reproduction.md" if args.quick else "docs/results/paper_tables_v1.md"))
    rows_dir = Path(args.rows_dir or (work / "rows" if args.quick else "docs/results/reproduction_rows")) / mode
    t2i, dpg, cls = {}, {}, {}
    if "t2i" in args.tables:
        data = make_dataset(work / "data-t2i", n=budget.train_images, seed=0, variant="caption", split="train",
                            recipe="pretrain")
        key = fingerprint("shapes-t2i")
        for row in T2I_ROWS:
            if args.rows and row.name not in args.rows:
                continue
            results = seed_results(rows_dir / f"t2i-{key}-{budget.key()}" / row.slug, args.seeds, args.report_only,
                                   lambda s, r=row: t2i_row(r, s, budget, work, data))
            if not results:
                continue
            t2i[row.name] = results
            if row.name in DPG_ROWS:
                dpg[row.name] = results
            print(f"[t2i] {row.name}: done ({len(results)} seeds)", flush=True)
    if "class" in args.tables:
        data = make_dataset(work / "data-class", n=budget.train_images, seed=1, variant="class", split="train")
        reference = make_dataset(work / "reference-class", n=budget.class_samples, seed=12345, variant="class",
                                 split="train")
        key = fingerprint("shapes-class")
        for row in CLASS_ROWS:
            if args.rows and row.name not in args.rows:
                continue
            results = seed_results(rows_dir / f"class-{key}-{budget.key()}" / row.slug, args.seeds, args.report_only,
                                   lambda s, r=row: class_row(r, s, budget, work, data, reference))
            if not results:
                continue
            cls[row.name] = results
            print(f"[class] {row.name}: done", flush=True)
    command = "python -m benchmarks.reproduce_tables" + (" --quick" if args.quick else "")
    if args.report_only:
        command += " --report-only  # a partial report: the full run had not finished every row"
    write_report(out, budget, mode, t2i, dpg, cls, args.seeds, command, rows_dir)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
