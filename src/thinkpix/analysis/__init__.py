"""Looking inside the routing (paper Figs. 3-4, and the numbers a referee asked for)."""

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "..core.stats": ("COLLAPSE_SHARE", "RoutingStats", "routing_stats", "step_stats"),
    ".compute": ("FlopReport", "dit_macs", "flops", "rsr_step_macs"),
})
