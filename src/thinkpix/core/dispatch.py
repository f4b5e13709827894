"""Kernels of the expert dispatch: the sorted segment GEMMs and the compile-friendly ``grouped`` path.

``sorted`` (``SortedLoRA``) reads the group sizes back to the host (``bincount(...).tolist()``) to slice the
sorted tokens: fastest in eager on CPU, but a graph break under ``torch.compile`` and, on a GPU, a
device-to-host sync in every routed step.

``grouped`` (``grouped_lora``) has only static shapes and no host read in the traced program, so
``torch.compile(fullgraph=True)`` captures it. It picks one of three formulations from the (static) shapes:

* ``fused``: every expert's A in one matmul, the other experts' codes masked to zero, every expert's B in
  one ``bmm`` (M x the LoRA work in two launches; no sort, gather or scatter). For small problems, where
  launches and permutations cost more than the arithmetic (``FUSED_MAX_WORK``).
* ``grouped_mm``: stable sort by expert, group offsets cumulated on the device,
  ``torch.nn.functional.grouped_mm`` for A and B: no host read at all. Used on CUDA in bf16/fp16, where
  the kernel exists.
* ``segments``: the sorted segment GEMMs inside one opaque custom op (``thinkpix::segment_lora``, with
  its backward op and a shape-only fake): the compiler sees static shapes; the group sizes are read
  inside the op, which on CPU is no sync (the tensors already live on the host). Everything else (CPU,
  fp32 on CUDA, where ``grouped_mm`` backward and fp32 compile fail in torch 2.13).

All three give the outputs and the gradients of ``sorted`` (the selected expert's term reaches the
gate, Switch-style; ``tests/test_compile.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# ``fused`` only where launches are all there is (test-size models): M x the work grows fast, and already at the
# Shapes host's size (n=1024, D=128, r=16, M=4: 2^25 multiply-adds) it took 1.5x the CPU time of ``segments``
# in eager on one thread (torch 2.13; n=512: 1.45x).
FUSED_MAX_WORK = 2**20
GROUPED_MM_DEVICES = ("cuda",)
GROUPED_MM_DTYPES = (torch.bfloat16, torch.float16)


def sort_by_expert(idx: Tensor, num_experts: int) -> tuple[Tensor, Tensor, list[int]]:
    """The stable sorting permutation of the routes, its inverse and the group sizes (read to the host)."""
    counts = torch.bincount(idx, minlength=num_experts).tolist()
    order = torch.argsort(idx, stable=True)  # one sort, shared by Q, K and V
    return order, inverse_of(order), counts


def inverse_of(order: Tensor) -> Tensor:
    return torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))


def _segments_forward(x: Tensor, w: Tensor, a: Tensor, b: Tensor, order: Tensor, counts: list[int],
                      scaling: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Segment GEMMs of the sorted tokens: one ``mm`` per expert into a shared (n, 3r) buffer, one ``bmm`` per
    expert into a shared (3, n, D_out) buffer, both in expert order. Returns (out, xs, ws, h), out in expert order.

    x (n, D), w (n,) selected routing weight, a (M, D, 3r), b (M, 3, r, D_out), all one dtype.
    """
    n, rank = x.shape[0], b.shape[2]
    with torch.autocast(x.device.type, enabled=False):  # out= matmuls: dtypes are fixed by the caller
        xs, ws = x.index_select(0, order), w.index_select(0, order) * scaling
        h, out = x.new_empty(n, a.shape[2]), x.new_empty(3, n, b.shape[3])
        start = 0
        for m, count in enumerate(counts):
            if count:
                seg = slice(start, start + count)
                torch.mm(xs[seg], a[m], out=h[seg])  # (n_m, 3r)
                hw = (h[seg] * ws[seg, None]).view(count, 3, rank).transpose(0, 1)  # (3, n_m, r)
                torch.bmm(hw, b[m], out=out[:, seg])  # (3, n_m, D_out)
                start += count
    return out, xs, ws, h


