"""Looking inside the routing (paper Figs. 3-4, and the numbers a referee asked for)."""

from .stats import COLLAPSE_SHARE, RoutingStats, routing_stats, step_stats

__all__ = ["COLLAPSE_SHARE", "RoutingStats", "routing_stats", "step_stats"]
