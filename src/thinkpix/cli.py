"""The ``thinkpix`` command line: ``pretrain``, ``finetune``, ``sample``, ``demo``, ``shapes``, ``analyze``, ``info``,
``inspect``.

Option names follow diffusers' LoRA training scripts (``--pretrained-model-name-or-path``,
``--rank``, ``--checkpointing-steps``, ``--resume-from-checkpoint latest``, ``--validation-prompt``,
``--mixed-precision``, ``--report-to``). Errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import notices_to_stderr

TRAIN_FIELDS = ("num_experts", "latent_steps", "rank", "gumbel_tau", "routing", "gate_input", "balance_loss_weight",
                "halting", "halt_threshold", "ponder_weight", "learning_rate", "lr_scheduler",
                "lr_warmup_steps", "lr_decay_steps", "batch_size",
                "gradient_accumulation_steps", "max_steps", "mixed_precision", "ema_decay", "checkpointing_steps",
                "checkpoints_total_limit", "validation_steps", "seed")


def _layers(text: str):
    if text in ("middle", "three"):
        return text
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers {text!r}: use 'middle', 'three' or indices like 4,8,12") from None


def _add_train_options(p: argparse.ArgumentParser, default_preset: str) -> None:
    p.add_argument("--train-data-dir", required=True, help="image-caption folder (metadata.jsonl) or class folder")
    p.add_argument("--output-dir", required=True, help="checkpoints, logs, validation grids and final weights")
    p.add_argument("--preset", default=default_preset, help="named TrainConfig preset (see thinkpix.train.PRESETS)")
    p.add_argument("--image-size", type=int, default=None, help="resize images to this square size")
    p.add_argument("--resume-from-checkpoint", default=None,
                   help="'latest', a checkpoint name in <output-dir>/checkpoints (checkpoint-20) or a folder")
    p.add_argument("--overwrite-output-dir", action="store_true",
                   help="start over in an --output-dir that holds another run's checkpoints (deletes them)")
    p.add_argument("--validation-prompt", action="append", default=None,
                   help="prompt (or class id for class models) sampled every --validation-steps; repeatable")
    p.add_argument("--report-to", default="tensorboard", choices=("tensorboard", "none"))
    p.add_argument("--num-experts", type=int)
    p.add_argument("--latent-steps", type=int)
    p.add_argument("--rank", type=int)
    p.add_argument("--layers", type=_layers, help="'middle', 'three' or block indices like 4,8,12")
    p.add_argument("--gumbel-tau", type=float)
    p.add_argument("--routing", choices=("learned", "random"))
    p.add_argument("--gate-input", choices=("full", "tokens"),
                   help="what the gate sees: tokens + condition + step (paper) or tokens only (Fig. 4 ablation)")
    p.add_argument("--balance-loss-weight", type=float)
    p.add_argument("--halting", choices=("none", "delta", "confidence", "learned"),
                   help="adaptive halting of the latent steps at inference (learned: trains an ACT halting head)")
    p.add_argument("--halt-threshold", type=float, help="halting criterion threshold (default: the criterion's)")
    p.add_argument("--ponder-weight", type=float, help="weight of the learned halting head's ponder cost")
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--lr-scheduler", choices=("constant", "linear", "cosine"),
                   help="decay to 0 at --max-steps after --lr-warmup-steps (default constant)")
    p.add_argument("--lr-warmup-steps", type=int)
    p.add_argument("--lr-decay-steps", type=int,
                   help="decay only over the last N steps (warmup-stable-decay; e.g. a cool-down of a resumed run)")
    p.add_argument("--batch-size", type=int, help="global batch per optimizer step (all processes)")
    p.add_argument("--gradient-accumulation-steps", type=int)
    p.add_argument("--max-steps", "--max-train-steps", dest="max_steps", type=int)
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"))
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--checkpointing-steps", type=int)
    p.add_argument("--checkpoints-total-limit", type=int)
    p.add_argument("--validation-steps", type=int)
    p.add_argument("--step-checkpointing", action="store_true", default=None,
                   help="activation checkpointing across latent steps (less memory, more compute)")
    p.add_argument("--fsdp", action="store_true", default=None,
                   help="shard the transformer's blocks, gradients and optimizer state over the processes "
                        "(FSDP2; launch with accelerate launch --num_processes N)")
    p.add_argument("--seed", type=int)


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="pipeline folder, hub id, or shapes-t2i / shapes-class")
    p.add_argument("--rsr", default=None, help="RSR checkpoint folder to load into the transformer")
    p.add_argument("--num-inference-steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=4.0)
    p.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                   help="guide only at noise levels LOW..HIGH (fractions of the training timesteps; Shapes "
                        "pipelines only); default: the pipeline's own (model_index.json), 0 1 guides every step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)


def _train_config(args: argparse.Namespace, **fixed):
    from .train import preset

    overrides = {name: getattr(args, name, None) for name in TRAIN_FIELDS}
    overrides.update(layers=getattr(args, "layers", None), step_checkpointing=args.step_checkpointing,
                     fsdp=args.fsdp, **fixed)
    return preset(args.preset, **overrides)


def _validation(args, data) -> list | None:
    """Validation prompts, or class names / integer class ids (the pipeline's ids, not folder positions)."""
    if data.kind == "caption":
        return args.validation_prompt or sorted(set(data.captions))[:4]
    classes = args.validation_prompt or data.class_names[:4]
    return [int(c) if c.isdigit() else c for c in classes]


def _run_training(args: argparse.Namespace, target, data, cfg) -> int:
    from .train import train

    result = train(target, data, cfg, args.output_dir, resume=args.resume_from_checkpoint,
                   validation=_validation(args, data), report_to=None if args.report_to == "none" else args.report_to,
                   overwrite=args.overwrite_output_dir)
    if result.main_process:  # one report per run, not one per process
        print(json.dumps({"step": result.step, "final_loss": result.final_loss, "weights": str(result.final)}))
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from .train import TrainTarget, load_image_folder, load_pipeline
    from .train.sharding import check_launch

    cfg = _train_config(args, method=args.method)  # cheap checks first: config, launch, data, then the model
    if cfg.fsdp:
        check_launch()
    data = load_image_folder(args.train_data_dir, args.image_size)
    return _run_training(args, TrainTarget(load_pipeline(args.pretrained_model_name_or_path)), data, cfg)


def _pretrain(args: argparse.Namespace) -> int:
    from .shapes import SHAPES_MODELS, ShapesClassPipeline, ShapesTextToImagePipeline
    from .train import TrainTarget, load_image_folder, load_pipeline

    if args.model not in SHAPES_MODELS:
        raise ValueError(f"unknown Shapes model {args.model!r}; allowed models are {sorted(SHAPES_MODELS)}")
    cfg = _train_config(args, method="full")
    data = load_image_folder(args.train_data_dir, args.image_size)
    pipeline_cls = ShapesTextToImagePipeline if args.model.startswith("mmdit") else ShapesClassPipeline
    if args.init_from is None:
        extra = {} if pipeline_cls is ShapesTextToImagePipeline else {"scheduler": args.scheduler}
        return _run_training(args, TrainTarget(pipeline_cls.from_scratch(args.model, seed=cfg.seed, **extra)), data,
                             cfg)
    # Continue a base (e.g. the shipped one) with a fresh optimizer: how `make bases` extends a budget.
    pipeline = load_pipeline(args.init_from)
    if not isinstance(pipeline, pipeline_cls):
        raise ValueError(f"--init-from {args.init_from!r} is a {type(pipeline).__name__}; --model {args.model} "
                         f"needs a {pipeline_cls.__name__}")
    return _run_training(args, TrainTarget(pipeline), data, cfg)


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
    return 0


def _generate_geneval(args: argparse.Namespace) -> int:
    from .eval.geneval import generate_geneval, generate_protocol
    from .sampling import load_target
    from .shapes.metadata import read_metadata_jsonl
    from .shapes.prompts import evaluation_metadata, training_metadata

    if args.protocol:
        target = load_target(args.model, args.rsr, args.guidance_interval)
        print(generate_protocol(target, args.protocol, args.out, seed=args.seed, steps=args.num_inference_steps,
                                guidance_scale=args.guidance_scale))
        return 0
    if args.metadata:
        records = read_metadata_jsonl(args.metadata)
    else:
        records = evaluation_metadata() if args.split == "eval" else training_metadata()
    target = load_target(args.model, args.rsr, args.guidance_interval)
    print(generate_geneval(target, records[: args.limit], args.out, samples=args.samples, seed=args.seed,
                           steps=args.num_inference_steps, guidance_scale=args.guidance_scale))
    return 0


def _report_scores(args: argparse.Namespace, score_folder, format_rows) -> int:
    """Score ``args.folder``, print the one-row table, and write ``--json`` when asked."""
    scores, results = score_folder(args.folder)
    print(format_rows({Path(args.folder).name: scores}))
    if args.json:
        Path(args.json).write_text(json.dumps({"scores": scores, "images": len(results)}, indent=2))
    return 0


def _eval_geneval(args: argparse.Namespace) -> int:
    from .eval.geneval import format_scores, score_geneval_folder

    return _report_scores(args, score_geneval_folder, format_scores)


def _generate_dpg(args: argparse.Namespace) -> int:
    from .eval.dpg import dpg_prompts, generate_dpg
    from .sampling import load_target

    items = dpg_prompts(args.num_prompts, split=args.split, seed=args.prompt_seed)
    target = load_target(args.model, args.rsr, args.guidance_interval)
    print(generate_dpg(target, items, args.out, samples=args.samples, seed=args.seed,
                       steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                       info={"model": str(args.model), "rsr": args.rsr, "split": args.split,
                             "prompt_seed": args.prompt_seed}))
    return 0


def _eval_dpg(args: argparse.Namespace) -> int:
    from .eval.dpg import format_dpg_scores, score_dpg_folder

    return _report_scores(args, score_dpg_folder, format_dpg_scores)


def _eval_fid(args: argparse.Namespace) -> int:
    from .eval.fid import evaluate_folders_or_npz, format_metrics

    metrics = evaluate_folders_or_npz(args.ref, args.samples, extractor=args.extractor,
                                      weights=args.inception_weights if args.extractor == "inception" else None,
                                      batch_size=args.batch_size)
    print(format_metrics(metrics))
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2))
    return 0


