"""RSR inside diffusers models: SD3 joint attention and DiT self-attention (paper Sec. 3-4)."""

from .checkpoint import checkpoint_info, export_lora, load_rsr, save_rsr
from .hosts import (
    SUPPORTED_MODELS,
    apply_rsr,
    aux_loss,
    remove_rsr,
    rsr_config,
    rsr_layers,
    rsr_parameters,
    set_gumbel,
    set_halting,
    set_step_checkpointing,
    z_loss,
)
from .inspect import RoutingRecord, RoutingTrace, force_routing, routing_trace

__all__ = [
    "SUPPORTED_MODELS",
    "RoutingRecord",
    "RoutingTrace",
    "apply_rsr",
    "aux_loss",
    "checkpoint_info",
    "export_lora",
    "force_routing",
    "load_rsr",
    "remove_rsr",
    "routing_trace",
    "rsr_config",
    "rsr_layers",
    "rsr_parameters",
    "save_rsr",
    "set_gumbel",
    "set_halting",
    "set_step_checkpointing",
    "z_loss",
]
