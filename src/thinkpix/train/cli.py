"""``thinkpix finetune`` and ``thinkpix pretrain``.

Their RSR and training flags are generated from the fields of ``RSRConfig`` and ``TrainConfig``
(``thinkpix.flags``): a field added to either config is a flag here with nothing else to edit. The
names follow diffusers' LoRA training scripts, with diffusers' meanings where ours differ:
``--train-batch-size`` is per device (``--batch-size`` is our global batch), ``--resolution`` is
``--image-size``. ``thinkpix.cli`` registers the commands; their options are added here when one is used.
Heavy imports (torch, diffusers) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import fields

from ..core.config import RSRConfig
from ..flags import add_config_flags, config_values
from .config import TrainConfig, preset

FINETUNE_METHODS = ("rsr", "sft")


def _add_run_options(p: argparse.ArgumentParser, default_preset: str) -> None:
    """Where data and outputs live, and how the run is watched: everything that is not a config field."""
    p.add_argument("--train-data-dir", required=True, help="image-caption folder (metadata.jsonl) or class folder")
    p.add_argument("--output-dir", required=True, help="checkpoints, logs, validation grids and final weights")
    p.add_argument("--preset", default=default_preset,
                   help="named TrainConfig preset (thinkpix.train.PRESETS); the flags below override its values")
    p.add_argument("--image-size", "--resolution", type=int, default=None,
                   help="resize images to this square size (diffusers' --resolution)")
    p.add_argument("--caption-column", default="text", help="metadata.jsonl key holding the caption")
    p.add_argument("--train-batch-size", type=int, default=None,
                   help="per-device batch (diffusers' meaning): --batch-size becomes this x "
                        "--gradient-accumulation-steps x processes")
    p.add_argument("--resume-from-checkpoint", default=None,
                   help="'latest', a checkpoint name in <output-dir>/checkpoints (checkpoint-20) or a folder")
    p.add_argument("--overwrite-output-dir", action="store_true",
                   help="start over in an --output-dir that holds another run's checkpoints (deletes them)")
    p.add_argument("--validation-prompt", action="append", default=None,
                   help="prompt (or class id for class models) sampled every --validation-steps; repeatable")
    p.add_argument("--report-to", default="tensorboard", choices=("tensorboard", "none"),
                   help="tracker of the losses, learning rate and routing statistics (logs under --output-dir)")


def _add_config_options(p: argparse.ArgumentParser, default_preset: str, skip: tuple[str, ...]) -> None:
    defaults = preset(default_preset)
    note = f"defaults are those of --preset {default_preset}"
    rsr = add_config_flags(p.add_argument_group("RSR (thinkpix.RSRConfig)", note), RSRConfig, defaults.rsr.given(),
                           skip=("seed",))  # TrainConfig.seed seeds RSR too
    train = add_config_flags(p.add_argument_group("training (thinkpix.train.TrainConfig)", note), TrainConfig,
                             {f.name: getattr(defaults, f.name) for f in fields(TrainConfig)}, skip=skip,
                             choices={"method": FINETUNE_METHODS})
    p.set_defaults(config_fields=tuple(rsr + train))


def train_config(args: argparse.Namespace, **fixed) -> TrainConfig:
    """The preset with the config flags given on the command line (and ``fixed``) applied."""
    values = {**config_values(args, args.config_fields), **fixed}
    if args.train_batch_size is not None:
        values["batch_size"] = _global_batch(args.train_batch_size, values, preset(args.preset))
    return preset(args.preset, **values)


def _global_batch(per_device: int, values: dict, defaults: TrainConfig) -> int:
    """``--train-batch-size`` (per device, per micro-step) as our global ``batch_size``."""
    accumulation = values.get("gradient_accumulation_steps", defaults.gradient_accumulation_steps)
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch / torchrun
    total = per_device * accumulation * world
    if per_device < 1:
        raise ValueError(f"--train-batch-size {per_device} is invalid: allowed values are integers >= 1")
    if values.get("batch_size", total) != total:
        raise ValueError(f"--batch-size {values['batch_size']} (global) disagrees with --train-batch-size "
                         f"{per_device} (per device) x {accumulation} accumulation steps x {world} processes = "
                         f"{total}: give one of them")
    return total


def _validation(args: argparse.Namespace, data) -> list | None:
    """Validation prompts, or class names / integer class ids (the pipeline's ids, not folder positions)."""
    if data.kind == "caption":
        return args.validation_prompt or sorted(set(data.captions))[:4]
    classes = args.validation_prompt or data.class_names[:4]
    return [int(c) if c.isdigit() else c for c in classes]


def _run_training(args: argparse.Namespace, target, data, cfg: TrainConfig) -> int:
    from . import train  # thinkpix.train.train, looked up on the package (where callers may wrap it)

    result = train(target, data, cfg, args.output_dir, resume=args.resume_from_checkpoint,
                   validation=_validation(args, data), report_to=None if args.report_to == "none" else args.report_to,
                   overwrite=args.overwrite_output_dir)
    if result.main_process:  # one report per run, not one per process
        print(json.dumps({"step": result.step, "final_loss": result.final_loss, "weights": str(result.final)}))
    return 0


def _load_data(args: argparse.Namespace):
    from .data import load_image_folder

    return load_image_folder(args.train_data_dir, args.image_size, args.caption_column)


def _finetune(args: argparse.Namespace) -> int:
    cfg = train_config(args)  # cheap checks first: config, launch, data, then the model
    if cfg.fsdp:
        from .sharding import check_launch

        check_launch()
    data = _load_data(args)
    from ..pipelines import TrainTarget, load_pipeline

    return _run_training(args, TrainTarget(load_pipeline(args.pretrained_model_name_or_path)), data, cfg)


def _pretrain(args: argparse.Namespace) -> int:
    from ..pipelines import TrainTarget, load_pipeline
    from ..shapes import SHAPES_MODELS, ShapesClassPipeline, ShapesTextToImagePipeline

    if args.model not in SHAPES_MODELS:
        raise ValueError(f"unknown Shapes model {args.model!r}; allowed models are {sorted(SHAPES_MODELS)}")
    cfg = train_config(args, method="full")
    data = _load_data(args)
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


def add_finetune_options(p: argparse.ArgumentParser) -> None:
    """The options of ``thinkpix finetune`` (``Parser(fill=...)`` calls this when the command is used)."""
    p.add_argument("--pretrained-model-name-or-path", required=True,
                   help="pipeline folder, hub id, or a shipped base: shapes-t2i, shapes-class")
    _add_run_options(p, "shapes")
    _add_config_options(p, "shapes", skip=())
    p.set_defaults(func=_finetune)


def add_pretrain_options(p: argparse.ArgumentParser) -> None:
    """The options of ``thinkpix pretrain``."""
    p.add_argument("--model", required=True, help="Shapes model factory, e.g. mmdit-s (text) or dit-s (class)")
    p.add_argument("--init-from", default=None,
                   help="start from this pipeline's weights (folder or shapes-t2i / shapes-class) instead of scratch")
    p.add_argument("--scheduler", choices=("flow", "ddim"), default="flow",
                   help="class models: rectified flow (default, converges sooner) or DDIM noise prediction (DiT's)")
    _add_run_options(p, "shapes-pretrain")
    _add_config_options(p, "shapes-pretrain", skip=("method",))
    p.set_defaults(func=_pretrain)
