"""The Recursive Sparse Reasoning core, independent of any host model (paper Sec. 3, Algorithm 1)."""

from .config import RSRConfig
from .experts import ExpertBank
from .gate import GateDecision, LatentStepGate, balance_loss
from .recursion import RecursiveSparseReasoning, RSROutput, RSRStep

__all__ = [
    "ExpertBank",
    "GateDecision",
    "LatentStepGate",
    "RSRConfig",
    "RSROutput",
    "RSRStep",
    "RecursiveSparseReasoning",
    "balance_loss",
]