def _segments_backward(grad: Tensor, xs: Tensor, ws: Tensor, h: Tensor, a: Tensor, b: Tensor, order: Tensor,
                       counts: list[int], scaling: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``_segments_forward`` (grad in token order): (dx, dw) in expert order, da, db."""
    rank = b.shape[2]
    with torch.autocast(grad.device.type, enabled=False):
        gs = grad.to(h.dtype).index_select(1, order)  # (3, n, D_out) in expert order
        da, db = a.new_empty(a.shape), b.new_empty(b.shape)
        dhw, dxs = h.new_empty(h.shape), xs.new_empty(xs.shape)
        start = 0
        for m, count in enumerate(counts):
            if not count:  # an idle expert gets a zero gradient (one tensor per bank, as DDP expects)
                da[m].zero_()
                db[m].zero_()
                continue
            seg = slice(start, start + count)
            start += count
            hw = (h[seg] * ws[seg, None]).view(count, 3, rank).transpose(0, 1)  # (3, n_m, r), recomputed
            torch.bmm(hw.transpose(1, 2), gs[:, seg], out=db[m])
            dhw[seg].view(count, 3, rank).copy_(torch.bmm(gs[:, seg], b[m].transpose(1, 2)).transpose(0, 1))
            dh = dhw[seg] * ws[seg, None]
            torch.mm(xs[seg].t(), dh, out=da[m])
            torch.mm(dh, a[m].t(), out=dxs[seg])
        dws = (dhw * h).sum(1).mul_(scaling)  # d out / d w: the gate's gradient
    return dxs, dws, da, db


class SortedLoRA(torch.autograd.Function):
    """The sorted dispatch as one autograd node (segment GEMMs in the style of Punica / S-LoRA).

    Forward: gather x into expert order, segment GEMMs into shared buffers, one gather back to token order.
    Backward: one gather of the output gradient, then per expert ``mm``/``bmm`` with ``out=`` into one gradient
    buffer per parameter. Compared with composing autograd ops per expert (the previous core, kept as
    ``sorted-v1`` in ``benchmarks/paths.py``) this has no per-expert autograd nodes and no ``unbind`` backward
    stacking M expert gradients, which is what kept M=8 within 1.15x of M=2 on short segments
    (``docs/results/dispatch*.md``).
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, a: Tensor, b: Tensor, order: Tensor, inverse: Tensor,
                counts: list[int], scaling: float) -> Tensor:
        out, xs, ws, h = _segments_forward(x, w, a, b, order, counts, scaling)
        ctx.save_for_backward(xs, ws, h, a, b, order, inverse)
        ctx.counts, ctx.scaling = counts, scaling
        return out.index_select(1, inverse)  # to token order

    @staticmethod
    def backward(ctx, grad: Tensor):
        xs, ws, h, a, b, order, inverse = ctx.saved_tensors
        dxs, dws, da, db = _segments_backward(grad, xs, ws, h, a, b, order, ctx.counts, ctx.scaling)
        return dxs.index_select(0, inverse), dws.index_select(0, inverse), da, db, None, None, None, None


