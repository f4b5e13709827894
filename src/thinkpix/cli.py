"""The ``thinkpix`` command line. Subcommands are added as the engine grows (see README, "Status")."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import __version__
from .core.config import RSRConfig


def _info(args: argparse.Namespace) -> int:
    cfg = RSRConfig(num_experts=args.num_experts, latent_steps=args.latent_steps)
    print(json.dumps({"thinkpix": __version__, "default_config": cfg.to_dict()}, indent=2))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .models.checkpoint import checkpoint_info

    info = checkpoint_info(args.checkpoint)
    print(json.dumps(info, indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    print(
        "thinkpix demo (fine-tune RSR on the Shapes world, sample, score) needs the training engine and the "
        "shipped Shapes base models, which are not in this version yet. See README, 'Status'.",
        file=sys.stderr,
    )
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thinkpix", description="Recursive Sparse Reasoning for diffusers")
    parser.add_argument("--version", action="version", version=f"thinkpix {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print the version and an RSRConfig as JSON")
    info.add_argument("--num-experts", type=int, default=2)
    info.add_argument("--latent-steps", type=int, default=2)
    info.set_defaults(func=_info)
    inspect = sub.add_parser("inspect", help="print the config and metadata of an RSR checkpoint folder")
    inspect.add_argument("checkpoint", help="folder with rsr_config.json and rsr_weights.safetensors")
    inspect.set_defaults(func=_inspect)
    demo = sub.add_parser("demo", help="the Shapes-world demo (not available yet)")
    demo.add_argument("--out", default="runs/demo")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"thinkpix {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
