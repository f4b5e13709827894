"""The FrozenLake planner's two configs, declared once: the planner's size (``PlannerConfig``, saved with
it) and its training run (``TrainConfig``). ``thinkpix frozenlake train`` generates its flags from both."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from ..core.fields import (
    BOOLEAN,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    Check,
    check_values,
    documented,
    knob,
)
from .maps import MAX_SIZE, MIN_SIZE

DECODERS = ("cells", "pixels")
POSITIONS = ("sincos", "learned")
PLANNER_ROUTINGS = ("sample", "token")
RENDERS = ("argmax", "one_agent")
SIZES = Check(f"a non-empty tuple of map sizes in {MIN_SIZE}..{MAX_SIZE}",
              lambda v: isinstance(v, (tuple, list)) and bool(v) and all(
                  isinstance(s, int) and not isinstance(s, bool) and MIN_SIZE <= s <= MAX_SIZE for s in v), tuple)


def parse_sizes(text: str) -> tuple[int, ...]:
    """``3,4,5`` (or ``"3 4 5"``) to a tuple of map sizes."""
    try:
        return tuple(int(s) for s in text.replace(",", " ").split())
    except ValueError:
        raise ValueError(f"sizes must be integers in {MIN_SIZE}..{MAX_SIZE}, got {text!r}") from None


@documented
@dataclass
class PlannerConfig:
    """Size of a planner. ``plan_steps`` = P, the longest plan (the RSR planner runs P + 1 latent steps)."""

    recursive: bool = knob(True, "The RSR planner (True) or the non-recursive baseline of the same size.",
                           check=BOOLEAN)
    cell_px: int = knob(8, "Pixels per cell (divides 64).", check=POSITIVE_INT)
    width: int = knob(64, "Transformer width.", check=POSITIVE_INT)
    heads: int = knob(4, "Attention heads.", check=POSITIVE_INT)
    layers: int = knob(4, "DiT blocks; RSR on the last.", check=POSITIVE_INT)
    rank: int = knob(16, "LoRA rank of each expert.", check=POSITIVE_INT)
    plan_steps: int = knob(16, "Longest plan P.", check=POSITIVE_INT)
    decoder_layers: int = knob(1, "Decoder transformer layers.", check=POSITIVE_INT)
    positions: str = knob("sincos", "Cell positions: fixed sin/cos integer-grid codes or learned row/col tables.",
                          choices=POSITIONS)
    decoder: str = knob("cells", "'cells': per-cell categorical appearance, drawn with the env's tiles; 'pixels': "
                        "pixel regression (MSE).", choices=DECODERS)
    routing: str = knob("sample", "Inference routing stored with the planner: one action per sample per step, or "
                        "the core's per-token argmax.", choices=PLANNER_ROUTINGS)
    render: str = knob("one_agent", "How the cells decoder draws a frame, stored with the planner: exactly one agent "
                       "per frame, on the cell with the highest agent probability, or the argmax of every cell.",
                       choices=RENDERS)
    seed: int = knob(0, "Seeds the planner's initial weights.", check=NON_NEGATIVE_INT)

    def __post_init__(self) -> None:
        check_values(self)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PlannerConfig:
        data: dict[str, Any] = json.loads(text)
        # planners written before these options existed: pixel decoder, per-token routing
        data.setdefault("decoder", "pixels")
        data.setdefault("routing", "token")
        data.setdefault("render", "argmax")
        return cls(**data)


@documented
@dataclass
class TrainConfig:
    """A planner's training run (``train.train_planner``)."""

    sizes: tuple[int, ...] = knob((3, 4, 5, 6, 7, 8), "Map sizes, one size per batch, taken in turn.", check=SIZES,
                                  parse=parse_sizes)
    maps_per_size: int = knob(2000, "Training maps per size.", check=POSITIVE_INT)
    steps: int = knob(6000, "Optimizer steps.", check=POSITIVE_INT)
    batch: int = knob(32, "Maps per batch.", check=POSITIVE_INT)
    lr: float = knob(1e-3, "AdamW peak learning rate (cosine decay after the warm-up).", check=POSITIVE)
    weight_decay: float = knob(0.0, "AdamW weight decay.", check=NON_NEGATIVE)
    warmup: int = knob(100, "Linear warm-up steps.", check=NON_NEGATIVE_INT)
    recon_weight: float | None = knob(None, "Weight of the frame loss.", check=NON_NEGATIVE,
                                      none="1 for the cells decoder (cross-entropy), 10 for pixels (MSE)")
    max_minutes: float | None = knob(None, "Stop after this much wall time.", check=POSITIVE, none="no limit")
    seed: int = knob(0, "Seeds the training maps and batches (and, from the command line, the planner).",
                     check=NON_NEGATIVE_INT)

    def __post_init__(self) -> None:
        check_values(self)
