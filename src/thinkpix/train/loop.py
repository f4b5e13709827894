"""The training loop: one CPU, one GPU or many processes through ``accelerate launch``.

It follows diffusers' LoRA training scripts (``train_dreambooth_lora_sd3.py``): accelerate for
devices, DDP with unused-parameter detection (hard routing leaves experts idle in a step) or
FSDP2 sharding of the blocks (``TrainConfig.fsdp``, see ``sharding.py``), gradient accumulation
and mixed precision, trainable parameters kept in fp32, TensorBoard logging, periodic checkpoints
and ``--resume latest``.

Determinism: every random choice of micro-step k on process r (data order, noise, timesteps, Gumbel
noise, label dropout) is seeded from (seed, k, r), so a resumed run continues exactly where an
uninterrupted one would be.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, DistributedType
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..core.stats import step_stats
from ..images import save_grid
from ..models import apply_rsr, aux_loss, rsr_layers, save_rsr, set_step_checkpointing
from ..models.checkpoint import rsr_state_dict
from ..pipelines import TrainTarget
from .config import TrainConfig
from .data import ImageDataset, batch_indices
from .objectives import flow_matching_loss, noise_prediction_loss, training_scheduler
from .sharding import gather, gather_optimizer_state, load_into, shard_optimizer_state, shard_transformer
from .state import load_checkpoint, resolve_resume, save_checkpoint


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    losses: list[float] = field(default_factory=list)
    final: Path | None = None


def _micro_seed(seed: int, micro_step: int, rank: int) -> int:
    return (seed * 1_000_003 + micro_step) * 1_009 + rank


def trainable_parameters(target: TrainTarget, cfg: TrainConfig) -> dict[str, torch.nn.Parameter]:
    """Install RSR (methods rsr/sft) or unfreeze everything (full); trainable parameters by name."""
    transformer = target.transformer
    if cfg.method == "full":
        modules = {"transformer": transformer}
        if target.kind == "caption" and getattr(target.pipeline, "text_encoder", None) is not None:
            modules["text_encoder"] = target.pipeline.text_encoder  # the Shapes text encoder trains with its base
            target.train_text_encoder = True
        named = {}
        for prefix, module in modules.items():
            module.requires_grad_(True)
            named.update({f"{prefix}.{n}": p for n, p in module.named_parameters()})
        return named
    apply_rsr(transformer, cfg.rsr)
    set_step_checkpointing(transformer, cfg.step_checkpointing)
    return _rsr_named_parameters(transformer)


def _rsr_named_parameters(transformer: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {f"rsr.{i}.{n}": p for i, proc in rsr_layers(transformer).items() for n, p in proc.rsr.named_parameters()}


def _routing_scalars(target: TrainTarget) -> dict[str, float]:
    scalars = {}
    for layer, proc in rsr_layers(target.transformer).items():
        if not proc.last_steps or proc.rsr.config.num_experts == 1:
            continue
        stats = step_stats(proc.last_steps)
        for m, share in enumerate(stats.utilisation.tolist()):
            scalars[f"routing/layer{layer}/expert{m}_usage"] = share
        scalars[f"routing/layer{layer}/gate_entropy"] = stats.entropy.mean().item()
        if stats.consistency.numel():
            scalars[f"routing/layer{layer}/consistency"] = stats.consistency.mean().item()
    return scalars


@dataclass
class _Run:
    """What one training run holds between steps (built by ``_prepare``)."""

    accelerator: Accelerator
    module: torch.nn.Module  # the transformer, DDP-wrapped unless sharded
    named: dict[str, torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    ema: EMAModel | None
    scheduler: object
    micro_batch: int

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return list(self.named.values())


def _accelerator(target: TrainTarget, data: ImageDataset, cfg: TrainConfig, out_dir: Path,
                 report_to: str | None) -> Accelerator:
    """The accelerator, after the checks that need the process count but no model work."""
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, log_with=report_to, project_dir=str(out_dir),
                              gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    world = accelerator.num_processes
    if cfg.batch_size % (cfg.gradient_accumulation_steps * world):
        raise ValueError(f"TrainConfig.batch_size={cfg.batch_size} must be divisible by gradient_accumulation_steps "
                         f"x processes = {cfg.gradient_accumulation_steps * world}")
    if data.kind != target.kind:
        raise ValueError(f"the model is {target.kind}-conditioned but the data folder is a {data.kind} folder")
    if data.kind == "class" and target.label_map is None:
        target.map_classes(data.class_names)
    if accelerator.distributed_type == DistributedType.FSDP:
        raise ValueError("accelerate's FSDP plugin is not used by thinkpix: launch without it and pass --fsdp "
                         "(TrainConfig.fsdp), which shards the blocks with FSDP2 itself (see train/sharding.py)")
    return accelerator


def _prepare(target: TrainTarget, cfg: TrainConfig, accelerator: Accelerator) -> _Run:
    """Install the trainable parameters, the optimizer and the EMA, and hand them to accelerate."""
    named = trainable_parameters(target, cfg)
    for p in named.values():
        p.data = p.data.float()  # trainable parameters in fp32 (mixed precision autocasts the compute)
    if cfg.fsdp:
        shard_transformer(target.transformer)
        named = _rsr_named_parameters(target.transformer)  # sharding replaced them with DTensor parameters
    params = list(named.values())
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay)
    ema = EMAModel(params, decay=cfg.ema_decay) if cfg.ema_decay else None
    target.transformer.train()
    if cfg.fsdp:  # FSDP2 reduces the gradients itself: no DDP wrapper around the sharded module
        module, optimizer = target.transformer, accelerator.prepare(optimizer)
    else:
        module, optimizer = accelerator.prepare(target.transformer, optimizer)
    return _Run(accelerator, module, named, optimizer, ema, training_scheduler(target.pipeline.scheduler),
                cfg.batch_size // cfg.gradient_accumulation_steps)


def _resume(run: _Run, ckpt_dir: Path, resume: str | None) -> int:
    """Load the checkpoint ``resume`` names (``latest`` or a folder) into ``run``; the step to continue from."""
    resume_from = resolve_resume(ckpt_dir, resume)
    if resume_from is None:
        return 0
    step, tensors, ema_tensors = load_checkpoint(resume_from, run.optimizer)
    shard_optimizer_state(run.optimizer)
    missing = sorted(set(run.named) - set(tensors))
    if missing:
        raise ValueError(f"checkpoint {resume_from} does not match this run: no weights for {missing[:4]}")
    load_into(run.named, tensors)
    if run.ema is not None and ema_tensors is not None:
        load_into(dict(zip(run.named, run.ema.shadow_params)), ema_tensors)
        run.ema.optimization_step = step
    return step


def _micro_step(run: _Run, target: TrainTarget, data: ImageDataset, cfg: TrainConfig, k: int, step: int,
                ckpt_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward and (at the last micro-step) the optimizer step of micro-step ``k``; (loss, balance)."""
    accelerator = run.accelerator
    seed = _micro_seed(cfg.seed, k, accelerator.process_index)
    torch.manual_seed(seed)  # DiT's label dropout draws from the global RNG
    if cfg.method != "full":
        for layer, proc in rsr_layers(target.transformer).items():
            proc.rsr.gate.manual_seed(seed + layer)
    g = torch.Generator().manual_seed(seed)
    index = batch_indices(len(data), run.micro_batch, k, cfg.seed, accelerator.process_index,
                          accelerator.num_processes)
    x0 = target.latents(data.pixels(index).to(accelerator.device), g)
    if data.kind == "caption":
        captions = [data.captions[i] for i in index.tolist()]
        if cfg.condition_dropout:
            drop = torch.rand(len(captions), generator=g) < cfg.condition_dropout
            captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        cond = target.conditions(captions=captions)
    else:
        cond = target.conditions(labels=data.labels[index].to(accelerator.device))

    def forward(noisy, t):
        kwargs = {k: (v.to(noisy.dtype) if v.is_floating_point() else v) for k, v in cond.items()}
        return run.module(hidden_states=noisy, timestep=t, **kwargs).sample

    with accelerator.accumulate(run.module), accelerator.autocast():
        if isinstance(run.scheduler, FlowMatchEulerDiscreteScheduler):
            loss = flow_matching_loss(forward, x0, run.scheduler, g, cfg.logit_mean, cfg.logit_std)
        else:
            loss = noise_prediction_loss(forward, x0, run.scheduler, g)
        balance = aux_loss(target.transformer) if cfg.method != "full" else loss.new_zeros(())
        if not math.isfinite(loss.item()):
            last = resolve_resume(ckpt_dir, "latest")
            raise TrainingDiverged(f"loss became {loss.item()} at step {step}: training stopped; "
                                   f"last good checkpoint: {last or 'none yet'}")
        accelerator.backward(loss + balance)
        if accelerator.sync_gradients and accelerator.num_processes > 1 and target.train_text_encoder:
            _average_outside_ddp(accelerator, run.named)
        if accelerator.sync_gradients and cfg.max_grad_norm:
            accelerator.clip_grad_norm_(run.params, cfg.max_grad_norm)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    return loss, balance


