"""`RSRConfig`: every knob of Recursive Sparse Reasoning, validated on construction.

Field names follow the paper's symbols (Sec. 3, Algorithm 1, appendix table): M experts,
T latent steps, LoRA rank r, Gumbel temperature tau, looped layers.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .fields import (
    BOOLEAN,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    Check,
    check_fields,
    check_values,
    documented,
    knob,
)

ROUTINGS = ("learned", "random")
DISPATCHES = ("sorted", "grouped", "dense")
GATE_INPUTS = ("full", "tokens")
HALTINGS = ("none", "delta", "confidence", "learned")
HALT_UNITS = ("token", "sample")
ROUTE_UNITS = ("token", "sample")
# Default threshold per criterion: relative state change, gate max-probability, halting probability.
HALT_THRESHOLDS = {"delta": 0.05, "confidence": 0.9, "learned": 0.5}

# Switch Transformer's auxiliary-loss coefficient (Fedus et al. 2022, Sec. 2.2): the paper
# (Sec. 4.1) turns a balance loss on for M > 3 without giving its weight.
DEFAULT_BALANCE_WEIGHT = 0.01


LAYER_CHOICES = ("middle", "three")


def _layer_indices(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and len(set(value)) == len(value) and all(
        _is_int(i) and i >= 0 for i in value)


def _normalise_layers(value: Any) -> tuple[int, ...] | str:
    return value if value in LAYER_CHOICES else tuple(sorted(value))


LAYERS = Check("a non-empty sequence of distinct block indices >= 0, or 'middle' (block L // 2, the paper's 12 of 24) "
               "or 'three' (L/6, L/3, L/2: the paper's 4, 8, 12 of 24)",
               lambda v: v in LAYER_CHOICES or _layer_indices(v), _normalise_layers)


def parse_layers(text: str) -> tuple[int, ...] | str:
    """``middle``, ``three`` or comma-separated block indices (the command line's spelling of ``layers``)."""
    if text in LAYER_CHOICES:
        return text
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"layers {text!r}: use 'middle', 'three' or block indices like 4,8,12") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@documented
@dataclass
class RSRConfig:
    """Configuration of the recursive sparse component of one or more attention layers."""

    num_experts: int = knob(2, "M, LoRA experts the gate chooses from at every latent step.", check=POSITIVE_INT)
    latent_steps: int = knob(2, "T, latent steps per forward pass; only step T adds the frozen base.",
                             check=POSITIVE_INT)
    rank: int = knob(128, "r, LoRA rank of every expert (paper: 128).", check=POSITIVE_INT)
    alpha: float | None = knob(None, "LoRA scale numerator: the update is scaled by alpha / rank.", check=POSITIVE,
                               none="alpha = rank")
    gumbel_tau: float = knob(5.0, "Gumbel-softmax temperature tau (paper: 5.0; tau = 0 makes the Gumbel-softmax NaN).",
                             check=POSITIVE)
    layers: tuple[int, ...] | str = knob((12,), "Transformer blocks that get RSR (paper: 12, or 4, 8, 12); names are "
                                         "resolved against the host's depth by apply_rsr.", check=LAYERS,
                                         parse=parse_layers)
    routing: str = knob("learned", "'learned' (Gumbel-softmax hard selection when training, argmax in eval) or "
                        "'random' (a uniformly random expert per token from a seeded generator: the ablation the "
                        "paper lacks).", choices=ROUTINGS)
    balance_loss_weight: float | None = knob(None, "Weight of the expert-balance loss "
                                             "(thinkpix.core.gate.balance_loss); set it to turn the loss on for "
                                             "M <= 3.", check=NON_NEGATIVE,
                                             none="the paper's rule: 0.01 for M > 3, else 0")
    remodulate: bool = knob(True, "Apply the block's own alpha * LN(.) + beta to the recursive state before every "
                            "step after the first (Sec. 3.3 equations; Algorithm 1 omits it).", check=BOOLEAN)
    dispatch: str = knob("sorted", "'sorted' (tokens sorted by expert, one matmul per expert segment: cost flat in "
                         "M), 'grouped' (the same results with static shapes and no host read: what 'sorted' "
                         "runs as under torch.compile) or 'dense' (every expert computed and masked: the correctness "
                         "reference, and the exact straight-through gradient for the gate).",
                         choices=DISPATCHES)
    gate_input: str = knob("full", "What the gate sees: 'full' (tokens + timestep/condition + latent-step "
                           "embedding, as in the paper) or 'tokens' (tokens only: the Fig. 4 ablation).",
                           choices=GATE_INPUTS)
    seed: int = knob(0, "Seeds the initial weights, the Gumbel noise and random routing (offset by the layer index).",
                     check=NON_NEGATIVE_INT)
    halting: str = knob("none", "Stop the intermediate latent steps of a token (or sample) early at inference (the "
                        "paper's Sec. 6 limitation): 'none' (bit-identical to fixed T), 'delta' (relative change of "
                        "the recursive state below halt_threshold), 'confidence' (gate max-probability at least "
                        "halt_threshold) or 'learned' (an ACT-style halting head, Graves 2016, trained with a ponder "
                        "cost of weight ponder_weight). The final, base-integrating step always runs.",
                        choices=HALTINGS)
    halt_per: str = knob("token", "What stops as a unit.", choices=HALT_UNITS)
    halt_threshold: float | None = knob(None, "Halting criterion threshold.", check=POSITIVE,
                                        none="the criterion's default")
    ponder_weight: float = knob(0.01, "Weight of the expected-number-of-steps cost of the learned halting head.",
                                check=NON_NEGATIVE)
    gumbel_noise_scale: float = knob(1.0, "s in the training route argmax(l + s g), g ~ Gumbel(0, 1) (paper: 1). The "
                                     "hard route ignores tau, so s is what sets how random training routes are: with "
                                     "logit margin m (M = 2) a token takes its eval-mode route with probability "
                                     "sigmoid(|m| / s).", check=NON_NEGATIVE)
    route_per: str = knob("token", "'token' (the paper: one expert per token and step) or 'sample' (one expert per "
                          "sample and step, from the mean of its tokens' logits, as InstructMoLE argues for).",
                          choices=ROUTE_UNITS)
    z_loss_weight: float = knob(0.0, "Weight of the router z-loss mean(logsumexp(l)^2) (ST-MoE, Zoph et al. 2022, "
                                "eq. 5; they use 1e-3), which keeps gate logits small; 0 (paper) turns it off.",
                                check=NON_NEGATIVE)

    def __post_init__(self) -> None:
        self._given = {f.name: getattr(self, f.name) for f in fields(self)}  # before None is resolved
        if isinstance(self.layers, int) and not isinstance(self.layers, bool):
            self.layers = (self.layers,)
        check_values(self)
        if self.alpha is None:
            self.alpha = float(self.rank)
        if self.halt_threshold is None:
            self.halt_threshold = HALT_THRESHOLDS.get(self.halting)
        if self.balance_loss_weight is None:
            self.balance_loss_weight = DEFAULT_BALANCE_WEIGHT if self.num_experts > 3 else 0.0

    def given(self) -> dict[str, Any]:
        """The fields as passed to the constructor (``None`` where a value is derived, e.g. ``alpha = rank``)."""
        return dict(self._given)

    def updated(self, **changes: Any) -> RSRConfig:
        """A copy with ``changes``, re-deriving every field that was left ``None`` (``alpha`` follows a new
        ``rank``, the balance weight a new M, the threshold a new criterion), unlike ``dataclasses.replace``."""
        check_fields(RSRConfig, changes)
        return RSRConfig(**{**self._given, **changes})

    def resolve_layers(self, num_blocks: int) -> RSRConfig:
        """This config with ``layers`` named ``"middle"`` / ``"three"`` resolved for ``num_blocks`` blocks."""
        if self.layers == "middle":
            return self.updated(layers=(num_blocks // 2,))
        if self.layers == "three":
            return self.updated(layers=tuple(sorted({max(0, round(num_blocks * k / 6)) for k in (1, 2, 3)})))
        return self

    @property
    def scaling(self) -> float:
        """LoRA scale ``alpha / r`` (Hu et al. 2021, Sec. 4.1)."""
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if isinstance(self.layers, tuple):
            data["layers"] = list(self.layers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RSRConfig:
        check_fields(cls, data)
        data = dict(data)
        if "layers" in data and isinstance(data["layers"], list):
            data["layers"] = tuple(data["layers"])
        return cls(**data)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> RSRConfig:
        """Parse a JSON string, or read a ``.json`` file when given a path (a ``Path``, or a string naming an
        existing file: a folder name may start with ``{`` too)."""
        text = str(text_or_path)
        if isinstance(text_or_path, os.PathLike) or not text.lstrip().startswith("{") or _is_file(text):
            text = Path(text_or_path).read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"RSRConfig JSON is malformed: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"RSRConfig JSON must be an object, got {type(data).__name__}")
        return cls.from_dict(data)


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a JSON text too long for a file name, or with a NUL
        return False
