"""thinkpix: Recursive Sparse Reasoning (arXiv 2604.25299) for diffusers transformers."""

from .core import (
    ExpertBank,
    GateDecision,
    LatentStepGate,
    RecursiveSparseReasoning,
    RSRConfig,
    RSROutput,
    RSRStep,
    balance_loss,
)

__version__ = "0.1.0"

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
