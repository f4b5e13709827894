"""thinkpix: Recursive Sparse Reasoning (arXiv 2604.25299) for diffusers transformers.

The public names load on first use (torch and diffusers are imported then, not by ``import thinkpix``).
"""

from ._lazy import after_import, lazy_exports


def _register_shapes_pipelines() -> None:
    """Importing the Shapes pipelines registers them with diffusers (DiffusionPipeline.from_pretrained loads
    their folders); done when diffusers loads, so ``import thinkpix`` and ``thinkpix --help`` stay light."""
    from .shapes import pipeline_class, pipeline_t2i  # noqa: F401


after_import("diffusers", _register_shapes_pipelines)

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".analysis": ("flops",),
    ".core": ("ExpertBank", "GateDecision", "LatentStepGate", "RSRConfig", "RSROutput", "RSRStep",
              "RecursiveSparseReasoning", "balance_loss"),
    ".models": ("RoutingRecord", "RoutingTrace", "apply_rsr", "aux_loss", "checkpoint_info", "export_lora",
                "force_routing", "load_rsr", "remove_rsr", "routing_trace", "rsr_config", "rsr_layers",
                "rsr_parameters", "save_rsr", "set_halting", "set_step_checkpointing"),
})
