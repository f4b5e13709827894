"""``thinkpix analyze routing``: what the gates of a trained RSR model do (paper Sec. 4.2, Figs. 3-4).

``summarize_trace`` turns a ``RoutingTrace`` into per-layer numbers: gate entropy per latent step,
selection consistency per step pair, per-expert utilisation, a collapse warning, expert usage by
diffusion-timestep bucket x latent step (the data of Fig. 4) and a verdict on specialisation across
diffusion timesteps.

Specialisation criterion: the usage distributions over experts of the highest-noise and the
lowest-noise occupied timestep buckets are compared at every latent step by their total-variation
distance ``TV(p, q) = 1/2 sum_e |p_e - q_e|`` (0: same usage, 1: disjoint experts); the layer
specialises across timesteps when the mean over latent steps is at least ``SPECIALISATION_TV``
(0.2: a fifth of the tokens change expert between the two ends of sampling). A uniformly random
gate gives a TV of at most about ``sqrt(M / tokens per bucket)`` (0.04 for M=2 and 1500 tokens). The
criterion only sees the two ends of sampling; ``max_pair`` reports the most different pair of any
occupied buckets (a diagnostic for non-monotonic use, not part of the verdict).

``analyze_routing`` samples prompts under ``routing_trace(states=True)`` and writes the figures
(usage heatmaps, Fig. 3-style token trajectories, gate entropy, per-token expert maps) and
``summary.json``; only the conditional half of a classifier-free-guidance batch is analysed.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..core.stats import COLLAPSE_SHARE, RoutingStats, routing_stats
from ..models.inspect import RoutingRecord, RoutingTrace, routing_trace
from .health import trace_health
from .plots import plot_usage_heatmap, usage_by_timestep
from .trajectories import plot_expert_maps, plot_gate_entropy, plot_trajectories, trajectory_summary

SPECIALISATION_TV = 0.2  # mean TV distance (earliest vs latest timestep bucket) that counts as specialisation
MAX_TIMESTEP = 1000.0


def trace_layers(trace: RoutingTrace) -> list[int]:
    """RSR layers present in the trace's records (also for traces built by hand)."""
    return sorted({r.layer for r in trace.records})


def select_samples(trace: RoutingTrace, rows: Sequence[int] | Callable[[int], Sequence[int]]) -> RoutingTrace:
    """A new trace holding only the batch rows ``rows`` of every record (e.g. the conditional half under CFG);
    ``rows`` may be a function of a record's batch size, for traces whose batch changes between calls
    (guidance applied in an interval of noise levels doubles the batch at some steps only)."""
    selected = RoutingTrace()
    for r in trace.records:
        index = torch.as_tensor(list(rows(r.experts.shape[1]) if callable(rows) else rows), dtype=torch.long)
        selected.records.append(RoutingRecord(
            r.layer, r.call, None if r.timestep is None else r.timestep[index], r.experts[:, index],
            r.probs[:, index], None if r.states is None else r.states[:, index]))
    return selected


def layer_stats(trace: RoutingTrace, layer: int) -> RoutingStats:
    """``routing_stats`` over every call and sample of one layer."""
    records = trace.for_layer(layer)
    if not records:
        raise ValueError(f"the trace has no records for layer {layer} (layers: {trace_layers(trace)})")
    return routing_stats(torch.cat([r.experts for r in records], 1), torch.cat([r.probs for r in records], 1))


def _decisions_per_bucket(trace: RoutingTrace, layer: int, buckets: int) -> np.ndarray:
    counts = np.zeros(buckets, dtype=np.int64)
    for r in trace.for_layer(layer):
        index = (r.timestep / MAX_TIMESTEP * buckets).long().clamp(0, buckets - 1)
        np.add.at(counts, index.numpy(), r.experts.shape[0] * r.experts.shape[2])
    return counts


def _round(values) -> list:
    return np.round(np.asarray(values, dtype=np.float64), 6).tolist()


