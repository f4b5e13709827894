"""A training run owns its output folder: an exclusive lock, no mixing with another run's checkpoints,
and no leftovers of an interrupted save.

``claim_output_dir`` runs on the main process before training starts, so an unusable folder (a file, not
writable, used by a running process, or holding another run's checkpoints) is reported at once instead of
at the first checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import IO

from ..errors import UserError
from .state import CHECKPOINTS, TMP_MARK, list_checkpoints

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the other checks still apply
    fcntl = None

logger = logging.getLogger(__name__)
LOCK_NAME = ".thinkpix.lock"
RUN_OUTPUTS = (CHECKPOINTS, "validation", "thinkpix")  # what --overwrite-output-dir clears (thinkpix: TensorBoard)


def _make_writable_folder(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--output-dir {out_dir} exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as err:
        raise UserError(f"--output-dir {out_dir} is not writable: {err.strerror or err}") from None


def _lock(out_dir: Path) -> IO:
    handle = open(out_dir / LOCK_NAME, "a+")  # noqa: SIM115 (held open for the whole run)
    if fcntl is None:
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"--output-dir {out_dir} is in use by a running thinkpix training ({owner}): wait for it "
                        "or choose another folder") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


def remove_leftovers(ckpt_dir: Path) -> list[Path]:
    """Delete ``checkpoint-N.tmp-*`` folders of saves that were killed (only complete checkpoints count)."""
    if not ckpt_dir.is_dir():
        return []
    leftovers = sorted(p for p in ckpt_dir.iterdir() if TMP_MARK in p.name and p.name.startswith("checkpoint-"))
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    if leftovers:
        logger.warning("removed %d unfinished checkpoint save(s) of an interrupted run: %s", len(leftovers),
                       ", ".join(p.name for p in leftovers))
    return leftovers


def claim_output_dir(out_dir: str | Path, resume: str | None, overwrite: bool = False) -> IO:
    """Check and lock ``out_dir`` for a run; returns the open lock file (keep it open while training).

    A folder with checkpoints of an earlier run is refused unless the run resumes (``resume``) or
    ``overwrite`` clears the earlier run's checkpoints, validation grids and logs.
    """
    out_dir = Path(out_dir)
    if overwrite and resume is not None:
        raise UserError("--overwrite-output-dir and --resume-from-checkpoint contradict each other: give one")
    _make_writable_folder(out_dir)
    handle = _lock(out_dir)
    ckpt_dir = out_dir / CHECKPOINTS
    remove_leftovers(ckpt_dir)
    found = list_checkpoints(ckpt_dir)
    if found and resume is None:
        if not overwrite:
            handle.close()
            raise UserError(f"--output-dir {out_dir} holds checkpoints of another run ({found[-1][1].name}): "
                            "pass --resume-from-checkpoint latest to continue it, --overwrite-output-dir to "
                            "start over, or choose another folder")
        for name in RUN_OUTPUTS:
            shutil.rmtree(out_dir / name, ignore_errors=True)
        logger.warning("--overwrite-output-dir: removed the earlier run's %s from %s", ", ".join(RUN_OUTPUTS),
                       out_dir)
    return handle
