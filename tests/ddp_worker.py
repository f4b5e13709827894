"""Run by ``accelerate launch --num_processes 2`` from test_train_engine.py: train a few RSR steps, then
write this rank's RSR weights so the test can compare ranks; with a fourth argument ``pretrain``, pretrain
a tiny Shapes text-to-image base (transformer and text encoder) and write this rank's text encoder."""

import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from thinkpix.models.checkpoint import rsr_state_dict
from thinkpix.shapes import ShapesTextToImagePipeline
from thinkpix.train import TrainConfig, TrainTarget, load_image_folder, load_pipeline, train

pipe_dir, data_dir, out = (Path(a) for a in sys.argv[1:4])
rank = int(os.environ.get("RANK", "0"))  # set by accelerate launch
if sys.argv[4:] == ["pretrain"]:
    target = TrainTarget(ShapesTextToImagePipeline.from_scratch("mmdit-s", seed=0, width=32, head_dim=16,
                                                                num_layers=2))
    cfg = TrainConfig(method="full", batch_size=4, max_steps=4, checkpointing_steps=4, learning_rate=1e-2)
    train(target, load_image_folder(data_dir), cfg, out, report_to=None, progress=False)
    encoder = {k: v.contiguous() for k, v in target.pipeline.text_encoder.state_dict().items()}
    save_file(encoder, str(out / f"text-encoder-rank{rank}.safetensors"))
    sys.exit(0)
target = TrainTarget(load_pipeline(pipe_dir))
cfg = TrainConfig(rank=4, num_experts=3, latent_steps=2, layers=(1,), batch_size=4, max_steps=3,
                  checkpointing_steps=3, learning_rate=1e-2)
result = train(target, load_image_folder(data_dir), cfg, out, report_to=None, progress=False)
assert result.main_process == (rank == 0), (rank, result.main_process)  # only rank 0 reports (the CLI's JSON)
save_file(rsr_state_dict(target.transformer), str(out / f"rank{rank}.safetensors"))
