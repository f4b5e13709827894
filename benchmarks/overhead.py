"""RSR overhead in the real DiT-XL/2 and SD3-medium architectures (random weights), written to
``docs/results/overhead.md`` (issue 10).

    python benchmarks/overhead.py --quick     # DiT-XL/2 only (256 px: N = 256 tokens), 4 rounds
    python benchmarks/overhead.py             # plus SD3-medium (512 px: N = 1024 tokens, 154 text tokens)

Variants, on one model (adapters installed and removed in turn): the base; peft LoRA SFT (rank 128 on
to_q/to_k/to_v of layers 4, 8, 12); RSR M=1, T=1 on the same layers; RSR M=2, T=2 on layer 12; RSR M=5, T=5 on
layers 4, 8, 12 (also with checkpointing across latent steps). Each is timed next to its reference (forward:
base; training step: peft) and ratios are medians of these pairs. Peak memory of a training step
is the peak resident set size (``ru_maxrss``) of a fresh child process per configuration.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from diffusers import DiTTransformer2DModel, SD3Transformer2DModel
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

import thinkpix
from benchmarks.common import CLOCK_NOTE, allocator_name, command_line, machine_facts, resolve_clock, time_runs
from benchmarks.overhead_report import write_report

# Published configs: facebook/DiT-XL-2-256 and stabilityai/stable-diffusion-3-medium-diffusers (transformer).
DIT_XL_2 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                sample_size=32, patch_size=2, num_embeds_ada_norm=1000)
SD3_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                  num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                  pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192)
HOSTS = {  # kind: (class, config, latent side, text tokens, attention module name)
    "dit-xl-2": (DiTTransformer2DModel, DIT_XL_2, 32, 0, "attn1"),
    "sd3-medium": (SD3Transformer2DModel, SD3_MEDIUM, 64, 154, "attn"),
}
RANK = 128


@dataclass(frozen=True)
class Variant:
    """One configuration: ``kind`` is base, peft or rsr."""

    name: str
    kind: str
    layers: tuple[int, ...] = ()
    experts: int = 1
    steps: int = 1
    checkpointing: bool = False
    forward: bool = True  # time the forward pass (checkpointing changes only training)


VARIANTS = [
    Variant("base", "base"),
    Variant("peft LoRA r=128, L=(4,8,12)", "peft", (4, 8, 12)),
    Variant("RSR M=1 T=1, L=(4,8,12)", "rsr", (4, 8, 12), 1, 1),
    Variant("RSR M=2 T=2, L=(12)", "rsr", (12,), 2, 2),
    Variant("RSR M=5 T=5, L=(4,8,12)", "rsr", (4, 8, 12), 5, 5),
    Variant("RSR M=5 T=5, L=(4,8,12), ckpt", "rsr", (4, 8, 12), 5, 5, True, False),
]
MEMORY = [  # (name, variant): peak training memory, one child process each
    Variant("peft LoRA r=128, L=(4,8,12)", "peft", (4, 8, 12)),
    Variant("RSR M=5 T=1, L=(4,8,12)", "rsr", (4, 8, 12), 5, 1),
    Variant("RSR M=5 T=5, L=(4,8,12)", "rsr", (4, 8, 12), 5, 5),
    Variant("RSR M=5 T=5, L=(4,8,12), ckpt", "rsr", (4, 8, 12), 5, 5, True),
]


def build(kind: str) -> nn.Module:
    """The architecture with random weights (N(0, 0.02)), built on the meta device then materialised."""
    cls, config, *_ = HOSTS[kind]
    with torch.device("meta"):
        model = cls(**config)
    model = model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=g)
        for b in model.buffers():  # the sin-cos position tables: random values are fine for timing
            if b.is_floating_point():
                b.normal_(0.0, 0.02, generator=g)
            else:
                b.zero_()
    return model.requires_grad_(False)


def inputs(kind: str, batch: int) -> dict:
    g = torch.Generator().manual_seed(1)
    _, config, side, text, _ = HOSTS[kind]
    if kind == "dit-xl-2":
        return dict(hidden_states=torch.randn(batch, 4, side, side, generator=g),
                    timestep=torch.full((batch,), 500), class_labels=torch.full((batch,), 207))
    return dict(hidden_states=torch.randn(batch, 16, side, side, generator=g),
                encoder_hidden_states=torch.randn(batch, text, 4096, generator=g),
                pooled_projections=torch.randn(batch, 2048, generator=g), timestep=torch.full((batch,), 500.0))


def install(model: nn.Module, kind: str, variant: Variant) -> list[nn.Parameter]:
    """Install ``variant`` on ``model``; returns its trainable parameters (base frozen)."""
    if variant.kind == "rsr":
        thinkpix.apply_rsr(model, thinkpix.RSRConfig(num_experts=variant.experts, latent_steps=variant.steps,
                                                     rank=RANK, layers=variant.layers))
        thinkpix.set_step_checkpointing(model, variant.checkpointing)
        return thinkpix.rsr_parameters(model)
    if variant.kind == "peft":
        attn = HOSTS[kind][4]
        targets = [f"transformer_blocks.{i}.{attn}.{p}" for i in variant.layers for p in ("to_q", "to_k", "to_v")]
        inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=targets), model)
        params = [p for name, p in model.named_parameters() if "lora_" in name]
        for p in params:
            p.requires_grad_(True)
        return params
    return []


def uninstall(model: nn.Module, variant: Variant) -> None:
    if variant.kind == "rsr":
        thinkpix.remove_rsr(model)
    elif variant.kind == "peft":
        for name, module in list(model.named_modules()):
            if isinstance(module, LoraLayer):
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, module.get_base_layer())
        if hasattr(model, "peft_config"):
            del model.peft_config
    model.requires_grad_(False)


def forward_fn(model: nn.Module, batch: dict):
    def run() -> None:
        model.eval()
        with torch.no_grad():
            model(**batch)
    return run


def train_fn(model: nn.Module, batch: dict, params: list[nn.Parameter], rsr: bool):
    """Forward + backward of a mean-squared loss (+ RSR's balance loss); no optimizer step."""
    def run() -> None:
        model.train()
        for p in params:
            p.grad = None
        loss = model(**batch).sample.float().pow(2).mean()
        if rsr:
            loss = loss + thinkpix.aux_loss(model)
        loss.backward()
    return run


def memory_worker(kind: str, variant: Variant, batch: int, threads: int) -> dict:
    """Peak resident memory of one training step in this (fresh) process, and the activations the forward
    saves for backward (unique storages, parameters excluded), both in MiB."""
    torch.set_num_threads(threads)
    model = build(kind)
    params = install(model, kind, variant)
    data = inputs(kind, batch)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    before = _rss_mib()
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**data).sample.float().pow(2).mean()
        if variant.kind == "rsr":
            loss = loss + thinkpix.aux_loss(model)
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return dict(name=variant.name, before=before, peak=peak, saved=sum(saved.values()) / 2**20,
                trainable=sum(p.numel() for p in params))


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure_memory(kind: str, args: argparse.Namespace) -> list[dict]:
    out = []
    for i in range(len(MEMORY)):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", kind, str(i),
               "--batch", str(args.batch), "--threads", str(args.threads)]
        result = subprocess.run(cmd, check=True, capture_output=True, text=True)
        out.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(f"[overhead] {kind} memory {out[-1]}", flush=True)
    return out


