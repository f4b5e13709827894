"""Routing health pilot: does the gate learn under the paper's setting, and under which options does it?

Every option of ``TrainConfig`` beyond the paper is fine-tuned into ``shapes-t2i`` next to the paper's setting,
at the reproduction's fine-tuning budget (``reproduce_tables.FULL``: 2000 training images, 250 steps, batch 32,
the ``shapes`` preset, middle layer), for M=2, T=2 and M=5, T=5. Only training data is used: the held-in
denoising loss is measured on training images, and Shapes-GenEval on training prompts (``training_metadata``),
never on the held-out evaluation compositions. Each (shape, option, seed) is one JSON under ``--rows-dir``; a
rerun skips finished ones, so an interrupted sweep resumes::

    nohup nice -n 5 python -m benchmarks.routing_health > routing_health.log 2>&1 &   # about 1 h on 2 cores
    python -m benchmarks.routing_health --report-only          # rewrite the report from the cached rows
    python -m benchmarks.routing_health --quick --work /tmp/rh  # a few minutes: the test of the script

Writes ``docs/results/routing_health.md`` (``--out``) and its decisiveness plots (PNG) next to it.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from benchmarks.reproduce_tables import FULL
from benchmarks.routing_health_report import write_report
from benchmarks.shapes_rows import Budget, Row, cached, finetuned, fingerprint, geneval_row, spread
from benchmarks.training_log import read_scalars
from thinkpix.core.health import gate_decisiveness, gradient_scalars, health_scalars
from thinkpix.models import rsr_layers
from thinkpix.shapes.dataset import make_dataset
from thinkpix.shapes.prompts import training_metadata
from thinkpix.train import TrainTarget, load_image_folder, load_pipeline, preset
from thinkpix.train.loop import trainable_parameters
from thinkpix.train.objectives import flow_matching_loss, training_scheduler

BASE = "shapes-t2i"
PILOT = replace(FULL, geneval_prompts=48, samples=1)  # the reproduction's training budget; a lighter GenEval
# The screen of every option: the reproduction's 250 steps, data and learning rate at a quarter of the batch,
# so that the whole comparison fits the shared 2-core machine; the chosen setting then runs at PILOT.
SCREEN = replace(FULL, batch_size=8, geneval_prompts=24, samples=1)
QUICK = Budget(train_images=64, finetune_steps=6, batch_size=8, geneval_prompts=3, samples=1, sample_steps=4)
HELD_IN_IMAGES = 32
CURVE_EVERY = 5  # training steps between the points of a decisiveness curve

SHAPES = {"M=2, T=2": {"num_experts": 2, "latent_steps": 2, "layers": "middle"},
          "M=5, T=5": {"num_experts": 5, "latent_steps": 5, "layers": "middle"}}
OPTIONS = {
    "paper": {},
    "routed (noise 1 -> 0, balance 0.01)": {"gumbel_noise_end": 0.0, "balance_loss_weight": 0.01},
    "noise 1 -> 0": {"gumbel_noise_end": 0.0},
    "noise 1 -> 0.1": {"gumbel_noise_end": 0.1},
    "gate lr x10": {"gate_lr_multiplier": 10.0},
    "combined": {"gate_lr_multiplier": 10.0, "gumbel_noise_end": 0.1, "balance_loss_weight": 0.01},
    "dense straight-through": {"dispatch": "dense"},
    "tau 5 -> 0.5": {"gumbel_tau_end": 0.5},
    "per-sample routes": {"route_per": "sample"},
    "z-loss 1e-3": {"z_loss_weight": 1e-3},
    "balance 0.01": {"balance_loss_weight": 0.01},  # the paper's rule already sets it for M > 3
}
RECOMMENDED = "routed (noise 1 -> 0, balance 0.01)"  # fixed before the screen from the first pilot row (combined)
SKIP = {("M=5, T=5", "balance 0.01")}
FIRST = list(OPTIONS)[:6]
# (budget, shape, option) in the order they run, to fit a shared 2-core machine: the acceptance row at the
# reproduction's budget early, M=5, T=5 for the paper and the recommendation before the remaining M=2 options
PLAN = [("pilot", "M=2, T=2", "combined"), *[("screen", "M=2, T=2", o) for o in FIRST],
        ("pilot", "M=2, T=2", RECOMMENDED), ("screen", "M=5, T=5", "paper"), ("screen", "M=5, T=5", RECOMMENDED),
        *[("screen", "M=2, T=2", o) for o in OPTIONS if o not in FIRST], ("pilot", "M=2, T=2", "paper"),
        *[("screen", "M=5, T=5", o) for o in OPTIONS if o not in ("paper", RECOMMENDED)],
        ("pilot", "M=5, T=5", RECOMMENDED), ("pilot", "M=5, T=5", "paper")]
BUDGETS = {"pilot": PILOT, "screen": SCREEN}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def training_curves(run_dir: Path, layer: int, steps: int) -> dict:
    """Decisiveness over training from the run's TensorBoard log: the measured share of tokens whose training
    route equals the argmax route, and the mean logit margin, each averaged over latent steps."""
    tags = [f"health/layer{layer}/step{t}/{name}" for t in range(1, steps + 1)
            for name in ("sampled_agreement", "margin")]
    tags += [f"health/layer{layer}/gate_to_expert_grad", "train/gumbel_noise"]
    scalars = read_scalars(run_dir, tuple(tags))
    logged = sorted(scalars[tags[0]])
    points = logged[CURVE_EVERY - 1 :: CURVE_EVERY] or logged

    def curve(name):
        return [_mean([scalars[f"health/layer{layer}/step{t}/{name}"].get(s) for t in range(1, steps + 1)])
                for s in points]

    ratio = list(scalars[f"health/layer{layer}/gate_to_expert_grad"].values())
    return {"steps": points, "sampled_agreement": curve("sampled_agreement"), "margin": curve("margin"),
            "noise": [scalars["train/gumbel_noise"].get(s) for s in points],
            "gate_to_expert_grad": _mean(ratio[-50:])}


def _routes(target) -> dict:
    """The latest call's routes and health of the (single) RSR layer."""
    (layer, proc), = rsr_layers(target.transformer).items()
    return {"layer": layer, "steps": proc.last_steps, "health": proc.last_health,
            "noise": proc.rsr.gate.noise_scale}


