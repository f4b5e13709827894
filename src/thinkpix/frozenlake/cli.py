"""``thinkpix frozenlake train|eval|show``: FrozenLake visual planning from the command line.

``add_frozenlake_parser(sub)`` adds the subcommands to the main parser's subparsers; each sets
``func(args) -> exit code``. Heavy imports (torch, diffusers) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from ..argtypes import positive_int
from ..flags import add_config_flags, config_values
from .config import PLANNER_ROUTINGS, RENDERS, PlannerConfig, TrainConfig, parse_sizes
from .maps import MAX_SIZE, MIN_SIZE

PLANNER_SKIP = ("recursive", "seed")  # --model rsr|flat; --seed seeds planner and training alike


def _sizes(text: str) -> tuple[int, ...]:
    sizes = parse_sizes(text) if text.strip() else ()
    if not sizes or any(not MIN_SIZE <= s <= MAX_SIZE for s in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be integers in {MIN_SIZE}..{MAX_SIZE}, got {text!r}")
    return sizes


def _train(args: argparse.Namespace) -> int:
    import torch

    from .model import VisualPlanner, parameter_count
    from .train import train_planner

    cfg = TrainConfig(**config_values(args, args.train_fields))
    planner = PlannerConfig(recursive=args.model == "rsr", seed=cfg.seed, **config_values(args, args.planner_fields))
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True)
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
                   help="rsr: recursive planner; flat: non-recursive baseline of the same size")
    train_fields = add_config_flags(t.add_argument_group("training (frozenlake TrainConfig)"), TrainConfig,
                                    asdict(TrainConfig()))
    planner_fields = add_config_flags(t.add_argument_group("planner (PlannerConfig, saved with it)"), PlannerConfig,
                                      asdict(PlannerConfig()), skip=PLANNER_SKIP)
    t.set_defaults(train_fields=train_fields, planner_fields=planner_fields)
    t.add_argument("--log-every", type=positive_int, default=100, help="log interval in steps")
    t.set_defaults(func=_train)

    e = commands.add_parser("eval", help="closed-loop success / hole / invalid-move rates on held-out maps",
                            description="Replay plans in FrozenLake-v1 (is_slippery=False) on held-out maps and "
                            "print a markdown table per map size.")
    e.add_argument("--model", nargs="*", default=[], help="planner folders written by `frozenlake train`")
    e.add_argument("--baselines", nargs="*", choices=("random", "oracle"), default=["random", "oracle"],
                   help="reference planners to include")
    e.add_argument("--sizes", type=_sizes, default=(3, 4, 5, 6, 7, 8), help="map sizes, e.g. 3,4")
    e.add_argument("--n", type=positive_int, default=200, help="held-out maps per size")
    e.add_argument("--seed", type=int, default=0, help="map-set seed")
    e.add_argument("--json", help="also write the numbers to this JSON file")
    e.add_argument("--routing", choices=PLANNER_ROUTINGS, default=None,
                   help="override the planners' inference routing (default: the one stored with each)")
    e.add_argument("--render", choices=RENDERS, default=None,
                   help="override how the cells decoder draws frames (default: the one stored with each)")
    e.set_defaults(func=_eval)

    s = commands.add_parser("show", help="write the decoded step-by-step strip of a held-out map as a PNG",
                            description="Top row: the start frame and the frame decoded after every latent step "
                            "(up to the goal or a hole); bottom row: the BFS plan's true frames.")
    s.add_argument("--model", required=True, help="RSR planner folder")
    s.add_argument("--size", type=int, choices=range(MIN_SIZE, MAX_SIZE + 1), default=4, help="map size")
    s.add_argument("--index", type=int, default=0, help="index of the held-out map")
    s.add_argument("--seed", type=int, default=0, help="map-set seed")
    s.add_argument("--scale", type=positive_int, default=2, help="upscaling of the PNG")
    s.add_argument("--out", required=True, help="output .png")
    s.set_defaults(func=_show)
    return fl
