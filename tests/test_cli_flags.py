"""The command line a diffusers user meets: fast help, underscore spellings, no abbreviations, defaults shown,
and every config field reachable as a flag (issues 20 and 23)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from thinkpix.cli import build_parser, main
from thinkpix.core.config import RSRConfig
from thinkpix.frozenlake.config import PlannerConfig
from thinkpix.frozenlake.config import TrainConfig as PlannerTrainConfig
from thinkpix.train.cli import train_config
from thinkpix.train.config import TrainConfig

SRC = Path(__file__).resolve().parent.parent / "src"
HEAVY = ("torch", "diffusers", "transformers", "accelerate")
FINETUNE = ["finetune", "--pretrained-model-name-or-path", "shapes-t2i", "--train-data-dir", "data",
            "--output-dir", "out"]


def _imported_modules(*argv: str) -> tuple[set[str], subprocess.CompletedProcess]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "thinkpix.cli", *argv], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(SRC)})
    modules = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return modules, done


@pytest.mark.parametrize("argv", [["--help"], ["finetune", "--help"], ["frozenlake", "train", "--help"]],
                         ids=["top", "finetune", "frozenlake-train"])
def test_help_imports_neither_torch_nor_diffusers(argv):
    modules, done = _imported_modules(*argv)
    assert done.returncode == 0 and "usage: thinkpix" in done.stdout
    assert "thinkpix.flags" in modules  # -X importtime did report
    assert sorted(m for m in modules if m.split(".")[0] in HEAVY) == []


def test_argument_errors_import_neither_torch_nor_diffusers():
    modules, done = _imported_modules(*FINETUNE, "--num-exp", "3")
    assert done.returncode == 2 and "--num-exp" in done.stderr.splitlines()[-1]
    assert sorted(m for m in modules if m.split(".")[0] in HEAVY) == []


def test_import_thinkpix_is_lazy_but_the_public_names_work():
    script = ("import sys, thinkpix; assert 'torch' not in sys.modules, 'eager'; "
              "print(thinkpix.apply_rsr.__module__, thinkpix.RSRConfig.__name__, 'flops' in dir(thinkpix))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["thinkpix.models.hosts", "RSRConfig", "True"]


def test_underscore_spellings_are_aliases_everywhere():
    parser = build_parser()
    dashed = parser.parse_args(FINETUNE + ["--num-experts", "3", "--lr-warmup-steps", "5"])
    underscored = parser.parse_args(["finetune", "--pretrained_model_name_or_path", "shapes-t2i", "--train_data_dir",
                                     "data", "--output_dir", "out", "--num_experts", "3", "--lr_warmup_steps", "5"])
    assert vars(dashed) == vars(underscored)
    assert parser.parse_args(["frozenlake", "train", "--out", "o", "--plan_steps", "4"]).plan_steps == 4
    for flag in ("--extractor_weights", "--inception_weights", "--inception-weights"):
        assert parser.parse_args(["eval", "fid", "--ref", "r", "--samples", "s", flag, "w"]).extractor_weights == "w"
    assert parser.parse_args(["sample", "--model", "m", "--out", "o", "--num_inference_steps", "3"]
                             ).num_inference_steps == 3


@pytest.mark.parametrize("argv", [FINETUNE + ["--num-exp", "3"], ["sample", "--model", "m", "--out", "o",
                                                                  "--num-inf", "3"],
                                  ["frozenlake", "train", "--out", "o", "--plan", "4"]],
                         ids=["finetune", "sample", "frozenlake"])
def test_prefix_abbreviations_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as err:
        build_parser().parse_args(argv)
    assert err.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_help_shows_the_defaults_of_the_preset(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split()).split("options:", 1)[1]  # past the usage lines
    # the shapes preset's rank 16, lr 1e-3 and checkpoint interval 100; RSRConfig's own defaults elsewhere
    for flag, default in [("--rank RANK", "16"), ("--learning-rate LEARNING_RATE", "0.001"),
                          ("--checkpointing-steps CHECKPOINTING_STEPS", "100"), ("--batch-size BATCH_SIZE", "32"),
                          ("--gumbel-tau GUMBEL_TAU", "5.0"), ("--alpha ALPHA", "None: alpha = rank")]:
        after = text.split(flag, 1)[1].split(" --", 1)[0]
        assert f"(default: {default})" in after, (flag, after)
    assert "--num_experts" not in text  # aliases are accepted, not listed


def _cli_value(cls, name: str):
    """A non-default value of field ``name`` and its command-line spelling, from the field's type and choices;
    new fields get one too, so this test covers them without an edit."""
    f = next(f for f in fields(cls) if f.name == name)
    default = getattr(cls(), name)
    if name == "layers":
        return ["--layers", "1,3"], (1, 3)
    if f.metadata.get("choices"):
        value = next(c for c in f.metadata["choices"] if c != default)
        return [f"--{name.replace('_', '-')}", value], value
    if isinstance(default, bool):
        return [f"--{'no-' if default else ''}{name.replace('_', '-')}"], not default
    if isinstance(default, int):
        return [f"--{name.replace('_', '-')}", str(default + 3)], default + 3
    value = 0.25 if default is None else float(default) * 0.5 + 0.125
    return [f"--{name.replace('_', '-')}", str(value)], value


@pytest.mark.parametrize("name", [f.name for f in fields(RSRConfig)])
def test_every_rsr_config_field_is_settable_from_finetune(name):
    flags, expected = _cli_value(RSRConfig, name)
    args = build_parser().parse_args(FINETUNE + flags)
    assert getattr(train_config(args).rsr, name) == expected


@pytest.mark.parametrize("name", [f.name for f in fields(TrainConfig) if f.name not in ("rsr", "method")])
def test_every_train_config_field_is_settable_from_finetune(name):
    if name == "lr_decay_steps":
        flags, expected = ["--lr-scheduler", "cosine", "--lr-decay-steps", "7"], 7
    else:
        flags, expected = _cli_value(TrainConfig, name)
    assert getattr(train_config(build_parser().parse_args(FINETUNE + flags)), name) == expected


@pytest.mark.parametrize("cls", [RSRConfig, TrainConfig, PlannerConfig, PlannerTrainConfig])
def test_every_config_field_has_help(cls):
    assert [f.name for f in fields(cls) if not f.metadata.get("help")] == []
    assert all(f"{f.name}:" in cls.__doc__ for f in fields(cls))  # the docstring is written from the metadata


def test_frozenlake_defaults_are_the_configs():
    args = build_parser().parse_args(["frozenlake", "train", "--out", "o"])
    from thinkpix.flags import config_values

    assert config_values(args, args.train_fields) == {} and config_values(args, args.planner_fields) == {}
    assert PlannerTrainConfig().steps == 6000  # was 2000 in the config and 6000 on the command line
    args = build_parser().parse_args(["frozenlake", "train", "--out", "o", "--weight-decay", "0.1", "--sizes", "3,4"])
    assert PlannerTrainConfig(**config_values(args, args.train_fields)) == PlannerTrainConfig(
        weight_decay=0.1, sizes=(3, 4))


def test_per_device_batch_follows_diffusers_and_disagreement_is_refused(monkeypatch):
    parser = build_parser()
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = parser.parse_args(FINETUNE + ["--train_batch_size", "4", "--gradient_accumulation_steps", "2"])
    assert train_config(args).batch_size == 16  # 4 per device x 2 accumulation steps x 2 processes
    args = parser.parse_args(FINETUNE + ["--train-batch-size", "4", "--batch-size", "16",
                                         "--gradient-accumulation-steps", "2"])
    assert train_config(args).batch_size == 16
    args = parser.parse_args(FINETUNE + ["--train-batch-size", "4", "--batch-size", "32"])
    with pytest.raises(ValueError, match=r"--batch-size 32 \(global\) disagrees with --train-batch-size 4"):
        train_config(args)
    assert parser.parse_args(FINETUNE + ["--resolution", "24"]).image_size == 24


def test_diffusers_spelled_finetune_fails_on_the_data_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["finetune", "--pretrained_model_name_or_path", "shapes-t2i", "--train_data_dir", "/nonexistent",
                 "--output_dir", "runs/x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["thinkpix finetune: error: data folder /nonexistent does not exist"]
    assert not (tmp_path / "runs").exists()


def test_caption_column_reads_another_key(tmp_path):
    import numpy as np
    from PIL import Image

    from thinkpix.train.data import load_image_folder

    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "0.png")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "0.png", "prompt": "a red circle"}) + "\n")
    assert load_image_folder(tmp_path, caption_column="prompt").captions == ["a red circle"]
    with pytest.raises(ValueError, match=r"line 1 is malformed.*--caption-column"):
        load_image_folder(tmp_path)


def test_finetune_flags_reach_the_installed_rsr_config(tmp_path, capsys):
    """The fields the old command line could not set (alpha, remodulate, dispatch, halt_per) end up in the
    saved rsr_config.json of a real run."""
    from test_train_engine import class_folder
    from tiny import tiny_dit_pipeline

    tiny_dit_pipeline(tmp_path)
    code = main(["finetune", "--pretrained_model_name_or_path", str(tmp_path / "pipe"), "--train_data_dir",
                 str(class_folder(tmp_path / "data")), "--output_dir", str(tmp_path / "out"), "--max_train_steps", "1",
                 "--train_batch_size", "4", "--report_to", "none", "--rank", "4", "--alpha", "2", "--no-remodulate",
                 "--dispatch", "dense", "--halt_per", "sample", "--layers", "1", "--seed", "3",
                 "--validation-steps", "0"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "out" / "rsr" / "rsr_config.json").read_text())
    assert {k: saved[k] for k in ("rank", "alpha", "remodulate", "dispatch", "halt_per", "layers", "seed")} == {
        "rank": 4, "alpha": 2.0, "remodulate": False, "dispatch": "dense", "halt_per": "sample", "layers": [1],
        "seed": 3}
