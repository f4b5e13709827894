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

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..files import publish_mode
from .config import TrainConfig

logger = logging.getLogger(__name__)
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
CHECKPOINTS = "checkpoints"  # <output-dir>/checkpoints/checkpoint-<step>
TMP_MARK = ".tmp-"  # checkpoint-<step>.tmp-*: a save in progress (or killed; see outdir.remove_leftovers)
# TrainConfig fields that change what the trained tensors mean: a resume that changes one is refused
MODEL_FIELDS = {"full": ("method",),
                "rsr": ("method", "num_experts", "latent_steps", "rank", "layers", "gumbel_tau", "routing",
                        "gate_input", "halting")}
MODEL_FIELDS["sft"] = MODEL_FIELDS["rsr"]


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


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def save_checkpoint(folder: str | Path, step: int, trainable: dict[str, torch.Tensor], optimizer_state: dict,
                    config: dict, ema: dict[str, torch.Tensor] | None = None,
                    keep: int = 2, loss: float | None = None) -> Path:
    """Write checkpoint ``step`` atomically and keep only the newest ``keep`` checkpoints.

    ``loss``: the loss of the step, kept in ``state.json`` so that a resume with nothing left to train
    can still report it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"checkpoint-{step}"
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f"{final.name}{TMP_MARK}"))
    try:
        _save_tensors(trainable, tmp / "trainable.safetensors")
        opt_tensors, opt_meta = _flatten_optimizer(optimizer_state)
        _save_tensors(opt_tensors, tmp / "optimizer.safetensors")
        (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
        if ema is not None:
            _save_tensors(ema, tmp / "ema.safetensors")
        (tmp / "state.json").write_text(json.dumps({"step": step, "loss": loss, "config": config}, indent=2))
        for path in [tmp, *tmp.iterdir()]:
            publish_mode(path)
        if final.exists():  # re-saving the same step: move the old one aside first
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for _, old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(path: str | Path) -> dict:
    """``state.json`` of checkpoint ``path``, checked, after checking that its tensor files are complete
    (safetensors headers cover the files; no tensor data is read). A ``UserError`` names what is wrong."""
    path = Path(path)
    try:
        meta = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"checkpoint {path} has no readable state.json ({err})") from None
    if not isinstance(meta, dict) or isinstance(meta.get("step"), bool) or not isinstance(meta.get("step"), int):
        raise UserError(f"checkpoint {path} is corrupt: state.json has no integer 'step'")
    if not isinstance(meta.get("config"), dict):
        raise UserError(f"checkpoint {path} is corrupt: state.json has no 'config' object")
    names = ["trainable.safetensors", "optimizer.safetensors"]
    names += ["ema.safetensors"] if (path / "ema.safetensors").exists() else []
    for name in names:
        try:
            with safe_open(str(path / name), framework="pt"):
                pass
        except (OSError, SafetensorError) as err:
            raise UserError(f"checkpoint {path} is corrupt: {name} is unreadable ({err})") from None
    if not (path / "optimizer.json").is_file():
        raise UserError(f"checkpoint {path} is incomplete: no optimizer.json")
    return meta


def resolve_resume(folder: str | Path, resume: str | None) -> Path | None:
    """The checkpoint to resume from: ``resume`` is None, ``"latest"`` (the newest readable checkpoint in
    ``folder``; None, said in one line, when there is none yet), a checkpoint name in ``folder`` (the
    diffusers form, ``checkpoint-20``) or a checkpoint folder."""
    folder = Path(folder)
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(folder)
        if not found:
            logger.warning("--resume-from-checkpoint latest: no checkpoint in %s yet; starting a new training run",
                           folder)
            return None
        errors = []
        for _, path in reversed(found):
            try:
                read_state(path)
            except UserError as err:
                errors.append(str(err))
                continue
            if errors:
                logger.warning("%s; resuming from the newest readable one, %s", "; ".join(errors), path.name)
            return path
        raise UserError(f"no readable checkpoint in {folder}: {errors[0]}")
    path = Path(resume)
    if not (path / "state.json").is_file() and (folder / resume / "state.json").is_file():
        path = folder / resume
    if not path.is_dir():
        names = ", ".join(p.name for _, p in list_checkpoints(folder)) or "none yet"
        raise UserError(f"--resume-from-checkpoint {resume}: no such checkpoint; give 'latest', a checkpoint "
                        f"name in {folder} ({names}) or a checkpoint folder")
    read_state(path)
    return path


def check_resume_config(path: Path, saved: dict, config: TrainConfig, num_blocks: int) -> None:
    """Refuse a resume whose config changes a field that shapes the model (``MODEL_FIELDS``); layers are
    compared as block indices of this ``num_blocks``-block transformer ("middle" and its index agree)."""
    current = config.to_dict()
    # RSR fields by their own names (a flat config, written before TrainConfig held an RSRConfig, has them on top)
    current, saved = {**current["rsr"], **current}, {**saved.get("rsr", {}), **saved}
    for name in MODEL_FIELDS.get(config.method, ("method",)):
        if name not in saved:
            continue
        then, now = saved[name], current[name]
        if name == "layers":
            with contextlib.suppress(ValueError):
                then = list(replace(config, layers=then).rsr.resolve_layers(num_blocks).layers)
            now = list(config.rsr.resolve_layers(num_blocks).layers)
        if then != now:
            raise UserError(f"checkpoint {path} was trained with {name}={then!r}, this run has {name}={now!r}: "
                            f"resume with the same {name}, or start a new run in another --output-dir")


def _check_fits(path: Path, tensors: dict[str, torch.Tensor], shapes: dict[str, tuple], what: str) -> None:
    missing, unexpected = sorted(set(shapes) - set(tensors)), sorted(set(tensors) - set(shapes))
    if missing or unexpected:
        raise UserError(f"checkpoint {path} does not fit this run: {what} missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}")
    for key, shape in shapes.items():
        if tuple(tensors[key].shape) != tuple(shape):
            raise UserError(f"checkpoint {path} does not fit this run: {key} has shape {tuple(tensors[key].shape)} "
                            f"in the checkpoint but {tuple(shape)} in the model (another rank, number of experts, "
                            "layer or base model?)")


def load_checkpoint(path: str | Path, optimizer: torch.optim.Optimizer,
                    shapes: dict[str, tuple] | None = None) -> tuple[dict, dict, dict | None]:
    """Load the optimizer in place; return (``state.json``, trainable tensors, EMA tensors or None).

    ``shapes``: the run's trainable parameter shapes by name; the checkpoint must match them exactly
    (checked before anything is loaded, so a mismatch names the tensor instead of failing inside torch).
    """
    path = Path(path)
    meta = read_state(path)
    try:
        trainable = load_file(str(path / "trainable.safetensors"))
        opt_state = _unflatten_optimizer(load_file(str(path / "optimizer.safetensors")),
                                         json.loads((path / "optimizer.json").read_text()))
        ema = load_file(str(path / "ema.safetensors")) if (path / "ema.safetensors").is_file() else None
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        raise UserError(f"checkpoint {path} is incomplete or corrupt: {err}") from None
    if shapes is not None:
        _check_fits(path, trainable, shapes, "weights")
        if ema is not None:
            _check_fits(path, ema, shapes, "EMA weights")
    try:
        optimizer.load_state_dict(opt_state)
    except (ValueError, KeyError) as err:
        raise UserError(f"checkpoint {path}: its optimizer state does not fit this run ({err})") from None
    return meta, trainable, ema


def last_finite_checkpoint(folder: str | Path) -> Path | None:
    """The newest readable checkpoint in ``folder`` whose weights are all finite (the divergence report)."""
    for _, path in reversed(list_checkpoints(folder)):
        try:
            read_state(path)
            tensors = load_file(str(path / "trainable.safetensors"))
        except (UserError, SafetensorError, OSError):
            continue
        if all_finite(tensors):
            return path
    return None


def all_finite(tensors: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())
