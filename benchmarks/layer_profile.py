"""Where the time of one RSR attention layer goes: torch.profiler per-op table, forward + backward.

    python benchmarks/layer_profile.py                       # DiT-XL/2 layer: N=256, D=1152, 16 heads, M=5, T=5
    python benchmarks/layer_profile.py --tokens 8192 --experts 8 --steps 2

The layer is ``thinkpix.RecursiveSparseReasoning`` on a hand-written self-attention host (frozen Q/K/V, SDPA,
the block's LN modulation), in training mode, next to the same host with one plain LoRA (rank r) on Q/K/V.
Prints self CPU time per op (ms per iteration) for both and their difference. The profiler's op times are wall
time of the thread: on a shared machine they include what other jobs take. ``--breakdown`` instead times the
pieces of the eval forward (gate, experts, attention, ...) on the process CPU-time clock, next to one plain LoRA
of the same shape; run it with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736`` to see what glibc's
returning and re-faulting of freed buffers costs (``docs/results/compile_summary.md``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from thinkpix import RecursiveSparseReasoning, RSRConfig


class Host(nn.Module):
    """Frozen self-attention pieces of a DiT block: Q/K/V projections, SDPA, adaLN-style modulation."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.ModuleList(nn.Linear(dim, dim) for _ in range(3)).requires_grad_(False)
        self.shift, self.scale = torch.randn(1, 1, dim) * 0.1, torch.randn(1, 1, dim) * 0.1

    def base_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.qkv[0](x), self.qkv[1](x), self.qkv[2](x)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, vision_only: bool = False) -> tuple[Tensor, None]:
        b, n, d = q.shape
        q, k, v = (t.view(b, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d), None

    def modulate(self, h: Tensor) -> Tensor:
        return F.layer_norm(h, h.shape[-1:]) * (1 + self.scale) + self.shift


def profile(fn, iters: int) -> dict[str, float]:
    fn()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            fn()
    return {e.key: e.self_cpu_time_total / 1e3 / iters for e in prof.key_averages()}


def breakdown(rsr: RecursiveSparseReasoning, host: Host, x: Tensor, y: Tensor, lora, iters: int) -> None:
    """CPU time (ms per forward) of each piece of the eval forward, each piece's callable wrapped with a clock."""
    spent = Counter()

    def clocked(name, fn):
        def call(*args, **kwargs):
            started = time.process_time()
            result = fn(*args, **kwargs)
            spent[name] += time.process_time() - started
            return result
        return call

    gate, experts = rsr.gate.forward, rsr.experts.forward
    rsr.gate.forward, rsr.experts.forward = clocked("gate", gate), clocked("experts (all steps)", experts)
    rsr.gate.context = clocked("gate context (step embedding)", rsr.gate.context)
    pieces = (clocked("base_qkv (final step)", host.base_qkv), clocked("attend (all steps)", host.attend),
              clocked("modulate", host.modulate))
    with torch.no_grad():
        rsr(x, y, *pieces)
        spent.clear()
        started = time.process_time()
        for _ in range(iters):
            rsr(x, y, *pieces)
        total = (time.process_time() - started) / iters
        started = time.process_time()
        for _ in range(iters):
            lora(x)
        plain = (time.process_time() - started) / iters
    del rsr.gate.forward, rsr.experts.forward, rsr.gate.context  # back to the class's methods
    steps = rsr.config.latent_steps
    print(f"eval forward of one RSR layer, CPU ms per forward ({steps} latent steps, {iters} forwards)")
    for name, seconds in spent.most_common():
        print(f"{name:40s} {seconds / iters * 1e3:9.2f}")
    print(f"{'rest (residuals, balance loss, glue)':40s} {(total - sum(spent.values()) / iters) * 1e3:9.2f}")
    print(f"{'total':40s} {total * 1e3:9.2f}")
    label = f"one plain LoRA on Q/K/V, x {steps}"
    print(f"{label:40s} {plain * steps * 1e3:9.2f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--dim", type=int, default=1152)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--rank", type=int, default=128)
    p.add_argument("--experts", type=int, default=5)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--dispatch", choices=("sorted", "dense"), default="sorted")
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--mode", choices=("train", "forward"), default="train",
                   help="train: forward+backward in training mode; forward: eval mode under no_grad")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--breakdown", action="store_true", help="CPU time of the pieces of the eval forward instead")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    host = Host(args.dim, args.heads)
    config = RSRConfig(num_experts=args.experts, latent_steps=args.steps, rank=args.rank, dispatch=args.dispatch)
    train = args.mode == "train"
    rsr = RecursiveSparseReasoning(config, args.dim).train(train)
    rsr.gradient_checkpointing = args.checkpointing
    nn.init.normal_(rsr.experts.lora_B, std=0.02)
    lora_a = (torch.randn(args.dim, 3 * args.rank) * args.dim**-0.5).requires_grad_()
    lora_b = (torch.randn(3, args.rank, args.dim) * 0.02).requires_grad_()
    x = torch.randn(1, args.tokens, args.dim).requires_grad_()
    y = torch.randn(1, args.dim)
    if args.breakdown:
        rsr.eval()

        def lora(x: Tensor) -> Tensor:  # the expert work of one step as one plain LoRA (no routing)
            return torch.bmm((x[0] @ lora_a).view(-1, 3, args.rank).transpose(0, 1), lora_b)

        breakdown(rsr, host, x.detach(), y, lora, args.iters)
        return

    def rsr_step() -> None:
        with torch.set_grad_enabled(train):
            out = rsr(x, y, host.base_qkv, host.attend, host.modulate)
            if train:
                (out.vision.square().mean() + 0.01 * out.balance_loss).backward()

    def lora_step() -> None:
        with torch.set_grad_enabled(train):
            h = (x @ lora_a).view(-1, 3, args.rank).transpose(0, 1)
            d = torch.bmm(h, lora_b).view(3, *x.shape)
            q, k, v = (base + delta for base, delta in zip(host.base_qkv(x), d))
            if train:
                host.attend(q, k, v)[0].square().mean().backward()
            else:
                host.attend(q, k, v)

    ours, plain = profile(rsr_step, args.iters), profile(lora_step, args.iters)
    rows = sorted(((ours.get(k, 0.0) - plain.get(k, 0.0), k) for k in set(ours) | set(plain)), reverse=True)
    extra = ", checkpointing" if args.checkpointing else ""
    print(f"RSR M={args.experts} T={args.steps} ({args.dispatch}{extra}) "
          f"vs one plain LoRA, N={args.tokens}, D={args.dim}, r={args.rank}, {args.threads} thread(s), "
          f"{'forward+backward' if train else 'eval forward'}, self CPU ms per iteration")
    print(f"{'op':60s} {'RSR':>9s} {'LoRA':>9s} {'diff':>9s}")
    for diff, key in rows[: args.top]:
        print(f"{key[:60]:60s} {ours.get(key, 0.0):9.2f} {plain.get(key, 0.0):9.2f} {diff:+9.2f}")
    print(f"{'total':60s} {sum(ours.values()):9.2f} {sum(plain.values()):9.2f} "
          f"{sum(ours.values()) - sum(plain.values()):+9.2f}")


if __name__ == "__main__":
    main()
