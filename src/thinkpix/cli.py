"""The ``thinkpix`` command line: ``finetune``, ``pretrain``, ``sample``, ``generate``, ``sample-npz``, ``eval``,
``demo``, ``shapes``, ``frozenlake``, ``analyze``, ``info``, ``inspect``.

Option names follow diffusers' LoRA training scripts (``--pretrained-model-name-or-path``,
``--rank``, ``--checkpointing-steps``, ``--resume-from-checkpoint latest``, ``--validation-prompt``,
``--mixed-precision``, ``--report-to``); each is also accepted with underscores, abbreviations are not
(``thinkpix.flags.Parser``). Parsing imports neither torch nor diffusers: each command's handler
imports what it needs. Errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .analysis.cli import add_analyze_parser
from .core.config import RSRConfig
from .errors import notices_to_stderr
from .eval.cli import add_eval_parser, add_generate_parser, add_sample_npz_parser
from .flags import Parser, add_config_flags, add_sampling_options, config_values
from .frozenlake.cli import add_frozenlake_parser
from .shapes.cli import add_shapes_parser


def _sample(args: argparse.Namespace) -> int:
    from .sampling import sample_to_folder

    conditions = args.prompt or [int(c) if c.isdigit() else c for c in (args.class_label or [])]
    if args.prompts_file:
        conditions = [line.strip() for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]
    if not conditions:
        raise ValueError("give --prompt, --prompts-file or --class-label")
    grid = sample_to_folder(args.model, conditions, args.out, rsr=args.rsr, steps=args.num_inference_steps,
                            guidance_scale=args.guidance_scale, seed=args.seed, images_per_condition=args.num_images,
                            guidance_interval=args.guidance_interval)
    print(grid)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    print(run_demo(Path(args.out), quick=args.quick))
    print(f"report: {Path(args.out) / 'report.md'} (grids base_grid.png and rsr_grid.png beside it)")
    return 0


def _info(args: argparse.Namespace) -> int:
    cfg = RSRConfig(**config_values(args, args.config_fields))
    print(json.dumps({"thinkpix": __version__, "default_config": cfg.to_dict()}, indent=2))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .models.checkpoint import checkpoint_info

    print(json.dumps(checkpoint_info(args.checkpoint), indent=2))
    return 0


def _add_train_parsers(sub: argparse._SubParsersAction) -> None:
    """``finetune`` and ``pretrain``, whose options (generated from TrainConfig) load only when used."""
    sub.add_parser("finetune", help="fine-tune RSR (or LoRA SFT) into an SD3 / DiT pipeline",
                   description="Fine-tune RSR (or plain LoRA with --method sft) into a diffusers pipeline. Every "
                               "--flag-name is also accepted as --flag_name.",
                   fill="thinkpix.train.cli:add_finetune_options")
    sub.add_parser("pretrain", help="train a Shapes base model (and its text encoder) from scratch",
                   fill="thinkpix.train.cli:add_pretrain_options")


def _add_sample_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample prompts or classes to a PNG grid plus individual files")
    add_sampling_options(p)
    p.add_argument("--prompt", action="append", help="repeatable")
    p.add_argument("--prompts-file", help="one prompt per line")
    p.add_argument("--class-label", action="append", help="class id or label name (e.g. red_circle), repeatable")
    p.add_argument("--num-images", type=int, default=1, help="images per prompt/class")
    p.set_defaults(func=_sample)


def _add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="fine-tune RSR on the Shapes world, sample held-out prompts, score, report")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="a much shorter run (for tests)")
    p.set_defaults(func=_demo)


def _add_info_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print the version and an RSRConfig (built from the flags) as JSON")
    p.set_defaults(func=_info, config_fields=add_config_flags(p, RSRConfig, RSRConfig().given()))
    p = sub.add_parser("inspect", help="print the config and metadata of an RSR checkpoint folder")
    p.add_argument("checkpoint", help="folder with rsr_config.json and rsr_weights.safetensors")
    p.set_defaults(func=_inspect)


COMMANDS = (_add_train_parsers, _add_sample_parser, _add_demo_parser, add_generate_parser,
            add_sample_npz_parser, add_eval_parser, add_shapes_parser, add_frozenlake_parser, add_analyze_parser,
            _add_info_parsers)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="thinkpix", description="Recursive Sparse Reasoning for diffusers. Every --flag-name is "
                                                 "also accepted as --flag_name.")
    parser.add_argument("--version", action="version", version=f"thinkpix {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; bad input (``UserError`` and other ``ValueError``, filesystem errors) prints one line and
    returns 2, Ctrl-C prints one line (with the resume command for training) and returns 130. Other
    exceptions are bugs and keep their traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    notices_to_stderr(f"thinkpix {args.command}")
    try:
        return args.func(args)
    except KeyboardInterrupt as err:
        from .train.interrupt import interrupt_message

        message = interrupt_message(err, argv)
        if message is not None:
            print(f"thinkpix {args.command}: {message}", file=sys.stderr)
        return 130
    except (ValueError, OSError, NotImplementedError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"thinkpix {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
