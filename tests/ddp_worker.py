"""Run by ``accelerate launch --num_processes 2`` from test_train_engine.py: train a few RSR steps, then
write this rank's RSR weights so the test can compare ranks."""

import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from thinkpix.models.checkpoint import rsr_state_dict
from thinkpix.train import TrainConfig, TrainTarget, load_image_folder, load_pipeline, train

pipe_dir, data_dir, out = (Path(a) for a in sys.argv[1:4])
target = TrainTarget(load_pipeline(pipe_dir))
cfg = TrainConfig(rank=4, num_experts=3, latent_steps=2, layers=(1,), batch_size=4, max_steps=3,
                  checkpointing_steps=3, learning_rate=1e-2)
result = train(target, load_image_folder(data_dir), cfg, out, report_to=None, progress=False)
rank = int(os.environ.get("RANK", "0"))  # set by accelerate launch
save_file(rsr_state_dict(target.transformer), str(out / f"rank{rank}.safetensors"))
