"""Attention processors that run RSR inside diffusers attention layers (diffusers' extension point).

* ``RSRJointAttnProcessor`` replaces ``JointAttnProcessor2_0`` of an SD3 ``JointTransformerBlock``:
  vision branch routed and recursed, text branch's Q/K/V computed once and reused at every step.
* ``RSRSelfAttnProcessor`` replaces ``AttnProcessor2_0`` of a DiT ``BasicTransformerBlock.attn1``.
* FLUX.1's two processors live in ``flux.py``.

Both reproduce their base processor op for op, so with every LoRA B at zero the block is
bit-identical to the base. What the attention call itself does not receive (the block's
modulation ``shift/scale`` for re-modulating, and the conditioning ``y`` for the gate) is captured
by hooks that ``thinkpix.models.hosts`` installs (as the host's ``HostSpec`` in ``specs.py`` says), into the
processor's ``BlockCapture``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.recursion import RecursiveSparseReasoning, RSROutput, RSRStep


@dataclass
class BlockCapture:
    """Per-forward values of the host block, written by hooks (see ``hosts.py``)."""

    norm: nn.Module  # the block's LN without affine (``norm1.norm``)
    cond: Tensor | None = None  # y: (B, D) timestep(+text/class) embedding
    shift: Tensor | None = None  # beta_x: (B, D)
    scale: Tensor | None = None  # alpha_x - 1: (B, D)
    text_tokens: int | None = None  # text length of a block that attends over [text ; image] (FLUX single-stream)


@dataclass
class RSRSession:
    """State shared by the RSR layers of one transformer: the current diffusion timestep and the
    optional routing trace / forced route installed by ``routing_trace`` / ``force_routing``."""

    timestep: Tensor | None = None  # the transformer's ``timestep`` argument, as given
    timestep_scale: float = 1.0  # the host's ``HostSpec.timestep_scale``: to the scheduler's timestep
    trace: object | None = None  # a ``RoutingTrace`` while ``routing_trace`` is active
    forced: Tensor | None = None  # (T, B or 1, 1) expert indices

    def scaled_timestep(self) -> Tensor | None:
        """The current diffusion timestep on the scheduler's scale (FLUX is called with ``timestep / 1000``)."""
        if self.timestep is None or self.timestep_scale == 1:
            return self.timestep
        return self.timestep * self.timestep_scale


