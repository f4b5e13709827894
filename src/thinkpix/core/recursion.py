"""The recursion of Recursive Sparse Reasoning, host-agnostic (paper Sec. 3.3 and Algorithm 1).

With x~ the modulated vision tokens of the block, c~ the modulated text tokens and mod(.) the
block's own ``alpha * LN(.) + beta``:

    h_1 = x~                              (already modulated: re-modulating would break M=1,T=1 == LoRA)
    h_t = mod(a~_{t-1})   for t >= 2      (``remodulate=True``; else h_t = a~_{t-1})
    m*_t = gate(h_t + y + e(t))           (one expert per token)
    t < T:  [a_t ; c_t] = Attn(B_m* A_m* h_t ; c~),               a~_t = a_t + x~
    t = T:  [a_T ; c_T] = Attn(B_m* A_m* h_T + W^ x~ ; c~)         (frozen base W^ only at the last step)

Only vision tokens are routed; the text Q/K/V are computed once by the host and reused at every
step (Algorithm 1, line 8). The host passes them inside its ``attend`` callable. An intermediate step
uses only the vision rows of its attention output, so it asks ``attend`` for those alone
(``vision_only=True``): queries of the vision tokens, keys and values of all tokens. Each query row's
attention is independent of the others, so this is the same function with the text queries' work left out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .config import RSRConfig
from .experts import ExpertBank
from .gate import GateDecision, LatentStepGate, balance_loss
from .halting import HaltingHead, PonderMixture, halt_now
from .health import StepHealth, expert_divergence, step_health

QKV = tuple[Tensor, Tensor, Tensor]
# attend(q, k, v, vision_only=False) with vision projections (B, N, D) -> (vision output (B, N, D), text output
# or None); with vision_only=True the text rows are not computed and the text output is None
AttendFn = Callable[..., tuple[Tensor, Tensor | None]]


class RSRStep(NamedTuple):
    """What the gate decided at one latent step."""

    experts: Tensor  # (B, N) long
    probs: Tensor  # (B, N, M) fp32 gate probabilities
    logits: Tensor | None  # (B, N, M) fp32 differentiable logits (None: gate not evaluated)
    active: Tensor | None = None  # (B, N) bool: tokens that ran this step (None: all; see halting)
    state: Tensor | None = None  # (B, N, D) input h_t of the step, when ``record_states`` is on (detached
    # unless ``state_grad`` is on)


class RSROutput(NamedTuple):
    """Result of one recursive sparse attention call."""

    vision: Tensor  # (B, N, D) attention output of the vision tokens at step T (before the out-projection)
    text: Tensor | None  # (B, L, D) attention output of the text tokens at step T
    steps: tuple[RSRStep, ...]  # one per latent step
    balance_loss: Tensor  # scalar: unweighted balance loss, mean over latent steps (0 when not routed)
    ponder_loss: Tensor | None = None  # scalar: expected intermediate steps (learned halting, training)
    steps_used: Tensor | None = None  # (B, N): latent steps each token ran, the final one included
    health: tuple[StepHealth, ...] | None = None  # one per latent step while ``measure_health`` is on


class RecursiveSparseReasoning(nn.Module):
    """The recursive component of one attention layer: an ``ExpertBank`` and a ``LatentStepGate``."""

    def __init__(self, config: RSRConfig, dim: int, out_dim: int | None = None, cond_dim: int | None = None,
                 layer_index: int = 0):
        super().__init__()
        self.config = config
        seed = config.seed + 1_000_003 * layer_index
        with torch.random.fork_rng(devices=[]):  # initial weights depend on (config.seed, layer) only
            torch.manual_seed(seed)
            self.experts = ExpertBank(config.num_experts, dim, out_dim or dim, config.rank, config.scaling)
            self.gate = LatentStepGate(dim, config.num_experts, cond_dim=cond_dim, tau=config.gumbel_tau,
                                       routing=config.routing, gate_input=config.gate_input, seed=seed,
                                       noise_scale=config.gumbel_noise_scale, route_per=config.route_per)
            self.halt_head = HaltingHead(dim) if config.halting == "learned" else None
        self.gradient_checkpointing = False  # recompute each intermediate step in backward (saves memory)
        self.record_states = False  # keep every step's input in RSRStep.state (token trajectories, Fig. 3)
        # keep the recorded states attached to the graph, so that a loss on them (e.g. a decoder of every
        # latent step, FrozenLake planning) trains the recursion; off: states are detached copies
        self.state_grad = False
        # routing-health metrics in RSROutput.health (detached, a few small matmuls): None = in training only (so
        # inference compute and FLOP counts stay the model's own), True = also in eval mode, False = never
        self.measure_health: bool | None = None

    def forward(
        self,
        x: Tensor,
        cond: Tensor | None,
        base_qkv: Callable[[Tensor], QKV],
        attend: AttendFn,
        modulate: Callable[[Tensor], Tensor] | None = None,
        forced: Tensor | None = None,
    ) -> RSROutput:
        """Run the T latent steps.

        Args:
            x: (B, N, D) modulated vision tokens x~.
            cond: (B, D_cond) timestep/condition embedding y, or None.
            base_qkv: frozen W^_{Q,K,V} (with bias) of the host layer.
            attend: the host's attention given vision Q/K/V (text Q/K/V closed over, computed once).
            modulate: the block's ``alpha * LN(.) + beta`` for re-modulating the recursive state.
            forced: (T, B, N) expert indices overriding the gate (``force_routing``).
        """
        cfg = self.config
        steps_total = cfg.latent_steps
        self.gate.begin_call(x.device)  # the same routes when activation checkpointing reruns this call
        context = self.gate.context(cond, steps_total, x.dtype)
        state, steps, losses, health = x, [], [], []
        vision = text = None
        halting = cfg.halting != "none" and steps_total > 1
        ponder = PonderMixture(steps_total - 1) if halting and self.halt_head is not None and self.training else None
        stops = halting and ponder is None and not self.training  # criteria act at inference only
        active, cache = None, None  # (B, N) bool once some token has halted; keys/values it left behind
        used = x.new_full(x.shape[:2], steps_total, dtype=torch.long) if halting else None
        for t in range(steps_total):
            last = t == steps_total - 1
            if last and ponder is not None:
                state = ponder.mixture  # ACT: the halting-weighted mixture of the intermediate states
            h = state if t == 0 or not cfg.remodulate or modulate is None else modulate(state)
            decision = self.gate(h, None if context is None else context[t], None if forced is None else forced[t])
            steps.append(RSRStep(decision.index, decision.probs, decision.logits, None if last else active,
                                 (h if self.state_grad else h.detach()) if self.record_states else None))
            if decision.logits is not None:  # routed by the gate (not M=1, not random routing)
                losses.append(balance_loss(decision.probs, decision.index))
            measure = self.training if self.measure_health is None else self.measure_health
            if measure:
                health.append(self._health(h, decision))
            if last:
                vision, text = self._step(h, decision, base_qkv(x), attend)
                break
            if self.gradient_checkpointing and torch.is_grad_enabled() and active is None:
                # The gate decision (and its Gumbel noise) stays outside the checkpoint so that
                # recomputation in backward sees the same route without replaying the generator.
                vision, new_state = checkpoint(self._checkpointed_step, h, decision.index, decision.weights, x,
                                               attend, use_reentrant=False)
            else:
                vision, new_state, cache = self._intermediate_step(h, decision, attend, x, state, active, cache)
            if ponder is not None:
                ponder.add(new_state, self.halt_head(new_state))
            elif stops:
                stop = halt_now(cfg.halting, cfg.halt_threshold, cfg.halt_per, state, new_state, decision.probs,
                                self.halt_head)
                active = ~stop if active is None else active & ~stop
                used = torch.where(active, used, used.clamp_max(t + 2))  # ran steps 1..t+1 plus the final one
            state = new_state  # a~_t = a_t + x~ (Algorithm 1, line 27); frozen where halted
        loss = torch.stack(losses).mean() if losses else x.new_zeros((), dtype=torch.float32)
        return RSROutput(vision, text, tuple(steps), loss, None if ponder is None else ponder.ponder_cost(), used,
                         tuple(health) if health else None)

    @torch.no_grad()
    def _health(self, h: Tensor, decision: GateDecision) -> StepHealth:
        bank = self.experts
        divergence = expert_divergence(bank.lora_A, bank.lora_B, h)
        return step_health(decision.index, decision.logits, bank.num_experts, self.gate.noise_scale,
                           self.training, divergence)

    def _intermediate_step(self, h: Tensor, decision: GateDecision, attend: AttendFn, x: Tensor, state: Tensor,
                           active: Tensor | None, cache):
        """One intermediate step: LoRA-only Q/K/V, attention, residual to x~. Halted tokens (not ``active``)
        cost no expert work, keep the keys/values they last had, and keep their state."""
        dq, dk, dv = self.experts(h, decision.index, decision.weights, self.config.dispatch, active=active)
        if active is not None:
            keep = ~active[..., None]
            dk, dv = torch.where(keep, cache[0], dk), torch.where(keep, cache[1], dv)
        vision, _ = attend(dq, dk, dv, vision_only=True)  # the text rows of an intermediate step are unused
        new_state = vision + x
        if active is not None:
            new_state = torch.where(active[..., None], new_state, state)
        return vision, new_state, (dk, dv)

    def _step(self, h: Tensor, decision: GateDecision, base: QKV | None, attend: AttendFn):
        dq, dk, dv = self.experts(h, decision.index, decision.weights, self.config.dispatch)
        if base is not None:  # final step: frozen base projection of x~ plus the selected expert
            dq, dk, dv = base[0] + dq, base[1] + dk, base[2] + dv
        return attend(dq, dk, dv)

    def _checkpointed_step(self, h: Tensor, index: Tensor, weights: Tensor, x: Tensor, attend: AttendFn):
        vision, new_state, _ = self._intermediate_step(h, GateDecision(index, weights, weights, None), attend, x, x,
                                                       None, None)
        return vision, new_state
