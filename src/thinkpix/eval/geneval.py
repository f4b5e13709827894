"""GenEval generation in the official layout, and scoring of such a folder with the Shapes scorer.

Layout (djghosh13/geneval, generation/diffusers_generate.py)::

    <out>/<index:05d>/metadata.jsonl      one line: the prompt's metadata record
    <out>/<index:05d>/samples/<n:05d>.png one file per sample

so a folder written here can also go to the official evaluator (evaluation/evaluate_images.py)
for real models. Any pipeline that ``thinkpix.train.TrainTarget`` drives works, including a
diffusers ``StableDiffusion3Pipeline``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import UserError, check_positive_int
from ..images import to_uint8
from ..pipelines import TrainTarget, check_sampling_args
from ..shapes.metadata import validate_metadata
from ..shapes.score import GenEvalResult, score_image, summarize

logger = logging.getLogger(__name__)


def generate_geneval(target: TrainTarget, records: list[dict], out: str | Path, samples: int = 4, seed: int = 0,
                     steps: int = 20, guidance_scale: float = 4.0, batch_size: int = 32, progress: bool = True) -> Path:
    """Sample ``samples`` images per metadata record into the GenEval layout.

    Images are drawn ``batch_size`` at a time, each batch from a generator seeded with ``seed`` plus the
    offset of its first image, so a run is reproducible for a given ``batch_size``.
    """
    out = Path(out)
    start_prompt_folders(out, len(records), samples, steps, guidance_scale, batch_size)
    for i, record in enumerate(records):
        folder = out / f"{i:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        (folder / "metadata.jsonl").write_text(json.dumps(validate_metadata(record, f"record {i}")) + "\n")
    sample_prompt_folders(target, [r["prompt"] for r in records], out, samples, seed, steps, guidance_scale,
                          batch_size, progress, desc="geneval")
    return out


def sample_prompt_folders(target: TrainTarget, prompts: list[str], out: Path, samples: int, seed: int, steps: int,
                          guidance_scale: float, batch_size: int, progress: bool, desc: str) -> None:
    """Write ``<out>/<i:05d>/samples/<n:05d>.png`` for every prompt i and sample n (the GenEval / DPG layout);
    batch b is drawn from a generator seeded with ``seed`` plus the offset of its first image."""
    jobs = [(i, n) for i in range(len(prompts)) for n in range(samples)]
    for start in tqdm(range(0, len(jobs), batch_size), disable=not progress, desc=desc, unit="batch"):
        batch = jobs[start : start + batch_size]
        images = to_uint8(target.sample([prompts[i] for i, _ in batch], seed=seed + start, steps=steps,
                                        guidance_scale=guidance_scale))
        for (i, n), image in zip(batch, images):
            Image.fromarray(image).save(out / f"{i:05d}" / "samples" / f"{n:05d}.png")


def start_prompt_folders(out: Path, prompts: int, samples: int, steps: int, guidance_scale: float,
                         batch_size: int) -> None:
    """Check the settings of a GenEval / DPG generation into ``out`` before anything is written, and delete
    what an earlier, larger run left there that this one would not overwrite (``<index>/`` folders with
    ``index >= prompts``, ``samples/<n>.png`` with ``n >= samples``), saying so: a score never mixes runs."""
    if prompts < 1:
        raise UserError("no prompts to generate (check --limit / --num-prompts)")
    check_sampling_args(steps, guidance_scale)
    check_positive_int(samples, "--samples")
    check_positive_int(batch_size, "batch_size")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    stale = [p for p in out.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) >= prompts]
    images = [f for i in range(prompts) for f in (out / f"{i:05d}" / "samples").glob("*.png")
              if not f.stem.isdigit() or int(f.stem) >= samples]
    for folder in stale:
        shutil.rmtree(folder)
    for image in images:
        image.unlink()
    if stale or images:
        logger.warning("removed %d prompt folder(s) and %d sample(s) of an earlier run from %s", len(stale),
                       len(images), out)


def score_geneval_folder(folder: str | Path) -> tuple[dict[str, float], list[GenEvalResult]]:
    """Score every ``<index>/samples/*.png`` against its ``metadata.jsonl``: (per-tag and overall, results)."""
    folder = Path(folder)
    prompt_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and (p / "metadata.jsonl").is_file())
    if not prompt_dirs:
        raise ValueError(f"{folder} has no GenEval prompt folders (<index>/metadata.jsonl + samples/)")
    results = []
    for prompt_dir in prompt_dirs:
        metadata = validate_metadata(json.loads((prompt_dir / "metadata.jsonl").read_text().splitlines()[0]),
                                     str(prompt_dir / "metadata.jsonl"))
        for image_path in sorted((prompt_dir / "samples").glob("*.png")):
            with Image.open(image_path) as image:
                results.append(score_image(np.asarray(image.convert("RGB")), metadata))
    return summarize(results), results


def format_scores(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per model, GenEval's columns, scores in percent."""
    columns = ["overall", "single_object", "two_object", "counting", "colors", "position", "color_attr"]
    present = [c for c in columns if any(c in r for r in rows.values())]
    lines = ["| model | " + " | ".join(present) + " |", "| --- |" + " ---: |" * len(present)]
    for name, scores in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * scores[c]:.1f}" if c in scores else "-" for c in present)
                     + " |")
    return "\n".join(lines)