class RSRAttnProcessor(nn.Module):
    """Common part of the RSR processors: holds the ``RecursiveSparseReasoning`` module of a layer."""

    def __init__(self, rsr: RecursiveSparseReasoning, layer_index: int, capture: BlockCapture, session: RSRSession):
        super().__init__()
        self.rsr = rsr
        self.layer_index = layer_index
        self.capture = capture
        self.session = session
        self.last_steps: tuple[RSRStep, ...] = ()
        self.last_balance_loss: Tensor | None = None
        self.last_ponder_loss: Tensor | None = None
        self.last_steps_used: Tensor | None = None
        self.last_health: tuple | None = None  # RSROutput.health of the latest call (one StepHealth per step)

    def modulate(self, state: Tensor) -> Tensor:
        """The block's own ``alpha_x * LN(.) + beta_x`` (AdaLayerNormZero), applied to a recursive state."""
        cap = self.capture
        return cap.norm(state) * (1 + cap.scale[:, None]) + cap.shift[:, None]

    def _forced(self, batch: int, device: torch.device) -> Tensor | None:
        forced = self.session.forced
        if forced is None:
            return None
        if forced.shape[1] not in (1, batch):
            if batch % forced.shape[1]:
                raise ValueError(
                    f"force_routing got routes for {forced.shape[1]} samples but layer {self.layer_index} "
                    f"sees a batch of {batch}"
                )
            forced = forced.repeat(1, batch // forced.shape[1], 1)  # e.g. classifier-free guidance doubles it
        return forced.to(device)

    def _run(self, x: Tensor, base_qkv, attend) -> RSROutput:
        cap = self.capture
        if cap.cond is None or cap.shift is None:  # running on without them would compute something else
            raise RuntimeError(
                f"RSR layer {self.layer_index} found no captured block modulation / condition: the hooks "
                "apply_rsr installs on the block did not run (the processor was called outside its block, or "
                "moved to another model without apply_rsr)"
            )
        out = self.rsr(x, cap.cond, base_qkv, attend, self.modulate, self._forced(x.shape[0], x.device))
        self.last_steps, self.last_balance_loss = out.steps, out.balance_loss
        self.last_ponder_loss, self.last_steps_used = out.ponder_loss, out.steps_used
        self.last_health = out.health
        if self.session.trace is not None:
            self.session.trace.record(self.layer_index, self.session.scaled_timestep(), out.steps, out.steps_used)
        return out

    @staticmethod
    def _heads(attn, t: Tensor) -> Tensor:  # (B, L, H*d) -> (B, H, L, d)
        return t.view(t.shape[0], -1, attn.heads, t.shape[-1] // attn.heads).transpose(1, 2)

    def _vision_heads(self, attn, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self._heads(attn, q), self._heads(attn, k), self._heads(attn, v)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        return q, k, v

    @staticmethod
    def _base_qkv(attn):
        return lambda h: (attn.to_q(h), attn.to_k(h), attn.to_v(h))


class RSRJointAttnProcessor(RSRAttnProcessor):
    """RSR in SD3's joint attention (MMDiT), following ``JointAttnProcessor2_0`` op for op."""

    def forward(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                attention_mask: Tensor | None = None, **kwargs):
        batch, n = hidden_states.shape[:2]
        text = None
        if encoder_hidden_states is not None:  # Algorithm 1, line 8: context Q/K/V once, reused every step
            c = encoder_hidden_states
            cq, ck, cv = (self._heads(attn, p(c)) for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            if attn.norm_added_q is not None:
                cq = attn.norm_added_q(cq)
            if attn.norm_added_k is not None:
                ck = attn.norm_added_k(ck)
            text = (cq, ck, cv)

        def attend(q: Tensor, k: Tensor, v: Tensor, vision_only: bool = False):
            q, k, v = self._vision_heads(attn, q, k, v)
            joint = text is not None and not vision_only  # text query rows are computed only when used
            if text is not None:
                k, v = torch.cat([k, text[1]], 2), torch.cat([v, text[2]], 2)
            if joint:
                q = torch.cat([q, text[0]], 2)
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
            out = out.transpose(1, 2).reshape(batch, -1, attn.heads * out.shape[-1]).to(q.dtype)
            return (out[:, :n], out[:, n:]) if joint else (out, None)

        result = self._run(hidden_states, self._base_qkv(attn), attend)
        hidden = attn.to_out[1](attn.to_out[0](result.vision))
        if encoder_hidden_states is None:
            return hidden
        context = result.text if attn.context_pre_only else attn.to_add_out(result.text)
        return hidden, context


class RSRSelfAttnProcessor(RSRAttnProcessor):
    """RSR in DiT's self-attention ``attn1``, following ``AttnProcessor2_0`` op for op."""

    def forward(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                attention_mask: Tensor | None = None, **kwargs):
        if encoder_hidden_states is not None or hidden_states.ndim != 3:
            raise NotImplementedError("RSRSelfAttnProcessor handles self-attention on (B, N, D) tokens only")
        batch, n = hidden_states.shape[:2]
        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, n, batch)
            mask = mask.view(batch, attn.heads, -1, mask.shape[-1])

        def attend(q: Tensor, k: Tensor, v: Tensor, vision_only: bool = False):  # no text rows here
            q, k, v = self._vision_heads(attn, q, k, v)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
            return out.transpose(1, 2).reshape(batch, -1, attn.heads * out.shape[-1]).to(q.dtype), None

        result = self._run(hidden_states, self._base_qkv(attn), attend)
        hidden = attn.to_out[1](attn.to_out[0](result.vision))
        if attn.residual_connection:
            hidden = hidden + hidden_states
        return hidden / attn.rescale_output_factor
