"""Sharded sampling to an ADM-style ``.npz``, in the style of DiT's ``sample_ddp.py``.

Run as ``thinkpix sample-npz ...`` (one process) or under ``accelerate launch`` (several). The
``N`` images are cut into global batches of ``batch_size`` consecutive indices; process ``r`` of
``W`` samples batches ``r, r + W, r + 2W, ...``. Image ``i``'s condition and noise depend on
``(seed, i)`` only (its own generator, seeded from ``SeedSequence([seed, i])``) and every batch has
the same members whatever ``W`` is, so the result does not depend on the number of processes.
Each rank writes its shard next to the output; after a barrier rank 0 joins them in index order
into ``arr_0`` (uint8 NHWC, what ADM's evaluator reads) plus the conditions (``labels`` for class
models, ``prompts`` for text models), and removes the shards (DiT writes PNGs, then an npz).

Conditions: class models draw class ids uniformly from all classes; text models draw prompts
uniformly from the Shapes GenEval-style prompts of ``split`` (held-out ``eval`` by default).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch

from ..images import to_uint8
from ..pipelines import TrainTarget, check_sampling_args
from .fid import save_npz


def image_seed(seed: int, index: int) -> int:
    """A 63-bit seed for image ``index`` of a run with ``seed`` (no collisions between nearby seeds)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def draw_conditions(target: TrainTarget, num_samples: int, seed: int, split: str = "eval") -> list:
    """The condition of every image: class ids or prompts, drawn from ``seed`` (independent of sharding)."""
    rng = np.random.default_rng([seed, 2**31])
    if target.kind == "class":
        num_classes = target.transformer.config.num_embeds_ada_norm
        return [int(c) for c in rng.integers(num_classes, size=num_samples)]
    from ..shapes.prompts import evaluation_metadata, training_metadata

    if split not in ("eval", "train"):
        raise ValueError(f"split={split!r} is not allowed; allowed values: eval, train")
    prompts = sorted({m["prompt"] for m in (evaluation_metadata() if split == "eval" else training_metadata())})
    return [prompts[k] for k in rng.integers(len(prompts), size=num_samples)]


@torch.no_grad()
def sample_batch(target: TrainTarget, conditions: list, seeds: list[int], steps: int,
                 guidance_scale: float) -> np.ndarray:
    """uint8 (B, H, W, 3) images, image ``k`` from a generator seeded with ``seeds[k]``."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    pipe = target.pipeline
    if target.kind == "caption":
        out = pipe(list(conditions), num_inference_steps=steps, guidance_scale=guidance_scale,
                   generator=generators, output_type="np")
    else:
        out = pipe(class_labels=list(conditions), num_inference_steps=steps, guidance_scale=guidance_scale,
                   generator=generators, output_type="np")
    return to_uint8(out.images)


def shard_batches(num_samples: int, batch_size: int, rank: int, world_size: int) -> list[range]:
    """The global batches (index ranges) process ``rank`` of ``world_size`` samples."""
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples={num_samples} and batch_size={batch_size} must be >= 1")
    batches = [range(s, min(s + batch_size, num_samples)) for s in range(0, num_samples, batch_size)]
    return batches[rank::world_size]


def sample_npz(model: str | Path, num_samples: int, out: str | Path, rsr: str | Path | None = None, seed: int = 0,
               batch_size: int = 64, steps: int = 20, guidance_scale: float = 4.0, split: str = "eval",
               progress: bool = True, guidance_interval: tuple[float, float] | None = None) -> Path | None:
    """Sample ``num_samples`` images over all accelerate processes into ``out`` (.npz); returns ``out`` on
    the main process and ``None`` on the others."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env
    from tqdm.auto import tqdm

    from ..sampling import load_target

    check_sampling_args(steps, guidance_scale)
    out = Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"--out {out}: the output must be an .npz file")
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # as AcceleratorState reads it
    if int(os.environ.get("WORLD_SIZE", "1")) != state.num_processes:
        raise ValueError(f"launched with WORLD_SIZE={os.environ['WORLD_SIZE']} but accelerate set up "
                         f"{state.num_processes} process(es): on CPU-only machines set ACCELERATE_USE_CPU=1")
    target = load_target(model, rsr, guidance_interval)
    target.pipeline.to(state.device)
    conditions = draw_conditions(target, num_samples, seed, split)
    shard_dir = out.with_name(out.name + ".shards")
    if state.is_main_process:
        shutil.rmtree(shard_dir, ignore_errors=True)
        shard_dir.mkdir(parents=True)
    state.wait_for_everyone()
    indices, images = [], []
    batches = shard_batches(num_samples, batch_size, state.process_index, state.num_processes)
    for batch in tqdm(batches, disable=not (progress and state.is_main_process), desc="sample-npz", unit="batch"):
        images.append(sample_batch(target, [conditions[i] for i in batch], [image_seed(seed, i) for i in batch],
                                   steps, guidance_scale))
        indices.extend(batch)
    if images:
        shard = shard_dir / f"rank{state.process_index:05d}.npz"
        np.savez(shard, index=np.asarray(indices), arr_0=np.concatenate(images))
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    joined: np.ndarray | None = None
    for shard in sorted(shard_dir.glob("rank*.npz")):
        with np.load(shard) as data:
            if joined is None:
                joined = np.zeros((num_samples, *data["arr_0"].shape[1:]), dtype=np.uint8)
            joined[data["index"]] = data["arr_0"]
    shutil.rmtree(shard_dir)
    extra = {"labels": np.asarray(conditions)} if target.kind == "class" else {"prompts": np.asarray(conditions)}
    return save_npz(out, joined, **extra)
