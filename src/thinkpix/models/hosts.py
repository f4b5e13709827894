"""Installing RSR into diffusers transformers: ``apply_rsr``, ``remove_rsr``, ``rsr_parameters``, ``aux_loss``.

Supported hosts: SD3 / SD3.5, DiT (the paper's two, Sec. 4.1) and FLUX.1. What each one is (which blocks,
which attention, which processor replaces it, where the gate's condition comes from) is its ``HostSpec``
(``specs.py``); this module only follows the spec.

``temb`` and the block's modulation never reach an attention processor (``Attention.forward`` passes
only the hidden states), so forward hooks copy them into the processor's ``BlockCapture``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ..core.config import RSRConfig
from ..core.recursion import RecursiveSparseReasoning
from .processors import BlockCapture, RSRAttnProcessor, RSRSession
from .specs import HOST_SPECS, AttentionSite, HostSpec, host_spec

SUPPORTED_MODELS = tuple(spec.model for spec in HOST_SPECS)


@dataclass
class RSRInstall:
    """What ``apply_rsr`` changed on a transformer, so that ``remove_rsr`` can undo it exactly."""

    config: RSRConfig
    session: RSRSession
    processors: dict[int, RSRAttnProcessor]
    original_processors: dict[int, object]
    requires_grad: dict[str, bool]
    hooks: list = field(default_factory=list)


def check_supported(transformer: nn.Module) -> HostSpec:
    """The transformer's ``HostSpec``; a ``TypeError`` naming the supported classes for any other model."""
    return host_spec(transformer)


def num_blocks(transformer: nn.Module) -> int:
    """How many blocks ``RSRConfig.layers`` can index (for FLUX: double-stream, then single-stream)."""
    return len(host_spec(transformer).blocks(transformer))


def check_layers(transformer: nn.Module, layers: tuple[int, ...]) -> None:
    depth = num_blocks(transformer)
    bad = [i for i in layers if i >= depth]
    if bad:
        raise ValueError(
            f"RSRConfig.layers={list(layers)} has block indices {bad} out of range: "
            f"{type(transformer).__name__} has {depth} blocks, allowed indices are 0..{depth - 1}"
        )


def rsr_install(transformer: nn.Module) -> RSRInstall | None:
    return getattr(transformer, "_rsr_install", None)


def _require_install(transformer: nn.Module) -> RSRInstall:
    install = rsr_install(transformer)
    if install is None:
        raise ValueError(f"no RSR is installed on this {type(transformer).__name__}: call thinkpix.apply_rsr first")
    return install


