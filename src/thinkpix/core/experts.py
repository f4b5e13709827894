"""`ExpertBank`: M LoRA experts on the vision Q/K/V projections, with per-token hard dispatch.

Each expert m owns A_m^{Q,K,V} (r x D) and B_m^{Q,K,V} (D_out x r) (paper Sec. 3.3: Delta W = B A
on W_Q, W_K, W_V of the vision branch). The three A's of an expert are stored fused as one
(D, 3r) matrix so that a token's low-rank code for Q, K and V comes from one matmul.

Three dispatch paths compute the same function (kernels in ``dispatch.py``):

* ``sorted`` (default): tokens are sorted by expert once per latent step (stable argsort and
  counts, as Punica / S-LoRA / vLLM do for multi-adapter batches), each expert runs one matmul on
  its contiguous segment for Q, K and V together, and the result goes back to token order in one
  gather. Work is that of one LoRA, whatever M is; forward and backward are one autograd node
  (``SortedLoRA``) writing into one buffer per tensor, so no M-fold buffers are allocated
  (measured in ``benchmarks/dispatch.py``).
* ``grouped``: the same outputs and gradients with static shapes and no host read in the traced
  program, for ``torch.compile(fullgraph=True)`` and CUDA graphs. Under ``torch.compile`` a bank
  configured ``sorted`` runs ``grouped`` (``torch.compiler.is_compiling()``), so compiling needs no
  configuration change.
* ``dense``: every expert runs on every token and the outputs are mixed by the routing weights.
  It costs M times as much and is the correctness reference; with the straight-through weights of
  the Gumbel-softmax it also gives the gate the *exact* straight-through gradient (see ``gate.py``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import DISPATCHES
from .dispatch import SortedLoRA, grouped_lora, sort_by_expert


class ExpertBank(nn.Module):
    """M routed LoRA experts producing additive updates for the Q, K and V projections."""

    def __init__(self, num_experts: int, in_features: int, out_features: int, rank: int, scaling: float):
        super().__init__()
        self.num_experts, self.rank, self.scaling = num_experts, rank, scaling
        self.in_features, self.out_features = in_features, out_features
        self.lora_A = nn.Parameter(torch.empty(num_experts, in_features, 3 * rank))  # (M, D, 3r): [A_q|A_k|A_v]^T
        self.lora_B = nn.Parameter(torch.empty(num_experts, 3, rank, out_features))  # (M, 3, r, D_out)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # A as nn.Linear(D, r) is initialised (kaiming-uniform, a=sqrt(5): bound 1/sqrt(D)), B = 0 so that
        # every expert starts as the identity update (Hu et al. 2021, Sec. 4.1; peft does the same).
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.lora_A, -bound, bound)
        nn.init.zeros_(self.lora_B)

    def forward(self, x: Tensor, index: Tensor, weights: Tensor, dispatch: str = "sorted",
                active: Tensor | None = None) -> Tensor:
        """LoRA updates of the selected expert of every token.

        Args:
            x: (B, N, D) step input.
            index: (B, N) chosen expert per token.
            weights: (B, N, M) routing weights; their value is one-hot on ``index`` and they carry the
                gate's straight-through gradient.
            dispatch: ``"sorted"``, ``"grouped"`` or ``"dense"``.
            active: optional (B, N) bool; tokens that are not active (halted) get a zero update and
                cost nothing (under ``torch.compile`` they are computed and zeroed: static shapes).

        Returns:
            (3, B, N, D_out): the updates for Q, K and V, ``scaling * w * B_m A_m x``.
        """
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # (n, D) with n = B*N: tokens of all samples share experts
        idx = index.reshape(-1)
        w = weights.reshape(-1, self.num_experts)
        if active is not None and torch.compiler.is_compiling():
            # static shapes for torch.compile: every row runs, the halted ones get a zero update (the same
            # values; the compute saving of halting is given up, as ``nonzero`` would break the graph)
            out = torch.where(active.reshape(1, -1, 1), self._dispatch(x2, idx, w, dispatch), 0)
        elif active is not None:
            rows = active.reshape(-1).nonzero().squeeze(1)
            out = x2.new_zeros(3, x2.shape[0], self.out_features)
            if rows.numel():
                part = self._dispatch(x2.index_select(0, rows), idx.index_select(0, rows), w.index_select(0, rows),
                                      dispatch)
                out = out.index_copy(1, rows, part)
        else:
            out = self._dispatch(x2, idx, w, dispatch)
        return out.view(3, *lead, self.out_features)

    def _dispatch(self, x2: Tensor, idx: Tensor, w: Tensor, dispatch: str) -> Tensor:
        if dispatch == "sorted" and torch.compiler.is_compiling():
            dispatch = "grouped"  # the sorted path's host read of the group sizes would break the graph
        if dispatch == "sorted":
            return self._sorted(x2, idx, w.gather(1, idx[:, None]).squeeze(1))
        if dispatch == "grouped":
            # the factors in the compute dtype (a no-op in fp32; the cast's backward returns fp32 gradients)
            a, b = self.lora_A.to(x2.dtype), self.lora_B.to(x2.dtype)
            return grouped_lora(x2, idx, w.gather(1, idx[:, None]).squeeze(1).to(x2.dtype), a, b, self.scaling)
        if dispatch == "dense":
            return self._dense(x2, w)
        raise ValueError(f"dispatch={dispatch!r} is invalid: allowed values are {DISPATCHES}")

    def _segment(self, a: Tensor, b: Tensor, x: Tensor, w: Tensor) -> Tensor:
        """One expert (A (D, 3r), B (3, r, D_out)) on a segment of tokens: (n_m, D) -> (3, n_m, D_out)."""
        h = (x @ a.to(x.dtype)) * (w * self.scaling).to(x.dtype)[:, None]  # (n_m, 3r); weight on the small side
        h = h.view(-1, 3, self.rank).transpose(0, 1)  # (3, n_m, r)
        return torch.bmm(h, b.to(h.dtype))  # (3, n_m, D_out)

    def _sorted(self, x: Tensor, idx: Tensor, w: Tensor) -> Tensor:
        order, inverse, counts = sort_by_expert(idx, self.num_experts)
        busy = [m for m, c in enumerate(counts) if c]
        if len(busy) == 1:  # all tokens on one expert: nothing to sort
            return self._segment(self.lora_A[busy[0]], self.lora_B[busy[0]], x, w)
        # the factors in the compute dtype (a no-op in fp32; the cast's backward returns fp32 gradients)
        a, b = self.lora_A.to(x.dtype), self.lora_B.to(x.dtype)
        return SortedLoRA.apply(x, w.to(x.dtype), a, b, order, inverse, counts, self.scaling)  # (3, n, D_out)

    def _dense(self, x: Tensor, w: Tensor) -> Tensor:
        h = torch.einsum("nd,mdk->mnk", x, self.lora_A.to(x.dtype))  # (M, n, 3r): every expert on every token
        h = h * (w.t() * self.scaling).to(h.dtype)[..., None]  # mask by the routing weights
        h = h.view(self.num_experts, -1, 3, self.rank)
        return torch.einsum("mnjr,mjro->jno", h, self.lora_B.to(h.dtype))  # (3, n, D_out)

    def expert_weights(self, m: int) -> dict[str, tuple[Tensor, Tensor]]:
        """Expert m as plain LoRA factors per projection: ``{"q": (A (r, D), B (D_out, r)), ...}``."""
        a, r = self.lora_A[m].detach(), self.rank
        return {
            name: (a[:, j * r : (j + 1) * r].t().contiguous(), self.lora_B[m, j].detach().t().contiguous())
            for j, name in enumerate(("q", "k", "v"))
        }

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, in={self.in_features}, out={self.out_features}, rank={self.rank}"
