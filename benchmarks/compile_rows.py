"""Eager against ``torch.compile(fullgraph=True)`` for base, peft LoRA and RSR on one diffusers transformer.

Shared by ``benchmarks/compile.py`` (CPU) and ``benchmarks/gpu.py`` (one GPU). Every variant lives on its own
copy of one randomly initialised model, so all of them are timed side by side in one process: in each round
every (variant, mode, eager/compiled) callable runs once, in an order rotated between rounds, and each ratio
is the median over rounds of ratios taken within a round (paired).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from thinkpix import RSRConfig, apply_rsr, aux_loss, rsr_parameters

MODES = ("forward", "train step")


@dataclass
class Host:
    """A transformer class and config with random weights, its inputs, and the layer the adapters go on."""

    name: str
    build: Callable[[], nn.Module]  # on the current default device
    inputs: Callable[[torch.device, torch.dtype], dict]
    layer: int
    rank: int
    attention: str  # "attn" (SD3) or "attn1" (DiT)
    note: str = ""


@dataclass
class Variant:
    name: str
    model: nn.Module
    trainable: list[nn.Parameter]
    rsr: bool = False
    compiled: nn.Module | None = None
    compile_s: dict[str, float] = field(default_factory=dict)


def rsr_variant(m: int, t: int) -> tuple[str, dict]:
    return f"RSR M={m} T={t}", {"num_experts": m, "latent_steps": t}


VARIANTS = ("base", "peft LoRA", "RSR M=2 T=2", "RSR M=5 T=5")


def build_variants(host: Host, device: torch.device, dtype: torch.dtype, names=VARIANTS) -> list[Variant]:
    """Each variant on its own copy of one random model: base (trained in full), peft LoRA or RSR on ``host.layer``."""
    with torch.device(device):
        torch.manual_seed(0)
        pristine = host.build().eval()
    if dtype != torch.float32:
        pristine.to(dtype)
    variants = []
    for name in names:
        model = copy.deepcopy(pristine)
        if name == "base":
            variants.append(Variant(name, model, list(model.parameters())))
            continue
        model.requires_grad_(False)
        if name == "peft LoRA":
            prefix = f"transformer_blocks.{host.layer}.{host.attention}"
            lora = LoraConfig(r=host.rank, lora_alpha=host.rank, target_modules=[f"{prefix}.to_{p}" for p in "qkv"])
            model = inject_adapter_in_model(lora, model)
            variants.append(Variant(name, model, [p for n, p in model.named_parameters() if "lora_" in n]))
            continue
        m, t = (int(part.split("=")[1]) for part in name.split()[1:])
        apply_rsr(model, RSRConfig(num_experts=m, latent_steps=t, rank=host.rank, layers=(host.layer,)))
        with torch.no_grad():  # non-zero B so the experts do real arithmetic
            for p in rsr_parameters(model):
                if p.dim() > 1:
                    p.normal_(0, 0.02)
        variants.append(Variant(name, model.eval(), rsr_parameters(model), rsr=True))
    del pristine
    return variants


def step(variant: Variant, module: nn.Module, inputs: dict, mode: str) -> Callable[[], torch.Tensor]:
    """Forward (eval, no grad) or training step (train mode, loss, backward into the trainable parameters)."""
    if mode == "forward":
        def forward() -> torch.Tensor:
            variant.model.eval()
            with torch.no_grad():
                return module(**inputs).sample
        return forward

    def train_step() -> torch.Tensor:
        variant.model.train()
        out = module(**inputs).sample
        loss = out.float().square().mean()
        if variant.rsr:
            loss = loss + aux_loss(variant.model)
        loss.backward()
        for p in variant.trainable:
            p.grad = None
        return out.detach()
    return train_step


def compile_all(variants: list[Variant], inputs: dict, sync: Callable[[], None],
                backend: str = "inductor") -> dict[str, float]:
    """Compile every variant (fullgraph) in both modes; returns max |compiled - eager| of each forward."""
    # every variant compiles the host's one forward (one code object) once per mode: dynamo's default limit of 8
    # entries per code object would fail a fullgraph compile beyond four variants
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * len(variants) + 4)
    diffs = {}
    for v in variants:
        v.compiled = torch.compile(v.model, fullgraph=True, backend=backend)
        for mode in MODES:
            started = time.perf_counter()
            out = step(v, v.compiled, inputs, mode)()
            sync()
            v.compile_s[mode] = time.perf_counter() - started
            if mode == "forward":
                ref = step(v, v.model, inputs, mode)()
                diffs[v.name] = (out.float() - ref.float()).abs().max().item()
    return diffs


def measure(variants: list[Variant], inputs: dict, rounds: int, timer: Callable[[Callable], float]) -> dict:
    """times[(variant, mode, compiled)] = one time (s) per round, every callable timed once per round."""
    tasks = [(v.name, mode, compiled, step(v, v.compiled if compiled else v.model, inputs, mode))
             for v in variants for mode in MODES for compiled in (False, True)]
    times = {key[:3]: [] for key in tasks}
    for r in range(rounds):
        shift = (r * 3) % len(tasks)
        for name, mode, compiled, fn in tasks[shift:] + tasks[:shift]:
            times[(name, mode, compiled)].append(timer(fn))
    return times


def paired(times: dict, a: tuple, b: tuple) -> float:
    """Median over rounds of time(a) / time(b)."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def table(variants: list[Variant], times: dict, diffs: dict, memory: dict | None = None) -> list[str]:
    """Markdown rows: per variant, ratios compiled / eager and variant / base (eager and compiled)."""
    head = ["variant", "fwd: compiled / eager", "train: compiled / eager", "fwd vs base: eager",
            "fwd vs base: compiled", "train vs base: eager", "train vs base: compiled",
            "max abs(compiled - eager), fwd", "compile s (fwd, train)"]
    if memory is not None:
        head += ["peak GiB fwd eager / compiled", "peak GiB train eager / compiled"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in variants:
        cells = [v.name]
        cells += [f"{paired(times, (v.name, m, True), (v.name, m, False)):.3f}" for m in MODES]
        for m in MODES:
            cells += [f"{paired(times, (v.name, m, c), ('base', m, c)):.3f}" for c in (False, True)]
        cells += [f"{diffs[v.name]:.1e}", f"{v.compile_s['forward']:.0f}, {v.compile_s['train step']:.0f}"]
        if memory is not None:
            cells += [" / ".join(f"{memory[(v.name, m, c)]:.2f}" for c in (False, True)) for m in MODES]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
