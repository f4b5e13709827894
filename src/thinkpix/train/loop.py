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

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, DistributedType
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..core.health import gradient_scalars, health_scalars
from ..core.stats import step_stats
from ..errors import UserError
from ..images import save_grid
from ..models import apply_rsr, aux_loss, rsr_layers, save_rsr, set_gumbel, set_step_checkpointing
from ..models.checkpoint import rsr_state_dict
from ..models.hosts import num_blocks
from ..pipelines import TrainTarget
from .config import TrainConfig
from .data import ImageDataset, batch_indices
from .interrupt import StopRequest, TrainingInterrupted
from .objectives import flow_matching_loss, noise_prediction_loss, training_scheduler
from .outdir import claim_output_dir
from .sharding import gather, gather_optimizer_state, load_into, shard_optimizer_state, shard_transformer
from .state import (
    CHECKPOINTS,
    all_finite,
    check_resume_config,
    last_finite_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)

logger = logging.getLogger(__name__)


class TrainingDiverged(UserError, RuntimeError):
    """The loss, the gradient norm or the weights became NaN or Inf; the last finite checkpoint is named."""


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    losses: list[float] = field(default_factory=list)
    final: Path | None = None
    resumed_from: Path | None = None
    resumed_loss: float | None = None  # the loss saved with the checkpoint resumed from
    main_process: bool = True  # False on the other processes of a multi-process run (they write nothing)

    @property
    def final_loss(self) -> float | None:
        """Loss of the last step trained, or of the checkpoint resumed from when nothing was left to train."""
        return self.losses[-1] if self.losses else self.resumed_loss


def _micro_seed(seed: int, micro_step: int, rank: int) -> int:
    return (seed * 1_000_003 + micro_step) * 1_009 + rank


def trainable_parameters(target: TrainTarget, cfg: TrainConfig) -> dict[str, torch.nn.Parameter]:
    """Install RSR (methods rsr/sft) or unfreeze everything (full); trainable parameters by name."""
    transformer = target.transformer
    if cfg.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
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


def parameter_groups(named: dict[str, torch.nn.Parameter], cfg: TrainConfig) -> list[dict]:
    """Optimizer parameter groups: one (the paper), or the gate parameters apart with ``lr_scale`` =
    ``gate_lr_multiplier`` (so that runs without the option keep the optimizer state layout of old runs)."""
    if cfg.gate_lr_multiplier == 1.0 or cfg.method == "full":
        return [{"params": list(named.values())}]
    gate = [p for n, p in named.items() if ".gate." in n]
    rest = [p for n, p in named.items() if ".gate." not in n]
    return [{"params": rest, "lr_scale": 1.0}, {"params": gate, "lr_scale": cfg.gate_lr_multiplier}]


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
    return {**scalars, **health_scalars({i: p.last_health for i, p in rsr_layers(target.transformer).items()
                                         if p.rsr.config.num_experts > 1})}


def train(target: TrainTarget, data: ImageDataset, cfg: TrainConfig, out_dir: str | Path, resume: str | None = None,
          validation: list | None = None, report_to: str | None = "tensorboard", progress: bool = True,
          overwrite: bool = False) -> TrainResult:
    """Train ``target`` on ``data`` with ``cfg``; checkpoints and logs go under ``out_dir``.

    ``resume``: ``"latest"``, a checkpoint name (``checkpoint-20``) or folder. The run locks ``out_dir``;
    one that holds another run's checkpoints is refused unless ``resume`` continues it or ``overwrite``
    clears it. Ctrl-C saves a checkpoint after the current step and raises ``TrainingInterrupted``.
    """
    out_dir = Path(out_dir)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, log_with=report_to, project_dir=str(out_dir),
                              gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    world = accelerator.num_processes
    if cfg.batch_size % (cfg.gradient_accumulation_steps * world):
        raise UserError(f"TrainConfig.batch_size={cfg.batch_size} must be divisible by gradient_accumulation_steps "
                        f"x processes = {cfg.gradient_accumulation_steps * world}")
    if data.kind != target.kind:
        raise UserError(f"the model is {target.kind}-conditioned but the data folder is a {data.kind} folder")
    if accelerator.distributed_type == DistributedType.FSDP:
        raise UserError("accelerate's FSDP plugin is not used by thinkpix: launch without it and pass --fsdp "
                        "(TrainConfig.fsdp), which shards the blocks with FSDP2 itself (see train/sharding.py)")
    if data.kind == "class" and target.label_map is None:
        target.map_classes(data.class_names)
    target.check_image_size(*data.images.shape[-2:])
    validation = target.check_conditions(validation) if validation else None  # before training, not after
    lock = claim_output_dir(out_dir, resume, overwrite) if accelerator.is_main_process else None
    try:
        run = _Run(target, data, cfg, out_dir, accelerator, report_to)
        with StopRequest() as stop:
            return run.loop(resume, validation, progress, stop)
    finally:
        if lock is not None:
            lock.close()