def input_dependence(experts: torch.Tensor, m: int) -> float:
    """Mean total-variation distance between each sample's expert usage and the batch's, over latent steps
    (experts (T, B, N)): 0 when every sample is routed alike (lopsidedness that ignores the input)."""
    usage = torch.nn.functional.one_hot(experts, m).float().mean(2)  # (T, B, M)
    return float(0.5 * (usage - usage.mean(1, keepdim=True)).abs().sum(-1).mean())


def held_in(target, data_dir: Path, seed: int) -> dict:
    """Denoising loss (eval mode: argmax routes) and routing health on a fixed batch of training images, plus
    the route agreement in training mode (Gumbel noise at the run's final scale) on the same batch."""
    data = load_image_folder(data_dir)
    index = torch.arange(min(HELD_IN_IMAGES, len(data)))
    x0 = target.latents(data.pixels(index), torch.Generator().manual_seed(seed))
    cond = target.conditions(captions=[data.captions[i] for i in index.tolist()])
    scheduler = training_scheduler(target.pipeline.scheduler)

    def forward(noisy, t):
        return target.transformer(hidden_states=noisy, timestep=t, **cond).sample

    def loss() -> float:
        return float(flow_matching_loss(forward, x0, scheduler, torch.Generator().manual_seed(seed + 1)))

    for proc in rsr_layers(target.transformer).values():
        proc.rsr.measure_health = True  # eval-mode health too (by default only training measures it)
    with torch.no_grad():
        target.transformer.eval()
        eval_loss, routes = loss(), _routes(target)
        target.transformer.train()
        loss()
        trained = _routes(target)
        target.transformer.eval()
    health, steps = routes["health"], routes["steps"]
    m = steps[0].probs.shape[-1]
    experts = torch.stack([s.experts for s in steps])
    usage = torch.stack([h.usage for h in health]).mean(0)
    unit = [gate_decisiveness(s.logits, 1.0) for s in steps]
    divergence = torch.stack([h.divergence for h in health])
    return {"loss": eval_loss, "utilisation": usage.tolist(), "min_utilisation": float(usage.min()),
            "max_utilisation": float(usage.max()), "input_dependence": input_dependence(experts, m),
            "margin": _mean([float(u[0]) for u in unit]), "agreement_unit_noise": _mean([float(u[1]) for u in unit]),
            "divergence": float(divergence.nanmean()) if not divergence.isnan().all() else None,
            "train_mode_agreement": _mean([float(h.sampled_agreement) for h in trained["health"]]),
            "final_noise": trained["noise"]}


