"""RSR weights on disk: ``save_rsr`` / ``load_rsr`` (safetensors only) and ``export_lora`` (diffusers format).

A checkpoint is a folder with ``rsr_config.json`` (the ``RSRConfig``) and ``rsr_weights.safetensors``
(keys ``layers.<block>.<parameter>``, metadata naming the host class and width). Files are written to
a temporary name and renamed, so a crash mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import diffusers
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..core.config import RSRConfig
from ..core.recursion import RecursiveSparseReasoning
from ..files import publish_mode
from .hosts import (
    _require_install,
    apply_rsr,
    check_layers,
    check_supported,
    num_blocks,
    remove_rsr,
    rsr_install,
    rsr_layers,
)
from .specs import host_spec

CONFIG_NAME = "rsr_config.json"
WEIGHTS_NAME = "rsr_weights.safetensors"
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        publish_mode(tmp)  # mkstemp makes it 0600; the checkpoint is an ordinary file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _width(transformer: nn.Module, layer: int) -> int:
    return host_spec(transformer).site(transformer, layer).attention.to_q.in_features


def rsr_state_dict(transformer: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"layers.{i}.{name}": tensor.detach().contiguous()
        for i, proc in rsr_layers(transformer).items()
        for name, tensor in proc.rsr.state_dict().items()
    }


def save_rsr(transformer: nn.Module, path: str | os.PathLike, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``rsr_config.json`` and ``rsr_weights.safetensors`` of the installed RSR into folder ``path``
    (``tensors``: its ``rsr_state_dict`` already gathered, when the model is sharded over processes)."""
    install = _require_install(transformer)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": "pt",
        "thinkpix_model_class": type(transformer).__name__,
        "thinkpix_width": str(_width(transformer, install.config.layers[0])),
        "thinkpix_num_blocks": str(num_blocks(transformer)),
    }
    tensors = rsr_state_dict(transformer) if tensors is None else tensors
    _atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    _atomic_write(out / CONFIG_NAME, lambda tmp: install.config.to_json(tmp))
    return out


def _read_checkpoint(folder: Path) -> tuple[RSRConfig, dict[str, torch.Tensor], dict[str, str]]:
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            hint = (f"did you mean {folder / 'rsr'}?" if (folder / "rsr" / CONFIG_NAME).is_file() else
                    "`thinkpix finetune` writes them to <output-dir>/rsr")
            raise FileNotFoundError(f"RSR checkpoint {folder} has no {name} (expected {CONFIG_NAME} + {WEIGHTS_NAME}; "
                                    f"{hint})")
    config = RSRConfig.from_json(folder / CONFIG_NAME)
    try:
        with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as err:  # safetensors raises its own error types for truncated/corrupt headers
        raise ValueError(
            f"{folder / WEIGHTS_NAME} is not a readable safetensors file (corrupt or truncated): {err}"
        ) from err
    return config, tensors, metadata


def _check_host(transformer: nn.Module, config: RSRConfig, metadata: dict, folder: Path) -> None:
    made_for = metadata.get("thinkpix_model_class")
    if made_for and made_for != type(transformer).__name__:
        raise ValueError(f"RSR checkpoint {folder} was made for {made_for}, not {type(transformer).__name__}")
    try:
        check_layers(transformer, config.layers)
    except ValueError as err:
        raise ValueError(f"RSR checkpoint {folder} does not fit this model: {err}") from None


def _expected_shapes(transformer: nn.Module, config: RSRConfig) -> dict[str, tuple]:
    """The ``rsr_state_dict`` shapes that ``config`` gives on ``transformer``, from modules built on the meta
    device: a config with a huge rank (a tampered file) allocates nothing before it is refused."""
    shapes = {}
    for i in config.layers:
        dim = _width(transformer, i)
        with torch.device("meta"):
            rsr = RecursiveSparseReasoning(config, dim, cond_dim=dim, layer_index=i)
        shapes.update({f"layers.{i}.{name}": tuple(t.shape) for name, t in rsr.state_dict().items()})
    return shapes


