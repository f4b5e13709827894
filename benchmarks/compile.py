"""Eager against ``torch.compile(fullgraph=True)`` on CPU, and RSR's sampling cost on the Shapes base (issue 21).

    python benchmarks/compile.py                 # both sections, writes docs/results/compile.md
    python benchmarks/compile.py --quick         # fewer rounds, a smaller DiT

Section 1 (``compile_rows``): base, peft LoRA, RSR M=2 T=2 and RSR M=5 T=5 on one layer of a DiT and of
the Shapes SD3 architecture (random weights, fp32, one thread), forward and training step, eager and
compiled (inductor), side by side; ratios only. Section 2: sampling the shipped ``shapes-t2i`` pipeline
(8 training prompts, 20 steps) with and without RSR M=4 T=5 on its middle layer (random experts), eager
and with the transformer compiled, rows interleaved in one process (CPU time of one thread, minimum of
rounds), each as a ratio to the base of the same mode.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from diffusers import DiTTransformer2DModel, SD3Transformer2DModel

from benchmarks.common import allocator_name, command_line, machine_facts, time_runs
from benchmarks.compile_rows import Host, build_variants, compile_all, measure, table

SHAPES_CONFIG = dict(attention_head_dim=64, caption_projection_dim=128, in_channels=3, joint_attention_dim=64,
                     num_attention_heads=2, num_layers=8, out_channels=3, patch_size=4, pooled_projection_dim=64,
                     pos_embed_max_size=8, sample_size=32)  # src/thinkpix/assets/shapes-t2i/transformer


def dit_host(width_heads: int, layers: int, batch: int) -> Host:
    config = dict(num_attention_heads=width_heads, attention_head_dim=64, in_channels=4, out_channels=8,
                  num_layers=layers, sample_size=32, patch_size=2, num_embeds_ada_norm=1000)

    def inputs(device, dtype):
        g = torch.Generator().manual_seed(0)
        return dict(hidden_states=torch.randn(batch, 4, 32, 32, generator=g).to(device, dtype),
                    timestep=torch.tensor([500] * batch, device=device),
                    class_labels=torch.arange(batch, device=device))

    return Host(f"DiT, D={64 * width_heads}, {layers} blocks, 256 tokens, batch {batch}",
                lambda: DiTTransformer2DModel(**config), inputs, layers // 2, 32, "attn1")


def shapes_host(batch: int) -> Host:
    def inputs(device, dtype):
        g = torch.Generator().manual_seed(0)
        return dict(hidden_states=torch.randn(batch, 3, 32, 32, generator=g).to(device, dtype),
                    encoder_hidden_states=torch.randn(batch, 32, 64, generator=g).to(device, dtype),
                    pooled_projections=torch.randn(batch, 64, generator=g).to(device, dtype),
                    timestep=torch.full((batch,), 500.0, device=device))

    return Host(f"Shapes SD3 architecture (D=128, 8 blocks, 64 + 32 tokens), batch {batch}",
                lambda: SD3Transformer2DModel(**SHAPES_CONFIG), inputs, 4, 16, "attn")


def host_section(host: Host, rounds: int, min_run_time: float) -> list[str]:
    device, dtype = torch.device("cpu"), torch.float32
    variants = build_variants(host, device, dtype)
    inputs = host.inputs(device, dtype)
    diffs = compile_all(variants, inputs, lambda: None)
    times = measure(variants, inputs, rounds, lambda fn: min(time_runs(fn, 1, min_run_time, "cpu")))
    return [f"### {host.name}", "", f"Adapters on block {host.layer}, rank {host.rank}.", "",
            *table(variants, times, diffs), ""]


def shapes_sampling(rounds: int, steps: int, modes: tuple[bool, ...]) -> tuple[list[str], dict]:
    """Sampling time of the shipped Shapes base with and without RSR M=4 T=5 on the middle layer."""
    from thinkpix import RSRConfig, apply_rsr, rsr_parameters
    from thinkpix.sampling import load_target
    from thinkpix.shapes.prompts import training_metadata

    probe = [r["prompt"] for r in training_metadata()[:8]]
    # the host section compiled the same SD3 forward for every variant and mode: dynamo's recompile limit (8 per
    # code object) would fail the two compilations below under fullgraph
    torch._dynamo.reset()
    rows = {}
    for name in ("base", "RSR M=4 T=5"):
        for compiled in modes:
            target = load_target("shapes-t2i")
            if name != "base":
                model = target.transformer
                apply_rsr(model, RSRConfig(num_experts=4, latent_steps=5, rank=16, layers=(4,)))
                with torch.no_grad():
                    for p in rsr_parameters(model):
                        if p.dim() > 1:
                            p.normal_(0, 0.02)
                model.eval()
            if compiled:
                target.pipeline.transformer = torch.compile(target.pipeline.transformer, fullgraph=True, dynamic=False)
            target.sample(probe, seed=0, steps=steps)  # warm-up (and compilation)
            rows[(name, compiled)] = target
    times = {key: [] for key in rows}
    for r in range(rounds):
        keys = list(rows)[r % len(rows):] + list(rows)[:r % len(rows)]
        for key in keys:
            started = time.process_time()
            rows[key].sample(probe, seed=0, steps=steps)
            times[key].append(time.process_time() - started)
    ratio = {c: min(times[("RSR M=4 T=5", c)]) / min(times[("base", c)]) for c in modes}
    lines = ["| mode | RSR M=4 T=5 / base (minima) | paired ratios (range) | base s / image |", "|---|---|---|---|"]
    for c in modes:
        pairs = sorted(a / b for a, b in zip(times[("RSR M=4 T=5", c)], times[("base", c)]))
        lines.append(f"| {'compiled' if c else 'eager'} | {ratio[c]:.3f} | {pairs[0]:.3f}-{pairs[-1]:.3f} | "
                     f"{min(times[('base', c)]) / len(probe):.3f} |")
    if len(modes) == 2:
        lines += ["", "Compiled / eager: base "
                  f"{min(times[('base', True)]) / min(times[('base', False)]):.3f}, RSR "
                  f"{min(times[('RSR M=4 T=5', True)]) / min(times[('RSR M=4 T=5', False)]):.3f}."]
    return lines, {("compiled" if c else "eager"): ratio[c] for c in modes}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--sections", nargs="+", choices=("hosts", "shapes"), default=["hosts", "shapes"])
    p.add_argument("--hosts", nargs="+", choices=("shapes", "dit"), default=["shapes", "dit"])
    p.add_argument("--sampling", nargs="+", choices=("eager", "compiled"), default=["eager", "compiled"],
                   help="modes of the Shapes sampling section")
    p.add_argument("--out", type=Path, default=Path("docs/results/compile.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rounds = args.rounds or (3 if args.quick else 5)
    lines = ["# Eager against torch.compile on CPU (issue 21)", "",
             f"Produced by `{command_line()}` (written by `benchmarks/compile.py`; rerun to refresh).", "",
             *machine_facts([1]),
             f"- allocator: glibc `{allocator_name()}` (`heap`: freed buffers are kept for reuse; see dispatch.md)",
             "- compile: `torch.compile(model, fullgraph=True)` (inductor, default mode); RSR's `sorted` dispatch runs "
             "as `grouped` under compile",
             f"- timing: {rounds} rounds; in each, every (variant, mode, eager/compiled) callable is timed once "
             "(`Timer.blocked_autorange`, CPU-time clock, minimum of its blocks), order rotated between rounds; a "
             "ratio is the median over rounds of the ratio within a round", ""]
    if "hosts" in args.sections:
        lines += ["## Forward and training step", "",
                  "Forward: eval mode under `no_grad`. Training step: train mode, mean-squared output (+ `aux_loss` "
                  "for RSR), backward into the trainable parameters (all of them for the base: full fine-tuning), "
                  "no optimizer step. `vs base` compares with the base in the same mode and the same "
                  "eager/compiled state.", ""]
        hosts = {"shapes": shapes_host(8), "dit": dit_host(4 if args.quick else 6, 4 if args.quick else 8, 2)}
        for host in (hosts[name] for name in args.hosts):
            lines += host_section(host, rounds, 0.05 if args.quick else 0.2)
            print(f"{host.name} done", flush=True)
    if "shapes" in args.sections:
        steps = 10 if args.quick else 20
        section, ratio = shapes_sampling(rounds, steps, tuple(m == "compiled" for m in args.sampling))
        measured = "; ".join(f"{mode}: **{value:.3f}x**" for mode, value in ratio.items())
        lines += ["## Sampling the shipped Shapes base with RSR M=4 T=5 on one layer", "",
                  f"8 training prompts, {steps} steps, guidance as shipped; RSR on block 4 with random experts "
                  "(rank 16); CPU time of the whole `sample` call, minimum over rounds. Acceptance line of issue 21: "
                  f"at most 1.08x the base's time. {measured}.", "", *section, ""]
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