def run_one(shape: str, option: str, seed: int, budget: Budget, work: Path, data: Path) -> dict:
    fields = {**SHAPES[shape], **OPTIONS[option]}
    out = work / slug(shape) / slug(option) / f"seed{seed}"
    row = Row(f"{shape} {option}", "rsr", fields)
    target, cost = finetuned(BASE, data, row, seed, budget.finetune_steps, budget.batch_size, out / "train",
                             report_to="tensorboard")
    health = held_in(target, data, seed)
    records = spread(training_metadata(), budget.geneval_prompts)
    geneval = geneval_row(target, records, out / "geneval-train-prompts", budget, seed)
    curves = training_curves(out / "train", next(iter(rsr_layers(target.transformer))), fields["latent_steps"])
    return {"shape": shape, "option": option, "fields": fields, "seed": seed, **cost, "held_in": health,
            "curves": curves, "geneval_train_prompts": geneval["scores"], "geneval_images": geneval["images"]}


def health_overhead(rounds: int = 9, batch: int = 8) -> dict:
    """CPU time of one training forward + backward of the base with M=5, T=5 on the middle layer, routing-health
    metrics (and their logged scalars) on vs off, interleaved; medians over ``rounds``."""
    target = TrainTarget(load_pipeline(BASE))
    trainable_parameters(target, preset("shapes", num_experts=5, latent_steps=5))
    target.transformer.train()
    config = target.transformer.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, config.in_channels, config.sample_size, config.sample_size, generator=g)
    t = torch.full((batch,), 500.0)
    cond = target.conditions(captions=["a photo of a red circle"] * batch)
    layers = rsr_layers(target.transformer)

    def step(on: bool) -> float:
        for proc in layers.values():
            proc.rsr.measure_health = on
        start = time.process_time()
        target.transformer(hidden_states=x, timestep=t, **cond).sample.square().mean().backward()
        if on:
            health_scalars({i: p.last_health for i, p in layers.items()})
            gradient_scalars({i: p.rsr for i, p in layers.items()})
        target.transformer.zero_grad(set_to_none=True)
        return time.process_time() - start

    step(True), step(False)  # warm-up
    times = {True: [], False: []}
    for _ in range(rounds):
        for on in (False, True):
            times[on].append(step(on))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    return {"batch": batch, "rounds": rounds, "threads": torch.get_num_threads(), "off_ms": 1e3 * off,
            "on_ms": 1e3 * on, "overhead": on / off - 1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget (tests): writes into --work")
    parser.add_argument("--work", default="runs/routing_health", help="training runs and datasets")
    parser.add_argument("--rows-dir", default="docs/results/routing_health_rows", help="cached row results")
    parser.add_argument("--out", default="docs/results/routing_health.md")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--budgets", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a crowded machine)")
    parser.add_argument("--report-only", action="store_true", help="only rows already cached")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    budgets = {name: QUICK if args.quick else b for name, b in BUDGETS.items()}
    work = Path(args.work) / ("quick" if args.quick else "runs")
    rows_dir = work / "rows" if args.quick else Path(args.rows_dir)
    out = work / "routing_health.md" if args.quick else Path(args.out)
    results = []
    for name, shape, option in PLAN:
        if name not in args.budgets or shape not in args.shapes or option not in args.options or (
                (shape, option) in SKIP):
            continue
        budget = budgets[name]
        data = work / f"data-t2i-{budget.train_images}"
        for seed in args.seeds:
            path = rows_dir / f"{fingerprint(BASE)}-{budget.key()}" / slug(shape) / slug(option) / f"seed{seed}.json"
            if args.report_only and not path.is_file():
                continue
            if not path.is_file() and not (data / "metadata.jsonl").is_file():
                make_dataset(data, n=budget.train_images, seed=0, variant="caption", split="train")
            run_dir = work / f"{name}-{budget.key()}"
            row = cached(path, lambda s=shape, o=option, k=seed, b=budget, w=run_dir, d=data: run_one(s, o, k, b, w, d))
            results.append({**row, "budget_name": name, "budget": asdict(budget)})
            print(f"done {name} / {shape} / {option} / seed {seed}", flush=True)
    overhead = None
    if not args.quick:
        path = rows_dir / "health_overhead.json"
        if not args.report_only or path.is_file():
            overhead = cached(path, lambda: {"rows": [health_overhead(batch=b) for b in (8, 32)]})
    write_report(out, results, rows_dir, overhead)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
