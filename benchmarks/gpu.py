"""RSR on one GPU: eager against torch.compile, ratios and peak memory, at SD3-medium and DiT-XL/2 shapes (issue 21).

    python benchmarks/gpu.py                     # about 5 minutes on one recent GPU; writes docs/results/gpu.md
    python benchmarks/gpu.py --smoke --out /tmp/gpu.md   # tiny models on CPU (what the test suite runs)

Random weights (nothing is downloaded), bf16. Per model: base (trained in full), peft LoRA, RSR M=2 T=2 and
RSR M=5 T=5 on block 12, each on its own copy, forward and training step, eager and
``torch.compile(fullgraph=True)``, timed side by side (``benchmarks/compile_rows.py``), with the peak memory
of one call (``torch.cuda.max_memory_allocated``). Then the expert dispatch alone at DiT-XL/2 width,
``grouped`` (the compile-friendly path: ``grouped_mm`` with device-side offsets in bf16 on CUDA) against
``sorted`` (reads the group sizes to the host) for M = 2..8, eager and compiled, forward and backward.
Needs only the repository and the environment of ``make test``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel, SD3Transformer2DModel

from benchmarks.common import command_line
from benchmarks.compile_rows import MODES, VARIANTS, Host, build_variants, compile_all, measure, step, table
from benchmarks.overhead import DIT_XL_2 as DIT_XL
from benchmarks.overhead import SD3_MEDIUM
from thinkpix.core import dispatch
from thinkpix.core.experts import ExpertBank

# the smoke mode: the same classes at test size
DIT_TINY = dict(DIT_XL, num_attention_heads=2, attention_head_dim=8, num_layers=2, sample_size=8)
SD3_TINY = dict(SD3_MEDIUM, sample_size=16, num_layers=2, attention_head_dim=8, num_attention_heads=2,
                joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32, pos_embed_max_size=16)


def dit(config: dict, batch: int, layer: int, rank: int) -> Host:
    size = config["sample_size"]

    def inputs(device, dtype):
        return dict(hidden_states=torch.randn(batch, 4, size, size, device=device, dtype=dtype),
                    timestep=torch.full((batch,), 500, device=device), class_labels=torch.arange(batch, device=device))

    width = config["num_attention_heads"] * config["attention_head_dim"]
    return Host(f"DiTTransformer2DModel, D={width}, {config['num_layers']} blocks, {(size // 2) ** 2} tokens, "
                f"batch {batch}", lambda: DiTTransformer2DModel(**config), inputs, layer, rank, "attn1")


def sd3(config: dict, batch: int, text: int, layer: int, rank: int) -> Host:
    size = config["sample_size"]

    def inputs(device, dtype):
        return dict(hidden_states=torch.randn(batch, config["in_channels"], size, size, device=device, dtype=dtype),
                    encoder_hidden_states=torch.randn(batch, text, config["joint_attention_dim"], device=device,
                                                      dtype=dtype),
                    pooled_projections=torch.randn(batch, config["pooled_projection_dim"], device=device, dtype=dtype),
                    timestep=torch.full((batch,), 500.0, device=device))

    width = config["num_attention_heads"] * config["attention_head_dim"]
    return Host(f"SD3Transformer2DModel, D={width}, {config['num_layers']} blocks, {(size // 2) ** 2} + {text} "
                f"tokens, batch {batch}", lambda: SD3Transformer2DModel(**config), inputs, layer, rank, "attn")


def make_timer(device: torch.device, repeats: int):
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timer(fn) -> float:
        fn()
        sync()
        started = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
        return (time.perf_counter() - started) / repeats
    return sync, timer


def peak_memory(variants, inputs, device) -> dict:
    memory = {}
    for v in variants:
        for mode in MODES:
            for compiled in (False, True):
                fn = step(v, v.compiled if compiled else v.model, inputs, mode)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                fn()
                memory[(v.name, mode, compiled)] = (torch.cuda.max_memory_allocated(device) / 2**30
                                                    if device.type == "cuda" else float("nan"))
    return memory


def host_section(host: Host, device, dtype, rounds: int, repeats: int, names, backend: str) -> list[str]:
    variants = build_variants(host, device, dtype, names)
    inputs = host.inputs(device, dtype)
    sync, timer = make_timer(device, repeats)
    diffs = compile_all(variants, inputs, sync, backend)
    memory = peak_memory(variants, inputs, device)
    times = measure(variants, inputs, rounds, timer)
    lines = [f"### {host.name}", "", f"Adapters on block {host.layer}, rank {host.rank}.", "",
             *table(variants, times, diffs, memory), ""]
    del variants
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return lines


def dispatch_section(device, dtype, tokens: int, dim: int, rank: int, experts: list[int], rounds: int,
                     repeats: int, backend: str) -> list[str]:
    """grouped against sorted, forward + backward of the bank alone, for M in ``experts``."""
    sync, timer = make_timer(device, repeats)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(tokens, dim, generator=g).to(device, dtype).requires_grad_()
    grad = torch.randn(3, tokens, dim, generator=g).to(device, dtype)
    rows, check = {}, {}
    for m in experts:
        bank = ExpertBank(m, dim, dim, rank, 1.0).to(device, dtype)
        torch.nn.init.normal_(bank.lora_B, std=0.02)
        idx = torch.randint(m, (tokens,), generator=g).to(device)
        w = F.one_hot(idx, m).to(dtype).requires_grad_()

        def run(name, bank=bank, idx=idx, w=w):
            def fwd_bwd():
                out = bank(x, idx, w, name)
                torch.autograd.grad(out, [x, w, bank.lora_A, bank.lora_B], grad)
            return fwd_bwd
        compiled = torch.compile(lambda b, i, ww: b(x, i, ww, "grouped"), fullgraph=True, backend=backend)

        def run_compiled(bank=bank, idx=idx, w=w, compiled=compiled):
            out = compiled(bank, idx, w)
            torch.autograd.grad(out, [x, w, bank.lora_A, bank.lora_B], grad)
        rows[m] = {"sorted": run("sorted"), "grouped": run("grouped"), "grouped, compiled": run_compiled}
        check[m] = (bank(x, idx, w, "grouped").float() - bank(x, idx, w, "sorted").float()).abs().max().item()
        check[f"{m} formulation"] = dispatch.grouped_formulation(x, m, rank, dim)
        run_compiled()
    times = {(m, k): [] for m in rows for k in rows[m]}
    for _ in range(rounds):
        for m in rows:
            for k, fn in rows[m].items():
                times[(m, k)].append(timer(fn))
    lines = ["| M | grouped formulation | max abs(grouped - sorted) | sorted ms | grouped / sorted | "
             "grouped compiled / sorted | grouped: M / M=2 | grouped compiled: M / M=2 |", "|" + "---|" * 8]
    first = experts[0]
    for m in rows:
        def med(k, mm=m):
            return statistics.median(times[(mm, k)])
        lines.append(f"| {m} | {check[f'{m} formulation']} | {check[m]:.1e} | {1e3 * med('sorted'):.2f} | "
                     f"{med('grouped') / med('sorted'):.3f} | {med('grouped, compiled') / med('sorted'):.3f} | "
                     f"{med('grouped') / med('grouped', first):.3f} | "
                     f"{med('grouped, compiled') / med('grouped, compiled', first):.3f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny models on CPU in fp32 (aot_eager backend): a test")
    p.add_argument("--out", type=Path, default=Path("docs/results/gpu.md"))
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--models", nargs="+", choices=("dit-xl-2", "sd3-medium"), default=["dit-xl-2", "sd3-medium"])
    args = p.parse_args(argv)
    smoke = args.smoke
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); "
                         "use --smoke for the CPU check")
    device = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.bfloat16
    rounds, repeats = args.rounds or (1 if smoke else 5), 1 if smoke else 5
    backend = "aot_eager" if smoke else "inductor"
    hosts = {"dit-xl-2": dit(DIT_TINY, 2, 1, 4) if smoke else dit(DIT_XL, 8, 12, 128),
             "sd3-medium": sd3(SD3_TINY, 1, 6, 1, 4) if smoke else sd3(SD3_MEDIUM, 1, 333, 12, 128)}
    names = ("base", "peft LoRA", "RSR M=2 T=2") if smoke else VARIANTS
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke mode)"
    lines = ["# RSR on one GPU: eager against torch.compile (issue 21)", "",
             f"Produced by `{command_line()}` (written by `benchmarks/gpu.py`; rerun to refresh).", "",
             f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}; device: {device_name}; torch {torch.__version__}",
             f"- dtype: {dtype}; random weights; compile: `torch.compile(model, fullgraph=True, backend={backend!r})`",
             f"- timing: {rounds} rounds, {repeats} calls per timed run after one warm call, synchronised; every "
             "(variant, mode, eager/compiled) timed once per round, order rotated; ratios are medians of "
             "within-round ratios. Peak memory: `torch.cuda.max_memory_allocated` of one call after a reset.", "",
             "## Forward and training step", "",
             "Training step: train mode, mean-squared output (+ `aux_loss` for RSR), backward into the trainable "
             "parameters (all of them for the base), no optimizer step.", ""]
    for key in args.models:
        lines += host_section(hosts[key], device, dtype, rounds, repeats, names, backend)
        print(f"{key} done", flush=True)
    lines += ["## Expert dispatch alone: grouped against sorted, forward + backward", "",
              *dispatch_section(device, dtype, 64 if smoke else 8192, 32 if smoke else 1152, 8 if smoke else 128,
                                [2, 4] if smoke else [2, 4, 6, 8], rounds, repeats, backend), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
