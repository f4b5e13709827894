"""The ordinary diffusers pipelines run unchanged with an RSR transformer."""

import numpy as np
import torch

from test_models_hosts import perturb_experts
from thinkpix import RSRConfig, apply_rsr, remove_rsr, routing_trace
from tiny import tiny_dit_pipeline, tiny_sd3_pipeline


def sd3_images(pipe):
    return pipe(["a red cat", "two dogs"], num_inference_steps=3, height=16, width=16, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


def dit_images(pipe):
    return pipe(class_labels=[1, 7], num_inference_steps=3, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


def check_pipeline(pipe, images, steps):
    base = images(pipe)
    apply_rsr(pipe.transformer, RSRConfig(num_experts=2, latent_steps=2, rank=4, layers=(1, 3)))
    with routing_trace(pipe.transformer) as trace:
        assert np.array_equal(images(pipe), base)  # equal at init
    assert len(trace.for_layer(1)) == steps  # one record per denoising step
    perturb_experts(pipe.transformer, scale=1.0)
    changed = images(pipe)
    assert np.abs(changed - base).max() > 1e-3
    remove_rsr(pipe.transformer)
    assert np.array_equal(images(pipe), base)


def test_stable_diffusion_3_pipeline(tmp_path):
    check_pipeline(tiny_sd3_pipeline(tmp_path), sd3_images, steps=3)


def test_dit_pipeline(tmp_path):
    check_pipeline(tiny_dit_pipeline(tmp_path), dit_images, steps=3)
