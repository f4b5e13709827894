"""Looking inside the routing (paper Figs. 3-4, and the numbers a referee asked for)."""

from ..core.stats import COLLAPSE_SHARE, RoutingStats, routing_stats, step_stats
from .compute import FlopReport, dit_macs, flops, rsr_step_macs

__all__ = ["COLLAPSE_SHARE", "FlopReport", "RoutingStats", "dit_macs", "flops", "routing_stats", "rsr_step_macs",
           "step_stats"]
