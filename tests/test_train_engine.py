"""The training engine on real (tiny) diffusers pipelines written to disk."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from thinkpix.cli import main
from thinkpix.models.checkpoint import rsr_state_dict
from thinkpix.train import TrainConfig, TrainingDiverged, TrainTarget, load_image_folder, load_pipeline, train
from thinkpix.train.state import list_checkpoints
from tiny import tiny_dit_pipeline, tiny_flux_pipeline, tiny_sd3_pipeline


def caption_folder(root: Path, n: int = 8, size: int = 16) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(root / "metadata.jsonl", "w") as f:
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / f"{i}.png")
            f.write(json.dumps({"file_name": f"{i}.png", "text": ["a cat", "two dogs"][i % 2]}) + "\n")
    return root


def class_folder(root: Path, n: int = 8, size: int = 8) -> Path:
    rng = np.random.default_rng(1)
    for i in range(n):
        (root / f"{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / f"{i % 3}/{i}.png")
    return root


@pytest.fixture(scope="module")
def dit_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit")
    tiny_dit_pipeline(root)
    return root / "pipe", class_folder(root / "data")


def run(pipe_dir, data_dir, out, resume=None, **overrides):
    cfg = TrainConfig(**{**dict(rank=4, num_experts=3, latent_steps=2, layers=(1, 3), batch_size=4, max_steps=6,
                                checkpointing_steps=3, learning_rate=1e-2, ema_decay=0.9), **overrides})
    target = TrainTarget(load_pipeline(pipe_dir))
    result = train(target, load_image_folder(data_dir), cfg, out, resume=resume, report_to=None, progress=False)
    return result, rsr_state_dict(target.transformer)


@pytest.mark.parametrize("schedule", [{}, {"lr_scheduler": "cosine", "lr_warmup_steps": 2}],
                         ids=["constant", "cosine-warmup"])
def test_resume_gives_bit_identical_weights(dit_setup, tmp_path, schedule):
    pipe_dir, data_dir = dit_setup
    full, full_weights = run(pipe_dir, data_dir, tmp_path / "full", **schedule)
    # "killed" right after its step-3 checkpoint: what is left is checkpoint-3 of the same 6-step run
    ckpt = "checkpoints/checkpoint-3"
    shutil.copytree(tmp_path / "full" / ckpt, tmp_path / "split" / ckpt)
    resumed, resumed_weights = run(pipe_dir, data_dir, tmp_path / "split", resume="latest", **schedule)
    assert resumed.step == full.step == 6
    assert resumed.losses == full.losses[3:]
    for key, value in full_weights.items():
        assert torch.equal(value, resumed_weights[key]), key
    assert [s for s, _ in list_checkpoints(tmp_path / "full" / "checkpoints")] == [3, 6]
    if schedule:  # the schedule was applied: the weights differ from the constant-rate run's
        _, constant_weights = run(pipe_dir, data_dir, tmp_path / "constant")
        assert any(not torch.equal(v, constant_weights[k]) for k, v in full_weights.items())


def test_gradient_checkpointing_trains_the_same_weights(dit_setup, tmp_path):
    """Block checkpointing (diffusers') reruns each block in backward; the gate replays its Gumbel draws, so
    the losses and the trained weights are those of the plain run."""
    pipe_dir, data_dir = dit_setup
    plain, plain_weights = run(pipe_dir, data_dir, tmp_path / "plain", max_steps=3)
    ckpt, ckpt_weights = run(pipe_dir, data_dir, tmp_path / "ckpt", max_steps=3, gradient_checkpointing=True)
    assert ckpt.losses == plain.losses
    for key, value in plain_weights.items():
        assert torch.equal(value, ckpt_weights[key]), key


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(dit_setup, tmp_path, monkeypatch):
    import thinkpix.train.loop as loop

    real = loop.noise_prediction_loss
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(loop, "noise_prediction_loss", flaky)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 4.*checkpoint-3"):
        run(pipe_dir := dit_setup[0], dit_setup[1], tmp_path / "run")
    assert pipe_dir.exists()
    (step, ckpt), = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert step == 3 and (ckpt / "trainable.safetensors").is_file()


def test_two_processes_keep_identical_weights(dit_setup, tmp_path):
    pipe_dir, data_dir = dit_setup
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no",  # torchrun; gloo on CPU
           str(Path(__file__).parent / "ddp_worker.py"), str(pipe_dir), str(data_dir), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert any(rank0[k].abs().sum() > 0 for k in rank0 if k.endswith("lora_B"))  # it did train
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [3]


def test_two_process_pretraining_keeps_the_text_encoder_identical(tmp_path):
    """The Shapes text encoder trains outside the DDP-wrapped transformer: its gradients are averaged too."""
    from thinkpix.shapes import ShapesTextToImagePipeline
    from thinkpix.shapes.dataset import make_dataset

    data = make_dataset(tmp_path / "data", n=8, seed=0, variant="caption", split="train")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(Path(__file__).parent / "ddp_worker.py"), "no-pipeline", str(data), str(tmp_path), "pretrain"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (load_file(str(tmp_path / f"text-encoder-rank{r}.safetensors")) for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    scratch = ShapesTextToImagePipeline.from_scratch("mmdit-s", seed=0, width=32, head_dim=16, num_layers=2)
    assert any(not torch.equal(p, rank0[k]) for k, p in scratch.text_encoder.state_dict().items())  # it trained


def fsdp_runs(pipe_dir, data_dir, out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(Path(__file__).parent / "fsdp_worker.py"), str(pipe_dir), str(data_dir), str(out), *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return (load_file(str(out / f"{run}-rank0.safetensors")) for run in ("fsdp", "split", "ddp"))


@pytest.mark.slow
def test_fsdp_shards_flux_double_and_single_stream_blocks(tmp_path):
    """FLUX's FSDP units (HostSpec.fsdp_units: every double- and single-stream block) train as DDP does."""
    tiny_flux_pipeline(tmp_path)
    fsdp, split, ddp = fsdp_runs(tmp_path / "pipe", caption_folder(tmp_path / "data"), tmp_path, "caption")
    assert {k.split(".")[1] for k in fsdp} == {"1", "3"}  # a double- and a single-stream block
    assert all(torch.equal(fsdp[k], split[k]) for k in fsdp)
    assert all(torch.allclose(fsdp[k], ddp[k], rtol=1e-4, atol=1e-6) for k in fsdp)


def test_fsdp_matches_ddp_and_resumes_bit_identically(dit_setup, tmp_path):
    """FSDP2 over 2 gloo processes (train/sharding.py) on a real DiT, whose block 0 embedding is read outside
    its forward: trains, checkpoints full-size safetensors, resumes exactly, and equals DDP up to rounding."""
    pipe_dir, data_dir = dit_setup
    fsdp, split, ddp = fsdp_runs(pipe_dir, data_dir, tmp_path)
    assert fsdp.keys() == split.keys() == ddp.keys()
    assert all(torch.equal(fsdp[k], split[k]) for k in fsdp)  # kill-and-resume under FSDP is exact
    assert all(torch.allclose(fsdp[k], ddp[k], rtol=1e-4, atol=1e-6) for k in fsdp)  # same training as DDP
    assert any(fsdp[k].abs().sum() > 0 for k in fsdp if k.endswith("lora_B"))  # it did train
    ckpt = tmp_path / "fsdp" / "checkpoints" / "checkpoint-4" / "trainable.safetensors"
    assert load_file(str(ckpt)).keys() == load_file(str(tmp_path / "ddp" / "checkpoints" / "checkpoint-4" /
                                                          "trainable.safetensors")).keys()
    assert (tmp_path / "fsdp" / "validation" / "step-000004.png").is_file()


@pytest.mark.parametrize("kind", ["sd3", "dit"])
def test_finetune_cli_end_to_end_on_saved_diffusers_pipelines(tmp_path, kind, capsys):
    if kind == "sd3":
        tiny_sd3_pipeline(tmp_path)
        data = caption_folder(tmp_path / "data")
    else:
        tiny_dit_pipeline(tmp_path)
        data = class_folder(tmp_path / "data")
    out = tmp_path / "run"
    code = main(["finetune", "--pretrained-model-name-or-path", str(tmp_path / "pipe"), "--train-data-dir", str(data),
                 "--output-dir", str(out), "--rank", "4", "--layers", "1,3", "--num-experts", "2", "--batch-size", "4",
                 "--max-steps", "2", "--checkpointing-steps", "2", "--validation-steps", "2",
                 "--lr-scheduler", "cosine", "--lr-warmup-steps", "1"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["step"] == 2 and Path(report["weights"], "rsr_weights.safetensors").is_file()
    assert (out / "validation" / "step-000002.png").is_file()
    saved = json.loads((out / "checkpoints" / "checkpoint-2" / "state.json").read_text())["config"]
    assert (saved["lr_scheduler"], saved["lr_warmup_steps"]) == ("cosine", 1)
    code = main(["sample", "--model", str(tmp_path / "pipe"), "--rsr", report["weights"], "--out", str(tmp_path / "s"),
                 "--num-inference-steps", "2"] + (["--prompt", "a cat"] if kind == "sd3" else ["--class-label", "1"]))
    assert code == 0 and (tmp_path / "s" / "grid.png").is_file() and (tmp_path / "s" / "00000-0.png").is_file()
    capsys.readouterr()
    assert main(["sample", "--model", str(tmp_path / "pipe"), "--out", str(tmp_path / "s2"), "--guidance-interval",
                 "0", "0.5"] + (["--prompt", "a cat"] if kind == "sd3" else ["--class-label", "1"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--guidance-interval needs a Shapes pipeline" in err[-1], err  # above it: loading progress bars


def test_bad_inputs_give_one_clear_error_line(dit_setup, tmp_path, capsys):
    pipe_dir, data_dir = dit_setup
    (tmp_path / "empty").mkdir()
    broken = class_folder(tmp_path / "broken")
    (broken / "0" / "bad.png").write_bytes(b"not a png")
    transformer_only = tmp_path / "transformer"
    load_pipeline(pipe_dir).transformer.save_pretrained(transformer_only)
    base = ["finetune", "--output-dir", str(tmp_path / "out"), "--max-steps", "1", "--report-to", "none"]
    cases = {
        "does not exist": ["--pretrained-model-name-or-path", str(pipe_dir), "--train-data-dir", str(tmp_path / "x")],
        "is empty": ["--pretrained-model-name-or-path", str(pipe_dir), "--train-data-dir", str(tmp_path / "empty")],
        "unreadable image": ["--pretrained-model-name-or-path", str(pipe_dir), "--train-data-dir", str(broken)],
        "holds DiTTransformer2DModel, not a pipeline": ["--pretrained-model-name-or-path", str(transformer_only),
                                                         "--train-data-dir", str(data_dir)],
        "unknown preset 'huge'": ["--pretrained-model-name-or-path", str(pipe_dir), "--train-data-dir",
                                  str(data_dir), "--preset", "huge"],
        "needs a multi-process run": ["--pretrained-model-name-or-path", str(pipe_dir), "--train-data-dir",
                                      str(data_dir), "--fsdp"],
        "TrainConfig.lr_decay_steps=1 is invalid": ["--pretrained-model-name-or-path", str(pipe_dir),
                                                     "--train-data-dir", str(data_dir), "--lr-decay-steps", "1"],
    }
    capsys.readouterr()
    for expected, extra in cases.items():
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (expected, err)


def test_fsdp_with_full_training_is_refused_by_name():
    with pytest.raises(ValueError, match=r"TrainConfig.fsdp=True.*allowed.*method 'full'"):
        TrainConfig(method="full", fsdp=True)


def test_learning_rate_schedules_follow_diffusers_and_warmup_stable_decay():
    cosine = TrainConfig(learning_rate=1.0, max_steps=10, lr_scheduler="cosine", lr_warmup_steps=2)
    assert [cosine.lr_at(s) for s in (0, 1)] == [0.5, 1.0]
    assert cosine.lr_at(6) == pytest.approx(0.5) and cosine.lr_at(10) == pytest.approx(0.0)
    wsd = TrainConfig(learning_rate=2.0, max_steps=10, lr_scheduler="linear", lr_decay_steps=4)
    assert [wsd.lr_at(s) for s in (0, 5, 6, 8, 10)] == [2.0, 2.0, 2.0, 1.0, 0.0]
    assert TrainConfig(learning_rate=3.0, max_steps=10).lr_at(9) == 3.0


@pytest.mark.parametrize(("fields", "pattern"), [
    ({"lr_scheduler": "step"}, r"TrainConfig.lr_scheduler='step'.*'constant' or 'linear' or 'cosine'"),
    ({"lr_decay_steps": 5}, r"TrainConfig.lr_decay_steps=5.*'linear' or 'cosine'"),
    ({"lr_scheduler": "linear", "lr_decay_steps": 9, "lr_warmup_steps": 2, "max_steps": 10},
     r"TrainConfig.lr_decay_steps=9.*at most max_steps - lr_warmup_steps = 8"),
    ({"lr_warmup_steps": -1}, r"TrainConfig.lr_warmup_steps=-1.*integer >= 0"),
])
def test_bad_learning_rate_schedules_are_refused_by_name(fields, pattern):
    with pytest.raises(ValueError, match=pattern):
        TrainConfig(**fields)


def test_finetune_cli_runs_on_a_saved_flux_pipeline(tmp_path, capsys):
    """FLUX.1 (tiny CLIP + T5 text encoders, random configs): routed double- and single-stream blocks train
    through packed latents, and the weights load back for sampling."""
    tiny_flux_pipeline(tmp_path)
    data = caption_folder(tmp_path / "data")
    out = tmp_path / "run"
    code = main(["finetune", "--pretrained-model-name-or-path", str(tmp_path / "pipe"), "--train-data-dir", str(data),
                 "--output-dir", str(out), "--rank", "4", "--layers", "1,2", "--num-experts", "2", "--batch-size", "2",
                 "--max-steps", "2", "--checkpointing-steps", "2", "--validation-steps", "0", "--report-to", "none"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["step"] == 2 and np.isfinite(report["final_loss"])
    weights = load_file(str(Path(report["weights"], "rsr_weights.safetensors")))
    assert {k.split(".")[1] for k in weights} == {"1", "2"}
    assert all(weights[f"layers.{i}.experts.lora_B"].abs().sum() > 0 for i in (1, 2))  # both block kinds trained
    code = main(["sample", "--model", str(tmp_path / "pipe"), "--rsr", report["weights"], "--out", str(tmp_path / "s"),
                 "--num-inference-steps", "2", "--prompt", "a cat"])
    assert code == 0 and (tmp_path / "s" / "grid.png").is_file()