# The hooks are objects, not closures: ``copy.deepcopy`` of the transformer (how DiT-style loops make their
# EMA copy) then copies each hook together with the capture it writes, so the copy fills its own captures
# (a closure would be shared and keep writing into the original's). The condition hooks are the host's
# (``HostSpec.hook_condition``, same rule).
@dataclass
class _CaptureModulation:
    """``AdaLayerNormZero(X)(Single).linear`` output -> shift_msa, scale_msa, ...: keep the first two."""

    capture: BlockCapture
    dim: int

    def __call__(self, _module, _inputs, out) -> None:
        chunks = out.chunk(out.shape[1] // self.dim, dim=1)
        self.capture.shift, self.capture.scale = chunks[0], chunks[1]


@dataclass
class _CaptureTimestep:
    """The transformer's ``timestep`` argument as given, for routing traces (``RSRSession.scaled_timestep``
    applies the host's scale when a trace records it: a tensor op here would be a graph of its own under
    ``torch.compile``, which traces a module's pre-hook as a separate frame)."""

    session: RSRSession
    signature: inspect.Signature

    def __call__(self, module, args, kwargs) -> None:
        self.session.timestep = self.signature.bind_partial(module, *args, **kwargs).arguments.get("timestep")


def _hook_block(spec: HostSpec, site: AttentionSite, capture: BlockCapture, dim: int) -> list:
    return [site.modulation.linear.register_forward_hook(_CaptureModulation(capture, dim)),
            *spec.hook_condition(site, capture)]


def _hook_timestep(transformer: nn.Module, session: RSRSession):
    hook = _CaptureTimestep(session, inspect.signature(type(transformer).forward))
    return transformer.register_forward_pre_hook(hook, with_kwargs=True)


def apply_rsr(transformer: nn.Module, config: RSRConfig) -> nn.Module:
    """Install RSR on ``config.layers`` (indices, or ``"middle"`` / ``"three"``) of a supported transformer
    (``SUPPORTED_MODELS``); freeze every base parameter.

    Only the RSR parameters (``rsr_parameters``) train afterwards. Returns the transformer.
    """
    spec = check_supported(transformer)
    if not isinstance(config, RSRConfig):
        raise TypeError(f"config must be a thinkpix.RSRConfig, got {type(config).__name__}")
    if rsr_install(transformer) is not None:
        raise ValueError("RSR is already installed on this transformer: call thinkpix.remove_rsr first")
    config = config.resolve_layers(num_blocks(transformer))  # "middle" / "three" to block indices
    check_layers(transformer, config.layers)
    requires_grad = {name: p.requires_grad for name, p in transformer.named_parameters()}
    session = RSRSession(timestep_scale=spec.timestep_scale)
    install = RSRInstall(config, session, {}, {}, requires_grad)
    transformer.requires_grad_(False)
    try:
        for i in config.layers:
            site = spec.site(transformer, i)
            attn = site.attention
            if type(attn.processor) is not site.base_processor:
                raise NotImplementedError(
                    f"block {i} uses {type(attn.processor).__name__}; RSR replaces "
                    f"{site.base_processor.__name__} only "
                    f"(set it back with attn.set_processor({site.base_processor.__name__}()) or remove other "
                    "adapters first)"
                )
            if getattr(attn, "fused_projections", False):
                raise NotImplementedError(f"block {i} has fused Q/K/V projections; RSR needs separate "
                                          "to_q/to_k/to_v: call transformer.unfuse_qkv_projections() first")
            dim = attn.to_q.in_features
            if attn.to_q.out_features != dim:
                raise NotImplementedError(f"block {i}: RSR needs inner_dim == query_dim, got {attn.to_q}")
            weight = attn.to_q.weight
            rsr = RecursiveSparseReasoning(config, dim, cond_dim=dim, layer_index=i).to(weight.device, weight.dtype)
            rsr.train(transformer.training)  # a new module starts in train mode; follow the host's mode
            capture = BlockCapture(norm=site.modulation.norm)
            install.hooks += _hook_block(spec, site, capture, dim)
            install.original_processors[i] = attn.processor
            install.processors[i] = site.processor(rsr, i, capture, session)
            attn.set_processor(install.processors[i])
        install.hooks.append(_hook_timestep(transformer, session))
    except Exception:
        transformer._rsr_install = install
        remove_rsr(transformer)
        raise
    transformer._rsr_install = install
    return transformer


def remove_rsr(transformer: nn.Module) -> nn.Module:
    """Restore the original processors and ``requires_grad`` flags: outputs equal those before ``apply_rsr``."""
    install = _require_install(transformer)
    for hook in install.hooks:
        hook.remove()
    spec = host_spec(transformer)
    for i, processor in install.original_processors.items():
        spec.site(transformer, i).attention.set_processor(processor)
    for name, p in transformer.named_parameters():
        p.requires_grad_(install.requires_grad.get(name, p.requires_grad))
    del transformer._rsr_install
    return transformer


def rsr_layers(transformer: nn.Module) -> dict[int, RSRAttnProcessor]:
    """The installed RSR processors by block index. Raises if one was replaced since ``apply_rsr``
    (``set_processor``, ``set_attn_processor``, ``fuse_qkv_projections``): RSR would no longer
    run there while its parameters still looked trained and saved."""
    install = _require_install(transformer)
    model = getattr(transformer, "_orig_mod", transformer)  # torch.compile's wrapper reads through to it
    spec = host_spec(model)
    for i, proc in install.processors.items():
        current = spec.site(model, i).attention.processor
        if current is not proc:
            raise RuntimeError(f"block {i}'s attention processor was replaced after apply_rsr (now "
                               f"{type(current).__name__}), so RSR no longer runs there: call "
                               "thinkpix.remove_rsr, then apply_rsr or load_rsr again")
    return dict(install.processors)


def rsr_config(transformer: nn.Module) -> RSRConfig:
    return _require_install(transformer).config


def rsr_parameters(transformer: nn.Module) -> list[nn.Parameter]:
    """The trainable RSR parameters (experts and gates of every RSR layer)."""
    return [p for proc in rsr_layers(transformer).values() for p in proc.rsr.parameters()]


def aux_loss(transformer: nn.Module) -> torch.Tensor:
    """Auxiliary loss of the latest forward pass, summed over RSR layers: the weighted balance loss, plus
    the weighted ponder cost when the learned halting head is training."""
    install = _require_install(transformer)
    procs = install.processors.values()
    losses = [p.last_balance_loss for p in procs if p.last_balance_loss is not None]
    if not losses:
        raise ValueError("aux_loss needs a forward pass of the transformer first")
    total = install.config.balance_loss_weight * torch.stack(losses).sum()
    if install.config.z_loss_weight:
        total = total + install.config.z_loss_weight * z_loss(transformer)
    ponder = [p.last_ponder_loss for p in procs if p.last_ponder_loss is not None]
    if ponder:
        total = total + install.config.ponder_weight * torch.stack(ponder).sum()
    return total


def z_loss(transformer: nn.Module) -> torch.Tensor:
    """Router z-loss of the latest forward pass (ST-MoE, Zoph et al. 2022, eq. 5): ``mean(logsumexp(l)^2)``
    over the tokens of every gate-routed latent step, mean over steps, summed over RSR layers."""
    per_layer = []
    for proc in _require_install(transformer).processors.values():
        steps = [s.logits.logsumexp(-1).square().mean() for s in proc.last_steps if s.logits is not None]
        if steps:
            per_layer.append(torch.stack(steps).mean())
    return torch.stack(per_layer).sum() if per_layer else torch.zeros(())


def set_gumbel(transformer: nn.Module, tau: float, noise_scale: float) -> None:
    """Set the Gumbel temperature and noise scale of every gate (a training schedule's value for this step)."""
    for proc in _require_install(transformer).processors.values():
        proc.rsr.gate.tau, proc.rsr.gate.noise_scale = tau, noise_scale


def set_halting(transformer: nn.Module, halting: str, threshold: float | None = None, per: str = "token") -> None:
    """Switch the inference halting criterion of every RSR layer (e.g. to sweep criteria on one trained model).

    ``"learned"`` needs the halting head, which only a model configured (and trained) with it has.
    """
    install = _require_install(transformer)
    config = replace(install.config, halting=halting, halt_threshold=threshold, halt_per=per)  # validates
    for i, proc in install.processors.items():
        if halting == "learned" and proc.rsr.halt_head is None:
            raise ValueError(f"halting='learned' needs a halting head, but layer {i} was built with "
                             f"halting={install.config.halting!r}; train with halting='learned' first")
        proc.rsr.config = config
    install.config = config


def set_step_checkpointing(transformer: nn.Module, enabled: bool = True) -> None:
    """Activation checkpointing across latent steps in every RSR layer."""
    for proc in rsr_layers(transformer).values():
        proc.rsr.gradient_checkpointing = enabled
