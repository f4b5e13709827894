"""Shapes-DPG generation into a self-describing folder, and scoring of such a folder.

Layout (one folder per prompt, like the GenEval layout of :mod:`thinkpix.eval.geneval`)::

    <out>/config.json                     model, rsr, split, seeds, steps, guidance, prompt count
    <out>/<index:05d>/item.json           the prompt, its object groups, relation and question graph
    <out>/<index:05d>/samples/<n:05d>.png one file per sample (DPG-Bench: 4 per prompt)

``item.json`` is :meth:`~thinkpix.shapes.dpg.DpgItem.to_dict`, so a folder is scored without any
other input. Scoring follows DPG-Bench (ELLA, ``dpg_bench/compute_dpg_bench.py``) as implemented in
:mod:`thinkpix.shapes.dpg_score`: parent-zeroing, mean over questions, images, then prompts; the
per-category scores (entity, attribute, relation, global, other) are the raw answer means.

Held-out split: the dense prompts are drawn by :func:`~thinkpix.shapes.dpg.random_item`; a prompt's
*bindings* are its stated (colour, shape) pairs, its (shape, count) pairs for counts > 1 and its
canonical spatial fact, as in :func:`thinkpix.shapes.prompts.bindings`. ``eval`` keeps the prompts
with at least one binding held out of training (:data:`~thinkpix.shapes.prompts.HELDOUT_BINDINGS`),
``train`` those with none, ``all`` every prompt. Prompts are distinct.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..pipelines import TrainTarget
from ..shapes.dpg import DPG_CATEGORIES, DpgItem, random_item
from ..shapes.dpg_score import DpgImageResult, score_dpg_image, summarize_dpg
from ..shapes.prompts import HELDOUT_BINDINGS, canonical_fact
from .geneval import sample_prompt_folders, start_prompt_folders

DPG_SPLITS = ("eval", "train", "all")
MAX_DRAWS_PER_PROMPT = 1000


def dpg_bindings(item: DpgItem) -> frozenset[tuple]:
    """The (colour, shape), (shape, count) and canonical spatial-fact bindings a dense prompt states."""
    found = {("color", g.color, g.shape) for g in item.groups if g.color is not None}
    found |= {("count", g.shape, g.count) for g in item.groups if g.count > 1}
    if item.relation is not None:
        i, rel, j = item.relation
        found.add(("position", *canonical_fact(item.groups[i].shape, rel, item.groups[j].shape)))
    return frozenset(found)


def in_split(item: DpgItem, split: str) -> bool:
    if split not in DPG_SPLITS:
        raise ValueError(f"split={split!r} is not allowed; allowed values: {', '.join(DPG_SPLITS)}")
    held_out = bool(dpg_bindings(item) & HELDOUT_BINDINGS)
    return split == "all" or held_out == (split == "eval")


def dpg_prompts(n: int, split: str = "eval", seed: int = 0) -> list[DpgItem]:
    """``n`` distinct dense prompts of ``split``, fully determined by ``seed``."""
    if n < 1:
        raise ValueError(f"the number of prompts must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    items: dict[str, DpgItem] = {}
    for _ in range(n * MAX_DRAWS_PER_PROMPT):
        item = random_item(rng)
        if item.prompt not in items and in_split(item, split):
            items[item.prompt] = item
            if len(items) == n:
                return list(items.values())
    raise ValueError(f"found only {len(items)} distinct {split} prompts; ask for fewer")


def generate_dpg(target: TrainTarget, items: list[DpgItem], out: str | Path, samples: int = 4, seed: int = 0,
                 steps: int = 20, guidance_scale: float = 4.0, batch_size: int = 32, progress: bool = True,
                 info: dict | None = None) -> Path:
    """Sample ``samples`` images per item into the layout above.

    As in :func:`~thinkpix.eval.geneval.generate_geneval`, each batch of ``batch_size`` images is
    drawn from a generator seeded with ``seed`` plus the offset of its first image.
    """
    if target.kind != "caption":
        raise ValueError("DPG prompts need a text-to-image model (e.g. shapes-t2i), not a class-conditional one")
    out = Path(out)
    start_prompt_folders(out, len(items), samples, steps, guidance_scale, batch_size)
    config = {**(info or {}), "benchmark": "shapes-dpg", "prompts": len(items), "samples": samples, "seed": seed,
              "num_inference_steps": steps, "guidance_scale": guidance_scale, "batch_size": batch_size}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for i, item in enumerate(items):
        (out / f"{i:05d}" / "samples").mkdir(parents=True, exist_ok=True)
        (out / f"{i:05d}" / "item.json").write_text(json.dumps(item.to_dict(), indent=1) + "\n")
    sample_prompt_folders(target, [item.prompt for item in items], out, samples, seed, steps, guidance_scale,
                          batch_size, progress, desc="dpg")
    return out


def score_dpg_folder(folder: str | Path) -> tuple[dict[str, float], list[DpgImageResult]]:
    """Score every ``<index>/samples/*.png`` against its ``item.json``: (per-category and overall, results)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    prompt_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and (p / "item.json").is_file())
    if not prompt_dirs:
        raise ValueError(f"{folder} has no DPG prompt folders (<index>/item.json + samples/)")
    results = []
    for prompt_dir in prompt_dirs:
        item = DpgItem.from_dict(json.loads((prompt_dir / "item.json").read_text()))
        for image_path in sorted((prompt_dir / "samples").glob("*.png")):
            with Image.open(image_path) as image:
                results.append(score_dpg_image(item, np.asarray(image.convert("RGB"))))
    if not results:
        raise ValueError(f"{folder} has DPG prompt folders but no samples/*.png images")
    return summarize_dpg(results), results


def format_dpg_scores(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per model, DPG-Bench's columns (overall and the L1 categories), in percent."""
    columns = ["overall", *(c for c in ("global", "entity", "attribute", "relation", "other") if c in DPG_CATEGORIES)]
    lines = ["| model | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for name, scores in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * scores[c]:.1f}" if c in scores else "-" for c in columns)
                     + " |")
    return "\n".join(lines)