class _Run:
    """One training run: the prepared model, optimizer and EMA, and what a step and a checkpoint do."""

    def __init__(self, target: TrainTarget, data: ImageDataset, cfg: TrainConfig, out_dir: Path,
                 accelerator: Accelerator, report_to: str | None):
        self.target, self.data, self.cfg, self.out_dir = target, data, cfg, out_dir
        self.accelerator, self.report_to = accelerator, report_to
        self.ckpt_dir = out_dir / CHECKPOINTS
        named = trainable_parameters(target, cfg)
        for p in named.values():
            p.data = p.data.float()  # trainable parameters in fp32 (mixed precision autocasts the compute)
        if cfg.fsdp:
            shard_transformer(target.transformer)
            named = _rsr_named_parameters(target.transformer)  # sharding replaced them with DTensor parameters
        self.named, self.params = named, list(named.values())
        optimizer = torch.optim.AdamW(parameter_groups(named, cfg), lr=cfg.learning_rate,
                                      betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay)
        self.grad_logs: dict[str, float] = {}  # gate vs expert gradient norms of the latest optimizer step
        self.ema = EMAModel(self.params, decay=cfg.ema_decay) if cfg.ema_decay else None
        target.transformer.train()
        if cfg.fsdp:  # FSDP2 reduces the gradients itself: no DDP wrapper around the sharded module
            self.module, self.optimizer = target.transformer, accelerator.prepare(optimizer)
        else:
            self.module, self.optimizer = accelerator.prepare(target.transformer, optimizer)
        self.scheduler = training_scheduler(target.pipeline.scheduler)

    def resume(self, resume: str | None, result: TrainResult) -> int:
        """Load the checkpoint ``resume`` names (if any) into the run; the step it continues from."""
        path = resolve_resume(self.ckpt_dir, resume)
        if path is None:
            return 0
        shapes = {name: tuple(p.shape) for name, p in self.named.items()}
        meta, tensors, ema_tensors = load_checkpoint(path, self.optimizer, shapes)
        check_resume_config(path, meta["config"], self.cfg, num_blocks(self.target.transformer))
        shard_optimizer_state(self.optimizer)
        load_into(self.named, tensors)
        step = meta["step"]
        if self.ema is not None and ema_tensors is not None:
            load_into(dict(zip(self.named, self.ema.shadow_params)), ema_tensors)
            self.ema.optimization_step = step
        result.resumed_from, result.resumed_loss = path, meta.get("loss")
        if self.accelerator.is_main_process:
            left = f"training steps {step + 1}..{self.cfg.max_steps}" if step < self.cfg.max_steps else (
                f"nothing left to train (max_steps={self.cfg.max_steps})")
            logger.warning("resuming from %s (step %d): %s", path, step, left)
        return step

    def micro_step(self, step: int, micro: int):
        """Forward and backward of micro-batch ``micro`` of optimizer step ``step``: (loss, balance loss)."""
        cfg, target, accelerator = self.cfg, self.target, self.accelerator
        world, rank = accelerator.num_processes, accelerator.process_index
        k = step * cfg.gradient_accumulation_steps + micro
        seed = _micro_seed(cfg.seed, k, rank)
        torch.manual_seed(seed)  # DiT's label dropout draws from the global RNG
        if cfg.method != "full":
            for layer, proc in rsr_layers(target.transformer).items():
                proc.rsr.gate.manual_seed(seed + layer)
        g = torch.Generator().manual_seed(seed)
        index = batch_indices(len(self.data), cfg.batch_size // cfg.gradient_accumulation_steps, k, cfg.seed, rank,
                              world)
        x0 = target.latents(self.data.pixels(index).to(accelerator.device), g)
        if self.data.kind == "caption":
            captions = [self.data.captions[i] for i in index.tolist()]
            if cfg.condition_dropout:
                drop = torch.rand(len(captions), generator=g) < cfg.condition_dropout
                captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
            cond = target.conditions(captions=captions)
        else:
            cond = target.conditions(labels=self.data.labels[index].to(accelerator.device))

        def forward(noisy, t):
            kwargs = {k: (v.to(noisy.dtype) if v.is_floating_point() else v) for k, v in cond.items()}
            return self.target.denoise(self.module, noisy, t, kwargs)

        with accelerator.accumulate(self.module), accelerator.autocast():
            if isinstance(self.scheduler, FlowMatchEulerDiscreteScheduler):
                loss = flow_matching_loss(forward, x0, self.scheduler, g, cfg.logit_mean, cfg.logit_std)
            else:
                loss = noise_prediction_loss(forward, x0, self.scheduler, g)
            balance = aux_loss(target.transformer) if cfg.method != "full" else loss.new_zeros(())
            if not math.isfinite(loss.item()):
                self.diverged(f"the loss became {loss.item()} at step {step}")
            accelerator.backward(loss + balance)
            if accelerator.sync_gradients and world > 1 and target.train_text_encoder:
                _average_outside_ddp(accelerator, self.named)
            if accelerator.sync_gradients and cfg.method != "full" and not cfg.fsdp:
                self.grad_logs = gradient_scalars({i: p.rsr for i, p in rsr_layers(target.transformer).items()})
            if accelerator.sync_gradients and cfg.max_grad_norm:
                norm = accelerator.clip_grad_norm_(self.params, cfg.max_grad_norm)
                if norm is not None and not math.isfinite(float(norm)):  # before the step spoils the weights
                    self.diverged(f"the gradient norm became {float(norm)} at step {step}")
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss, balance

    def diverged(self, what: str):
        last = last_finite_checkpoint(self.ckpt_dir)
        hint = f"resume from {last} with a lower learning rate" if last else "no finite checkpoint yet"
        raise TrainingDiverged(f"training diverged: {what} (learning_rate={self.cfg.learning_rate:g}); {hint}")

    def save(self, step: int, loss: float | None) -> Path:
        """Checkpoint ``step`` (gathered on every process, all-gathers under FSDP; written by the main one),
        after checking that the weights are finite: a checkpoint is always a state worth resuming."""
        self.accelerator.wait_for_everyone()
        weights, opt_state = gather(self.named), gather_optimizer_state(self.optimizer.state_dict())
        shadow = gather(dict(zip(self.named, self.ema.shadow_params))) if self.ema is not None else None
        if not all_finite(weights) or (shadow is not None and not all_finite(shadow)):
            self.diverged(f"the weights became NaN or Inf at step {step}")
        path = self.ckpt_dir / f"checkpoint-{step}"
        if self.accelerator.is_main_process:
            save_checkpoint(self.ckpt_dir, step, weights, opt_state, self.cfg.to_dict(), shadow,
                            keep=self.cfg.checkpoints_total_limit, loss=loss)
        return path

    def loop(self, resume: str | None, validation: list | None, progress: bool, stop: StopRequest) -> TrainResult:
        cfg, target, accelerator = self.cfg, self.target, self.accelerator
        result = TrainResult(self.out_dir, 0, main_process=accelerator.is_main_process)
        step = result.step = self.resume(resume, result)
        if self.report_to and accelerator.is_main_process:
            accelerator.init_trackers("thinkpix", config={k: str(v) for k, v in cfg.to_dict().items()})
        bar = tqdm(total=cfg.max_steps, initial=step, disable=not (progress and accelerator.is_local_main_process),
                   desc=f"train {cfg.method}", unit="step")
        started = time.perf_counter()
        try:
            while step < cfg.max_steps:
                lr = cfg.lr_at(step)  # the run's schedule wins over any rate saved with the optimizer state
                for group in self.optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                if cfg.method != "full":
                    set_gumbel(target.transformer, *cfg.gumbel_at(step))
                for micro in range(cfg.gradient_accumulation_steps):
                    loss, balance = self.micro_step(step, micro)
                step += 1
                if self.ema is not None:
                    self.ema.step(self.params)
                result.losses.append(loss.item())
                self.log(step, loss, balance, lr)
                bar.set_postfix(loss=f"{loss.item():.4f}",
                                img_s=f"{(step - result.step) * cfg.batch_size / (time.perf_counter() - started):.1f}")
                bar.update(1)
                interrupted = stop.requested(accelerator)
                if step % cfg.checkpointing_steps == 0 or step == cfg.max_steps or interrupted:
                    saved = self.save(step, loss.item())
                if interrupted:
                    raise TrainingInterrupted(step, saved, True, *self.processes())
                # a sharded model samples on every process (its forward is collective); the main one writes
                if validation and cfg.validation_steps and step % cfg.validation_steps == 0 and (
                        cfg.fsdp or accelerator.is_main_process):
                    _validate(target, validation, self.out_dir, step, accelerator if self.report_to else None,
                              write=accelerator.is_main_process)
        except KeyboardInterrupt as err:  # a second Ctrl-C: stop now, the newest checkpoint is the resume point
            if isinstance(err, TrainingInterrupted):
                raise
            newest = list_checkpoints(self.ckpt_dir)
            raise TrainingInterrupted(step, newest[-1][1] if newest else None, False, *self.processes()) from None
        finally:
            bar.close()
        return self.finish(step, result)

    def processes(self) -> tuple[int, bool]:
        """(number of processes, whether this is the main one), for the interrupt's one line."""
        return self.accelerator.num_processes, self.accelerator.is_main_process

    def log(self, step: int, loss, balance, lr: float) -> None:
        if not self.report_to:
            return
        logs = {"train/loss": loss.item(), "train/balance_loss": balance.item(), "train/lr": lr}
        if self.cfg.method != "full":
            logs.update(_routing_scalars(self.target), **self.grad_logs)
            logs["train/gumbel_tau"], logs["train/gumbel_noise"] = self.cfg.gumbel_at(step - 1)
        self.accelerator.log(logs, step=step)

    def finish(self, step: int, result: TrainResult) -> TrainResult:
        accelerator, cfg = self.accelerator, self.cfg
        accelerator.wait_for_everyone()
        if self.ema is not None:
            self.ema.copy_to(self.params)  # the final weights are the EMA weights when EMA is on
        final = gather(rsr_state_dict(self.target.transformer)) if cfg.method != "full" else None
        if accelerator.is_main_process:
            result.final = _save_final(self.target, cfg, self.out_dir, final)
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
    save_grid(images, out_dir / "validation" / f"step-{step:06d}.png", labels=[str(c) for c in validation])
    if accelerator is not None:
        tracker = accelerator.get_tracker("tensorboard", unwrap=False)
        if hasattr(tracker, "log_images"):
            tracker.log_images({"validation": images}, step=step, dataformats="NHWC")


def _save_final(target: TrainTarget, cfg: TrainConfig, out_dir: Path, rsr_tensors: dict | None) -> Path:
    if cfg.method == "full":
        target.pipeline.save_pretrained(out_dir / "pipeline")
        return out_dir / "pipeline"
    return save_rsr(target.transformer, out_dir / "rsr", tensors=rsr_tensors)
