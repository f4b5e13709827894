"""Fine-tune, sample and score one benchmark row on the Shapes world, with results cached on disk.

Shared by ``reproduce_tables.py`` (the paper's Tables 1-3) and ``compute_matched.py``. A row's result is
one JSON file written atomically when the row is done, so an interrupted run skips finished rows when
started again. The cache path holds a fingerprint of the base (weights, guidance interval) and of the
budget: retraining a base, changing its sampler or the budget never mixes old rows into new tables.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from thinkpix.eval.geneval import generate_geneval, score_geneval_images
from thinkpix.models import routing_trace, rsr_parameters
from thinkpix.models.hosts import rsr_install
from thinkpix.pipelines import SHIPPED
from thinkpix.shapes.score import GenEvalResult, summarize
from thinkpix.train import TrainTarget, load_image_folder, load_pipeline, preset, train
from thinkpix.train.state import list_checkpoints


@dataclass(frozen=True)
class Budget:
    """What one row may spend: fine-tuning data and steps, and how much is sampled to score it."""

    train_images: int
    finetune_steps: int
    batch_size: int = 32
    geneval_prompts: int | None = None  # None: every held-out prompt
    samples: int = 2  # images per prompt
    sample_steps: int = 20
    dpg_prompts: int | None = None
    class_samples: int = 500  # images per row for the class-conditional FD table
    class_finetune_steps: int | None = None  # None: finetune_steps

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Row:
    """One table row: ``method`` base (no training), rsr or sft, with TrainConfig overrides in ``fields``."""

    name: str
    method: str = "rsr"
    fields: dict = field(default_factory=dict)
    preset: str = "shapes"

    @property
    def slug(self) -> str:
        """The name as a folder name: ``RSR w/o recursion M=2, T=1`` -> ``rsr-w-o-recursion-m-2-t-1``."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")

    def describe(self) -> str:
        extras = ", ".join(f"{k}={v}" for k, v in self.fields.items())
        return f"{self.method}" + (f" ({extras})" if extras else "")


def fingerprint(model: str, sampler: bool = True) -> str:
    """Short hash of a pipeline folder's weight files (a shipped name or a path) and, unless ``sampler`` is
    False, of its guidance interval (``model_index.json``), which changes every sample; a pipeline without an
    interval hashes its weights only."""
    folder = SHIPPED.get(model, Path(model))
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.safetensors")):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    index = folder / "model_index.json"
    interval = json.loads(index.read_text()).get("guidance_interval") if index.is_file() else None
    if sampler and interval is not None:
        digest.update(f"guidance_interval={interval}".encode())
    return digest.hexdigest()[:8]


def describe_base(model: str) -> str:
    """The base as report headers name it: its fingerprint and how it guides."""
    folder = SHIPPED.get(model, Path(model))
    index = folder / "model_index.json"
    interval = json.loads(index.read_text()).get("guidance_interval") if index.is_file() else None
    sampler = f"guidance at noise levels {interval[0]:g}-{interval[1]:g}" if interval else "guidance at every step"
    return f"`{model}` (fingerprint `{fingerprint(model)}` of weights and sampler; {sampler})"


def cached(path: Path, compute: Callable[[], dict]) -> dict:
    """The JSON at ``path``, or ``compute()`` written there atomically (temporary file, then rename)."""
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)
    return result


