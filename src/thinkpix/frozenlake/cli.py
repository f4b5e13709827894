"""``thinkpix frozenlake train|eval|show``: FrozenLake visual planning from the command line.

``add_frozenlake_parser(sub)`` adds the subcommands to the main parser's subparsers; each sets
``func(args) -> exit code``. Heavy imports (torch, diffusers) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from thinkpix.argtypes import positive_int


def _sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(int(s) for s in text.replace(",", " ").split())
    if not sizes or any(not 3 <= s <= 8 for s in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be integers in 3..8, got {text!r}")
    return sizes


def _train(args: argparse.Namespace) -> int:
    import torch

    from .model import PlannerConfig, VisualPlanner, parameter_count
    from .train import TrainConfig, train_planner

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    planner = PlannerConfig(recursive=args.model == "rsr", cell_px=args.cell_px, width=args.width, heads=args.heads,
                            layers=args.layers, rank=args.rank, plan_steps=args.plan_steps,
                            decoder_layers=args.decoder_layers, positions=args.positions, decoder=args.decoder,
                            routing=args.routing, render=args.render, seed=args.seed)
    cfg = TrainConfig(sizes=args.sizes, maps_per_size=args.maps_per_size, steps=args.steps, batch=args.batch,
                      lr=args.lr, warmup=args.warmup, recon_weight=args.recon_weight, max_minutes=args.max_minutes,
                      seed=args.seed)
    model = VisualPlanner(planner)
    print(f"{args.model} planner: {parameter_count(model)} parameters")
    summary = train_planner(model, cfg, log_every=args.log_every)
    model.save(args.out)
    info = {"steps": summary["steps"], "seconds": round(summary["seconds"], 1),
            "train": vars(cfg) | {"sizes": list(cfg.sizes)},
            "parameters": parameter_count(model), "torch_threads": torch.get_num_threads()}
    (Path(args.out) / "train_summary.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"trained {summary['steps']} steps in {summary['seconds']:.0f} s; wrote {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, results_table
    from .model import VisualPlanner

    results = {}
    for name in args.baselines:
        results[name] = evaluate(name, args.sizes, args.n, args.seed)
    for folder in args.model:
        model = VisualPlanner.load(folder)
        if args.routing:
            model.config.routing = args.routing
        if args.render:
            model.config.render = args.render
        label = ("rsr" if model.config.recursive else "non-recursive") + f" ({Path(folder).name})"
        start = time.time()
        results[label] = evaluate(model, args.sizes, args.n, args.seed)
        print(f"{label}: evaluated in {time.time() - start:.0f} s")
    table = results_table(results)
    print(table)
    if args.json:
        data = {name: {str(s): vars(st) for s, st in stats.items()} for name, stats in results.items()}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0


def _show(args: argparse.Namespace) -> int:
    from .evaluate import heldout_maps, save_strip
    from .model import VisualPlanner

    model = VisualPlanner.load(args.model)
    desc = heldout_maps(args.size, args.index + 1, args.seed)[args.index]
    summary = save_strip(model, desc, args.out, args.scale)
    print(f"map {desc}: {json.dumps(summary)}; wrote {args.out}")
    return 0


def add_frozenlake_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``frozenlake train``, ``frozenlake eval`` and ``frozenlake show`` to ``subparsers``."""
    fl = subparsers.add_parser(
        "frozenlake",
        help="FrozenLake visual planning with action-routed RSR experts (train, eval, show)",
        description="Visual planning in FrozenLake (paper Sec. 4.4): an RSR planner whose 4 experts are the 4 "
        "actions, trained by forcing the true action and evaluated in closed loop in FrozenLake-v1.",
    )
    commands = fl.add_subparsers(dest="frozenlake_command", required=True, metavar="{train,eval,show}")

    t = commands.add_parser("train", help="train an RSR planner or the non-recursive baseline",
                            description="Train on BFS plans of training-split maps; writes planner.json, "
                            "planner.safetensors and train_summary.json to --out. Seeded; deterministic on CPU.")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--model", choices=("rsr", "flat"), default="rsr",
                   help="rsr: recursive planner; flat: non-recursive baseline of the same size (default rsr)")
    t.add_argument("--sizes", type=_sizes, default=(3, 4, 5, 6, 7, 8), help="map sizes, e.g. '3,4' (default 3..8)")
    t.add_argument("--maps-per-size", type=positive_int, default=2000, help="training maps per size (default 2000)")
    t.add_argument("--steps", type=positive_int, default=6000, help="optimizer steps (default 6000)")
    t.add_argument("--max-minutes", type=float, default=None, help="stop after this much wall time")
    t.add_argument("--batch", type=positive_int, default=32, help="maps per batch, one size per batch (default 32)")
    t.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate (default 1e-3)")
    t.add_argument("--warmup", type=int, default=100, help="linear warm-up steps (default 100)")
    t.add_argument("--recon-weight", type=float, default=None,
                   help="weight of the frame loss (default 1 for --decoder cells, 10 for pixels)")
    t.add_argument("--decoder", choices=("cells", "pixels"), default="cells",
                   help="cells: per-cell categorical appearance, drawn with the env's tiles (default); "
                   "pixels: pixel regression (MSE)")
    t.add_argument("--decoder-layers", type=positive_int, default=1, help="decoder transformer layers (default 1)")
    t.add_argument("--positions", choices=("sincos", "learned"), default="sincos",
                   help="cell positions: fixed sin/cos integer-grid codes (default) or learned row/col tables")
    t.add_argument("--routing", choices=("sample", "token"), default="sample",
                   help="inference routing stored with the planner: one action per sample per step (default) "
                   "or the core's per-token argmax")
    t.add_argument("--render", choices=("argmax", "one_agent"), default="one_agent",
                   help="how the cells decoder draws a frame, stored with the planner: exactly one agent per frame, "
                   "on the cell with the highest agent probability (default), or the argmax of every cell")
    t.add_argument("--cell-px", type=positive_int, default=8, help="pixels per cell (divides 64; default 8)")
    t.add_argument("--width", type=positive_int, default=64, help="transformer width (default 64)")
    t.add_argument("--heads", type=positive_int, default=4, help="attention heads (default 4)")
    t.add_argument("--layers", type=positive_int, default=4, help="DiT blocks; RSR on the last (default 4)")
    t.add_argument("--rank", type=positive_int, default=16, help="LoRA rank of each expert (default 16)")
    t.add_argument("--plan-steps", type=positive_int, default=16, help="longest plan P (default 16)")
    t.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    t.add_argument("--log-every", type=positive_int, default=100, help="log interval in steps (default 100)")
    t.set_defaults(func=_train)

    e = commands.add_parser("eval", help="closed-loop success / hole / invalid-move rates on held-out maps",
                            description="Replay plans in FrozenLake-v1 (is_slippery=False) on held-out maps and "
                            "print a markdown table per map size.")
    e.add_argument("--model", nargs="*", default=[], help="planner folders written by `frozenlake train`")
    e.add_argument("--baselines", nargs="*", choices=("random", "oracle"), default=["random", "oracle"],
                   help="reference planners to include (default: random oracle)")
    e.add_argument("--sizes", type=_sizes, default=(3, 4, 5, 6, 7, 8), help="map sizes (default 3..8)")
    e.add_argument("--n", type=positive_int, default=200, help="held-out maps per size (default 200)")
    e.add_argument("--seed", type=int, default=0, help="map-set seed (default 0)")
    e.add_argument("--json", help="also write the numbers to this JSON file")
    e.add_argument("--routing", choices=("sample", "token"), default=None,
                   help="override the planners' inference routing (default: the one stored with each)")
    e.add_argument("--render", choices=("argmax", "one_agent"), default=None,
                   help="override how the cells decoder draws frames (default: the one stored with each)")
    e.set_defaults(func=_eval)

    s = commands.add_parser("show", help="write the decoded step-by-step strip of a held-out map as a PNG",
                            description="Top row: the start frame and the frame decoded after every latent step "
                            "(up to the goal or a hole); bottom row: the BFS plan's true frames.")
    s.add_argument("--model", required=True, help="RSR planner folder")
    s.add_argument("--size", type=int, choices=range(3, 9), default=4, help="map size (default 4)")
    s.add_argument("--index", type=int, default=0, help="index of the held-out map (default 0)")
    s.add_argument("--seed", type=int, default=0, help="map-set seed (default 0)")
    s.add_argument("--scale", type=positive_int, default=2, help="upscaling of the PNG (default 2)")
    s.add_argument("--out", required=True, help="output .png")
    s.set_defaults(func=_show)
    return fl
