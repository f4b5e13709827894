"""``thinkpix analyze routing``: the routing figures and numbers of a trained RSR model.

Heavy imports (torch, diffusers) happen inside the handler.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..argtypes import positive_int


def _read_prompts(values: Sequence[str]) -> list[str]:
    prompts = []
    for value in values:
        path = Path(value)
        if path.is_file():
            prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
        else:
            prompts.append(value)
    return prompts


def _analyze_routing_command(args: argparse.Namespace) -> int:
    from .routing import analyze_routing, collapse_warnings

    summary = analyze_routing(args.model, args.rsr, _read_prompts(args.prompts), args.out, samples=args.samples,
                              steps=args.num_inference_steps, seed=args.seed, guidance_scale=args.guidance_scale,
                              buckets=args.buckets)
    warnings = collapse_warnings(summary)
    for warning in warnings:
        print(f"thinkpix analyze routing: warning: {warning}", file=sys.stderr)
    print(json.dumps({"out": str(args.out), "seconds": summary["run"]["seconds"],
                      "specialisation_across_timesteps": summary["specialisation_across_timesteps"],
                      "collapse_warnings": warnings}))
    return 0


def add_analyze_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``analyze routing`` to the main parser's subparsers; returns the ``analyze`` parser."""
    analyze = subparsers.add_parser("analyze", help="analyse a trained RSR model (routing, Figs. 3-4)")
    commands = analyze.add_subparsers(dest="analysis", required=True, metavar="{routing}")
    p = commands.add_parser(
        "routing", help="expert usage, gate entropy, token trajectories and timestep specialisation",
        description="Sample prompts with routing_trace(states=True) and write usage heatmaps (Fig. 4), token "
                    "trajectories (Fig. 3), gate entropy, per-patch expert maps and summary.json to --out.")
    p.add_argument("--model", required=True, help="pipeline folder, hub id, or shapes-t2i / shapes-class")
    p.add_argument("--rsr", default=None, help="RSR checkpoint folder (rsr_config.json + rsr_weights.safetensors)")
    p.add_argument("--prompts", action="append", required=True,
                   help="a prompt (class id for class models) or a file with one per line; repeatable")
    p.add_argument("--samples", type=positive_int, default=1, help="images per prompt")
    p.add_argument("--num-inference-steps", type=positive_int, default=20)
    p.add_argument("--guidance-scale", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--buckets", type=positive_int, default=10, help="diffusion-timestep buckets of the usage tables")
    p.add_argument("--out", required=True, help="folder for the PNGs and summary.json")
    p.set_defaults(func=_analyze_routing_command)
    return analyze