@contextmanager
def claimed(lock: Path) -> Iterator[bool]:
    """Whether this process holds ``lock`` (an exclusive ``flock``) for the ``with`` block: False while another
    running process holds it. The kernel drops a dead process's lock, so a killed run leaves no stale claim, and
    any number of processes can share one job list, each taking the next job no other holds."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# Variables that pick the vector instructions of torch's, MKL's and oneDNN's CPU kernels; set, they let one
# machine reproduce a run made on a CPU with fewer instructions (AVX2 on an AVX-512 machine, say).
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")


# The /proc/cpuinfo flags behind each of torch's kernel capabilities, widest first (torch's own test is in
# aten/src/ATen/native/DispatchStub.cpp): what the machine could run, which a forced capability hides.
CAPABILITY_FLAGS = {"AVX512": {"avx512f", "avx512bw", "avx512vl", "avx512dq"}, "AVX2": {"avx2", "fma"}}


def cpu_signature() -> dict:
    """What decides a CPU run's floating-point bits besides the code: torch's kernel capability (AVX2, AVX-512,
    ...), the processor and any variable above that overrides them; ``machine`` is the machine's own capability
    where a variable forced a lower one. Runs with the same signature are bit for bit the same; with another one
    they differ in the last bits, which a learned route's argmax can amplify into another adapter (a router's
    flipped decision changes every later step)."""
    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "unknown")
    flags = set(next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), []))
    capability = torch.backends.cpu.get_cpu_capability()
    machine = next((name for name, needed in CAPABILITY_FLAGS.items() if needed <= flags), "DEFAULT")
    return {"capability": capability, "processor": model,
            **({"machine": machine} if info and machine != capability else {}),
            **{name: os.environ[name] for name in ISA_VARIABLES if name in os.environ}}


class Stopwatch:
    """Wall-clock and CPU seconds of a ``with`` block. With one torch thread the process's CPU time is the work
    done: unlike the wall clock it leaves out what other jobs on the shared cores take, and any pause."""

    def __enter__(self) -> Stopwatch:
        self._started = (time.perf_counter(), time.process_time())
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._started[0]
        self.cpu = time.process_time() - self._started[1]


def finetuned(base: str, data_dir: Path, row: Row, seed: int, steps: int, batch_size: int,
              out: Path, resume: bool = False, report_to: str | None = None) -> tuple[TrainTarget, dict]:
    """The base with the row's method fine-tuned in (in memory) and the cost of doing so; with
    ``report_to="tensorboard"`` the training log is written under ``out``. With ``resume``,
    training continues from the last checkpoint in ``out`` at or below ``steps`` (the rate is constant and
    the data order a function of the step, so a run stopped at step k and resumed equals one run: a budget
    ladder trains once, and a killed row loses at most a quarter of its steps); ``train_seconds`` (wall clock)
    and ``train_cpu_seconds`` then count the ``train_steps_timed`` steps run in this call."""
    target = TrainTarget(load_pipeline(base))
    cost = {"train_seconds": 0.0, "train_cpu_seconds": 0.0, "train_steps": 0, "train_steps_timed": 0,
            "trainable_params": 0}
    if row.method == "base":
        target.transformer.eval()
        return target, cost
    cfg = preset(row.preset, method=row.method, max_steps=steps, batch_size=batch_size, seed=seed,
                 validation_steps=0, checkpointing_steps=max(1, steps // 4), checkpoints_total_limit=1, **row.fields)
    earlier = [(step, path) for step, path in list_checkpoints(out / "checkpoints") if step <= steps] if resume else []
    # a resumed run continues its checkpoint; any other run starts over in its folder
    with Stopwatch() as clock:
        train(target, load_image_folder(data_dir), cfg, out, resume=str(earlier[-1][1]) if earlier else None,
              report_to=report_to, progress=False, overwrite=not earlier)
    cost.update(train_seconds=clock.wall, train_cpu_seconds=clock.cpu, train_steps=steps,
                train_steps_timed=steps - (earlier[-1][0] if earlier else 0),
                trainable_params=sum(p.numel() for p in rsr_parameters(target.transformer)))
    target.transformer.eval()
    return target, cost


def sampling_macs(target: TrainTarget, conditions: list, steps: int, guidance_scale: float = 4.0) -> float:
    """Multiply-adds per image of a whole sampling run (every denoising step, CFG included), as they ran:
    routes and halts are those the conditions produce."""
    counter = FlopCounterMode(display=False, depth=None)
    with counter:
        target.sample(conditions, seed=0, steps=steps, guidance_scale=guidance_scale)
    return counter.get_total_flops() / 2 / len(conditions)


def traced_sampling(target: TrainTarget, sample: Callable[[], object]) -> dict:
    """Run ``sample()``: its wall-clock and CPU seconds and the mean latent steps the RSR layers used (None
    without RSR)."""
    latent_steps = None
    with Stopwatch() as clock:
        if rsr_install(target.transformer) is None:
            sample()
        else:
            with routing_trace(target.transformer) as trace:
                sample()
            latent_steps = trace.mean_steps_used()
    return {"sample_seconds": clock.wall, "sample_cpu_seconds": clock.cpu, "latent_steps": latent_steps}


def geneval_row(target: TrainTarget, records: list[dict], out: Path, budget: Budget, seed: int,
                steps: int | None = None) -> dict:
    """Sample the records into a GenEval folder, score it; with the sampling time, the latent steps used and the
    per-image verdicts."""
    steps = steps or budget.sample_steps
    cost = traced_sampling(target, lambda: generate_geneval(
        target, records, out, samples=budget.samples, seed=seed, steps=steps, progress=False))
    return {**scored_verdicts(out), **cost, "sample_steps": steps}


def scored_verdicts(folder: Path) -> dict:
    """Scores and per-image verdicts of a GenEval folder, so that two rows of one seed can be compared image by
    image (benchmarks.stats)."""
    verdicts = score_geneval_images(folder)
    scores = summarize(GenEvalResult(v["tag"], v["prompt"], v["correct"], v["reason"]) for v in verdicts)
    keep = ("prompt_index", "sample_index", "tag", "correct")
    return {"scores": scores, "images": len(verdicts), "verdicts": [{k: v[k] for k in keep} for v in verdicts]}


def spread(records: list, n: int | None) -> list:
    """``n`` records evenly spaced over the list (every tag of a GenEval set, not just the first ones)."""
    if n is None or n >= len(records):
        return list(records)
    return [records[i * len(records) // n] for i in range(n)]


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (Student's t, n - 1 degrees of freedom)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    from scipy.stats import t

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def fmt_ci(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    mean, half = mean_ci([scale * v for v in values])
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
