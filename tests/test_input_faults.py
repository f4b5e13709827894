"""Bad or unusual input to sampling, loading, data and evaluation (issue 22 classes 5-9): one clear line that
names the problem, or the right result; and RSR models that survive ``copy.deepcopy``."""

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import DiTPipeline
from PIL import Image

import thinkpix.cli as cli
from test_train_engine import caption_folder, class_folder
from thinkpix import RSRConfig
from thinkpix.eval.fid import save_npz
from thinkpix.eval.geneval import generate_geneval, score_geneval_folder
from thinkpix.models import apply_rsr, load_rsr, rsr_layers, save_rsr
from thinkpix.shapes import ShapesTextToImagePipeline, evaluation_metadata
from thinkpix.train import TrainTarget, load_image_folder, load_pipeline
from tiny import dit_inputs, flux_inputs, sd3_inputs, tiny_dit, tiny_dit_pipeline, tiny_flux, tiny_sd3

CONFIG = RSRConfig(num_experts=2, latent_steps=2, rank=4, layers=(1,))


@pytest.fixture(scope="module")
def dit(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit-inputs")
    tiny_dit_pipeline(root)
    return root / "pipe", class_folder(root / "data")


def error_line(capsys, argv) -> str:
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.strip() and not line.startswith("Loading pipeline")]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(("extra", "expected"), [
    (["--num-inference-steps", "0"], "--num-inference-steps=0 is invalid"),
    (["--num-inference-steps", "-3"], "--num-inference-steps=-3 is invalid"),
    (["--guidance-scale", "nan"], "--guidance-scale=nan is invalid"),
    (["--guidance-scale", "inf"], "--guidance-scale=inf is invalid"),
    (["--num-images", "0"], "--num-images=0 is invalid"),
    (["--class-label", "5000"], "class id 5000 is out of range: this model has classes 0..999"),
    (["--class-label", "dog"], "unknown class label 'dog' (this pipeline has no label names)"),
])
def test_bad_sampling_arguments_are_refused_not_obeyed(dit, tmp_path, capsys, extra, expected):
    argv = ["sample", "--model", str(dit[0]), "--out", str(tmp_path / "s"), "--num-inference-steps", "1"]
    argv += extra if "--class-label" in extra else [*extra, "--class-label", "1"]
    assert expected in error_line(capsys, argv)
    assert not (tmp_path / "s" / "grid.png").exists()


def test_bad_training_arguments_are_refused_before_training(dit, tmp_path, capsys):
    base = ["finetune", "--pretrained-model-name-or-path", str(dit[0]), "--train-data-dir", str(dit[1]),
            "--max-steps", "1", "--report-to", "none"]
    line = error_line(capsys, [*base, "--output-dir", str(tmp_path / "a"), "--image-size", "7"])
    assert "image size 7x7 does not tile into 2x2 patches" in line and "multiple of 2" in line
    line = error_line(capsys, [*base, "--output-dir", str(tmp_path / "b"), "--validation-prompt", "dog"])
    assert "unknown class label 'dog'" in line
    assert not (tmp_path / "b").exists()  # refused before the run started, not after training


