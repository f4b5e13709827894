"""GenEval generation in the official layout, and scoring of such a folder with the Shapes scorer.

Layout (djghosh13/geneval, generation/diffusers_generate.py)::

    <out>/<index:05d>/metadata.jsonl      one line: the prompt's metadata record
    <out>/<index:05d>/samples/<n:05d>.png one file per sample

so a folder written here can also go to the official evaluator (evaluation/evaluate_images.py)
for real models. Any pipeline that ``thinkpix.train.TrainTarget`` drives works, including a
diffusers ``StableDiffusion3Pipeline``.

:func:`generate_protocol` samples a named Shapes-GenEval protocol (:mod:`thinkpix.shapes.protocol`: ``v1`` the
original 2 images a prompt, ``v2`` balanced with per-image noise); :func:`score_geneval_images` gives one verdict
per image keyed by ``(prompt_index, sample_index)``, the unit the paired statistics of ``benchmarks/stats.py``
work on.
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
from ..images import save_grid, save_png, to_uint8
from ..pipelines import TrainTarget, check_sampling_args
from ..shapes.metadata import validate_metadata
from ..shapes.protocol import get_protocol
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
    batch b is drawn from a generator seeded with ``seed`` plus the offset of its first image. Each PNG records its
    prompt, the model, that seed and its row in the batch (``batch_index``) as PNG text chunks."""
    jobs = [(i, n) for i in range(len(prompts)) for n in range(samples)]
    model = str(target.pipeline.name_or_path) if getattr(target.pipeline, "name_or_path", None) else None
    for start in tqdm(range(0, len(jobs), batch_size), disable=not progress, desc=desc, unit="batch"):
        batch = jobs[start : start + batch_size]
        images = to_uint8(target.sample([prompts[i] for i, _ in batch], seed=seed + start, steps=steps,
                                        guidance_scale=guidance_scale))
        for row, ((i, n), image) in enumerate(zip(batch, images)):
            save_png(image, out / f"{i:05d}" / "samples" / f"{n:05d}.png",
                     {"prompt": prompts[i], "model": model, "seed": seed + start, "batch_index": row,
                      "batch_size": len(batch), "num_inference_steps": steps, "guidance_scale": guidance_scale})


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


def generate_protocol(target: TrainTarget, protocol: str, out: str | Path, seed: int = 0, steps: int = 20,
                      guidance_scale: float = 4.0, batch_size: int = 32, progress: bool = True) -> Path:
    """Sample the Shapes-GenEval ``protocol`` (``v1`` or ``v2``) into the GenEval layout at ``out``.

    ``v1`` is :func:`generate_geneval` with 2 samples a prompt, exactly as before. ``v2`` gives every image its
    own generator seeded by :func:`~thinkpix.shapes.protocol.image_seed` ``(seed, prompt, sample index)``, so the
    same image of two rows starts from the same noise whatever ``batch_size`` is.
    """
    spec = get_protocol(protocol)
    if not spec.per_image_noise:
        return generate_geneval(target, spec.records(), out, samples=spec.samples, seed=seed, steps=steps,
                                guidance_scale=guidance_scale, batch_size=batch_size, progress=progress)
    out = Path(out)
    start_prompt_folders(out, len(spec.records()), max(spec.samples_per_prompt().values()), steps, guidance_scale,
                         batch_size)
    for i, record in enumerate(spec.records()):
        (out / f"{i:05d}" / "samples").mkdir(parents=True, exist_ok=True)
        (out / f"{i:05d}" / "metadata.jsonl").write_text(json.dumps(record) + "\n")
    jobs = spec.jobs(seed)
    for start in tqdm(range(0, len(jobs), batch_size), disable=not progress, desc=f"geneval {protocol}",
                      unit="batch"):
        batch = jobs[start : start + batch_size]
        images = to_uint8(target.sample([job.metadata["prompt"] for job in batch], seed=[j.noise_seed for j in batch],
                                        steps=steps, guidance_scale=guidance_scale))
        for job, image in zip(batch, images):
            Image.fromarray(image).save(out / f"{job.prompt_index:05d}" / "samples" / f"{job.sample_index:05d}.png")
    return out


def _index(name: str) -> int | str:
    return int(name) if name.isdigit() else name


def score_geneval_images(folder: str | Path, **detect_kwargs) -> list[dict]:
    """One verdict per image of a GenEval folder: ``{"prompt_index", "sample_index", "tag", "prompt", "correct"}``,
    in folder order (prompt folders and sample files sorted by name)."""
    folder = Path(folder)
    prompt_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and (p / "metadata.jsonl").is_file())
    if not prompt_dirs:
        raise ValueError(f"{folder} has no GenEval prompt folders (<index>/metadata.jsonl + samples/)")
    verdicts = []
    for prompt_dir in prompt_dirs:
        metadata = validate_metadata(json.loads((prompt_dir / "metadata.jsonl").read_text().splitlines()[0]),
                                     str(prompt_dir / "metadata.jsonl"))
        for image_path in sorted((prompt_dir / "samples").glob("*.png")):
            with Image.open(image_path) as image:
                result = score_image(np.asarray(image.convert("RGB")), metadata, **detect_kwargs)
            verdicts.append({"prompt_index": _index(prompt_dir.name), "sample_index": _index(image_path.stem),
                             "tag": result.tag, "prompt": result.prompt, "correct": result.correct,
                             "reason": result.reason})
    return verdicts


def score_geneval_folder(folder: str | Path) -> tuple[dict[str, float], list[GenEvalResult]]:
    """Score every ``<index>/samples/*.png`` against its ``metadata.jsonl``: (per-tag and overall, results)."""
    results = [GenEvalResult(v["tag"], v["prompt"], v["correct"], v["reason"]) for v in score_geneval_images(folder)]
    return summarize(results), results


def geneval_grid(folder: str | Path, path: str | Path, ncols: int = 8, sample: int = 0) -> tuple[Path, int]:
    """A labelled grid of sample ``sample`` of every prompt of a GenEval folder, each tile captioned with its
    prompt and marked pass/FAIL by the Shapes scorer; returns ``(path, number of prompts shown)``."""
    folder = Path(folder)
    images, prompts, marks = [], [], []
    for prompt_dir in sorted(p for p in folder.iterdir() if (p / "metadata.jsonl").is_file()):
        image_path = prompt_dir / "samples" / f"{sample:05d}.png"
        if not image_path.is_file():
            continue
        metadata = json.loads((prompt_dir / "metadata.jsonl").read_text().splitlines()[0])
        with Image.open(image_path) as image:
            images.append(np.asarray(image.convert("RGB")))
        prompts.append(metadata["prompt"])
        marks.append(score_image(images[-1], metadata).correct)
    if not images:
        raise ValueError(f"{folder} has no samples/{sample:05d}.png under a GenEval prompt folder")
    return save_grid(np.stack(images), path, ncols=ncols, labels=prompts, marks=marks), len(images)


def format_scores(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per model, GenEval's columns, scores in percent."""
    columns = ["overall", "single_object", "two_object", "counting", "colors", "position", "color_attr"]
    present = [c for c in columns if any(c in r for r in rows.values())]
    lines = ["| model | " + " | ".join(present) + " |", "| --- |" + " ---: |" * len(present)]
    for name, scores in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * scores[c]:.1f}" if c in scores else "-" for c in present)
                     + " |")
    return "\n".join(lines)
