"""`LatentStepGate`: the per-token router of one RSR layer (paper Sec. 3.2, Algorithm 1 lines 11-16).

Logits come from ``x_t + y + step_embedding(t)``: the current state, the timestep/condition
embedding and a sinusoidal embedding of the latent step t followed by an MLP (DiT's
``TimestepEmbedder``, here diffusers' ``Timesteps`` + ``TimestepEmbedding``).

Selection (Jang et al. 2017; Maddison et al. 2017): in training mode
``z = logits + g`` with ``g ~ Gumbel(0, 1)`` drawn in fp32 from the gate's own seeded generator,
``soft = softmax(z / tau)``, ``m* = argmax z``. The routing weights are
``hard + (soft - soft.detach())``: their value is exactly one-hot (so the selected update is
multiplied by exactly 1.0) and their gradient is that of ``soft`` (straight-through).

Which straight-through estimator the gate gets depends on the dispatch path:

* dense dispatch computes every expert's output o_m, so d loss / d soft_m = <dL/dy, o_m> for every m:
  the exact straight-through estimator of Jang et al.;
* sorted dispatch computes only the selected expert, so only the selected term
  <dL/dy, o_{m*}> reaches the gate (as in Switch Transformer's router, Fedus et al. 2022, Sec. 2.1).
  This is the winner-takes-all gradient allocation the paper cites (Lei et al. 2024), and its cost
  does not grow with M.

In eval mode the gate takes ``argmax logits`` (deterministic). With ``routing="random"`` each token
gets a uniformly random expert from the same seeded generator and the gate is not evaluated.

The hard route ``argmax((logits + g) / tau) = argmax(logits + g)`` does not depend on tau: tau only scales the
straight-through gradient (by 1/tau) and flattens ``soft``. How random the training routes are is set by the
logit margin against the Gumbel scale, so the gate has a ``noise_scale`` s (``z = logits + s g``; 1 in the
paper): s < 1 makes training routes follow the eval-mode argmax more often (s = 0: always), whatever tau is.
With ``route_per="sample"`` the token logits are averaged over the tokens of a sample and the whole sample
takes one expert per latent step (one global route per sample, as InstructMoLE argues for).

Activation checkpointing (diffusers' ``enable_gradient_checkpointing``, or ``torch.utils.checkpoint`` around a
block) reruns a block's forward inside backward and restores the global RNG for it, but not the gate's own
generator: the rerun would draw fresh noise, take other routes than the forward did, give the gradient of
another sample and advance the generator a second time. So each call of the recursion first logs the
generator's state (:meth:`LatentStepGate.begin_call`), and a call that runs inside the autograd engine (a
recomputation) replays the latest logged state on a copy of the generator: the same routes, the same
gradients, and the generator's own stream untouched, as without checkpointing.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import Tensor, nn

from . import noise

STEP_FREQUENCIES = 256  # width of the sinusoidal latent-step code before the MLP (as DiT's TimestepEmbedder)
# generator states kept for checkpointing's recomputation: one per forward not yet backpropagated (a forward
# and its backward pop each other; a backward recomputes the latest forward first, so the log is a stack)
REPLAY_CALLS = 16


def recomputing() -> bool:
    """Whether this code runs inside the autograd engine: a forward there is activation checkpointing's rerun."""
    return torch._C._current_graph_task_id() != -1


class GateDecision(NamedTuple):
    """The routing decision of one latent step."""

    index: Tensor  # (B, N) long: chosen expert per token
    weights: Tensor  # (B, N, M): one-hot in value, straight-through gradient in training
    probs: Tensor  # (B, N, M) fp32: softmax(logits), the gate probabilities P_m
    logits: Tensor | None  # (B, N, M) fp32, differentiable; None when the gate was not evaluated


def balance_loss(probs: Tensor, index: Tensor) -> Tensor:
    """Expert-balance loss ``M * sum_m f_m * P_m`` over all tokens.

    f_m is the fraction of tokens sent to expert m (not differentiable) and P_m the mean gate
    probability of expert m. This is the Switch Transformer load-balancing loss (Fedus et al. 2022,
    eqs. 4-6); the paper (Sec. 4.1) uses "the expert balance loss" of Sun et al. 2025 for M > 3
    without stating it, and we use Switch's form. It equals 1 under uniform routing with uniform
    probabilities and approaches M when every token goes to one expert with certainty.
    """
    m = probs.shape[-1]
    fraction = F.one_hot(index.reshape(-1), m).to(probs.dtype).mean(0)
    mean_prob = probs.reshape(-1, m).mean(0)
    return m * (fraction * mean_prob).sum()


