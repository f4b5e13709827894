"""Run by ``accelerate launch --num_processes 2`` from test_train_engine.py: in one launch, RSR trained
(a) with FSDP2 for 4 steps, (b) with FSDP2 for 2 steps then resumed to 4, (c) with DDP for 4 steps; each
run's final RSR weights are written per rank so the test can compare runs and ranks. A fourth argument
``caption`` trains a text-conditioned pipeline (FLUX), without validation sampling."""

import os
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from thinkpix.train import TrainConfig, TrainTarget, load_image_folder, load_pipeline, train

pipe_dir, data_dir, out = (Path(a) for a in sys.argv[1:4])
rank = int(os.environ.get("RANK", "0"))  # set by accelerate launch
data = load_image_folder(data_dir)
captions = sys.argv[4:] == ["caption"]


def run(folder: str, fsdp: bool, max_steps: int, resume: str | None = None) -> None:
    cfg = TrainConfig(rank=4, num_experts=3, latent_steps=2, layers=(1, 3), batch_size=4, max_steps=max_steps,
                      checkpointing_steps=2, learning_rate=1e-2, ema_decay=0.9, fsdp=fsdp,
                      validation_steps=0 if captions else 2)
    target = TrainTarget(load_pipeline(pipe_dir))
    result = train(target, data, cfg, out / folder, resume=resume, validation=None if captions else [0, 1],
                   report_to=None, progress=False)
    if result.final is not None:  # the main process wrote the final (gathered) weights; every rank reads them
        weights = load_file(str(result.final / "rsr_weights.safetensors"))
        save_file(weights, str(out / f"{folder}-rank{rank}.safetensors"))


run("fsdp", True, 4)
run("split", True, 2)
run("split", True, 4, resume="latest")
run("ddp", False, 4)