def _save_checkpoint(run: _Run, cfg: TrainConfig, ckpt_dir: Path, step: int) -> None:
    """Gathered on every process (all-gathers under FSDP), written by the main one."""
    run.accelerator.wait_for_everyone()
    weights, opt_state = gather(run.named), gather_optimizer_state(run.optimizer.state_dict())
    shadow = gather(dict(zip(run.named, run.ema.shadow_params))) if run.ema is not None else None
    if run.accelerator.is_main_process:
        save_checkpoint(ckpt_dir, step, weights, opt_state, cfg.to_dict(), shadow, keep=cfg.checkpoints_total_limit)


def train(target: TrainTarget, data: ImageDataset, cfg: TrainConfig, out_dir: str | Path, resume: str | None = None,
          validation: list | None = None, report_to: str | None = "tensorboard", progress: bool = True) -> TrainResult:
    """Train ``target`` on ``data`` with ``cfg``; checkpoints and logs go under ``out_dir``."""
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    accelerator = _accelerator(target, data, cfg, out_dir, report_to)
    run = _prepare(target, cfg, accelerator)
    step = _resume(run, ckpt_dir, resume)
    if report_to and accelerator.is_main_process:
        accelerator.init_trackers("thinkpix", config={k: str(v) for k, v in cfg.to_dict().items()})
    result = TrainResult(out_dir, step)
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not (progress and accelerator.is_local_main_process),
               desc=f"train {cfg.method}", unit="step")
    started = time.perf_counter()
    while step < cfg.max_steps:
        lr = cfg.lr_at(step)  # the run's schedule wins over any rate saved with the optimizer state
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        for micro in range(cfg.gradient_accumulation_steps):
            loss, balance = _micro_step(run, target, data, cfg, step * cfg.gradient_accumulation_steps + micro, step,
                                        ckpt_dir)
        step += 1
        if run.ema is not None:
            run.ema.step(run.params)
        result.losses.append(loss.item())
        logs = {"train/loss": loss.item(), "train/balance_loss": balance.item(), "train/lr": lr}
        if cfg.method != "full":
            logs.update(_routing_scalars(target))
        if report_to:
            accelerator.log(logs, step=step)
        elapsed = time.perf_counter() - started
        bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{(step - result.step) * cfg.batch_size / elapsed:.1f}")
        bar.update(1)
        if step % cfg.checkpointing_steps == 0 or step == cfg.max_steps:
            _save_checkpoint(run, cfg, ckpt_dir, step)
        # a sharded model samples on every process (its forward is collective); the main one writes the grid
        if validation and cfg.validation_steps and step % cfg.validation_steps == 0 and (
                cfg.fsdp or accelerator.is_main_process):
            _validate(target, validation, out_dir, step, accelerator if report_to else None,
                      write=accelerator.is_main_process)
    bar.close()
    accelerator.wait_for_everyone()
    if run.ema is not None:
        run.ema.copy_to(run.params)  # the final weights are the EMA weights when EMA is on
    final = gather(rsr_state_dict(target.transformer)) if cfg.method != "full" else None
    if accelerator.is_main_process:
        result.final = _save_final(target, cfg, out_dir, final)
    for tracker in accelerator.trackers:  # not end_training(): it destroys the process group, and a library
        tracker.finish()                   # caller may train again or sample sharded in the same processes
    result.step = step
    return result


