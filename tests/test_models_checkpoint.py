"""save_rsr / load_rsr / export_lora with real diffusers models written to and read from disk."""

import pytest
import torch
from diffusers import SD3Transformer2DModel

from test_models_hosts import HOSTS, perturb_experts
from thinkpix import RSRConfig, apply_rsr, export_lora, load_rsr, save_rsr
from thinkpix.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from thinkpix.models.hosts import rsr_install
from tiny import sd3_inputs, tiny_dit, tiny_sd3

SD35 = dict(qk_norm="rms_norm", dual_attention_layers=(0, 1))


@pytest.mark.parametrize("kind", list(HOSTS))
def test_save_then_load_into_a_fresh_model_gives_identical_outputs(tmp_path, kind):
    build, inputs = HOSTS[kind]
    inputs = inputs()
    model = build(tmp_path / "a")
    apply_rsr(model, RSRConfig(num_experts=3, latent_steps=2, rank=4, layers=(1, 3), seed=5))
    perturb_experts(model)
    with torch.no_grad():
        ref = model(**inputs).sample
    save_rsr(model, tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {CONFIG_NAME, WEIGHTS_NAME}
    fresh = build(tmp_path / "b")
    load_rsr(fresh, tmp_path / "ckpt")
    assert rsr_install(fresh).config == rsr_install(model).config
    with torch.no_grad():
        assert torch.equal(fresh(**inputs).sample, ref)


@pytest.fixture
def sd3_checkpoint(tmp_path):
    model = tiny_sd3(tmp_path / "src")
    apply_rsr(model, RSRConfig(num_experts=2, latent_steps=2, rank=4, layers=(3,)))
    return save_rsr(model, tmp_path / "ckpt")


def assert_untouched(model):
    assert rsr_install(model) is None
    assert all(p.requires_grad for p in model.parameters())


def test_other_width_is_named(tmp_path, sd3_checkpoint):
    wide = tiny_sd3(tmp_path / "wide", num_attention_heads=6)
    with pytest.raises(ValueError, match=r"shape .* in the checkpoint but .* width 32, this model has width 48"):
        load_rsr(wide, sd3_checkpoint)
    assert_untouched(wide)


def test_missing_layer_is_named(tmp_path, sd3_checkpoint):
    shallow = tiny_sd3(tmp_path / "shallow", num_layers=2)
    with pytest.raises(ValueError, match=r"does not fit.*\[3\] out of range"):
        load_rsr(shallow, sd3_checkpoint)
    assert_untouched(shallow)


def test_other_host_is_named(tmp_path, sd3_checkpoint):
    dit = tiny_dit(tmp_path / "dit")
    with pytest.raises(ValueError, match="made for SD3Transformer2DModel, not DiTTransformer2DModel"):
        load_rsr(dit, sd3_checkpoint)
    assert_untouched(dit)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing", "bad_config"])
def test_corrupt_checkpoints_are_named(tmp_path, sd3_checkpoint, damage):
    weights, config = sd3_checkpoint / WEIGHTS_NAME, sd3_checkpoint / CONFIG_NAME
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garbage":
        weights.write_bytes(b"\x00" * 64)
    elif damage == "missing":
        weights.unlink()
    else:
        config.write_text('{"num_experts": 0}')
    model = tiny_sd3(tmp_path / "m")
    expected = {"truncate": "corrupt or truncated", "garbage": "corrupt or truncated",
                "missing": f"has no {WEIGHTS_NAME}", "bad_config": "RSRConfig.num_experts=0"}[damage]
    with pytest.raises((ValueError, FileNotFoundError), match=expected):
        load_rsr(model, sd3_checkpoint)
    assert_untouched(model)


def test_save_is_atomic_when_interrupted(tmp_path, sd3_checkpoint, monkeypatch):
    before = (sd3_checkpoint / WEIGHTS_NAME).read_bytes()
    model = tiny_sd3(tmp_path / "m")
    apply_rsr(model, RSRConfig(num_experts=2, latent_steps=2, rank=4, layers=(3,)))
    perturb_experts(model)

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr("thinkpix.models.checkpoint.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_rsr(model, sd3_checkpoint)
    assert (sd3_checkpoint / WEIGHTS_NAME).read_bytes() == before
    assert sorted(p.name for p in sd3_checkpoint.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])


@pytest.mark.parametrize("overrides", [{}, SD35], ids=["sd3", "sd35"])
def test_export_lora_loads_into_a_plain_model_through_diffusers(tmp_path, overrides):
    from tiny import tiny_sd3_pipeline

    pipe = tiny_sd3_pipeline(tmp_path / "pipe", **overrides)
    plain = SD3Transformer2DModel.from_pretrained(tmp_path / "pipe" / "pipe" / "transformer").eval()
    check_lora_export(pipe, plain, sd3_inputs(), tmp_path / "lora", layers=(0, 3))


def check_lora_export(pipe, plain, inputs, folder, layers):
    """An M=1, T=1 RSR on ``layers`` of ``pipe.transformer``, exported and loaded into the plain base through the
    pipeline's own ``load_lora_weights``, gives the RSR model's output."""
    apply_rsr(pipe.transformer, RSRConfig(num_experts=1, latent_steps=1, rank=4, alpha=8, layers=layers))
    perturb_experts(pipe.transformer, scale=0.2)
    with torch.no_grad():
        ref = pipe.transformer(**inputs).sample
        assert (ref - plain(**inputs).sample).abs().max() > 1e-3
    lora_file = export_lora(pipe.transformer, folder)
    pipe.transformer = plain
    pipe.load_lora_weights(lora_file.parent, weight_name=lora_file.name)
    with torch.no_grad():
        out = pipe.transformer(**inputs).sample
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_export_lora_refuses_routed_experts(tmp_path):
    model = tiny_sd3(tmp_path / "m")
    apply_rsr(model, RSRConfig(num_experts=2, latent_steps=2, rank=4, layers=(1,)))
    with pytest.raises(ValueError, match="num_experts=1 and latent_steps=1"):
        export_lora(model, tmp_path / "lora")
