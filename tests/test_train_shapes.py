"""Training on the Shapes world itself (tiny widths, so it runs in seconds)."""

import pytest
import torch

from thinkpix.shapes import ShapesTextToImagePipeline, make_dataset
from thinkpix.train import TrainConfig, TrainTarget, load_image_folder, train
from thinkpix.train.objectives import flow_matching_loss, training_scheduler


def _mean(xs):
    return sum(xs) / len(xs)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    data = load_image_folder(make_dataset(root / "data", n=128, seed=0, variant="caption", split="train"))
    pipe = ShapesTextToImagePipeline.from_scratch("mmdit-s", seed=0, width=64, num_layers=2)
    cfg = TrainConfig(method="full", batch_size=32, max_steps=30, learning_rate=2e-3, checkpointing_steps=30,
                      condition_dropout=0.1)
    result = train(TrainTarget(pipe), data, cfg, root / "run", report_to=None, progress=False)
    return root, data, result


def held_out_loss(target, data) -> float:
    """Flow-matching loss on a fixed batch with fixed noise (eval mode: the gate takes its argmax)."""
    target.transformer.eval()
    g = torch.Generator().manual_seed(123)
    index = torch.arange(64)
    cond = target.conditions(captions=[data.captions[i] for i in index.tolist()])
    with torch.no_grad():
        loss = flow_matching_loss(lambda x, t: target.transformer(hidden_states=x, timestep=t, **cond).sample,
                                  data.pixels(index), training_scheduler(target.pipeline.scheduler), g)
    target.transformer.train()
    return loss.item()


def test_pretraining_on_shapes_reduces_the_loss(pretrained):
    _, _, result = pretrained
    assert _mean(result.losses[-6:]) < 0.8 * _mean(result.losses[:6])
    assert (result.final / "model_index.json").is_file()


def test_pretraining_trains_the_text_encoder_with_its_base(pretrained):
    _, _, result = pretrained
    scratch = ShapesTextToImagePipeline.from_scratch("mmdit-s", seed=0, width=64, num_layers=2).text_encoder
    trained = ShapesTextToImagePipeline.from_pretrained(result.final).text_encoder
    changed = [name for (name, a), b in zip(scratch.named_parameters(), trained.parameters()) if not torch.equal(a, b)]
    assert len(changed) > len(list(scratch.parameters())) // 2


def test_rsr_finetuning_on_shapes_reduces_the_loss(pretrained, tmp_path):
    root, data, result = pretrained
    target = TrainTarget(ShapesTextToImagePipeline.from_pretrained(result.final))
    before = held_out_loss(target, data)
    cfg = TrainConfig(method="rsr", num_experts=2, latent_steps=2, rank=8, layers=(1,), batch_size=32, max_steps=20,
                      learning_rate=5e-3, checkpointing_steps=20)
    train(target, data, cfg, tmp_path / "rsr", report_to=None, progress=False)
    assert held_out_loss(target, data) < before


def test_class_validation_samples_the_classes_the_folders_name():
    from thinkpix.shapes import ShapesClassPipeline

    target = TrainTarget(ShapesClassPipeline.from_scratch("dit-s", seed=0, width=32, head_dim=16, num_layers=2))
    with torch.no_grad():  # a non-zero model, so that the class changes the image
        for p in target.transformer.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    by_name = target.sample(["red_circle", "blue_square"], seed=0, steps=2)
    ids = target.pipeline.get_label_ids(["red_circle", "blue_square"])
    assert ids != [0, 1]  # folder positions of a sorted class folder would be other classes
    assert (by_name == target.sample(ids, seed=0, steps=2)).all()
    assert not (by_name == target.sample([0, 1], seed=0, steps=2)).all()


def test_rectified_flow_class_pipeline_trains_saves_and_samples(tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from thinkpix.shapes import ShapesClassPipeline
    from thinkpix.train import load_pipeline

    with pytest.raises(ValueError, match="'ddim' or 'flow'"):
        ShapesClassPipeline.from_scratch("dit-s", scheduler="euler")
    pipe = ShapesClassPipeline.from_scratch("dit-s", seed=0, scheduler="flow", width=32, head_dim=16, num_layers=2)
    data = load_image_folder(make_dataset(tmp_path / "data", n=64, seed=1, variant="class", split="train"))
    cfg = TrainConfig(method="full", batch_size=16, max_steps=12, learning_rate=2e-3, checkpointing_steps=12)
    result = train(TrainTarget(pipe), data, cfg, tmp_path / "run", report_to=None, progress=False)
    assert _mean(result.losses[-3:]) < _mean(result.losses[:3])  # velocity regression on the first 3 channels
    reloaded = TrainTarget(load_pipeline(result.final))
    assert isinstance(reloaded.pipeline.scheduler, FlowMatchEulerDiscreteScheduler)
    images = reloaded.sample(["red_circle", 0], seed=0, steps=3)
    assert images.shape == (2, 32, 32, 3) and images.min() >= 0 and images.max() <= 1
