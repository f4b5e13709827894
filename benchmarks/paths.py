"""The dispatch paths compared by ``benchmarks/dispatch.py``: the core's, its peers and experimental variants.

Every path maps a ``Case`` (tokens ``x`` (n, D), routes ``idx`` (n,), one-hot routing weights ``w`` (n, M))
to the Q/K/V updates, (3, n, D) in token order (peft and base+sorted return the full projections
``(q, k, v)``; the ``attn-order`` variant returns its output in sorted order plus one un-permuted (n, D)
slice). ``tests/test_benchmarks_numerics.py`` holds every path equal to the dense reference.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from torch import Tensor, nn

from thinkpix.core.experts import ExpertBank

Output = Tensor | tuple[Tensor, ...]


class QKV(nn.Module):
    """Three frozen projections ``to_q/to_k/to_v`` (D -> D, with bias) as in DiT's and SD3's attention."""

    def __init__(self, dim: int):
        super().__init__()
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.to_q(x), self.to_k(x), self.to_v(x)


@dataclass
class Case:
    """Inputs and modules of one benchmark shape (one bank of M experts)."""

    bank: ExpertBank
    x: Tensor  # (n, D), requires grad: upstream layers (and earlier latent steps) need dL/dx
    idx: Tensor  # (n,) long
    w: Tensor  # (n, M) one-hot, requires grad: the gate's straight-through weights
    single_a: Tensor  # (D, 3r): one plain LoRA, A of Q, K and V fused
    single_b: Tensor  # (3, r, D)
    base: QKV  # frozen base projections
    peft: QKV  # the same base projections wrapped by peft's lora.Linear (rank r)


def make_case(x: Tensor, idx: Tensor, num_experts: int, rank: int, seed: int = 0) -> Case:
    """Build a ``Case`` with random (non-zero) LoRA B so that every path does real arithmetic."""
    g = torch.Generator().manual_seed(seed)
    dim = x.shape[-1]
    bank = ExpertBank(num_experts, dim, dim, rank, scaling=1.0)
    with torch.no_grad():
        bank.lora_B.normal_(0.0, 0.02, generator=g)
    single_a = (torch.rand(dim, 3 * rank, generator=g) * 2 - 1).div_(dim**0.5).requires_grad_()
    single_b = torch.randn(3, rank, dim, generator=g).mul_(0.02).requires_grad_()
    torch.manual_seed(seed)
    base = QKV(dim).requires_grad_(False)
    lora = LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False)
    peft = inject_adapter_in_model(lora, copy.deepcopy(base))
    for name, p in peft.named_parameters():
        p.requires_grad_("lora_" in name)
    w = F.one_hot(idx, num_experts).float().requires_grad_()
    return Case(bank, x, idx, w, single_a, single_b, base, peft)


def trainable(case: Case, path: str) -> list[Tensor]:
    """The tensors whose gradients a training step of ``path`` computes."""
    if path == "single":
        return [case.x, case.single_a, case.single_b]
    if path == "peft":
        return [case.x, *(p for p in case.peft.parameters() if p.requires_grad)]
    return [case.x, case.w, case.bank.lora_A, case.bank.lora_B]


# -- the core and its peers ------------------------------------------------------------------------------
def sorted_path(c: Case) -> Tensor:
    """The core: ``ExpertBank(dispatch="sorted")``."""
    return c.bank(c.x, c.idx, c.w, "sorted")


def grouped_path(c: Case) -> Tensor:
    """The core's compile-friendly path: ``ExpertBank(dispatch="grouped")`` (static shapes, no host read)."""
    return c.bank(c.x, c.idx, c.w, "grouped")


def dense_path(c: Case) -> Tensor:
    """The core's reference: ``ExpertBank(dispatch="dense")``, every expert on every token."""
    return c.bank(c.x, c.idx, c.w, "dense")


