"""The training engine under faults and bad input (issue 22): one clear line or correct behaviour, never a
poisoned checkpoint, a mixed output folder or a lost run."""

import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_train_engine import class_folder
from thinkpix.cli import main
from thinkpix.train import TrainConfig, TrainTarget, load_image_folder, load_pipeline, train
from thinkpix.train.outdir import claim_output_dir
from thinkpix.train.state import check_resume_config, list_checkpoints
from tiny import tiny_dit_pipeline

SMALL = dict(rank=4, num_experts=2, latent_steps=2, layers=(1,), batch_size=4, learning_rate=1e-2)


@pytest.fixture(scope="module")
def dit(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit-faults")
    tiny_dit_pipeline(root)
    return root / "pipe", class_folder(root / "data")


def run(dit, out, resume=None, overwrite=False, **fields):
    cfg = TrainConfig(**{**SMALL, "max_steps": 2, "checkpointing_steps": 1, **fields})
    return train(TrainTarget(load_pipeline(dit[0])), load_image_folder(dit[1]), cfg, out, resume=resume,
                 report_to=None, progress=False, overwrite=overwrite)


def cli(dit, out, *extra):
    return main(["finetune", "--pretrained-model-name-or-path", str(dit[0]), "--train-data-dir", str(dit[1]),
                 "--output-dir", str(out), "--rank", "4", "--layers", "1", "--batch-size", "4",
                 "--report-to", "none", *extra])


PROGRESS = re.compile(r"^(Loading pipeline|train rsr:)")  # progress bars, not messages


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.replace("\r", "\n").splitlines()
    err = [line for line in err if line.strip() and not PROGRESS.match(line)]
    assert len(err) == 1, err
    return err[0]


def test_divergence_keeps_only_finite_checkpoints_and_names_one(dit, tmp_path, capsys):
    """A learning rate that blows up within a few steps, with a checkpoint every step: the old guard wrote NaN
    weights as the last checkpoint and named it. (lr 100 diverged with the libraries of 2026-11 and no longer
    does in 8 steps; 1e4 diverges at step 3 and 1e6 at step 2, after finite checkpoints.)"""
    out = tmp_path / "run"
    assert cli(dit, out, "--learning-rate", "1e6", "--checkpointing-steps", "1", "--max-steps", "8") == 2
    line = one_error_line(capsys)
    assert "training diverged" in line and "learning_rate=1e+06" in line, line
    named = Path(line.split("resume from ")[1].split(" with")[0])
    found = list_checkpoints(out / "checkpoints")
    assert found and named == found[-1][1]
    for _, path in found:  # every checkpoint on disk is a state worth resuming
        assert all(torch.isfinite(t).all() for t in load_file(str(path / "trainable.safetensors")).values()), path


def test_a_learning_rate_that_overflows_float32_is_refused_up_front():
    with pytest.raises(ValueError, match=r"TrainConfig.learning_rate=1e\+38 is invalid.*float32"):
        TrainConfig(learning_rate=1e38)
    TrainConfig(learning_rate=1.0)  # large but representable: allowed


def test_a_run_owns_its_output_dir(dit, tmp_path, capsys, caplog):
    out = tmp_path / "run"
    held = claim_output_dir(out, resume=None)  # as a second process training into the same folder would
    try:
        assert cli(dit, out, "--max-steps", "1") == 2
        assert "is in use by a running thinkpix training" in one_error_line(capsys)
    finally:
        held.close()
    first = run(dit, out)
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [1, 2] and first.step == 2
    with pytest.raises(ValueError, match=r"holds checkpoints of another run \(checkpoint-2\).*--resume"):
        run(dit, out)  # would mix with the old run, and `latest` would resume it
    with caplog.at_level(logging.WARNING, logger="thinkpix"):
        again = run(dit, out, overwrite=True, max_steps=1)
    assert again.step == 1 and [s for s, _ in list_checkpoints(out / "checkpoints")] == [1]
    assert "--overwrite-output-dir: removed" in caplog.text


def test_output_dir_problems_are_one_line_before_training(dit, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert cli(dit, tmp_path / "file", "--max-steps", "1") == 2
    assert "exists and is not a folder" in one_error_line(capsys)
    assert cli(dit, tmp_path / "o", "--max-steps", "1", "--resume-from-checkpoint", "latest",
               "--overwrite-output-dir") == 2
    assert "contradict" in one_error_line(capsys)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "ro"
        locked.mkdir()
        locked.chmod(0o500)
        assert cli(dit, locked, "--max-steps", "1") == 2
        assert "is not writable" in one_error_line(capsys)


def _corrupt(kind: str, ckpt: Path) -> None:
    if kind == "truncated-weights":
        data = (ckpt / "trainable.safetensors").read_bytes()
        (ckpt / "trainable.safetensors").write_bytes(data[: len(data) // 2])
    elif kind == "truncated-optimizer":
        data = (ckpt / "optimizer.safetensors").read_bytes()
        (ckpt / "optimizer.safetensors").write_bytes(data[: len(data) // 2])
    else:
        state = json.loads((ckpt / "state.json").read_text())
        del state["step"]
        (ckpt / "state.json").write_text(json.dumps(state))


@pytest.fixture(scope="module")
def trained(dit, tmp_path_factory):
    """A finished 2-step run (checkpoints 1 and 2) to copy and damage."""
    out = tmp_path_factory.mktemp("trained") / "run"
    run(dit, out)
    return out


@pytest.mark.parametrize("kind", ["truncated-weights", "truncated-optimizer", "state-without-step"])
def test_resume_checks_what_it_loads(dit, trained, tmp_path, kind, caplog):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    _corrupt(kind, out / "checkpoints" / "checkpoint-2")
    with pytest.raises(ValueError, match=r"checkpoint .*checkpoint-2 .*(corrupt|integer 'step')"):
        run(dit, out, resume=str(out / "checkpoints" / "checkpoint-2"), max_steps=3)
    with caplog.at_level(logging.WARNING, logger="thinkpix"):  # latest falls back to the newest readable one
        result = run(dit, out, resume="latest", max_steps=3)
    assert result.resumed_from == out / "checkpoints" / "checkpoint-1" and result.step == 3
    assert "resuming from the newest readable one, checkpoint-1" in caplog.text


def test_resume_refuses_a_checkpoint_of_another_model(dit, trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    with pytest.raises(ValueError, match=r"trained with latent_steps=2, this run has latent_steps=3"):
        run(dit, out, resume="latest", latent_steps=3, max_steps=3)
    check_resume_config(out, {"method": "rsr", "layers": "middle"}, TrainConfig(layers=(2,)), 4)  # the same blocks
    state_path = out / "checkpoints" / "checkpoint-2" / "state.json"
    state = json.loads(state_path.read_text())
    state["config"]["rank"] = 8  # a config that claims to fit, over tensors that do not
    state_path.write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"does not fit this run: rsr\.1\.experts\.lora_\w has shape .* in the "
                                         r"checkpoint but .* in the model"):
        run(dit, out, resume="checkpoint-2", rank=8, max_steps=3)


def test_a_kill_during_a_save_leaves_no_tmp_folder_after_a_restart(dit, tmp_path):
    """SIGKILL in the middle of writing checkpoint-2 (between its tensor files), then a resume."""
    out = tmp_path / "run"
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import thinkpix.train.state as state
from test_train_faults import run
real, calls = state.save_file, []
def dying(*args, **kwargs):
    calls.append(1)
    if len(calls) == 4:  # checkpoint-2: trainable written, optimizer next
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
state.save_file = dying
run(({str(dit[0])!r}, {str(dit[1])!r}), {str(out)!r})
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert [p.name for p in (out / "checkpoints").iterdir() if ".tmp-" in p.name]  # what the kill left
    result = run(dit, out, resume="latest", max_steps=2)
    assert result.resumed_from.name == "checkpoint-1" and result.step == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]


def test_checkpoints_get_ordinary_permissions(dit, trained):
    mask = os.umask(0o022)
    os.umask(mask)
    folder = trained / "checkpoints" / "checkpoint-2"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~mask
    for path in [*folder.iterdir(), trained / "rsr" / "rsr_config.json", trained / "rsr" / "rsr_weights.safetensors"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path


def test_resume_says_what_it_resumed_from_and_reports_a_loss_past_max_steps(dit, trained, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    assert cli(dit, out, "--max-steps", "2", "--resume-from-checkpoint", "checkpoint-2") == 0  # diffusers' form
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])
    saved = json.loads((out / "checkpoints" / "checkpoint-2" / "state.json").read_text())["loss"]
    assert report["step"] == 2 and report["final_loss"] == saved and saved is not None
    assert "resuming from" in captured.err and "checkpoint-2 (step 2): nothing left to train" in captured.err
    assert cli(dit, tmp_path / "fresh", "--max-steps", "1", "--resume-from-checkpoint", "latest") == 0
    err = capsys.readouterr().err
    assert "--resume-from-checkpoint latest: no checkpoint in" in err and "starting a new training run" in err
    assert cli(dit, out, "--max-steps", "3", "--resume-from-checkpoint", "checkpoint-9") == 2
    assert "no such checkpoint; give 'latest', a checkpoint name" in one_error_line(capsys)


def test_only_the_main_process_prints_the_report(dit, tmp_path, capsys, monkeypatch):
    """Under DDP the other ranks return ``main_process=False`` (tests/ddp_worker.py checks that); the CLI
    prints the final JSON only for the main one."""
    import thinkpix.train as train_module

    real = train_module.train

    def as_rank_1(*args, **kwargs):
        result = real(*args, **kwargs)
        result.main_process = False
        return result

    monkeypatch.setattr(train_module, "train", as_rank_1)
    assert cli(dit, tmp_path / "run", "--max-steps", "1") == 0
    assert capsys.readouterr().out.strip() == ""


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_saves_a_checkpoint_prints_the_resume_command_and_exits_130(dit, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "thinkpix.cli", "finetune", "--pretrained-model-name-or-path", str(dit[0]),
           "--train-data-dir", str(dit[1]), "--output-dir", str(out), "--rank", "4", "--layers", "1",
           "--batch-size", "4", "--max-steps", "100000", "--checkpointing-steps", "2", "--report-to", "none"]
    with open(tmp_path / "stdout", "w") as stdout, open(tmp_path / "stderr", "w") as stderr:  # files: no pipe to fill
        proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr, text=True,  # as a terminal starts it:
                                preexec_fn=_sigint_default)  # an ignored SIGINT would be inherited
        deadline = time.time() + 300
        # any checkpoint: at tens of steps a second, checkpoint-2 is pruned (limit 2) before a poll may see it
        while not any((out / "checkpoints").glob("checkpoint-*")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=180)
        finally:
            proc.kill()
    stdout, stderr = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and stdout.strip() == ""
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("thinkpix finetune:")]
    assert len(lines) == 1, stderr[-3000:]
    assert "interrupted at step" in lines[0] and "resume with: thinkpix finetune" in lines[0]
    assert lines[0].endswith("--resume-from-checkpoint latest")
    saved = Path(lines[0].split("saved ")[1].split(";")[0])
    step = int(saved.name.split("-")[1])
    assert saved.parent == out / "checkpoints" and step >= 2  # the steps since the last checkpoint are kept
    result = run(dit, out, resume="latest", max_steps=step + 1, checkpointing_steps=2)
    assert result.resumed_from == saved and result.step == step + 1


def test_a_second_ctrl_c_interrupts_at_once_and_the_resume_command_replaces_resume_flags():
    from thinkpix.train.interrupt import StopRequest, resume_command

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, as in a terminal
    try:
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)  # the first one only asks the loop to stop after its step
            assert stop.flag
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    argv = ["finetune", "--output-dir", "runs/x", "--resume-from-checkpoint=checkpoint-2", "--overwrite-output-dir",
            "--resume_from_checkpoint", "latest", "--max-steps", "9"]
    assert resume_command(argv) == ("thinkpix finetune --output-dir runs/x --max-steps 9 "
                                    "--resume-from-checkpoint latest")
    assert resume_command(argv, processes=2) == ("accelerate launch --num_processes 2 -m thinkpix.cli finetune "
                                                 "--output-dir runs/x --max-steps 9 --resume-from-checkpoint latest")


def test_ctrl_c_under_two_processes_stops_both_at_one_step_with_one_line(dit, tmp_path):
    """Ctrl-C in a terminal reaches the launcher and both workers: every rank stops after the same step (the
    flag is all-reduced), the checkpoint of that step is saved, and only the main rank prints the line, with
    a resume command under ``accelerate launch``."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "thinkpix.cli", "finetune",
           "--pretrained-model-name-or-path", str(dit[0]), "--train-data-dir", str(dit[1]), "--output-dir", str(out),
           "--rank", "4", "--layers", "1", "--batch-size", "4", "--max-steps", "100000", "--checkpointing-steps",
           "2", "--report-to", "none"]
    with open(tmp_path / "stderr", "w") as stderr:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        try:
            deadline = time.time() + 300
            while not any((out / "checkpoints").glob("checkpoint-*")) and proc.poll() is None and (
                    time.time() < deadline):
                time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGINT)  # the terminal's foreground process group
            proc.wait(timeout=180)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = (tmp_path / "stderr").read_text().replace("\r", "\n")
    assert proc.returncode == 130, text[-3000:]
    lines = [line[line.index("thinkpix finetune:"):] for line in text.splitlines() if "thinkpix finetune:" in line]
    assert len(lines) == 1, text[-3000:]
    assert "resume with: accelerate launch --num_processes 2 -m thinkpix.cli finetune" in lines[0]
    saved = Path(lines[0].split("saved ")[1].split(";")[0])
    assert (saved / "trainable.safetensors").is_file() and "Traceback" not in text
