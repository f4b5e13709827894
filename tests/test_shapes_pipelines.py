"""Shapes-world models, the two pixel-space pipelines (with and without RSR) and the ``shapes`` CLI."""

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, DiTTransformer2DModel, SD3Transformer2DModel
from PIL import Image

from test_models_hosts import perturb_experts
from thinkpix import RSRConfig, apply_rsr, remove_rsr
from thinkpix.pipelines import SHIPPED
from thinkpix.shapes.cli import add_shapes_parser
from thinkpix.shapes.metadata import read_metadata_jsonl
from thinkpix.shapes.models import (
    CLASS_NAMES,
    SHAPES_MODELS,
    build_model,
    middle_layer,
    num_parameters,
    three_layers,
)
from thinkpix.shapes.pipeline_class import ShapesClassPipeline
from thinkpix.shapes.pipeline_t2i import ShapesTextToImagePipeline
from thinkpix.shapes.prompts import evaluation_metadata
from thinkpix.shapes.text import tiny_text_encoder

TINY = dict(width=32, num_layers=4, head_dim=16)
PROMPTS = ["a photo of a red circle", "a photo of two squares"]


def pretend_trained(model, seed=1):
    """adaLN-Zero makes a fresh model predict exactly 0; jitter every weight so outputs depend on them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def t2i():
    pipe = ShapesTextToImagePipeline.from_scratch("mmdit-s", seed=0, **TINY)
    pretend_trained(pipe.transformer)
    return quiet(pipe)


@pytest.fixture
def cls_pipe():
    pipe = ShapesClassPipeline.from_scratch("dit-s", seed=0, **TINY)
    pretend_trained(pipe.transformer)
    return quiet(pipe)


def t2i_images(pipe, seed=0, **kwargs):
    kwargs = {"num_inference_steps": 3, **kwargs}
    return pipe(PROMPTS, generator=torch.Generator().manual_seed(seed), **kwargs).images


def class_images(pipe, seed=0, **kwargs):
    kwargs = {"num_inference_steps": 3, **kwargs}
    return pipe(["red_circle", 5], generator=torch.Generator().manual_seed(seed), **kwargs).images


# models


def test_presets_are_pixel_space_hosts_with_the_shapes_conditioning():
    assert set(SHAPES_MODELS) == {"mmdit-s", "mmdit-b", "dit-s", "dit-b"}
    mm, dit = build_model("mmdit-s", **TINY), build_model("dit-s", **TINY)
    assert isinstance(mm, SD3Transformer2DModel) and isinstance(dit, DiTTransformer2DModel)
    for model in (mm, dit):
        assert (model.config.in_channels, model.config.sample_size, model.config.patch_size) == (3, 32, 4)
    assert (mm.config.joint_attention_dim, mm.config.pooled_projection_dim, mm.config.caption_projection_dim) == (
        64,
        64,
        32,
    )
    assert dit.config.num_embeds_ada_norm == len(CLASS_NAMES) == 28
    table = dit.transformer_blocks[0].norm1.emb.class_embedder.embedding_table
    assert table.num_embeddings == len(CLASS_NAMES) + 1  # the null class of CFG
    assert (middle_layer(mm), three_layers(mm)) == (2, (1, 2, 3))
    with pytest.raises(ValueError, match="unknown Shapes model"):
        build_model("mmdit-xl")
    with pytest.raises(ValueError, match="multiple of head_dim"):
        build_model("dit-s", width=40, head_dim=16)


def test_init_is_seeded_adaln_zero_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = (build_model("mmdit-s", seed=s, **TINY) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.pos_embed.proj.weight, c.pos_embed.proj.weight)
    assert not a.transformer_blocks[0].norm1.linear.weight.any() and not a.proj_out.weight.any()
    out = a(torch.randn(1, 3, 32, 32), torch.randn(1, 32, 64), torch.randn(1, 64), torch.tensor([500.0])).sample
    assert not out.any()  # adaLN-Zero: a fresh model predicts 0


def test_shipped_presets_and_text_encoder_fit_the_50_mb_budget_in_fp32():
    sizes = {name: num_parameters(build_model(name)) for name in ("mmdit-s", "dit-s")}
    sizes["text"] = num_parameters(tiny_text_encoder())
    assert 4 * sum(sizes.values()) <= 50e6, sizes


# text-to-image pipeline


def test_encode_prompt_shapes_and_the_unconditional_prompt(t2i):
    embeds, neg, pooled, neg_pooled = t2i.encode_prompt(PROMPTS, num_images_per_prompt=3)
    assert embeds.shape == neg.shape == (6, 32, 64) and pooled.shape == neg_pooled.shape == (6, 64)
    assert torch.equal(embeds[0], embeds[2]) and not torch.equal(embeds[2], embeds[3])  # copies adjacent
    empty, _, empty_pooled, _ = t2i.encode_prompt("", do_classifier_free_guidance=False)
    assert torch.allclose(neg[:1], empty, atol=1e-6) and torch.allclose(neg_pooled[:1], empty_pooled, atol=1e-6)
    ids = t2i.tokenizer([""], padding="max_length", max_length=32).input_ids[0]
    assert ids[:2] == [t2i.tokenizer.bos_token_id, t2i.tokenizer.eos_token_id] and set(ids[2:]) == {0}
    assert t2i.encode_prompt(PROMPTS, do_classifier_free_guidance=False)[1] is None


def test_unknown_words_raise_naming_them_and_the_vocabulary(t2i):
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['hexagon'\]; vocabulary"):
        t2i("a photo of a hexagon", num_inference_steps=1)
    with pytest.raises(ValueError, match="unknown word"):
        t2i("a photo of a circle", negative_prompt="a dog", num_inference_steps=1)


def test_t2i_outputs_guidance_and_determinism(t2i):
    base = t2i_images(t2i)
    assert base.shape == (2, 32, 32, 3) and base.dtype == np.float32 and 0 <= base.min() <= base.max() <= 1
    assert np.array_equal(t2i_images(t2i), base)
    assert not np.allclose(t2i_images(t2i, seed=1), base)
    unguided = t2i_images(t2i, guidance_scale=1.0)
    assert unguided.shape == base.shape and not np.allclose(unguided, base)
    pt = t2i_images(t2i, output_type="pt", num_images_per_prompt=2)
    assert pt.shape == (4, 3, 32, 32)
    pil = t2i_images(t2i, output_type="pil")
    assert isinstance(pil[0], Image.Image) and pil[0].size == (32, 32)
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    assert t2i(PROMPTS, num_inference_steps=3, generator=gens).images.shape == base.shape
    with pytest.raises(ValueError, match="output_type"):
        t2i_images(t2i, output_type="latent")
    with pytest.raises(ValueError, match="multiple of the patch size"):
        t2i_images(t2i, height=30)


def record_batches(pipe):
    """Batch size of every transformer call (a forward pre-hook)."""
    sizes = []
    pipe.transformer.register_forward_pre_hook(lambda module, args, kwargs: sizes.append(
        (args[0] if args else kwargs["hidden_states"]).shape[0]), with_kwargs=True)
    return sizes


def test_t2i_guidance_interval_guides_only_inside_it_and_ships_in_the_config(t2i, tmp_path):
    base, unguided = t2i_images(t2i), t2i_images(t2i, guidance_scale=1.0)
    assert np.array_equal(t2i_images(t2i, guidance_interval=(0.0, 1.0)), base)
    # 3 flow steps sit at sigma 1, 2/3, 1/3: an interval holding none of them is sampling without guidance
    assert np.allclose(t2i_images(t2i, guidance_interval=(0.1, 0.2)), unguided, atol=1e-6)
    sizes = record_batches(t2i)
    partial = t2i_images(t2i, guidance_interval=(0.0, 0.5))
    assert sizes == [2, 2, 4]  # unguided steps run the conditional half only
    assert not np.allclose(partial, base) and not np.allclose(partial, unguided)
    shipped = quiet(ShapesTextToImagePipeline(t2i.transformer, t2i.scheduler, t2i.text_encoder, t2i.tokenizer,
                                              guidance_interval=(0.0, 0.5)))
    assert np.array_equal(t2i_images(shipped), partial)
    shipped.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["guidance_interval"] == [0.0, 0.5]
    loaded = quiet(ShapesTextToImagePipeline.from_pretrained(tmp_path))
    assert np.array_equal(t2i_images(loaded), partial)
    assert np.array_equal(t2i_images(loaded, guidance_interval=(0, 1)), base)
    for bad in [(0.5, 0.2), (0.0, 1.5), "ab", (0.3,)]:
        with pytest.raises(ValueError, match="guidance_interval"):
            t2i_images(t2i, guidance_interval=bad)


def test_t2i_save_load_rsr_and_remove(t2i, tmp_path):
    base = t2i_images(t2i)
    t2i.save_pretrained(tmp_path)
    loaded = quiet(ShapesTextToImagePipeline.from_pretrained(tmp_path))
    assert np.array_equal(t2i_images(loaded), base)
    check_rsr(loaded, t2i_images, base)


def test_diffusion_pipeline_from_pretrained_loads_both_shapes_pipelines(t2i, cls_pipe, tmp_path):
    """diffusers' generic loader resolves model_index.json's _class_name in the diffusers namespace, where
    importing thinkpix registers the Shapes pipelines."""
    for pipe, images in ((t2i, t2i_images), (cls_pipe, class_images)):
        pipe.save_pretrained(tmp_path / type(pipe).__name__)
        loaded = quiet(DiffusionPipeline.from_pretrained(tmp_path / type(pipe).__name__))
        assert type(loaded) is type(pipe)
        assert np.array_equal(images(loaded), images(pipe))


def test_import_thinkpix_alone_lets_diffusers_load_a_shapes_folder(t2i, tmp_path):
    t2i.save_pretrained(tmp_path)
    code = ("import sys, thinkpix; from diffusers import DiffusionPipeline; "
            "print(type(DiffusionPipeline.from_pretrained(sys.argv[1])).__name__)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ShapesTextToImagePipeline"


def check_rsr(pipe, images, base):
    apply_rsr(pipe.transformer, RSRConfig(num_experts=2, latent_steps=2, rank=4, layers=three_layers(pipe.transformer)))
    assert np.array_equal(images(pipe), base)
    perturb_experts(pipe.transformer, scale=1.0)
    assert np.abs(images(pipe) - base).max() > 1e-3
    remove_rsr(pipe.transformer)
    assert np.array_equal(images(pipe), base)


# class-conditional pipeline


def test_class_labels_and_ids(cls_pipe):
    assert cls_pipe.get_label_ids(["red_circle", "white_diamond"]) == [0, 27]
    assert cls_pipe.get_label_ids("blue_square") == [CLASS_NAMES.index("blue_square")]
    with pytest.raises(ValueError, match="unknown class label"):
        cls_pipe.get_label_ids("purple_circle")
    with pytest.raises(ValueError, match="out of range"):
        cls_pipe([28], num_inference_steps=1)


def test_class_outputs_guidance_determinism_and_schedulers(cls_pipe):
    base = class_images(cls_pipe)
    assert base.shape == (2, 32, 32, 3) and 0 <= base.min() <= base.max() <= 1
    assert np.array_equal(class_images(cls_pipe), base)
    assert not np.allclose(class_images(cls_pipe, seed=1), base)
    assert not np.allclose(class_images(cls_pipe, guidance_scale=1.0), base)
    assert class_images(cls_pipe, output_type="pt").shape == (2, 3, 32, 32)
    cls_pipe.scheduler = DDPMScheduler.from_config(cls_pipe.scheduler.config)  # draws noise in every step
    assert np.array_equal(class_images(cls_pipe), class_images(cls_pipe))


def test_class_guidance_interval(cls_pipe, tmp_path):
    unguided = class_images(cls_pipe, guidance_scale=1.0)  # DDIM, 3 steps: t = 666, 333, 0
    assert np.allclose(class_images(cls_pipe, guidance_interval=(0.1, 0.2)), unguided, atol=1e-6)
    partial = class_images(cls_pipe, guidance_interval=(0.0, 0.5))
    assert not np.allclose(partial, unguided) and not np.allclose(partial, class_images(cls_pipe))
    shipped = ShapesClassPipeline(cls_pipe.transformer, cls_pipe.scheduler, guidance_interval=[0.0, 0.5])
    shipped.save_pretrained(tmp_path)
    assert np.array_equal(class_images(quiet(ShapesClassPipeline.from_pretrained(tmp_path))), partial)
    with pytest.raises(ValueError, match="guidance_interval"):
        ShapesClassPipeline(cls_pipe.transformer, cls_pipe.scheduler, guidance_interval=(0.6, 0.6))


def test_class_save_load_keeps_labels_rsr_and_remove(cls_pipe, tmp_path):
    base = class_images(cls_pipe)
    cls_pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["id2label"]["27"] == "white_diamond"
    loaded = quiet(ShapesClassPipeline.from_pretrained(tmp_path))
    assert loaded.labels == cls_pipe.labels
    assert np.array_equal(class_images(loaded), base)
    check_rsr(loaded, class_images, base)


# CLI


def shapes_parser():
    parser = argparse.ArgumentParser(prog="thinkpix")
    add_shapes_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_make_dataset_and_prompts(tmp_path, capsys):
    parser = shapes_parser()
    args = parser.parse_args(["shapes", "make-dataset", "--out", str(tmp_path / "cap"), "--n", "3", "--seed", "1"])
    assert args.func(args) == 0
    assert len((tmp_path / "cap" / "metadata.jsonl").read_text().splitlines()) == 3
    args = parser.parse_args(
        ["shapes", "make-dataset", "--out", str(tmp_path / "cls"), "--n", "2", "--variant", "class", "--split", "eval"]
    )
    assert args.func(args) == 0 and len(list((tmp_path / "cls").glob("*/*.png"))) == 2
    args = parser.parse_args(["shapes", "prompts", "--split", "eval", "--out", str(tmp_path / "p" / "eval.jsonl")])
    assert args.func(args) == 0
    assert read_metadata_jsonl(tmp_path / "p" / "eval.jsonl") == evaluation_metadata()
    assert "wrote" in capsys.readouterr().out


def test_cli_help_and_errors(tmp_path, capsys):
    parser = shapes_parser()
    for argv in (["shapes", "--help"], ["shapes", "make-dataset", "--help"], ["shapes", "prompts", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(argv)
        assert exit_info.value.code == 0
    assert "GenEval" in capsys.readouterr().out
    for argv in (
        ["shapes", "make-dataset", "--out", "x", "--n", "0"],
        ["shapes", "prompts", "--split", "dev", "--out", "x"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(argv)
        assert exit_info.value.code == 2
    assert "must be >= 1" in capsys.readouterr().err
    args = parser.parse_args(["shapes", "make-dataset", "--out", str(tmp_path), "--n", "1", "--image-size", "8"])
    with pytest.raises(ValueError, match="image_size=8"):
        args.func(args)


@pytest.mark.parametrize("name", [name for name in SHIPPED if name.startswith("shapes-t2i")])
def test_every_shipped_text_base_loads_in_fp16_with_its_interval_and_samples(name):
    """Each base in ``SHIPPED`` is in the repository (not only named), ships fp16 weights with the shipped
    base's guidance interval, and samples a finite image; the bases are distinct models."""
    from benchmarks.shapes_rows import fingerprint

    from thinkpix.pipelines import load_pipeline

    pipe = load_pipeline(name)
    assert isinstance(pipe, ShapesTextToImagePipeline)
    weights = SHIPPED[name] / "transformer" / "diffusion_pytorch_model.safetensors"
    assert weights.is_file() and weights.stat().st_size < 12 * 2**20  # fp16: about 9 MB
    assert pipe.config.guidance_interval == load_pipeline("shapes-t2i").config.guidance_interval
    image = pipe(["a photo of a red circle"], num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()
    others = {fingerprint(other) for other in SHIPPED if other.startswith("shapes-t2i") and other != name}
    assert fingerprint(name) not in others