def test_loading_errors_are_one_line(dit, tmp_path, capsys, monkeypatch):
    truncated = tmp_path / "truncated"
    shutil.copytree(dit[0], truncated)
    weights = truncated / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    pickled = tmp_path / "pickled"
    load_pipeline(dit[0]).save_pretrained(pickled, safe_serialization=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for model, expected in [(truncated, "cannot load the pipeline"),
                            (pickled, "safetensors weights only"),
                            ("nobody/no-such-model", "cannot load the pipeline nobody/no-such-model")]:
        line = error_line(capsys, ["sample", "--model", str(model), "--out", str(tmp_path / "s"), "--class-label",
                                   "1", "--num-inference-steps", "1"])
        assert expected in line, line


def test_evaluation_errors_are_one_line(tmp_path, capsys):
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    good = save_npz(tmp_path / "good.npz", images)
    assert "--batch-size=0 is invalid" in error_line(capsys, ["eval", "fid", "--ref", str(good), "--samples",
                                                              str(good), "--batch-size", "0"])
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    line = error_line(capsys, ["eval", "fid", "--ref", str(truncated), "--samples", str(good)])
    assert "truncated.npz is not a readable .npz file" in line


def test_a_programming_error_keeps_its_traceback(monkeypatch):
    def bug(args):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(cli, "_info", bug)
    with pytest.raises(TypeError, match="unsupported operand"):
        cli.main(["info"])


def test_generation_clears_an_earlier_larger_run(tmp_path, caplog):
    pipe = ShapesTextToImagePipeline.from_scratch("mmdit-s", seed=0, width=32, head_dim=16, num_layers=2)
    target, records = TrainTarget(pipe), evaluation_metadata()[:3]
    generate_geneval(target, records, tmp_path, samples=2, steps=1, batch_size=8, progress=False)
    generate_geneval(target, records[:2], tmp_path, samples=1, steps=1, batch_size=8, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000", "00001"]
    assert len(score_geneval_folder(tmp_path)[1]) == 2  # the stale images are not scored
    assert "removed 1 prompt folder(s) and 2 sample(s) of an earlier run" in caplog.text


def test_16_bit_pngs_and_null_captions_are_read_as_meant(tmp_path):
    folder = class_folder(tmp_path / "classes")
    Image.fromarray(np.full((8, 8), 128 * 257, dtype=np.uint16)).save(folder / "0" / "sixteen.png")
    data = load_image_folder(folder)
    names = sorted(p.name for p in (folder / "0").iterdir())
    sixteen = data.images[names.index("sixteen.png")]  # class 0 comes first, its files sorted
    assert sixteen.unique().tolist() == [128]  # not clipped to white
    captions = caption_folder(tmp_path / "captions")
    lines = (captions / "metadata.jsonl").read_text().splitlines()
    lines[1] = json.dumps({"file_name": "1.png", "text": None})
    (captions / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"line 2: \"file_name\" and \"text\" must be strings, got \"1.png\" and null"):
        load_image_folder(captions)


def test_class_ids_and_label_names_reach_a_diffusers_dit_pipeline(dit):
    base = load_pipeline(dit[0])
    pipe = DiTPipeline(transformer=base.transformer, vae=base.vae, scheduler=base.scheduler,
                       id2label={0: "dog", 1: "tabby, tabby cat"})
    target = TrainTarget(pipe)
    assert target.check_conditions(["dog", "tabby cat", 7]) == [0, 1, 7]
    assert target.sample(["dog", "tabby"], seed=0, steps=1).shape[0] == 2  # not read as "d", "o", "g"
    with pytest.raises(ValueError, match=r"class folders name ids \[5000\] out of range"):
        TrainTarget(pipe).map_classes(["1", "5000"])


def test_adapter_folders_whose_name_starts_with_a_brace_load(tmp_path, monkeypatch):
    model = tiny_dit(tmp_path / "dit")
    apply_rsr(model, CONFIG)
    monkeypatch.chdir(tmp_path)
    save_rsr(model, "{run}")
    fresh = tiny_dit(tmp_path / "dit")
    load_rsr(fresh, "{run}")
    assert rsr_layers(fresh)[1].rsr.config == CONFIG


def test_a_tampered_rank_is_refused_before_anything_is_allocated(tmp_path):
    model = tiny_dit(tmp_path / "dit")
    apply_rsr(model, CONFIG)
    save_rsr(model, tmp_path / "rsr")
    config = json.loads((tmp_path / "rsr" / "rsr_config.json").read_text())
    config["rank"] = 10**12  # terabytes of LoRA factors if built
    (tmp_path / "rsr" / "rsr_config.json").write_text(json.dumps(config))
    fresh = tiny_dit(tmp_path / "dit")
    with pytest.raises(ValueError, match=r"does not fit: layers\.1\.experts\.lora_A has shape .* rank=1000000000000"):
        load_rsr(fresh, tmp_path / "rsr")
    assert not hasattr(fresh, "_rsr_install")


@pytest.mark.parametrize(("make", "inputs"), [(tiny_sd3, sd3_inputs), (tiny_dit, dit_inputs), (tiny_flux, flux_inputs)],
                         ids=["sd3", "dit", "flux"])
def test_a_deep_copy_of_an_rsr_model_computes_the_same(tmp_path, make, inputs):
    """How DiT-style loops make their EMA copy: the copy's hooks must fill the copy's captures."""
    model = make(tmp_path / "m")
    apply_rsr(model, CONFIG)
    torch.manual_seed(0)
    for proc in rsr_layers(model).values():
        torch.nn.init.normal_(proc.rsr.experts.lora_B, std=0.5)  # B = 0 would hide any difference
    twin = copy.deepcopy(model)  # before any forward: nothing captured yet
    with torch.no_grad():
        assert torch.equal(model(**inputs()).sample, twin(**inputs()).sample)
        other = inputs(seed=1)
        assert torch.equal(twin(**other).sample, model(**other).sample)


def test_a_processor_with_an_empty_capture_raises(tmp_path):
    model = tiny_dit(tmp_path / "dit")
    apply_rsr(model, CONFIG)
    attn = model.transformer_blocks[1].attn1
    with pytest.raises(RuntimeError, match="found no captured block modulation"):
        attn(torch.randn(1, 16, 16))  # called outside its block: the block's hooks never ran
