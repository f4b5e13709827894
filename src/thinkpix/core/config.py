"""`RSRConfig`: every knob of Recursive Sparse Reasoning, validated on construction.

Field names follow the paper's symbols (Sec. 3, Algorithm 1, appendix table): M experts,
T latent steps, LoRA rank r, Gumbel temperature tau, looped layers.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

ROUTINGS = ("learned", "random")
DISPATCHES = ("sorted", "dense")
GATE_INPUTS = ("full", "tokens")
HALTINGS = ("none", "delta", "confidence", "learned")
HALT_UNITS = ("token", "sample")
# Default threshold per criterion: relative state change, gate max-probability, halting probability.
HALT_THRESHOLDS = {"delta": 0.05, "confidence": 0.9, "learned": 0.5}

# Switch Transformer's auxiliary-loss coefficient (Fedus et al. 2022, Sec. 2.2): the paper
# (Sec. 4.1) turns a balance loss on for M > 3 without giving its weight.
DEFAULT_BALANCE_WEIGHT = 0.01


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"RSRConfig.{name}={value!r} is invalid: allowed values are {allowed}")


def check_fields(cls: type, data: dict[str, Any]) -> None:
    """Raise a ValueError naming unknown keys of ``data`` and the fields dataclass ``cls`` allows."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; allowed fields are {sorted(known)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class RSRConfig:
    """Configuration of the recursive sparse component of one or more attention layers.

    Args:
        num_experts: M, LoRA experts the gate chooses from at every latent step (>= 1).
        latent_steps: T, latent steps per forward pass (>= 1); only step T adds the frozen base.
        rank: r, LoRA rank of every expert (paper: 128).
        alpha: LoRA scale numerator; the update is scaled by ``alpha / rank``. ``None`` means ``rank``.
        gumbel_tau: Gumbel-softmax temperature tau (> 0; paper: 5.0).
        layers: indices of the transformer blocks that get RSR (paper: ``(12,)`` or ``(4, 8, 12)``).
        routing: ``"learned"`` (Gumbel-softmax hard selection when training, argmax in eval) or
            ``"random"`` (a uniformly random expert per token from a seeded generator: the ablation
            the paper lacks).
        balance_loss_weight: weight of the expert-balance loss (see ``thinkpix.core.gate.balance_loss``).
            ``None`` means the paper's rule: on (0.01) for M > 3, off (0.0) otherwise.
        remodulate: apply the block's own ``alpha * LN(.) + beta`` to the recursive state before
            every step after the first (Sec. 3.3 equations; Algorithm 1 omits it).
        dispatch: ``"sorted"`` (tokens sorted by expert, one matmul per expert segment: cost flat in
            M) or ``"dense"`` (every expert computed and masked: the correctness reference).
        gate_input: ``"full"`` (tokens + timestep/condition + latent-step embedding, as in the paper)
            or ``"tokens"`` (tokens only: the Fig. 4 ablation).
        seed: seeds the initial weights, the Gumbel noise and random routing (offset by the layer index).
        halting: stop the intermediate latent steps of a token (or sample) early at inference (the
            paper's Sec. 6 limitation): ``"none"`` (default: bit-identical to fixed T), ``"delta"`` (relative
            change of the recursive state below ``halt_threshold``), ``"confidence"`` (gate max-probability
            at least ``halt_threshold``) or ``"learned"`` (an ACT-style halting head, Graves 2016, trained
            with a ponder cost of weight ``ponder_weight``; halts when its probability >= ``halt_threshold``).
            The final, base-integrating step always runs.
        halt_per: ``"token"`` or ``"sample"``: what stops as a unit.
        halt_threshold: criterion threshold; ``None`` picks the criterion's default.
        ponder_weight: weight of the expected-number-of-steps cost of the learned halting head.
    """

    num_experts: int = 2
    latent_steps: int = 2
    rank: int = 128
    alpha: float | None = None
    gumbel_tau: float = 5.0
    layers: tuple[int, ...] = (12,)
    routing: str = "learned"
    balance_loss_weight: float | None = None
    remodulate: bool = True
    dispatch: str = "sorted"
    gate_input: str = "full"
    seed: int = 0
    halting: str = "none"
    halt_per: str = "token"
    halt_threshold: float | None = None
    ponder_weight: float = 0.01

    def __post_init__(self) -> None:
        for name in ("num_experts", "latent_steps", "rank"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                _fail(name, value, "an integer >= 1")
        if self.alpha is None:
            self.alpha = float(self.rank)
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or not (
            math.isfinite(self.alpha) and self.alpha > 0
        ):
            _fail("alpha", self.alpha, "a finite number > 0, or None for alpha = rank")
        self.alpha = float(self.alpha)
        tau = self.gumbel_tau
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not (math.isfinite(tau) and tau > 0):
            _fail("gumbel_tau", tau, "a finite number > 0 (tau = 0 makes the Gumbel-softmax NaN)")
        self.gumbel_tau = float(tau)
        if isinstance(self.layers, int) and not isinstance(self.layers, bool):
            self.layers = (self.layers,)
        if not isinstance(self.layers, (list, tuple)) or not self.layers:
            _fail("layers", self.layers, "a non-empty sequence of distinct block indices >= 0")
        if not all(_is_int(i) and i >= 0 for i in self.layers) or len(set(self.layers)) != len(self.layers):
            _fail("layers", self.layers, "a non-empty sequence of distinct block indices >= 0")
        self.layers = tuple(sorted(self.layers))
        if self.routing not in ROUTINGS:
            _fail("routing", self.routing, " or ".join(map(repr, ROUTINGS)))
        if self.dispatch not in DISPATCHES:
            _fail("dispatch", self.dispatch, " or ".join(map(repr, DISPATCHES)))
        if self.gate_input not in GATE_INPUTS:
            _fail("gate_input", self.gate_input, " or ".join(map(repr, GATE_INPUTS)))
        if self.halting not in HALTINGS:
            _fail("halting", self.halting, " or ".join(map(repr, HALTINGS)))
        if self.halt_per not in HALT_UNITS:
            _fail("halt_per", self.halt_per, " or ".join(map(repr, HALT_UNITS)))
        if self.halt_threshold is None:
            self.halt_threshold = HALT_THRESHOLDS.get(self.halting)
        elif isinstance(self.halt_threshold, bool) or not isinstance(self.halt_threshold, (int, float)) or not (
            math.isfinite(self.halt_threshold) and self.halt_threshold > 0
        ):
            _fail("halt_threshold", self.halt_threshold, "a finite number > 0, or None for the criterion's default")
        if isinstance(self.ponder_weight, bool) or not isinstance(self.ponder_weight, (int, float)) or not (
            math.isfinite(self.ponder_weight) and self.ponder_weight >= 0
        ):
            _fail("ponder_weight", self.ponder_weight, "a finite number >= 0")
        if not isinstance(self.remodulate, bool):
            _fail("remodulate", self.remodulate, "True or False")
        if not _is_int(self.seed) or self.seed < 0:
            _fail("seed", self.seed, "an integer >= 0")
        weight = self.balance_loss_weight
        if weight is None:
            self.balance_loss_weight = DEFAULT_BALANCE_WEIGHT if self.num_experts > 3 else 0.0
        elif isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (
            math.isfinite(weight) and weight >= 0
        ):
            _fail("balance_loss_weight", weight, "a finite number >= 0, or None for the paper's rule")
        else:
            self.balance_loss_weight = float(weight)

    @property
    def scaling(self) -> float:
        """LoRA scale ``alpha / r`` (Hu et al. 2021, Sec. 4.1)."""
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
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
