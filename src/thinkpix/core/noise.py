"""Seeded draws from a module's own ``torch.Generator`` that ``torch.compile(fullgraph=True)`` can trace.

Dynamo cannot pass a ``torch.Generator`` to a tensor op (a graph break), and inductor's own random numbers
follow another stream than eager's. The gate's Gumbel noise and random routes therefore go through two
opaque custom ops: each looks its owner up by an integer key (a constant in the graph) and draws from the
owner's generator exactly as eager code would, so compiled and eager runs draw the same numbers and the
gate stays reproducible from its seed, on either path.

The ops are tagged ``cudagraph_unsafe``: a CUDA graph would replay one draw forever, so inductor keeps
them outside captured graphs.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Protocol

import torch
from torch import Tensor

_OWNERS: weakref.WeakValueDictionary[int, object] = weakref.WeakValueDictionary()
_KEYS = itertools.count()


class SeededOwner(Protocol):
    def generator(self, device: torch.device) -> torch.Generator: ...


def register(owner: SeededOwner) -> int:
    """A key under which the draws below find ``owner.generator(device)`` (held weakly)."""
    key = next(_KEYS)
    _OWNERS[key] = owner
    return key


def _generator(key: int, device: torch.device) -> torch.Generator:
    return _OWNERS[key].generator(device)


@torch.library.custom_op("thinkpix::exponential", mutates_args=(), tags=(torch.Tag.cudagraph_unsafe,))
def exponential(like: Tensor, key: int) -> Tensor:
    """Exp(1) noise in fp32 with the shape and device of ``like``, from the owner's generator."""
    return torch.empty(like.shape, dtype=torch.float32, device=like.device).exponential_(
        generator=_generator(key, like.device))


@exponential.register_fake
def _(like: Tensor, key: int) -> Tensor:
    return torch.empty(like.shape, dtype=torch.float32, device=like.device)


@torch.library.custom_op("thinkpix::randint", mutates_args=(), tags=(torch.Tag.cudagraph_unsafe,))
def randint(like: Tensor, high: int, key: int) -> Tensor:
    """Uniform integers in [0, high) (long) with the shape and device of ``like``, from the owner's generator."""
    return torch.randint(high, like.shape, generator=_generator(key, like.device), device=like.device)


@randint.register_fake
def _(like: Tensor, high: int, key: int) -> Tensor:
    return torch.empty(like.shape, dtype=torch.long, device=like.device)
