"""``thinkpix generate``, ``thinkpix sample-npz`` and ``thinkpix eval``: benchmark layouts and their scores.

Heavy imports (torch, diffusers) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..flags import add_sampling_options
from ..shapes.protocol import PROTOCOLS


def _generate_geneval(args: argparse.Namespace) -> int:
    from ..sampling import load_target
    from ..shapes.metadata import read_metadata_jsonl
    from ..shapes.prompts import evaluation_metadata, training_metadata
    from .geneval import generate_geneval, generate_protocol

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


def _generate_dpg(args: argparse.Namespace) -> int:
    from ..sampling import load_target
    from .dpg import dpg_prompts, generate_dpg

    items = dpg_prompts(args.num_prompts, split=args.split, seed=args.prompt_seed)
    target = load_target(args.model, args.rsr, args.guidance_interval)
    print(generate_dpg(target, items, args.out, samples=args.samples, seed=args.seed,
                       steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                       info={"model": str(args.model), "rsr": args.rsr, "split": args.split,
                             "prompt_seed": args.prompt_seed}))
    return 0


def _report_scores(args: argparse.Namespace, score_folder, format_rows) -> int:
    """Score ``args.folder``, print the one-row table, and write ``--json`` when asked."""
    scores, results = score_folder(args.folder)
    print(format_rows({Path(args.folder).name: scores}))
    if args.json:
        Path(args.json).write_text(json.dumps({"scores": scores, "images": len(results)}, indent=2))
    return 0


def _eval_geneval(args: argparse.Namespace) -> int:
    from .geneval import format_scores, score_geneval_folder

    return _report_scores(args, score_geneval_folder, format_scores)


def _eval_dpg(args: argparse.Namespace) -> int:
    from .dpg import format_dpg_scores, score_dpg_folder

    return _report_scores(args, score_dpg_folder, format_dpg_scores)


def _eval_fid(args: argparse.Namespace) -> int:
    from .fid import evaluate_folders_or_npz, format_metrics

    metrics = evaluate_folders_or_npz(args.ref, args.samples, extractor=args.extractor,
                                      weights=args.extractor_weights, batch_size=args.batch_size)
    print(format_metrics(metrics))
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2))
    return 0


def _train_extractor(args: argparse.Namespace) -> int:
    from .train_extractor import train_extractor

    config = train_extractor(args.out, per_class=args.per_class, epochs=args.epochs, seed=args.seed)
    print(json.dumps({"out": args.out, "test_accuracy": config["test"]["accuracy"]}))
    return 0


def _sample_npz(args: argparse.Namespace) -> int:
    from .sample_npz import sample_npz

    out = sample_npz(args.model, args.num_samples, args.out, rsr=args.rsr, seed=args.seed,
                     batch_size=args.batch_size, steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                     split=args.split, guidance_interval=args.guidance_interval)
    if out is not None:
        print(out)
    return 0


def add_generate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    generate = subparsers.add_parser("generate", help="sample a benchmark's prompts in its official layout")
    gen = generate.add_subparsers(dest="benchmark", required=True)
    p = gen.add_parser("geneval", help="GenEval layout: <out>/<index>/metadata.jsonl + samples/<n>.png")
    add_sampling_options(p)
    p.add_argument("--metadata", help="GenEval metadata jsonl (default: the Shapes held-out set, see --split)")
    p.add_argument("--split", choices=("eval", "train"), default="eval")
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    p.add_argument("--samples", type=int, default=4, help="images per prompt (GenEval: 4)")
    p.add_argument("--protocol", choices=tuple(PROTOCOLS), default=None,
                   help="a named Shapes-GenEval protocol (v2: balanced, per-image noise; v1: the original 2 a "
                        "prompt); sets the prompts and samples, so --metadata/--split/--limit/--samples are unused")
    p.set_defaults(func=_generate_geneval)
    p = gen.add_parser("dpg", help="Shapes-DPG layout: <out>/<index>/item.json (+ questions) + samples/<n>.png")
    add_sampling_options(p)
    p.add_argument("--split", choices=("eval", "train", "all"), default="eval",
                   help="eval: prompts with a held-out binding; train: none; all: both")
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--prompt-seed", type=int, default=0, help="seed of the dense prompts drawn")
    p.add_argument("--samples", type=int, default=4, help="images per prompt (DPG-Bench: 4)")
    p.set_defaults(func=_generate_dpg)
    return generate


def add_sample_npz_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("sample-npz", help="sample N images (sharded over accelerate processes) into an "
                                                 "ADM-style .npz (arr_0: uint8 NHWC)")
    add_sampling_options(p)
    p.add_argument("--num-samples", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (also the unit of sharding)")
    p.add_argument("--split", choices=("eval", "train"), default="eval", help="text models: prompt split drawn from")
    p.set_defaults(func=_sample_npz)
    return p


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    evaluate = subparsers.add_parser("eval", help="score a folder written by `thinkpix generate`")
    ev = evaluate.add_subparsers(dest="benchmark", required=True)
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
    p.add_argument("--extractor-weights", "--inception-weights", metavar="PATH",
                   help="the extractor's weights: for shapes a `train-extractor --out` folder (default: the shipped "
                        "one), for inception the local FID Inception weights file (required)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", help="also write the metrics to this file")
    p.set_defaults(func=_eval_fid)
    p = ev.add_parser("train-extractor", help="train the shapes feature extractor on the Shapes class dataset")
    p.add_argument("--out", default="runs/shapes-features",
                   help="output folder, for `eval fid --extractor-weights`; the shipped extractor that `eval fid` "
                        "uses by default, src/thinkpix/assets/shapes-features, is only replaced when named here")
    p.add_argument("--per-class", type=int, default=1000, help="training images per class (28 classes)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_train_extractor)
    return evaluate
