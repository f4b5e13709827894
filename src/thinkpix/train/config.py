"""`TrainConfig` and the named presets (paper defaults and their scaled Shapes-world versions).

Paper defaults (appendix table): AdamW lr 5e-4, betas (0.9, 0.999), weight decay 0, batch 128,
LoRA rank 128, Gumbel tau 5.0, looped layer 12 or (4, 8, 12).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..core.config import HALTINGS, check_fields

METHODS = ("rsr", "sft", "full")
MIXED_PRECISIONS = ("no", "bf16", "fp16")
LAYER_CHOICES = ("middle", "three")
LR_SCHEDULERS = ("constant", "linear", "cosine")
FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max, without importing torch here


@dataclass
class TrainConfig:
    """Everything that decides a training run (and nothing about where data or models live).

    ``method``: ``"rsr"`` (experts + gate), ``"sft"`` (plain LoRA: RSR with M=1, T=1 on the same layers),
    or ``"full"`` (every transformer parameter; used to pretrain the Shapes bases).
    ``condition_dropout``: share of captions replaced by the empty prompt, so that classifier-free
    guidance has an unconditional model (class models drop labels inside DiT's label embedding).
    ``lr_scheduler``: ``"constant"``, ``"linear"`` or ``"cosine"`` decay to zero after
    ``lr_warmup_steps`` of linear warm-up, as diffusers' ``get_scheduler``; with ``lr_decay_steps`` the
    decay covers only the last that many steps (warmup-stable-decay, see :meth:`lr_at`).
    ``layers``: block indices, or ``"middle"`` (L // 2, the paper's layer 12 of 24) or ``"three"``
    (L/6, L/3, L/2 rounded, the paper's 4, 8, 12 of 24).
    """

    method: str = "rsr"
    num_experts: int = 2
    latent_steps: int = 2
    rank: int = 128
    gumbel_tau: float = 5.0
    layers: Any = "middle"
    routing: str = "learned"
    gate_input: str = "full"
    balance_loss_weight: float | None = None
    halting: str = "none"  # RSRConfig.halting; "learned" trains an ACT halting head with the ponder cost
    halt_threshold: float | None = None
    ponder_weight: float = 0.01
    learning_rate: float = 5e-4
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    lr_decay_steps: int | None = None  # None: decay from the end of warm-up (diffusers' linear/cosine)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 0.0
    batch_size: int = 128
    gradient_accumulation_steps: int = 1
    max_steps: int = 1000
    mixed_precision: str = "no"
    step_checkpointing: bool = False
    fsdp: bool = False  # shard blocks, gradients and optimizer state over processes (FSDP2; train/sharding.py)
    ema_decay: float | None = None
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 2
    validation_steps: int = 0
    condition_dropout: float = 0.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    max_grad_norm: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            _fail("method", self.method, METHODS)
        if self.lr_scheduler not in LR_SCHEDULERS:
            _fail("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        if isinstance(self.lr_warmup_steps, bool) or not isinstance(self.lr_warmup_steps, int) or (
                self.lr_warmup_steps < 0):
            _fail("lr_warmup_steps", self.lr_warmup_steps, "an integer >= 0")
        if self.lr_decay_steps is not None and (self.lr_scheduler == "constant" or isinstance(
                self.lr_decay_steps, bool) or not isinstance(self.lr_decay_steps, int) or self.lr_decay_steps < 1):
            _fail("lr_decay_steps", self.lr_decay_steps, "None, or an integer >= 1 with lr_scheduler 'linear' or "
                  "'cosine'")
        if self.lr_decay_steps is not None and self.lr_decay_steps > self.max_steps - self.lr_warmup_steps:
            _fail("lr_decay_steps", self.lr_decay_steps, f"at most max_steps - lr_warmup_steps = "
                  f"{self.max_steps - self.lr_warmup_steps} (the decay starts after the warm-up)")
        if self.mixed_precision not in MIXED_PRECISIONS:
            _fail("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        if isinstance(self.layers, list):
            self.layers = tuple(self.layers)
        if isinstance(self.layers, int) and not isinstance(self.layers, bool):
            self.layers = (self.layers,)
        if not (self.layers in LAYER_CHOICES or (isinstance(self.layers, tuple) and self.layers)):
            _fail("layers", self.layers, "'middle', 'three' or a non-empty tuple of block indices")
        for name in ("num_experts", "latent_steps", "rank", "batch_size", "gradient_accumulation_steps",
                     "max_steps", "checkpointing_steps", "checkpoints_total_limit"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                _fail(name, value, "an integer >= 1")
        for name in ("learning_rate", "gumbel_tau", "logit_std", "max_grad_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                _fail(name, value, "a finite number > 0")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            _fail("adam_beta1/adam_beta2", (self.adam_beta1, self.adam_beta2), "numbers in [0, 1)")
        if self.learning_rate / (1 - self.adam_beta1) > FLOAT32_MAX:  # AdamW's first step size overflows to inf
            _fail("learning_rate", self.learning_rate, f"numbers whose first AdamW step, learning_rate / "
                  f"(1 - adam_beta1), fits in float32 (below {FLOAT32_MAX * (1 - self.adam_beta1):.3g})")
        if self.weight_decay < 0:
            _fail("weight_decay", self.weight_decay, "a number >= 0")
        if not 0 <= self.condition_dropout < 1:
            _fail("condition_dropout", self.condition_dropout, "a number in [0, 1)")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            _fail("ema_decay", self.ema_decay, "None or a number in (0, 1)")
        if self.validation_steps < 0 or self.seed < 0:
            _fail("validation_steps/seed", (self.validation_steps, self.seed), "integers >= 0")
        if self.halting not in HALTINGS:
            _fail("halting", self.halting, " or ".join(map(repr, HALTINGS)))
        if self.fsdp and self.method == "full":
            _fail("fsdp", self.fsdp, "False with method 'full' (FSDP shards RSR/SFT fine-tuning of large hosts; "
                  "pretraining the small Shapes bases runs with DDP)")
        if self.method == "sft":
            self.num_experts, self.latent_steps = 1, 1

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based). A pure function of the step, so a resumed
        run follows the same schedule with nothing extra in the checkpoint.

        Warm-up is linear over ``lr_warmup_steps`` (``(step + 1) / warmup``, so the first step trains;
        diffusers starts at 0); linear/cosine then decay to 0 at ``max_steps`` as diffusers.optimization's
        ``get_linear_schedule_with_warmup`` / ``get_cosine_schedule_with_warmup``.
        With ``lr_decay_steps`` the rate stays constant until ``max_steps - lr_decay_steps`` and decays
        over the rest: the warmup-stable-decay schedule (Hu et al. 2024, MiniCPM, Sec. 4), which lets a
        constant-rate run be resumed for a short cool-down.
        """
        if step < self.lr_warmup_steps:
            return self.learning_rate * (step + 1) / self.lr_warmup_steps
        if self.lr_scheduler == "constant":
            return self.learning_rate
        start = self.lr_warmup_steps if self.lr_decay_steps is None else self.max_steps - self.lr_decay_steps
        progress = min(1.0, max(0.0, (step - start) / max(1, self.max_steps - start)))
        if self.lr_scheduler == "linear":
            return self.learning_rate * (1.0 - progress)
        return self.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))

    def block_indices(self, num_blocks: int) -> tuple[int, ...]:
        """Resolve ``layers`` for a transformer with ``num_blocks`` blocks."""
        if self.layers == "middle":
            return (num_blocks // 2,)
        if self.layers == "three":
            return tuple(sorted({max(0, round(num_blocks * k / 6)) for k in (1, 2, 3)}))
        return tuple(self.layers)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if isinstance(self.layers, tuple):
            data["layers"] = list(self.layers)
        return data

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        check_fields(cls, data)
        return cls(**data)


def _fail(name: str, value: Any, allowed: Any) -> None:
    allowed = " or ".join(map(repr, allowed)) if isinstance(allowed, tuple) else allowed
    raise ValueError(f"TrainConfig.{name}={value!r} is invalid: allowed values are {allowed}")


PAPER = TrainConfig()
PRESETS: dict[str, TrainConfig] = {
    # The paper's settings (appendix table); batch 128 is the global batch across processes.
    "paper-sd3": replace(PAPER, layers=(12,), max_steps=50 * 1000 // 128 + 1),
    "paper-sd3-multi": replace(PAPER, layers=(4, 8, 12), max_steps=50 * 1000 // 128 + 1),
    "paper-dit": replace(PAPER, layers=(12,), max_steps=20_000),
    # Scaled for the Shapes world on a laptop CPU: small rank, small batch, short runs.
    "shapes": replace(PAPER, rank=16, batch_size=32, learning_rate=1e-3, max_steps=300, checkpointing_steps=100,
                      validation_steps=100, layers="middle"),
    "shapes-three": replace(PAPER, rank=16, batch_size=32, learning_rate=1e-3, max_steps=300,
                            checkpointing_steps=100, validation_steps=100, layers="three"),
    "shapes-pretrain": replace(PAPER, method="full", learning_rate=1e-3, batch_size=64, max_steps=4000,
                               checkpointing_steps=500, validation_steps=1000, max_grad_norm=1.0,
                               condition_dropout=0.1),
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """A named preset with fields overridden (``None`` values are ignored)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; allowed presets are {sorted(PRESETS)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    check_fields(TrainConfig, overrides)
    return TrainConfig(**{**PRESETS[name].to_dict(), **overrides})
