"""Shared test fixtures: a small hand-written joint-attention host for the host-agnostic core."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn


class TinyJointHost(nn.Module):
    """An MMDiT-style joint attention written out by hand (vision + text), for testing the core.

    ``plain(x, c)`` is the ordinary (non-recursive) attention; ``base_qkv``/``attend_fn`` are what a
    host hands to ``RecursiveSparseReasoning``.
    """

    def __init__(self, dim: int = 32, heads: int = 4, with_text: bool = True):
        super().__init__()
        self.dim, self.heads = dim, heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.with_text = with_text
        if with_text:
            self.add_q, self.add_k, self.add_v = (nn.Linear(dim, dim) for _ in range(3))
        self.alpha = nn.Parameter(1 + 0.1 * torch.randn(dim))
        self.beta = nn.Parameter(0.1 * torch.randn(dim))

    def modulate(self, h: torch.Tensor) -> torch.Tensor:
        return self.alpha * F.layer_norm(h, (self.dim,), eps=1e-6) + self.beta

    def base_qkv(self, x):
        return self.to_q(x), self.to_k(x), self.to_v(x)

    def _heads(self, t):
        b, n, _ = t.shape
        return t.view(b, n, self.heads, -1).transpose(1, 2)

    def attend_fn(self, c):
        text = (self.add_q(c), self.add_k(c), self.add_v(c)) if self.with_text else None

        def attend(q, k, v, vision_only=False):  # vision_only: vision queries, keys and values of all tokens
            n = q.shape[1]
            if text is not None:
                k, v = (torch.cat([a, b], dim=1) for a, b in zip((k, v), text[1:]))
                q = q if vision_only else torch.cat([q, text[0]], dim=1)
            out = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
            out = out.transpose(1, 2).flatten(2)
            return out[:, :n], (out[:, n:] if text is not None and not vision_only else None)

        return attend

    def plain(self, x, c):
        return self.attend_fn(c)(*self.base_qkv(x))


@pytest.fixture
def host():
    torch.manual_seed(0)
    return TinyJointHost()


@pytest.fixture
def tokens():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 32, generator=g)
    c = torch.randn(2, 5, 32, generator=g)
    y = torch.randn(2, 32, generator=g)
    return x, c, y