# -- grouped: static shapes ----------------------------------------------------------------------------
@torch.library.custom_op("thinkpix::segment_lora", mutates_args=())
def segment_lora(x: Tensor, idx: Tensor, w: Tensor, a: Tensor, b: Tensor, scaling: float
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Sorted segment GEMMs as one op: (out (3, n, D_out) in token order, h (n, 3r) and order, for backward)."""
    order, inverse, counts = sort_by_expert(idx, a.shape[0])
    out, _, _, h = _segments_forward(x, w, a, b, order, counts, scaling)
    return out.index_select(1, inverse), h, order


@segment_lora.register_fake
def _(x, idx, w, a, b, scaling):
    n = x.shape[0]
    return x.new_empty(3, n, b.shape[3]), x.new_empty(n, a.shape[2]), idx.new_empty(n)


@torch.library.custom_op("thinkpix::segment_lora_backward", mutates_args=())
def segment_lora_backward(grad: Tensor, x: Tensor, idx: Tensor, w: Tensor, a: Tensor, b: Tensor, h: Tensor,
                          order: Tensor, scaling: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    counts = torch.bincount(idx, minlength=a.shape[0]).tolist()
    inverse = inverse_of(order)
    xs, ws = x.index_select(0, order), w.index_select(0, order) * scaling
    dxs, dws, da, db = _segments_backward(grad, xs, ws, h, a, b, order, counts, scaling)
    return dxs.index_select(0, inverse), dws.index_select(0, inverse), da, db


@segment_lora_backward.register_fake
def _(grad, x, idx, w, a, b, h, order, scaling):
    return x.new_empty(x.shape), w.new_empty(w.shape), a.new_empty(a.shape), b.new_empty(b.shape)


def _segment_setup(ctx, inputs, output) -> None:
    x, idx, w, a, b, scaling = inputs
    ctx.save_for_backward(x, idx, w, a, b, output[1], output[2])
    ctx.scaling = scaling


def _segment_backward(ctx, grad, _grad_h, _grad_order):
    x, idx, w, a, b, h, order = ctx.saved_tensors
    dx, dw, da, db = segment_lora_backward(grad.contiguous(), x, idx, w, a, b, h, order, ctx.scaling)
    return dx, None, dw, da, db, None


segment_lora.register_autograd(_segment_backward, setup_context=_segment_setup)


def fused_lora(x: Tensor, idx: Tensor, w: Tensor, a: Tensor, b: Tensor, scaling: float) -> Tensor:
    """Every expert's A in one ``mm``, codes of the unselected experts zeroed, every expert's B in one ``bmm``."""
    (n, dim), (m, _, three_r), rank = x.shape, a.shape, b.shape[2]
    h = torch.mm(x, a.permute(1, 0, 2).reshape(dim, m * three_r)).view(n, m, three_r)  # (n, M, 3r)
    # only the selected expert's code survives, weighted by its routing weight w (the gate's gradient path)
    select = F.one_hot(idx, m).to(x.dtype) * (w * scaling)[:, None]  # (n, M)
    h = (h * select[..., None]).view(n, m, 3, rank).permute(2, 0, 1, 3).reshape(3, n, m * rank)
    return torch.bmm(h, b.permute(1, 0, 2, 3).reshape(3, m * rank, b.shape[3]))  # (3, n, D_out)


def grouped_mm_lora(x: Tensor, idx: Tensor, w: Tensor, a: Tensor, b: Tensor, scaling: float) -> Tensor:
    """Sort by expert, offsets cumulated on the device, ``grouped_mm`` for A and for each of B_q, B_k, B_v."""
    n, m, rank = x.shape[0], a.shape[0], b.shape[2]
    order = torch.argsort(idx, stable=True)
    offs = F.one_hot(idx, m).sum(0).cumsum(0).to(torch.int32)  # group ends, never read by the host
    ws = w.index_select(0, order) * scaling
    h = (F.grouped_mm(x.index_select(0, order), a, offs=offs) * ws[:, None]).view(n, 3, rank)
    out = torch.stack([F.grouped_mm(h[:, j].contiguous(), b[:, j], offs=offs) for j in range(3)])
    return out.index_select(1, inverse_of(order))  # (3, n, D_out) in token order


def grouped_formulation(x: Tensor, num_experts: int, rank: int, out_features: int) -> str:
    """Which formulation ``grouped_lora`` runs for these (static) shapes, device and dtype."""
    if num_experts * x.shape[0] * 3 * rank * (x.shape[1] + out_features) <= FUSED_MAX_WORK:
        return "fused"
    aligned = all(size * x.element_size() % 16 == 0 for size in (x.shape[1], rank, out_features))  # its strides
    if x.device.type in GROUPED_MM_DEVICES and x.dtype in GROUPED_MM_DTYPES and aligned and hasattr(F, "grouped_mm"):
        return "grouped_mm"
    return "segments"


GROUPED = {"fused": fused_lora, "grouped_mm": grouped_mm_lora,
           "segments": lambda x, idx, w, a, b, scaling: segment_lora(x, idx, w, a, b, scaling)[0]}


def grouped_lora(x: Tensor, idx: Tensor, w: Tensor, a: Tensor, b: Tensor, scaling: float,
                 formulation: str | None = None) -> Tensor:
    """The ``grouped`` dispatch: (3, n, D_out) updates of x (n, D) by the experts ``idx`` with weights w (n,)."""
    formulation = formulation or grouped_formulation(x, a.shape[0], b.shape[2], b.shape[3])
    return GROUPED[formulation](x, idx, w, a, b, scaling)