def timestep_specialisation(usage: np.ndarray, counts: np.ndarray, threshold: float = SPECIALISATION_TV) -> dict:
    """Compare the highest- and lowest-noise occupied buckets of ``usage`` (buckets, T, M) (see module doc)."""
    buckets = usage.shape[0]
    occupied = np.flatnonzero(counts > 0)
    width = MAX_TIMESTEP / buckets
    if len(occupied) < 2:
        return {"tv_per_step": [], "mean_tv": None, "threshold": threshold, "appears": False,
                "statement": "not measurable: the trace covers fewer than two timestep buckets"}
    late, early = int(occupied[0]), int(occupied[-1])
    high, low = [early * width, (early + 1) * width], [late * width, (late + 1) * width]
    tv = 0.5 * np.abs(usage[early] - usage[late]).sum(-1)  # (T,)
    mean = float(tv.mean())
    appears = mean >= threshold
    verdict = "specialises" if appears else "shows no specialisation"
    statement = (f"{verdict} across diffusion timesteps: expert usage at timesteps {high[0]:.0f}-{high[1]:.0f} "
                 f"(high noise) and {low[0]:.0f}-{low[1]:.0f} (low noise) differs by a mean total-variation "
                 f"distance of {mean:.3f} (threshold {threshold})")
    pairs = 0.5 * np.abs(usage[occupied, None] - usage[None, occupied]).sum(-1).mean(-1)  # (K, K) mean over steps
    i, j = np.unravel_index(pairs.argmax(), pairs.shape)
    widest = {"tv": round(float(pairs[i, j]), 6), "buckets": [[occupied[k] * width, (occupied[k] + 1) * width]
                                                               for k in sorted((int(i), int(j)))]}
    return {"early_bucket": high, "late_bucket": low, "tv_per_step": _round(tv), "mean_tv": round(mean, 6),
            "threshold": threshold, "appears": bool(appears), "statement": statement, "max_pair": widest}


def summarize_layer(trace: RoutingTrace, layer: int, buckets: int = 10,
                    threshold: float = SPECIALISATION_TV) -> dict:
    """Every number of one layer (see ``summarize_trace``)."""
    stats = layer_stats(trace, layer)
    records = trace.for_layer(layer)
    m = stats.usage.shape[1]
    top = int(stats.utilisation.argmax())
    share = float(stats.utilisation[top])
    collapsed = m > 1 and stats.collapsed()
    summary = {
        "calls": len(records), "samples": int(records[0].experts.shape[1]), "tokens": int(records[0].experts.shape[2]),
        "num_experts": m, "latent_steps": int(stats.usage.shape[0]),
        "entropy": _round(stats.entropy), "max_entropy": round(math.log(m), 6),
        "consistency": _round(stats.consistency), "utilisation": _round(stats.utilisation),
        "usage": _round(stats.usage), "collapsed": bool(collapsed),
        "collapse_warning": (f"expert {top} takes {share:.1%} of the routing decisions (more than "
                             f"{COLLAPSE_SHARE:.0%}): the gate has collapsed") if collapsed else None,
    }
    if all(r.timestep is not None for r in records):
        usage = usage_by_timestep(trace, layer, buckets, MAX_TIMESTEP)
        counts = _decisions_per_bucket(trace, layer, buckets)
        width = MAX_TIMESTEP / buckets
        summary["usage_by_timestep"] = [
            {"timesteps": [b * width, (b + 1) * width], "decisions": int(counts[b]), "usage": _round(usage[b])}
            for b in np.flatnonzero(counts > 0)]
        summary["specialisation"] = timestep_specialisation(usage, counts, threshold)
    if records[0].states is not None and all(r.timestep is not None for r in records):
        summary["trajectories"] = trajectory_summary(trace, layer, range(summary["samples"]))
    return summary


def summarize_trace(trace: RoutingTrace, buckets: int = 10, threshold: float = SPECIALISATION_TV) -> dict:
    """Per RSR layer (keys are block indices as strings): gate ``entropy`` (T,) in nats, ``consistency`` (T-1,),
    ``utilisation`` (M,), ``usage`` (T, M), ``collapsed``/``collapse_warning`` (one expert above 90%),
    ``usage_by_timestep`` (occupied buckets x latent step x expert: Fig. 4), ``specialisation`` (the
    criterion of the module docstring, with a plain-language ``statement``) and, when the trace holds
    states, ``trajectories`` (Fig. 3 coherence early/late). ``specialisation_across_timesteps`` sums up."""
    layers = trace_layers(trace)
    if not layers:
        raise ValueError("the routing trace is empty: nothing ran through an RSR layer")
    per_layer = {str(layer): summarize_layer(trace, layer, buckets, threshold) for layer in layers}
    found = [int(k) for k, v in per_layer.items() if v.get("specialisation", {}).get("appears")]
    measured = [k for k, v in per_layer.items() if v.get("specialisation", {}).get("mean_tv") is not None]
    if not measured:
        verdict = "not measurable (no timesteps, or a single timestep bucket)"
    elif found:
        verdict = f"yes: layer(s) {found} change experts between high and low noise (mean TV >= {threshold})"
    else:
        verdict = f"no: no layer's expert usage differs between high and low noise by a mean TV >= {threshold}"
    return {"layers": per_layer, "specialisation_across_timesteps": verdict}