def _average_outside_ddp(accelerator: Accelerator, named: dict[str, torch.nn.Parameter]) -> None:
    """Average the text encoder's gradients over processes: it runs outside the DDP-wrapped transformer
    (the pipeline encodes prompts with it), so DDP's hooks never see its parameters."""
    for name, p in named.items():
        if name.startswith("text_encoder.") and p.grad is not None:
            p.grad = accelerator.reduce(p.grad, reduction="mean")


def _validate(target: TrainTarget, validation: list, out_dir: Path, step: int, accelerator, write: bool) -> None:
    target.transformer.eval()
    images = target.sample(validation, seed=0)
    target.transformer.train()
    if not write:
        return
    save_grid(images, out_dir / "validation" / f"step-{step:06d}.png", scale=4)
    if accelerator is not None:
        tracker = accelerator.get_tracker("tensorboard", unwrap=False)
        if hasattr(tracker, "log_images"):
            tracker.log_images({"validation": images}, step=step, dataformats="NHWC")


def _save_final(target: TrainTarget, cfg: TrainConfig, out_dir: Path, rsr_tensors: dict | None) -> Path:
    if cfg.method == "full":
        target.pipeline.save_pretrained(out_dir / "pipeline")
        return out_dir / "pipeline"
    return save_rsr(target.transformer, out_dir / "rsr", tensors=rsr_tensors)
