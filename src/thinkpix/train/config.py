"""`TrainConfig` and the named presets (paper defaults and their scaled Shapes-world versions).

Paper defaults (appendix table): AdamW lr 5e-4, betas (0.9, 0.999), weight decay 0, batch 128,
LoRA rank 128, Gumbel tau 5.0, looped layer 12 or (4, 8, 12).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..core.config import RSRConfig
from ..core.fields import (
    BOOLEAN,
    FINITE,
    FRACTION,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    OPEN_FRACTION,
    POSITIVE,
    POSITIVE_INT,
    check_fields,
    check_values,
    documented,
    fail,
    knob,
)

METHODS = ("rsr", "sft", "full")
MIXED_PRECISIONS = ("no", "bf16", "fp16")
LR_SCHEDULERS = ("constant", "linear", "cosine")
RSR_FIELDS = tuple(f.name for f in fields(RSRConfig) if f.name != "seed")  # TrainConfig.seed seeds RSR too
FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max, without importing torch here


def _default_rsr() -> RSRConfig:
    return RSRConfig(layers="middle")


@documented
@dataclass
class TrainConfig:
    """Everything that decides a training run (and nothing about where data or models live).

    It holds the run's :class:`~thinkpix.RSRConfig` as ``rsr``; every RSR field can also be given and read by
    its own name (``TrainConfig(rank=16).rank``, ``preset("shapes", num_experts=3)``). The training default
    of ``layers`` is ``"middle"`` (block L // 2).
    """

    method: str = knob("rsr", "'rsr' (experts + gate), 'sft' (plain LoRA: RSR with M=1, T=1 on the same layers) "
                       "or 'full' (every transformer parameter; used to pretrain the Shapes bases).", choices=METHODS)
    rsr: RSRConfig = knob(help="The RSR component trained (methods rsr and sft).",
                          default_factory=_default_rsr)
    learning_rate: float = knob(5e-4, "AdamW peak learning rate (paper: 5e-4).", check=POSITIVE)
    lr_scheduler: str = knob("constant", "Decay to 0 at max_steps after lr_warmup_steps of linear warm-up, as "
                             "diffusers' get_scheduler.", choices=LR_SCHEDULERS)
    lr_warmup_steps: int = knob(0, "Linear warm-up steps.", check=NON_NEGATIVE_INT)
    lr_decay_steps: int | None = knob(None, "Decay only over the last N steps (warmup-stable-decay, e.g. the "
                                      "cool-down of a resumed run; needs lr_scheduler linear or cosine).",
                                      check=POSITIVE_INT, none="decay from the end of warm-up (diffusers')")
    adam_beta1: float = knob(0.9, "AdamW beta1.", check=FRACTION)
    adam_beta2: float = knob(0.999, "AdamW beta2.", check=FRACTION)
    weight_decay: float = knob(0.0, "AdamW weight decay.", check=NON_NEGATIVE, aliases=("adam_weight_decay",))
    batch_size: int = knob(128, "Global batch per optimizer step, over all processes and accumulation steps "
                           "(paper: 128).", check=POSITIVE_INT)
    gradient_accumulation_steps: int = knob(1, "Micro-batches per optimizer step.", check=POSITIVE_INT)
    max_steps: int = knob(1000, "Optimizer steps of the run.", check=POSITIVE_INT, aliases=("max_train_steps",))
    mixed_precision: str = knob("no", "Autocast dtype of the forward pass (trainable parameters stay fp32).",
                                choices=MIXED_PRECISIONS)
    step_checkpointing: bool = knob(False, "Activation checkpointing across latent steps (less memory, more "
                                    "compute).", check=BOOLEAN)
    gradient_checkpointing: bool = knob(False, "Activation checkpointing of the transformer's blocks (diffusers' "
                                        "enable_gradient_checkpointing): less memory, one more forward of each "
                                        "block in backward. The gate replays its routes, so the run is unchanged.",
                                        check=BOOLEAN)
    fsdp: bool = knob(False, "Shard the transformer's blocks, gradients and optimizer state over the processes "
                      "(FSDP2, train/sharding.py; launch with accelerate launch --num_processes N).", check=BOOLEAN)
    ema_decay: float | None = knob(None, "EMA of the trained weights; the final weights are the EMA's.",
                                   check=OPEN_FRACTION, none="no EMA")
    checkpointing_steps: int = knob(500, "Save a resumable checkpoint every N steps.", check=POSITIVE_INT)
    checkpoints_total_limit: int = knob(2, "Checkpoints kept (older ones are pruned).", check=POSITIVE_INT)
    validation_steps: int = knob(0, "Sample the validation prompts every N steps (0: never).",
                                 check=NON_NEGATIVE_INT)
    condition_dropout: float = knob(0.0, "Share of captions replaced by the empty prompt, so that classifier-free "
                                    "guidance has an unconditional model (class models drop labels inside DiT's "
                                    "label embedding).", check=FRACTION)
    logit_mean: float = knob(0.0, "Mean of the logit-normal timestep density (flow matching, SD3's).", check=FINITE)
    logit_std: float = knob(1.0, "Std of the logit-normal timestep density.", check=POSITIVE)
    max_grad_norm: float = knob(1.0, "Gradient clipping norm.", check=POSITIVE)
    seed: int = knob(0, "Seeds data order, noise, timesteps and dropout per (step, process), and the RSR weights "
                     "and Gumbel noise (RSRConfig.seed).", check=NON_NEGATIVE_INT)
    gate_lr_multiplier: float = knob(1.0, "Learning rate of the gate parameters relative to learning_rate (paper: 1).",
                                     check=POSITIVE)
    gumbel_tau_end: float | None = knob(None, "Anneal tau geometrically from gumbel_tau to this over training. Changes "
                                        "only the straight-through gradient, not how random the routes are.",
                                        check=POSITIVE, none="constant tau (the paper)")
    gumbel_noise_end: float | None = knob(None, "Anneal the Gumbel noise scale linearly from 1 to this over training; "
                                          "lower noise makes training routes follow the eval-mode argmax.",
                                          check=NON_NEGATIVE, none="constant 1 (the paper)")

    def __init__(self, rsr: RSRConfig | dict | None = None, **values: Any) -> None:
        """Training fields by name; RSR fields by name (merged into ``rsr``) or as an ``RSRConfig``/dict."""
        check_fields(TrainConfig, values, extra=RSR_FIELDS)
        given = {name: values.pop(name) for name in RSR_FIELDS if name in values}
        for f in fields(self):
            if f.name != "rsr":
                setattr(self, f.name, values[f.name] if f.name in values else (
                    f.default_factory() if f.default is dataclasses.MISSING else f.default))
        if isinstance(rsr, dict):
            rsr = RSRConfig.from_dict(rsr)
        if not isinstance(rsr, (RSRConfig, type(None))):
            fail(self, "rsr", rsr, "an RSRConfig, a dict of its fields, or None")
        self.rsr = _default_rsr() if rsr is None else rsr
        check_values(self)
        self.rsr = self.rsr.updated(**given, seed=self.seed)
        self._check_combinations()

    def __getattr__(self, name: str) -> Any:
        rsr = self.__dict__.get("rsr")
        if rsr is not None and name in RSR_FIELDS:
            return getattr(rsr, name)  # the RSR knobs read by their own names
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _check_combinations(self) -> None:
        if self.lr_decay_steps is not None and self.lr_scheduler == "constant":
            fail(self, "lr_decay_steps", self.lr_decay_steps, "None, or an integer >= 1 with lr_scheduler 'linear' "
                 "or 'cosine'")
        if self.lr_decay_steps is not None and self.lr_decay_steps > self.max_steps - self.lr_warmup_steps:
            fail(self, "lr_decay_steps", self.lr_decay_steps, f"at most max_steps - lr_warmup_steps = "
                 f"{self.max_steps - self.lr_warmup_steps} (the decay starts after the warm-up)")
        if self.learning_rate / (1 - self.adam_beta1) > FLOAT32_MAX:  # AdamW's first step size overflows to inf
            fail(self, "learning_rate", self.learning_rate, f"numbers whose first AdamW step, learning_rate / "
                 f"(1 - adam_beta1), fits in float32 (below {FLOAT32_MAX * (1 - self.adam_beta1):.3g})")
        if self.fsdp and self.method == "full":
            fail(self, "fsdp", self.fsdp, "False with method 'full' (FSDP shards RSR/SFT fine-tuning of large hosts; "
                 "pretraining the small Shapes bases runs with DDP)")
        if self.method == "sft" and (self.rsr.num_experts, self.rsr.latent_steps) != (1, 1):
            self.rsr = self.rsr.updated(num_experts=1, latent_steps=1)

    def gumbel_at(self, step: int) -> tuple[float, float]:
        """Gumbel temperature and noise scale at optimizer step ``step`` (0-based): a pure function of the step,
        like ``lr_at``. tau goes geometrically from ``gumbel_tau`` to ``gumbel_tau_end`` (a common tau
        annealing, Jang et al. 2017, Sec. 2.2); the noise scale linearly from 1 to ``gumbel_noise_end``. Both
        reach their end value at the last step."""
        progress = min(1.0, step / max(1, self.max_steps - 1))
        tau = self.gumbel_tau
        if self.gumbel_tau_end is not None:
            tau = self.gumbel_tau * (self.gumbel_tau_end / self.gumbel_tau) ** progress
        noise = 1.0 if self.gumbel_noise_end is None else 1.0 + (self.gumbel_noise_end - 1.0) * progress
        return float(tau), float(noise)

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

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rsr": self.rsr.to_dict()}

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """From :meth:`to_dict` (``rsr`` nested) or the flat form of earlier versions."""
        return cls(**data)


PAPER = TrainConfig()
PRESETS: dict[str, TrainConfig] = {
    # The paper's settings (appendix table); batch 128 is the global batch across processes.
    "paper-sd3": replace(PAPER, layers=(12,), max_steps=50 * 1000 // 128 + 1),
    "paper-sd3-multi": replace(PAPER, layers=(4, 8, 12), max_steps=50 * 1000 // 128 + 1),
    "paper-dit": replace(PAPER, layers=(12,), max_steps=20_000),
    # Scaled for the Shapes world on a laptop CPU: small rank, small batch, short runs.
    "shapes": replace(PAPER, rank=16, batch_size=32, learning_rate=1e-3, max_steps=300, checkpointing_steps=100,
                      validation_steps=100, layers="middle"),
    # The routing pilot's recommended setting (docs/results/routing_health.md, benchmarks/routing_health.py): the
    # "shapes" preset with the Gumbel noise annealed from 1 to 0 over training (training routes become the
    # eval-mode routes) and the balance loss on also at M <= 3 (keeps both experts in use). Not the paper's setting.
    "shapes-routed": replace(PAPER, rank=16, batch_size=32, learning_rate=1e-3, max_steps=300, checkpointing_steps=100,
                             validation_steps=100, layers="middle", gumbel_noise_end=0.0, balance_loss_weight=0.01),
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
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