def lora(x: Tensor, w: Tensor, a: Tensor, b: Tensor, scaling: float) -> Tensor:
    """One LoRA on Q/K/V: (n, D) with A (D, 3r), B (3, r, D) -> (3, n, D); ``w`` (n,) weighs the small side."""
    h = (x @ a) * (w * scaling)[:, None]
    return torch.bmm(h.view(-1, 3, b.shape[1]).transpose(0, 1), b)


def expert(bank: ExpertBank, m: int, x: Tensor, w: Tensor) -> Tensor:
    """Expert m on some tokens, (n_m, D) -> (3, n_m, D): the same arithmetic as the core's segment."""
    return lora(x, w, bank.lora_A[m], bank.lora_B[m], bank.scaling)


def selected_weight(c: Case) -> Tensor:
    return c.w.gather(1, c.idx[:, None]).squeeze(1)


def loop_path(c: Case) -> Tensor:
    """Peer: a Python loop over experts with boolean masks, results put back with masked assignment."""
    w = selected_weight(c)
    out = c.x.new_zeros(3, c.x.shape[0], c.bank.out_features)
    for m in range(c.bank.num_experts):
        mask = c.idx == m
        if bool(mask.any()):
            out[:, mask] = expert(c.bank, m, c.x[mask], w[mask])
    return out


