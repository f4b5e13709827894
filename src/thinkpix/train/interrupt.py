"""Ctrl-C during training: finish the step, save a checkpoint, stop with one line that says how to resume.

The first SIGINT only sets a flag that the loop reads after each optimizer step (so the checkpoint is a
consistent state); a second one interrupts at once, and the run resumes from its newest checkpoint.
Under several processes the flag is all-reduced every step, so every rank stops after the same step.
"""

from __future__ import annotations

import shlex
import signal
import threading
from pathlib import Path


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C; ``checkpoint`` is what a resume continues from (None: nothing saved yet).
    ``processes`` ran the step; every one raises this, and only the main one (``main``) reports it."""

    def __init__(self, step: int, checkpoint: Path | None, saved: bool, processes: int = 1, main: bool = True):
        self.step, self.checkpoint, self.saved = step, checkpoint, saved
        self.processes, self.main = processes, main
        if checkpoint is None:
            where = "no checkpoint yet, a rerun starts from scratch"
        else:
            where = f"{'saved' if saved else 'will resume from'} {checkpoint}"
        super().__init__(f"interrupted at step {step}: {where}")


class StopRequest:
    """Context manager: SIGINT sets ``requested`` (once; a second SIGINT raises ``KeyboardInterrupt``)."""

    def __init__(self):
        self.flag = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.flag:
            signal.signal(signal.SIGINT, self._previous)
            raise KeyboardInterrupt
        self.flag = True

    def __enter__(self) -> StopRequest:
        # only where Python's own handler is in place (a caller's custom handler is left alone)
        if threading.current_thread() is threading.main_thread() and (
                signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def requested(self, accelerator) -> bool:
        """Whether any process was interrupted (the same answer on every process)."""
        if accelerator.num_processes == 1:
            return self.flag
        import torch

        flag = torch.tensor([float(self.flag)], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def resume_command(argv: list[str], processes: int = 1) -> str:
    """``argv`` (a training command) with ``--resume-from-checkpoint latest`` in place of any resume or
    overwrite flag: the command that continues the run (under ``accelerate launch`` for several processes)."""
    dropped, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0].replace("_", "-")
        if name == "--resume-from-checkpoint":
            skip = "=" not in arg
            continue
        if name == "--overwrite-output-dir":
            continue
        dropped.append(arg)
    launcher = ["thinkpix"] if processes == 1 else ["accelerate", "launch", "--num_processes", str(processes), "-m",
                                                    "thinkpix.cli"]
    return shlex.join([*launcher, *dropped, "--resume-from-checkpoint", "latest"])


def interrupt_message(err: KeyboardInterrupt, argv: list[str]) -> str | None:
    """The one line the CLI prints for Ctrl-C: where the run stopped and the command that resumes it (None on
    the other processes of a multi-process run, which stopped at the same step)."""
    if not isinstance(err, TrainingInterrupted):
        return "interrupted"
    if not err.main:
        return None
    if err.checkpoint is None:
        return str(err)
    return f"{err}; resume with: {resume_command(argv, err.processes)}"