def measure_times(kind: str, args: argparse.Namespace) -> dict:
    """Paired rounds: each variant is timed right next to its reference (forward: base; training step: peft),
    in alternating order, so that changes in the machine's load largely cancel in the per-pair ratios."""
    torch.set_num_threads(args.threads)
    clock = resolve_clock(args.clock, args.threads)
    model, batch = build(kind), inputs(kind, args.batch)
    times: dict = {v.name: {"forward": [], "train": []} for v in VARIANTS}
    ratios: dict = {v.name: {"forward": [], "train": []} for v in VARIANTS}

    def timed(variant: Variant, mode: str) -> float:
        params = install(model, kind, variant)
        fn = forward_fn(model, batch) if mode == "forward" else train_fn(model, batch, params, variant.kind == "rsr")
        seconds = min(time_runs(fn, args.threads, args.min_run_time, clock))
        uninstall(model, variant)
        times[variant.name][mode].append(seconds)
        return seconds

    for r in range(args.rounds):
        for mode, ref in (("forward", VARIANTS[0]), ("train", VARIANTS[1])):
            if mode not in args.modes:
                continue
            for variant in VARIANTS:
                if variant is ref or variant.kind == "base" or (mode == "forward" and not variant.forward):
                    continue
                pair = (ref, variant) if r % 2 == 0 else (variant, ref)
                t = {v.name: timed(v, mode) for v in pair}
                ratios[variant.name][mode].append(t[variant.name] / t[ref.name])
                print(f"[overhead] {kind} round {r} {mode}: {variant.name} / {ref.name} = "
                      f"{1e3 * t[variant.name]:.0f} / {1e3 * t[ref.name]:.0f} ms", flush=True)
    times["_ratios"] = ratios
    if args.profile:
        times["_profile"] = profile(model, kind, batch, args.threads)
    return times


def profile(model: nn.Module, kind: str, batch: dict, threads: int) -> dict:
    """Self CPU time per op of one forward pass: base and RSR M=5, T=5 on (4, 8, 12)."""
    torch.set_num_threads(threads)
    result = {}
    for variant in (VARIANTS[0], VARIANTS[4]):
        install(model, kind, variant)
        run = forward_fn(model, batch)
        run()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            run()
        result[variant.name] = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}
        uninstall(model, variant)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="DiT-XL/2 only, 4 rounds instead of 6")
    p.add_argument("--hosts", nargs="+", choices=list(HOSTS), default=None)
    p.add_argument("--threads", type=int, default=2, help="torch threads (Timer num_threads)")
    p.add_argument("--clock", choices=("auto", "wall", "cpu"), default="auto",
                   help="Timer clock; auto: process CPU time with 1 thread, wall-clock time otherwise")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--min-run-time", type=float, default=0.0,
                   help="seconds per blocked_autorange (0: one warm-up call, then one timed call)")
    p.add_argument("--modes", nargs="+", choices=("forward", "train"), default=["forward", "train"],
                   help="what to time (SD3-medium's training step takes minutes per call on one CPU core)")
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--out", type=Path, default=Path("docs/results/overhead.md"))
    p.add_argument("--memory-worker", nargs=2, metavar=("HOST", "INDEX"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.hosts = args.hosts or (["dit-xl-2"] if args.quick else list(HOSTS))
    args.rounds = args.rounds or (4 if args.quick else 6)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_worker:
        kind, index = args.memory_worker
        print(json.dumps(memory_worker(kind, MEMORY[int(index)], args.batch, args.threads)))
        return
    results = {}
    for kind in args.hosts:
        memory = measure_memory(kind, args) if args.memory else []
        results[kind] = dict(times=measure_times(kind, args), memory=memory)
    facts = machine_facts([args.threads]) + [f"- allocator: glibc `{allocator_name()}` (see dispatch.md)",
                                             f"- clock: {CLOCK_NOTE[resolve_clock(args.clock, args.threads)]}"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results))  # the raw numbers, kept even if a report fails
    write_report(args, results, command_line(), facts, HOSTS, VARIANTS, RANK)
    print(f"[overhead] wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