def sort_tokens(idx: Tensor, num_experts: int) -> tuple[list[int], Tensor, Tensor]:
    """Counts per expert, the stable sorting permutation and its inverse."""
    counts = torch.bincount(idx, minlength=num_experts).tolist()
    order = torch.argsort(idx, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return counts, order, inverse


def grouped_mm_path(c: Case) -> Tensor:
    """Peer: sorted tokens and ``torch.nn.functional.grouped_mm`` (one call for A, one per projection for B)."""
    bank, n = c.bank, c.x.shape[0]
    counts, order, inverse = sort_tokens(c.idx, bank.num_experts)
    offs = torch.tensor(counts).cumsum(0).to(torch.int32)
    ws = selected_weight(c).index_select(0, order) * bank.scaling
    h = F.grouped_mm(c.x.index_select(0, order), bank.lora_A, offs=offs) * ws[:, None]
    h = h.view(n, 3, bank.rank)
    ys = torch.stack([F.grouped_mm(h[:, j], bank.lora_B[:, j], offs=offs) for j in range(3)])
    return ys.index_select(1, inverse)


def single_path(c: Case) -> Tensor:
    """Reference cost: one plain LoRA on Q/K/V of the same shape, ``x @ A (D, 3r)`` then one B per projection."""
    h = (c.x @ c.single_a) * c.bank.scaling
    return torch.bmm(h.view(-1, 3, c.bank.rank).transpose(0, 1), c.single_b)


def peft_path(c: Case) -> tuple[Tensor, Tensor, Tensor]:
    """peft's ``lora.Linear`` on to_q/to_k/to_v: base matmul plus one LoRA each (full projections)."""
    return c.peft(c.x)


def base_sorted_path(c: Case) -> tuple[Tensor, Tensor, Tensor]:
    """What peft's number is comparable to: the frozen base projections plus the core's sorted updates."""
    q, k, v = c.base(c.x)
    d = sorted_path(c)
    return q + d[0], k + d[1], v + d[2]


# -- the previous core and experimental variants ----------------------------------------------------------
def sorted_v0_path(c: Case) -> Tensor:
    """The core's sorted path before issue 10, for reference: ``lora_A[m]`` per expert, ``torch.cat`` and
    ``index_select`` both ways (zero-filled buffers + ``index_add_`` in backward)."""
    bank, w = c.bank, selected_weight(c)
    counts, order, inverse = sort_tokens(c.idx, bank.num_experts)
    busy = [m for m, count in enumerate(counts) if count]
    if len(busy) == 1:
        return expert(bank, busy[0], c.x, w)
    xs, ws = c.x.index_select(0, order), w.index_select(0, order)
    pieces = [expert(bank, m, xm, wm) for m, xm, wm in zip(range(bank.num_experts), xs.split(counts), ws.split(counts))
              if counts[m]]
    return torch.cat(pieces, dim=1).index_select(1, inverse)


class Permute(torch.autograd.Function):
    """``t.index_select(dim, perm)`` whose backward is a gather with the inverse permutation."""

    @staticmethod
    def forward(ctx, t: Tensor, dim: int, perm: Tensor, inverse: Tensor) -> Tensor:
        ctx.dim = dim
        ctx.save_for_backward(inverse)
        return t.index_select(dim, perm)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(ctx.dim, inverse), None, None, None


class Unsort(torch.autograd.Function):
    """Write each expert's (3, n_m, D) piece straight to token order; backward is one gather."""

    @staticmethod
    def forward(ctx, order: Tensor, counts: list[int], *pieces: Tensor) -> Tensor:
        ctx.save_for_backward(order)
        ctx.counts = counts
        out = pieces[0].new_empty(3, order.numel(), pieces[0].shape[-1])
        for rows, piece in zip(order.split(counts), pieces):
            out.index_copy_(1, rows, piece)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        (order,) = ctx.saved_tensors
        return None, None, *grad.index_select(1, order).split(ctx.counts, dim=1)


def _one_expert(c: Case) -> Tensor | None:
    """The whole batch through its only busy expert, or None when several experts are busy."""
    busy = torch.bincount(c.idx, minlength=c.bank.num_experts).nonzero().flatten()
    return expert(c.bank, int(busy[0]), c.x, selected_weight(c)) if busy.numel() == 1 else None


def _expert_pieces(c: Case) -> tuple[list[int], Tensor, Tensor, list[Tensor]]:
    """Tokens sorted by expert (gather backward), factors unbound once, one LoRA per busy segment."""
    bank = c.bank
    counts, order, inverse = sort_tokens(c.idx, bank.num_experts)
    xs, ws = Permute.apply(c.x, 0, order, inverse), selected_weight(c).index_select(0, order)
    pieces = [lora(xm, wm, a, b, bank.scaling)
              for a, b, xm, wm, count in zip(bank.lora_A.unbind(0), bank.lora_B.unbind(0), xs.split(counts),
                                             ws.split(counts), counts)
              if count]
    return counts, order, inverse, pieces


def sorted_v1_path(c: Case) -> Tensor:
    """Variant: the core's sorted path before ``_GroupedLoRA``: autograd ops composed per expert (gather of x
    with a gather backward, factors unbound once, one ``mm`` + ``bmm`` per busy expert, ``Unsort``)."""
    one = _one_expert(c)
    if one is not None:
        return one
    counts, order, inverse, pieces = _expert_pieces(c)
    return Unsort.apply(order, [count for count in counts if count], *pieces)


def attn_order_path(c: Case) -> tuple[Tensor, Tensor]:
    """Variant (lower bound): leave Q/K/V in sorted order for attention to run there.

    Attention without positional terms is equivariant to a permutation of the tokens, so the layer could
    un-permute only its (n, D) attention output instead of the (3, n, D) updates. Here the pieces are
    concatenated in sorted order and one (n, D) slice is un-permuted, standing in for that attention output.
    """
    one = _one_expert(c)
    if one is not None:
        return one, one[0]
    counts, order, inverse, pieces = _expert_pieces(c)
    ys = torch.cat(pieces, dim=1)
    return ys, Permute.apply(ys[0], 0, inverse, order)


PATHS: dict[str, Callable[[Case], Output]] = {
    "single": single_path,
    "sorted": sorted_path,
    "grouped": grouped_path,
    "dense": dense_path,
    "loop": loop_path,
    "grouped_mm": grouped_mm_path,
    "peft": peft_path,
    "base+sorted": base_sorted_path,
    "sorted-v0": sorted_v0_path,
    "sorted-v1": sorted_v1_path,
    "attn-order": attn_order_path,
}
VARIANTS = ("sorted-v0", "sorted-v1", "attn-order")
ROUTING_FREE = ("single", "dense", "peft")  # cost independent of the routing