def collapse_warnings(summary: dict) -> list[str]:
    """One line per layer whose gate collapsed onto one expert (``summarize_trace``'s ``collapse_warning``)."""
    return [f"layer {layer}: {info['collapse_warning']}" for layer, info in summary["layers"].items()
            if info.get("collapse_warning")]


def _conditional_rows(pipeline, batch: int, images: int) -> list[int]:
    """Rows of the conditional samples: CFG doubles the batch as [uncond, cond] (DiTPipeline: [cond, uncond])."""
    if batch == images:
        return list(range(images))
    if batch != 2 * images:
        raise ValueError(f"the traced batch ({batch}) is neither {images} images nor twice that")
    return list(range(images)) if type(pipeline).__name__ == "DiTPipeline" else list(range(images, batch))


def analyze_routing(model: str | Path, rsr: str | Path | None, prompts: Sequence, out_dir: str | Path,
                    samples: int = 1, steps: int = 20, seed: int = 0, guidance_scale: float = 4.0,
                    buckets: int = 10) -> dict:
    """Sample ``prompts`` (captions, or class ids) ``samples`` times each and write, under ``out_dir``:
    ``usage_layer<L>.png`` (Fig. 4), ``trajectories_layer<L>.png`` (Fig. 3; first image),
    ``experts_layer<L>.png`` (expert per patch), ``entropy.png``, ``samples.png`` and ``summary.json``.
    Returns the summary."""
    from ..images import save_grid, to_uint8
    from ..models import rsr_config, rsr_layers
    from ..sampling import load_target

    if not prompts:
        raise ValueError("give at least one prompt")
    if rsr is None:  # load_target installs RSR only from a checkpoint
        raise ValueError(f"{model} has no RSR layers to analyse: pass an RSR checkpoint (--rsr)")
    started = time.perf_counter()
    target = load_target(model, rsr)
    config = rsr_config(target.transformer)
    conditions = [int(p) for p in prompts] if target.kind == "class" else list(prompts)
    repeated = [c for c in conditions for _ in range(samples)]
    with routing_trace(target.transformer, states=True) as full:
        images = target.sample(repeated, seed=seed, steps=steps, guidance_scale=guidance_scale)
    if not full.records:
        raise ValueError("no RSR layer ran while sampling")
    trace = select_samples(full, lambda batch: _conditional_rows(target.pipeline, batch, len(repeated)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize_trace(trace, buckets)
    for layer, proc in rsr_layers(target.transformer).items():
        if str(layer) in summary["layers"]:
            summary["layers"][str(layer)]["health"] = trace_health(trace.for_layer(layer), proc.rsr.experts)
    images = to_uint8(images)
    figures = {"samples": save_grid(images, out / "samples.png", ncols=samples, labels=[str(c) for c in repeated])}
    for layer in trace_layers(trace):
        figures[f"usage_layer{layer}"] = plot_usage_heatmap(trace, layer, out / f"usage_layer{layer}.png", buckets)
        figures[f"trajectories_layer{layer}"] = plot_trajectories(trace, layer, out / f"trajectories_layer{layer}.png")
        figures[f"experts_layer{layer}"] = plot_expert_maps(trace, layer, out / f"experts_layer{layer}.png",
                                                            image=images[0])
    figures["entropy"] = plot_gate_entropy({int(k): v["entropy"] for k, v in summary["layers"].items()},
                                           config.num_experts, out / "entropy.png")
    summary["run"] = {"model": str(model), "rsr": None if rsr is None else str(rsr), "prompts": list(conditions),
                      "samples": samples, "steps": steps, "seed": seed, "guidance_scale": guidance_scale,
                      "buckets": buckets, "rsr_config": config.to_dict(), "trajectory_image": 0,
                      "figures": {k: p.name for k, p in figures.items()},
                      "seconds": round(time.perf_counter() - started, 2)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