class LatentStepGate(nn.Module):
    """Per-token router over M experts, conditioned on state, condition and latent step."""

    def __init__(
        self,
        dim: int,
        num_experts: int,
        cond_dim: int | None = None,
        tau: float = 5.0,
        routing: str = "learned",
        gate_input: str = "full",
        seed: int = 0,
        noise_scale: float = 1.0,
        route_per: str = "token",
    ):
        super().__init__()
        self.num_experts, self.tau, self.routing, self.gate_input = num_experts, tau, routing, gate_input
        self.seed, self.noise_scale, self.route_per = seed, noise_scale, route_per
        # Only what is used has parameters, so that parameter counts (and DDP) see the real model: nothing
        # for M = 1 (plain LoRA, nothing to route), no step/condition context for the tokens-only ablation.
        routed = num_experts > 1
        conditioned = routed and gate_input == "full"
        self.step_proj = Timesteps(STEP_FREQUENCIES, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.step_embedder = TimestepEmbedding(STEP_FREQUENCIES, dim) if conditioned else None
        cond_dim = dim if cond_dim is None else cond_dim
        self.cond_proj = (nn.Identity() if cond_dim == dim else nn.Linear(cond_dim, dim)) if conditioned else None
        self.proj = nn.Linear(dim, num_experts) if routed else None
        self._generator: torch.Generator | None = None
        self._noise_key = noise.register(self)  # the compile-friendly draws find this gate's generator by it
        self._reset_replay()
        if self.proj is not None:
            nn.init.normal_(self.proj.weight, std=0.02)  # near-uniform routing at the start
            nn.init.zeros_(self.proj.bias)

    # -- randomness -------------------------------------------------------------------------------
    def generator(self, device: torch.device) -> torch.Generator:
        """The gate's own generator: Gumbel noise and random routes never touch the global RNG. Inside a
        recomputation, the copy that replays the forward's draws."""
        if self._replay is not None and recomputing():
            return self._replay
        if self._generator is None or self._generator.device != torch.device(device):
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed)
        return self._generator

    def __setstate__(self, state) -> None:  # a copy (deepcopy, pickle) draws from its own generator
        super().__setstate__(state)
        self._noise_key = noise.register(self)
        self._reset_replay()

    def _reset_replay(self) -> None:
        self._logged: deque[Tensor] = deque(maxlen=REPLAY_CALLS)
        self._replay: torch.Generator | None = None

    def begin_call(self, device: torch.device) -> None:
        """Start one call of the recursion (its T routing decisions): log the generator's state, or, when
        checkpointing recomputes the call, replay the state its forward logged."""
        if torch.compiler.is_compiling() or self.num_experts == 1 or not (self.training or self.routing == "random"):
            return  # no draws to replay (under compile the draws are the graph's own ops)
        if not recomputing():
            self._replay = None
            self._logged.append(self.generator(device).get_state())
            return
        if not self._logged:
            raise RuntimeError(f"the RSR gate is recomputed by activation checkpointing after more than "
                               f"{REPLAY_CALLS} forwards without a backward, so the routes of its forward are "
                               "lost; backpropagate each forward before the next ones")
        self._replay = torch.Generator(device=device)
        self._replay.set_state(self._logged.pop())

    def manual_seed(self, seed: int) -> None:
        self.seed = seed
        self._generator = None
        self._reset_replay()

    def get_rng_state(self) -> Tensor | None:
        return None if self._generator is None else self._generator.get_state()

    def set_rng_state(self, state: Tensor, device: torch.device | str = "cpu") -> None:
        self.generator(torch.device(device)).set_state(state)

    # -- routing ----------------------------------------------------------------------------------
    def context(self, cond: Tensor | None, latent_steps: int, dtype: torch.dtype) -> Tensor | None:
        """``y + step_embedding(t)`` for t = 1..T: (T, B, 1, D); None for the tokens-only ablation, and for
        M = 1, where the gate is never evaluated."""
        if self.step_embedder is None:
            return None
        device = self.proj.weight.device
        steps = torch.arange(1, latent_steps + 1, device=device)
        step = self.step_embedder(self.step_proj(steps).to(self.step_embedder.linear_1.weight.dtype))  # (T, D)
        ctx = step[:, None, None, :]
        if cond is not None:
            ctx = ctx + self.cond_proj(cond)[None, :, None, :]  # (T, B, 1, D)
        return ctx.to(dtype)

    def forward(self, x: Tensor, context: Tensor | None = None, forced: Tensor | None = None) -> GateDecision:
        """Route every token of ``x`` (B, N, D); ``forced`` (B, N) overrides the choice, keeping the logits."""
        m, lead = self.num_experts, x.shape[:-1]
        if m == 1:  # plain LoRA: nothing to route
            ones = x.new_ones(*lead, 1, dtype=torch.float32)
            return GateDecision(torch.zeros(lead, dtype=torch.long, device=x.device), ones, ones, None)
        if self.routing == "random" and forced is None:
            like = x[..., :1, 0] if self.route_per == "sample" else x[..., 0]  # one draw per decision
            index = noise.randint(like.detach(), m, self._noise_key).expand(lead)
            probs = x.new_full((*lead, m), 1.0 / m, dtype=torch.float32)
            return GateDecision(index, F.one_hot(index, m).float(), probs, None)
        logits = self.proj(x if context is None else x + context).float()  # (B, N, M)
        if self.route_per == "sample":  # one route per sample: the mean token logit (B, 1, M), broadcast below
            logits = logits.mean(-2, keepdim=True).expand(logits.shape)
        probs = logits.softmax(-1)
        if forced is not None:
            index = forced.to(device=x.device, dtype=torch.long).expand(lead)
            return GateDecision(index, F.one_hot(index, m).float(), probs, logits)
        if not self.training:
            index = logits.argmax(-1)
            return GateDecision(index, F.one_hot(index, m).float(), probs, logits)
        draw = logits[..., :1, :] if self.route_per == "sample" else logits  # one draw per decision
        expo = noise.exponential(draw.detach(), self._noise_key)  # Exp(1) from the gate's generator
        gumbel = -expo.clamp_min(torch.finfo(torch.float32).tiny).log()  # -log Exp(1) ~ Gumbel(0, 1), fp32
        soft = ((logits + self.noise_scale * gumbel) / self.tau).softmax(-1)
        index = soft.argmax(-1)
        weights = F.one_hot(index, m).float() + (soft - soft.detach())  # exact one-hot value, ST gradient
        return GateDecision(index, weights, probs, logits)

    def extra_repr(self) -> str:
        return (f"experts={self.num_experts}, tau={self.tau}, noise_scale={self.noise_scale}, "
                f"routing={self.routing!r}, input={self.gate_input!r}, per={self.route_per!r}")