def _train_extractor(args: argparse.Namespace) -> int:
    from .eval.train_extractor import train_extractor

    config = train_extractor(args.out, per_class=args.per_class, epochs=args.epochs, seed=args.seed)
    print(json.dumps({"out": args.out, "test_accuracy": config["test"]["accuracy"]}))
    return 0


def _sample_npz(args: argparse.Namespace) -> int:
    from .eval.sample_npz import sample_npz

    out = sample_npz(args.model, args.num_samples, args.out, rsr=args.rsr, seed=args.seed,
                     batch_size=args.batch_size, steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                     split=args.split, guidance_interval=args.guidance_interval)
    if out is not None:
        print(out)
    return 0


def _info(args: argparse.Namespace) -> int:
    from .core.config import RSRConfig

    cfg = RSRConfig(num_experts=args.num_experts, latent_steps=args.latent_steps)
    print(json.dumps({"thinkpix": __version__, "default_config": cfg.to_dict()}, indent=2))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .models.checkpoint import checkpoint_info

    print(json.dumps(checkpoint_info(args.checkpoint), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thinkpix", description="Recursive Sparse Reasoning for diffusers")
    parser.add_argument("--version", action="version", version=f"thinkpix {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("finetune", help="fine-tune RSR (or LoRA SFT) into an SD3 / DiT pipeline")
    p.add_argument("--pretrained-model-name-or-path", required=True,
                   help="pipeline folder, hub id, or a shipped base: shapes-t2i, shapes-class")
    p.add_argument("--method", choices=("rsr", "sft"), default="rsr", help="sft = plain LoRA (RSR with M=1, T=1)")
    _add_train_options(p, "shapes")
    p.set_defaults(func=_finetune)

    p = sub.add_parser("pretrain", help="train a Shapes base model (and its text encoder) from scratch")
    p.add_argument("--model", required=True, help="Shapes model factory, e.g. mmdit-s (text) or dit-s (class)")
    p.add_argument("--init-from", default=None,
                   help="start from this pipeline's weights (folder or shapes-t2i / shapes-class) instead of scratch")
    p.add_argument("--scheduler", choices=("flow", "ddim"), default="flow",
                   help="class models: rectified flow (default, converges sooner) or DDIM noise prediction (DiT's)")
    _add_train_options(p, "shapes-pretrain")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("sample", help="sample prompts or classes to a PNG grid plus individual files")
    _add_sampling_options(p)
    p.add_argument("--prompt", action="append", help="repeatable")
    p.add_argument("--prompts-file", help="one prompt per line")
    p.add_argument("--class-label", action="append", help="class id or label name (e.g. red_circle), repeatable")
    p.add_argument("--num-images", type=int, default=1, help="images per prompt/class")
    p.set_defaults(func=_sample)

    p = sub.add_parser("demo", help="fine-tune RSR on the Shapes world, sample held-out prompts, score, report")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="a much shorter run (for tests)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("generate", help="sample a benchmark's prompts in its official layout")
    gen = p.add_subparsers(dest="benchmark", required=True)
    p = gen.add_parser("geneval", help="GenEval layout: <out>/<index>/metadata.jsonl + samples/<n>.png")
    _add_sampling_options(p)
    p.add_argument("--metadata", help="GenEval metadata jsonl (default: the Shapes held-out set, see --split)")
    p.add_argument("--split", choices=("eval", "train"), default="eval")
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    p.add_argument("--samples", type=int, default=4, help="images per prompt (GenEval: 4)")
    from .shapes.protocol import PROTOCOLS

    p.add_argument("--protocol", choices=tuple(PROTOCOLS), default=None,
                   help="a named Shapes-GenEval protocol (v2: balanced, per-image noise; v1: the original 2 a "
                        "prompt); sets the prompts and samples, so --metadata/--split/--limit/--samples are unused")
    p.set_defaults(func=_generate_geneval)
    p = gen.add_parser("dpg", help="Shapes-DPG layout: <out>/<index>/item.json (+ questions) + samples/<n>.png")
    _add_sampling_options(p)
    p.add_argument("--split", choices=("eval", "train", "all"), default="eval",
                   help="eval: prompts with a held-out binding; train: none; all: both")
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--prompt-seed", type=int, default=0, help="seed of the dense prompts drawn")
    p.add_argument("--samples", type=int, default=4, help="images per prompt (DPG-Bench: 4)")
    p.set_defaults(func=_generate_dpg)

    p = sub.add_parser("sample-npz", help="sample N images (sharded over accelerate processes) into an ADM-style "
                                          ".npz (arr_0: uint8 NHWC)")
    _add_sampling_options(p)
    p.add_argument("--num-samples", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (also the unit of sharding)")
    p.add_argument("--split", choices=("eval", "train"), default="eval", help="text models: prompt split drawn from")
    p.set_defaults(func=_sample_npz)

    p = sub.add_parser("eval", help="score a folder written by `thinkpix generate`")
    ev = p.add_subparsers(dest="benchmark", required=True)
    p = ev.add_parser("geneval", help="per-tag and overall GenEval scores with the Shapes detector")
    p.add_argument("folder")
    p.add_argument("--json", help="also write the scores to this file")
    p.set_defaults(func=_eval_geneval)
    p = ev.add_parser("dpg", help="per-category and overall Shapes-DPG scores of a `generate dpg` folder")
    p.add_argument("folder")
    p.add_argument("--json", help="also write the scores to this file")
    p.set_defaults(func=_eval_dpg)
    p = ev.add_parser("fid", help="FID, sFID, IS, precision and recall (ADM evaluator) of samples vs a reference")
    p.add_argument("--ref", required=True, help="reference images: an image folder or an .npz (arr_0, uint8 NHWC)")
    p.add_argument("--samples", required=True, help="sampled images: an image folder or an .npz")
    p.add_argument("--extractor", default="shapes", help="feature extractor: shapes (shipped) or inception")
    p.add_argument("--inception-weights", help="local FID Inception weights file (for --extractor inception)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", help="also write the metrics to this file")
    p.set_defaults(func=_eval_fid)
    p = ev.add_parser("train-extractor", help="train the shapes feature extractor on the Shapes class dataset")
    p.add_argument("--out", default="src/thinkpix/assets/shapes-features")
    p.add_argument("--per-class", type=int, default=1000, help="training images per class (28 classes)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_train_extractor)

    from .analysis.routing import add_analyze_parser
    from .frozenlake.cli import add_frozenlake_parser
    from .shapes.cli import add_shapes_parser

    add_shapes_parser(sub)
    add_frozenlake_parser(sub)
    add_analyze_parser(sub)

    p = sub.add_parser("info", help="print the version and an RSRConfig as JSON")
    p.add_argument("--num-experts", type=int, default=2)
    p.add_argument("--latent-steps", type=int, default=2)
    p.set_defaults(func=_info)
    p = sub.add_parser("inspect", help="print the config and metadata of an RSR checkpoint folder")
    p.add_argument("checkpoint", help="folder with rsr_config.json and rsr_weights.safetensors")
    p.set_defaults(func=_inspect)
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

        print(f"thinkpix {args.command}: {interrupt_message(err, argv)}", file=sys.stderr)
        return 130
    except (ValueError, OSError, NotImplementedError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"thinkpix {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
