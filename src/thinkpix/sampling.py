"""Sampling with the ordinary pipelines, optionally with an RSR checkpoint loaded into the transformer."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import check_positive_int
from .images import save_grid, save_png, to_uint8
from .models import load_rsr
from .pipelines import TrainTarget, check_sampling_args, load_pipeline
from .shapes.sampling import check_guidance_interval


def load_target(model: str | Path, rsr: str | Path | None = None,
                guidance_interval: tuple[float, float] | None = None) -> TrainTarget:
    """A pipeline (shipped name, folder or hub id) in eval mode, with an RSR checkpoint applied if given.

    ``guidance_interval`` replaces the pipeline's default interval of noise levels where classifier-free
    guidance applies (``(0, 1)``: every step); only the Shapes pipelines have one.
    """
    target = TrainTarget(load_pipeline(model))
    if guidance_interval is not None:
        if "guidance_interval" not in target.pipeline.config:
            raise ValueError(f"--guidance-interval needs a Shapes pipeline: {type(target.pipeline).__name__} "
                             "guides at every step")
        interval = check_guidance_interval(guidance_interval, "--guidance-interval")
        target.pipeline.register_to_config(guidance_interval=list(interval))
    if rsr is not None:
        load_rsr(target.transformer, rsr)
    target.transformer.eval()
    return target


def sample_to_folder(model: str | Path, conditions: list, out: str | Path, rsr: str | Path | None = None,
                     steps: int = 20, guidance_scale: float = 4.0, seed: int = 0,
                     images_per_condition: int = 1, guidance_interval: tuple[float, float] | None = None) -> Path:
    """Write ``<out>/<i:05d>-<n>.png`` for every condition, ``<out>/metadata.jsonl`` and ``<out>/grid.png``.

    Image k (in file order) is drawn from its own generator seeded with ``seed + k``, so ``--seed seed+k``
    redraws it alone. Each PNG carries its prompt (or class label), seed, model, RSR checkpoint and sampler
    settings as PNG text chunks; ``metadata.jsonl`` holds the same records, one per image, keyed by
    ``file_name`` (the imagefolder convention). The grid labels every tile with its condition and seed.
    """
    check_sampling_args(steps, guidance_scale)
    check_positive_int(images_per_condition, "--num-images")
    target = load_target(model, rsr, guidance_interval)
    conditions = target.check_conditions(conditions)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    repeated = [c for c in conditions for _ in range(images_per_condition)]
    seeds = [seed + k for k in range(len(repeated))]
    images = to_uint8(target.sample(repeated, seed=seeds, steps=steps, guidance_scale=guidance_scale))
    interval = target.pipeline.config.get("guidance_interval") if hasattr(target.pipeline, "config") else None
    condition_key = "prompt" if target.kind == "caption" else "class_label"
    records = []
    for k, (condition, image_seed, image) in enumerate(zip(repeated, seeds, images)):
        record = {"file_name": f"{k // images_per_condition:05d}-{k % images_per_condition}.png",
                  condition_key: condition, "seed": image_seed, "model": str(model),
                  "rsr": None if rsr is None else str(rsr), "num_inference_steps": steps,
                  "guidance_scale": guidance_scale, "guidance_interval": interval}
        save_png(image, out / record["file_name"], {k: v for k, v in record.items() if k != "file_name"})
        records.append(record)
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    labels = [f"{c} (seed {s})" for c, s in zip(repeated, seeds)]
    return save_grid(images, out / "grid.png", ncols=images_per_condition, labels=labels)
