"""``thinkpix demo``: the whole story on the embedded Shapes world, offline, on a laptop CPU.

1. load the shipped text-to-image base (``shapes-t2i``);
2. write a Shapes fine-tuning set (training compositions only) as an image-caption folder;
3. fine-tune RSR (M=2, T=2 on the middle layer) with the ``shapes`` preset;
4. sample the held-out compositional prompts with the base and with RSR (same seeds);
5. score both with the Shapes GenEval scorer and write ``report.md`` with the table, sample grids and
   a routing plot.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .analysis.plots import plot_usage_heatmap
from .eval.geneval import format_scores, generate_geneval, geneval_grid, score_geneval_folder
from .models import remove_rsr, routing_trace, rsr_layers
from .shapes.dataset import make_dataset
from .shapes.prompts import evaluation_metadata
from .train import TrainTarget, load_image_folder, load_pipeline, preset, train

FULL = dict(train_images=2000, max_steps=300, samples=2, eval_steps=20)
QUICK = dict(train_images=64, max_steps=4, samples=1, eval_steps=4, prompts=12)


def _guidance(pipeline) -> str:
    """How the pipeline guides by default: the shipped base carries a guidance interval in its config."""
    interval = getattr(pipeline, "config", {}).get("guidance_interval")
    return "guidance 4" + (f" at noise levels {interval[0]:g}-{interval[1]:g}" if interval else " at every step")


def run_demo(out: Path, quick: bool = False, base: str = "shapes-t2i") -> str:
    """Run the demo into ``out``; returns the score table (also written to ``out/report.md``)."""
    plan = QUICK if quick else FULL
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    timings = {}
    started = time.perf_counter()
    data_dir = make_dataset(out / "data", n=plan["train_images"], seed=0, variant="caption", split="train")
    target = TrainTarget(load_pipeline(base))
    cfg = preset("shapes", method="rsr", num_experts=2, latent_steps=2, max_steps=plan["max_steps"],
                 validation_steps=0, checkpointing_steps=plan["max_steps"])
    records = evaluation_metadata()[: plan.get("prompts")]
    target.transformer.eval()
    generate_geneval(target, records, out / "samples" / "base", samples=plan["samples"], steps=plan["eval_steps"])
    timings["sample base"] = time.perf_counter() - started
    result = train(target, load_image_folder(data_dir), cfg, out / "finetune", report_to="tensorboard",
                   overwrite=True)  # a rerun of the demo starts over
    timings["fine-tune"] = time.perf_counter() - started - sum(timings.values())
    target.transformer.eval()
    with routing_trace(target.transformer) as trace:
        generate_geneval(target, records, out / "samples" / "rsr", samples=plan["samples"], steps=plan["eval_steps"])
    timings["sample RSR"] = time.perf_counter() - started - sum(timings.values())
    layer = next(iter(rsr_layers(target.transformer)))
    plot_usage_heatmap(trace, layer, out / "routing.png")
    remove_rsr(target.transformer)
    scores = {"base": score_geneval_folder(out / "samples" / "base")[0],
              "base + RSR (M=2, T=2)": score_geneval_folder(out / "samples" / "rsr")[0]}
    _, shown = geneval_grid(out / "samples" / "base", out / "base_grid.png")
    geneval_grid(out / "samples" / "rsr", out / "rsr_grid.png")
    table = format_scores(scores)
    (out / "scores.json").write_text(json.dumps(scores, indent=2))
    report = [
        "# thinkpix demo: RSR on the Shapes world", "",
        f"Command: `thinkpix demo{' --quick' if quick else ''}` (what `make demo` runs). "
        f"{len(records)} held-out prompts x {plan['samples']} samples, {plan['eval_steps']} sampling steps, "
        f"{_guidance(target.pipeline)}; "
        f"RSR fine-tuned for {result.step} steps (batch {cfg.batch_size}, rank {cfg.rank}, layer {layer}).", "",
        "## Shapes-GenEval on held-out compositions (percent)", "", table, "",
        "Held-out prompts combine colours, counts and relations never seen together in training; "
        "the numbers come from the classical detector and GenEval's rules (docs/results/shapes_scorer.md).", "",
        "## Samples", "",
        f"The first sample of each of the {shown} prompts, in the same order and with the same seeds for both "
        "models; each tile is marked pass (green) or FAIL (red) by the Shapes scorer.", "",
        "Base:", "", "![base](base_grid.png)", "",
        "RSR:", "", "![rsr](rsr_grid.png)", "",
        "## Routing", "", f"![routing](routing.png): expert usage of layer {layer} by diffusion timestep and latent "
        "step while sampling the held-out prompts.", "",
        "## Time (seconds, 2 CPU cores)", "", "\n".join(f"- {k}: {v:.0f}" for k, v in timings.items()), "",
    ]
    (out / "report.md").write_text("\n".join(report))
    return table
