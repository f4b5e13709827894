"""Fully sharded data parallel training (FSDP2, ``torch.distributed.fsdp.fully_shard``) for large hosts.

``TrainConfig.fsdp`` shards every transformer block's parameters, gradients and optimizer state over the
processes of an ``accelerate launch`` run (NCCL on GPUs, gloo on CPUs), the way torchtitan and diffusers'
FSDP2 examples wrap one block at a time. We shard ourselves instead of going through accelerate's FSDP
plugin for two measured reasons:

- accelerate enables its FSDP plugin only on accelerators; on CPU (gloo) it silently runs DDP, so the
  plugin path cannot be tested on the machines CI has, while ``fully_shard`` runs on CPU;
- diffusers' ``DiTTransformer2DModel`` calls ``transformer_blocks[0].norm1.emb`` after its block loop,
  outside block 0's forward. A per-block wrap policy (accelerate's ``TRANSFORMER_BASED_WRAP``) has already
  resharded block 0 by then and the call fails with "mixed torch.Tensor and DTensor". Which blocks become
  their own unit is therefore the host's ``HostSpec.fsdp_units`` (DiT's block 0 stays in the root group).

Sharded parameters are ``DTensor``s. Checkpoints stay full-size safetensors, identical to single-process
ones: ``gather`` all-gathers before a save (every process must call it), ``load_into`` and
``shard_optimizer_state`` cut a loaded full tensor back into this process's shard.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from ..models.specs import host_spec

SINGLE_PROCESS = ("TrainConfig.fsdp=True needs a multi-process run: start it with "
                  "`accelerate launch --num_processes N ...` (or torchrun)")


def check_launch() -> None:
    """Fail before any model loads when FSDP is asked for in a single process (``WORLD_SIZE`` is set by
    accelerate launch and torchrun)."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        raise ValueError(SINGLE_PROCESS)


def shard_transformer(transformer: nn.Module) -> None:
    """Shard ``transformer`` in place: one FSDP unit per block (``HostSpec.fsdp_units``), the rest (embeddings,
    final layer) in the root."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        raise ValueError(SINGLE_PROCESS)
    try:
        spec = host_spec(transformer)
    except TypeError as err:
        raise ValueError(f"TrainConfig.fsdp=True: {err}") from None
    for block in spec.fsdp_units(transformer):
        fully_shard(block)
    fully_shard(transformer)


def is_sharded(params) -> bool:
    return any(isinstance(p, DTensor) for p in params)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (an all-gather for a sharded one; collective: every process must call it)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def gather(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full, detached copies of ``tensors`` in a fixed order (the same collectives on every process)."""
    return {name: full_tensor(t.detach()) for name, t in tensors.items()}


def gather_optimizer_state(state: dict) -> dict:
    """``optimizer.state_dict()`` with every sharded state tensor (AdamW moments) gathered to full size."""
    per_param = {i: {k: full_tensor(v) if torch.is_tensor(v) else v for k, v in s.items()}
                 for i, s in sorted(state["state"].items())}
    return {"state": per_param, "param_groups": state["param_groups"]}


def load_into(params: dict[str, nn.Parameter], tensors: dict[str, torch.Tensor]) -> None:
    """Copy full tensors into (possibly sharded) parameters of the same name."""
    with torch.no_grad():
        for name, p in params.items():
            value = tensors[name].to(dtype=p.dtype, device=p.device)
            if isinstance(p, DTensor):
                value = distribute_tensor(value, p.device_mesh, p.placements)
            p.copy_(value)


def shard_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict`` of a full-size state: cut each parameter-shaped state tensor into the
    parameter's shard (torch's loader casts values to the parameter's dtype and device, not its sharding)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not isinstance(p, DTensor):
                continue
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if torch.is_tensor(value) and not isinstance(value, DTensor) and value.shape == p.shape:
                    state[key] = distribute_tensor(value.to(p.device), p.device_mesh, p.placements)