def _check_tensors(transformer: nn.Module, config: RSRConfig, tensors: dict, metadata: dict, folder: Path) -> None:
    expected = _expected_shapes(transformer, config)
    width = _width(transformer, config.layers[0])
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"RSR checkpoint {folder} does not fit: missing keys {missing[:6]}, unexpected keys {unexpected[:6]}"
        )
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(
                f"RSR checkpoint {folder} does not fit: {key} has shape {tuple(tensors[key].shape)} in the "
                f"checkpoint but {shape} in the model (checkpoint made for width "
                f"{metadata.get('thinkpix_width', '?')}, this model has width {width}; its rsr_config.json says "
                f"rank={config.rank}, num_experts={config.num_experts})"
            )


def load_rsr(transformer: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Apply the checkpoint's ``RSRConfig`` to ``transformer`` (if not yet applied) and load its weights.

    Raises an error that says what does not fit (other width, missing layer, other host, corrupt file);
    on any error the transformer is left as it was.
    """
    check_supported(transformer)
    folder = Path(path)
    config, tensors, metadata = _read_checkpoint(folder)
    install = rsr_install(transformer)
    if install is not None and install.config != config:
        raise ValueError(f"this transformer already has RSR with another config ({install.config}); remove_rsr first")
    _check_host(transformer, config, metadata, folder)
    _check_tensors(transformer, config, tensors, metadata, folder)  # before apply_rsr allocates anything
    fresh = install is None
    if fresh:
        apply_rsr(transformer, config)
    try:
        for i, proc in rsr_layers(transformer).items():
            prefix = f"layers.{i}."
            proc.rsr.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    except Exception:
        if fresh:
            remove_rsr(transformer)
        raise
    return transformer


def export_lora(transformer: nn.Module, path: str | os.PathLike) -> Path:
    """Write an M=1, T=1 RSR (plain LoRA SFT) as a diffusers LoRA file for ``load_lora_weights`` of the host's
    pipeline (``StableDiffusion3Pipeline``, ``FluxPipeline``).

    The LoRA scale ``alpha / r`` is folded into B, so the file loads with the default alpha = r.
    """
    install = _require_install(transformer)
    cfg = install.config
    if (cfg.num_experts, cfg.latent_steps) != (1, 1):
        raise ValueError(
            f"export_lora needs num_experts=1 and latent_steps=1 (plain LoRA), got M={cfg.num_experts}, "
            f"T={cfg.latent_steps}: use save_rsr for routed experts"
        )
    spec = host_spec(transformer)
    if spec.lora_pipeline is None:
        raise TypeError(f"{spec.name} has no diffusers LoRA loader; use save_rsr / load_rsr")
    layers = {}
    for i, proc in rsr_layers(transformer).items():
        stem = spec.site(transformer, i).lora_module
        if stem is None:
            raise ValueError(f"export_lora cannot write block {i} of {spec.name}: RSR there routes the image tokens "
                             "only, and a diffusers LoRA on its projections would change every token; use save_rsr")
        for name, (a, b) in proc.rsr.experts.expert_weights(0).items():
            layers[f"{stem}.to_{name}.lora_A.weight"] = a.clone()
            layers[f"{stem}.to_{name}.lora_B.weight"] = (b * cfg.scaling).clone()
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    targets = sorted({k.rsplit(".lora", 1)[0] for k in layers})
    metadata = {"r": cfg.rank, "lora_alpha": cfg.rank, "target_modules": targets}
    pipeline = getattr(diffusers, spec.lora_pipeline)
    pipeline.save_lora_weights(out, transformer_lora_layers=layers, weight_name=LORA_WEIGHTS_NAME,
                               transformer_lora_adapter_metadata=metadata)
    return out / LORA_WEIGHTS_NAME


def checkpoint_info(path: str | os.PathLike) -> dict:
    """Config and metadata of a checkpoint folder, without a model (for CLIs and error messages)."""
    config, tensors, metadata = _read_checkpoint(Path(path))
    return {"config": config.to_dict(), "metadata": metadata, "num_tensors": len(tensors),
            "num_parameters": int(sum(t.numel() for t in tensors.values()))}
