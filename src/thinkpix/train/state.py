"""Training checkpoints: atomic, pruned, resumable, and free of pickle.

A checkpoint is ``<out>/checkpoints/checkpoint-<step>/`` holding

* ``trainable.safetensors``: the trained parameters by name (RSR weights, or the whole model);
* ``optimizer.safetensors`` + ``optimizer.json``: the optimizer's tensors and its scalar state;
* ``ema.safetensors`` (optional): the EMA shadow parameters;
* ``state.json``: the step and the training config.

It is written to ``checkpoint-<step>.tmp-*`` and renamed when complete, so a kill during a save
never leaves a partial ``checkpoint-<step>``; older complete checkpoints are pruned only after the
rename. Every random choice of the loop is derived from (seed, step, rank), so the weights, the
optimizer and the step are all that a bit-identical resume needs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for flat, value in [*tensors.items(), *meta["scalars"].items()]:
        index, key = flat.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``folder``, oldest first (temporary folders are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return sorted(found)


def save_checkpoint(folder: str | Path, step: int, trainable: dict[str, torch.Tensor], optimizer_state: dict,
                    config: dict, ema: dict[str, torch.Tensor] | None = None,
                    keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically and keep only the newest ``keep`` checkpoints."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"checkpoint-{step}"
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f"{final.name}.tmp-"))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        opt_tensors, opt_meta = _flatten_optimizer(optimizer_state)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
        if ema is not None:
            save_file({k: v.detach().contiguous().cpu() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, "config": config}, indent=2))
        if final.exists():  # re-saving the same step: move the old one aside first
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for _, old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_resume(folder: str | Path, resume: str | None) -> Path | None:
    """``resume`` is None, ``"latest"`` (None when there is no checkpoint yet) or a checkpoint path."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(folder)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise ValueError(f"--resume {resume}: not a checkpoint folder (no state.json); use 'latest' or a path")
    return path


def load_checkpoint(path: str | Path, optimizer: torch.optim.Optimizer) -> tuple[int, dict, dict | None]:
    """Load the optimizer in place; return (step, trainable tensors, EMA tensors or None)."""
    path = Path(path)
    try:
        meta = json.loads((path / "state.json").read_text())
        trainable = load_file(str(path / "trainable.safetensors"))
        opt_state = _unflatten_optimizer(load_file(str(path / "optimizer.safetensors")),
                                         json.loads((path / "optimizer.json").read_text()))
        ema = load_file(str(path / "ema.safetensors")) if (path / "ema.safetensors").is_file() else None
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"checkpoint {path} is incomplete or corrupt: {err}") from err
    optimizer.load_state_dict(opt_state)
    return int(meta["step"]), trainable, ema
