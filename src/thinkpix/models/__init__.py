"""RSR inside diffusers models (paper Sec. 3-4): SD3/SD3.5 and FLUX.1 joint attention, DiT self-attention;
what each host is lives in its ``HostSpec`` (``specs.py``)."""

from .checkpoint import checkpoint_info, export_lora, load_rsr, save_rsr
from .hosts import (
    SUPPORTED_MODELS,
    apply_rsr,
    aux_loss,
    remove_rsr,
    rsr_config,
    rsr_layers,
    rsr_parameters,
    set_halting,
    set_step_checkpointing,
)
from .inspect import RoutingRecord, RoutingTrace, force_routing, routing_trace
from .specs import HOST_SPECS, HostSpec, host_spec

__all__ = [
    "HOST_SPECS",
    "SUPPORTED_MODELS",
    "HostSpec",
    "RoutingRecord",
    "RoutingTrace",
    "apply_rsr",
    "aux_loss",
    "checkpoint_info",
    "export_lora",
    "force_routing",
    "host_spec",
    "load_rsr",
    "remove_rsr",
    "routing_trace",
    "rsr_config",
    "rsr_layers",
    "rsr_parameters",
    "save_rsr",
    "set_halting",
    "set_step_checkpointing",
]
