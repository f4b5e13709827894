"""The Recursive Sparse Reasoning core, independent of any host model (paper Sec. 3, Algorithm 1)."""

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".config": ("RSRConfig",),
    ".experts": ("ExpertBank",),
    ".gate": ("GateDecision", "LatentStepGate", "balance_loss"),
    ".recursion": ("RecursiveSparseReasoning", "RSROutput", "RSRStep"),
})
