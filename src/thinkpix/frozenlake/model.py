"""Visual planners for FrozenLake (paper Sec. 4.4), built on a real diffusers ``DiTTransformer2DModel``.

``VisualPlanner(recursive=True)`` is the RSR planner: the DiT's patch embedding turns the start frame into
one token per grid cell; ``apply_rsr`` installs Recursive Sparse Reasoning on the self-attention ``attn1`` of
the last DiT block, with M = 4 experts, one per action (0=LEFT, 1=DOWN, 2=RIGHT, 3=UP, gymnasium's ids), and
T = P + 1 latent steps for plans of up to P moves:

    h_1            = x~ (the block's modulated tokens: the start frame)
    step t <= P:     gate(h_t) -> action a_t (expert a_t);  h_{t+1} = mod(x~ + Attn(LoRA_{a_t}(h_t)))
    step P + 1:      the core's final, base-integrating step (Algorithm 1); its route is not an action
    frame after a_t = decoder(h_{t+1})     (a small transformer over the cell tokens of one state)

The decoder ("cells", default) predicts for every cell token which of the 20 cell appearances (tile S/F/H/G
x no agent / agent facing LEFT, DOWN, RIGHT, UP) the frame shows after the move, and the frame is drawn with
the env's own cell pixels (``frames.cell_tiles``), so decoded frames are crisp; ``decoder="pixels"`` regresses
the cell pixels instead (the first version).

Training forces the true action through ``force_routing`` and trains the gate with cross-entropy on its
logits at every token (``RSRStep.logits``); the decoder reconstructs the frame after every move from the
differentiable step states (``RecursiveSparseReasoning.state_grad``). Inference uses the gate alone, with no
forcing. ``routing="sample"`` (default): at every latent step the gate's per-token probabilities are averaged
over the map's tokens and every token of the sample takes that argmax expert (``per_sample_routing``, a forward
hook on the gate, so step t+1 routes from the state that step t's chosen expert produced, in a single pass);
this matches training, where one action is forced for all tokens. ``routing="token"``: the core's own
per-token argmax.

Design choices:
* Map sizes 3..8: no padding. One cell is one DiT patch (``patch_size = cell_px``), so an n x n frame gives
  n * n tokens; the size enters as the DiT class label (adaLN conditioning of every block and of the gate),
  and positions are row + column codes indexed by the cell's integer (row, col): fixed sin/cos codes
  (``positions="sincos"``, default, a one-cell shift is a fixed rotation) or learned tables ("learned"). The
  DiT's own sincos grid is rescaled to its base size for other sizes, so a one-cell shift would differ per size.
* Steps after the goal: masked. The gate CE and the frame loss only count moves 1..L of a length-L plan;
  later steps are never supervised and cannot affect earlier ones (step t only sees steps < t). At
  inference the plan stops where the decoded agent first stands on the goal (or a hole): the closed-loop
  decoder ``replay.frames_to_actions`` stops there, as the episode does.
* The whole DiT trains (from scratch: there is no pretrained base here); ``apply_rsr`` freezes it, so the
  planner unfreezes it after installing RSR.

``VisualPlanner(recursive=False)`` is the non-recursive baseline of the same size: the same DiT without RSR,
and an action head (P learned step queries attending to the last block's tokens, then an MLP) whose
hidden width is chosen so that both models have the same parameter count (within 0.5%).
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..core.config import RSRConfig
from ..core.gate import GateDecision
from ..models.hosts import apply_rsr, rsr_layers
from ..models.inspect import force_routing
from .config import PlannerConfig
from .frames import cell_tiles
from .maps import MAX_SIZE

NUM_ACTIONS = 4  # LEFT, DOWN, RIGHT, UP: one expert per action
TILES = "SFHG"
POSES = (None, 0, 1, 2, 3)  # no agent, or the agent drawn after action 0..3
# Cell appearance k = tile_index * 5 + pose_index: every frame is a grid of these (see frames.py).
APPEARANCES = tuple((tile, pose) for tile in TILES for pose in POSES)


def appearance_index(tile: str, pose: int | None) -> int:
    return TILES.index(tile) * len(POSES) + POSES.index(pose)


def appearance_atlas(cell_px: int) -> Tensor:
    """(20, cell_px * cell_px * 3) float in [0, 1]: the env's cell appearances, flattened (row, col, rgb)."""
    tiles = cell_tiles(cell_px)
    return torch.stack([torch.from_numpy(tiles[key].astype("float32") / 255.0).reshape(-1) for key in APPEARANCES])


class PlanOutput(NamedTuple):
    logits: Tensor  # (B, P, N, M) gate logits at the step that chooses move t (RSR) or per-step action logits
    states: Tensor | None  # (B, P, N, D) state after move t (RSR only)
    experts: Tensor  # (B, P, N) chosen expert of every token at move t (RSR) / argmax action


def _sincos(positions: int, dim: int) -> Tensor:
    """(positions, dim) sin/cos codes of integer positions 0..positions-1 (a one-cell shift is a fixed rotation)."""
    freq = torch.exp(-math.log(100.0) * torch.arange(dim // 2) / max(1, dim // 2))  # periods 2*pi .. 200*pi
    angle = torch.arange(positions)[:, None] * freq[None]
    return torch.cat([angle.sin(), angle.cos()], 1)


class CellPatchEmbed(nn.Module):
    """The DiT's ``PatchEmbed`` (one patch per cell) with integer-grid row/column codes instead of its sincos
    grid (which diffusers rescales to the base size, so a one-cell shift would differ between map sizes).

    ``positions="sincos"``: fixed sin/cos codes of the row (first D/2 channels) and column (last D/2);
    ``"learned"``: free (8, D) row and column tables.
    """

    def __init__(self, patch: nn.Module, width: int, positions: str = "sincos"):
        super().__init__()
        patch.pos_embed = None  # PatchEmbed then returns the projected patches only
        self.patch = patch
        if positions == "learned":
            self.row = nn.Parameter(torch.zeros(MAX_SIZE, width))  # (8, D)
            self.col = nn.Parameter(torch.zeros(MAX_SIZE, width))  # (8, D)
        elif positions == "sincos":
            half = _sincos(MAX_SIZE, width // 2)  # (8, D/2)
            self.register_buffer("row", torch.cat([half, torch.zeros_like(half)], 1), persistent=False)
            self.register_buffer("col", torch.cat([torch.zeros_like(half), half], 1), persistent=False)
        else:
            raise ValueError(f"positions must be 'sincos' or 'learned', got {positions!r}")

    def forward(self, latent: Tensor) -> Tensor:
        n = latent.shape[-1] // self.patch.patch_size
        tokens = self.patch(latent)  # (B, n*n, D), row-major cells
        pos = (self.row[:n, None, :] + self.col[None, :n, :]).reshape(n * n, -1)  # (n*n, D)
        return tokens + pos


class StateDecoder(nn.Module):
    """A latent state's cell tokens -> per cell either logits over the 20 cell appearances (``out_dim`` = 20,
    the "cells" decoder) or the cell's pixels (``out_dim`` = c*c*3, "pixels"): a small pre-norm transformer
    followed by a linear map."""

    def __init__(self, width: int, heads: int, layers: int, out_dim: int):
        super().__init__()
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_dim)

    def forward(self, states: Tensor) -> Tensor:  # (K, N, D) -> (K, N, out_dim)
        return self.out(self.norm(self.blocks(states)))


@contextmanager
def per_sample_routing(gate: nn.Module):
    """Inside this context the gate routes every token of a sample to the same expert at each latent step:
    the argmax of its per-token probabilities averaged over the sample's tokens (the gate still decides; this
    is the per-sample route that training forces). A forward hook replaces the gate's per-token choice; a
    forced route (``force_routing``) is left as it is."""

    def hook(_module, args, output: GateDecision):
        forced = args[2] if len(args) > 2 else None
        if forced is not None or output.logits is None:
            return output
        choice = output.probs.mean(1).argmax(-1)  # (B,)
        index = choice[:, None].expand(output.index.shape)
        return GateDecision(index, F.one_hot(index, output.probs.shape[-1]).to(output.weights.dtype),
                            output.probs, output.logits)

    handle = gate.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class ActionHead(nn.Module):
    """Non-recursive baseline head: P step queries attend to the tokens, an MLP gives 4 action logits each."""

    def __init__(self, width: int, heads: int, steps: int, hidden: int):
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(steps, width))  # (P, D)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, 4))

    def forward(self, tokens: Tensor) -> Tensor:  # (B, N, D) -> (B, P, 4)
        q = self.queries[None].expand(tokens.shape[0], -1, -1)
        return self.mlp(self.attn(q, tokens, tokens, need_weights=False)[0] + q)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class VisualPlanner(nn.Module):
    """RSR visual planner (``recursive=True``) or its non-recursive same-size baseline."""

    def __init__(self, config: PlannerConfig):
        super().__init__()
        self.config = cfg = config
        with torch.random.fork_rng(devices=[]):  # weights depend on config.seed only
            torch.manual_seed(cfg.seed)
            self.dit = DiTTransformer2DModel(
                num_attention_heads=cfg.heads, attention_head_dim=cfg.width // cfg.heads, in_channels=3,
                out_channels=3, num_layers=cfg.layers, sample_size=MAX_SIZE * cfg.cell_px, patch_size=cfg.cell_px,
                num_embeds_ada_norm=MAX_SIZE + 1)  # class label = map size
            self.dit.pos_embed = CellPatchEmbed(self.dit.pos_embed, cfg.width, cfg.positions)
            for block in self.dit.transformer_blocks:
                block.norm1.emb.class_embedder.dropout_prob = 0.0  # the size label is never dropped
            self.rsr_layer = cfg.layers - 1
            if cfg.recursive:
                rsr = RSRConfig(num_experts=NUM_ACTIONS, latent_steps=cfg.plan_steps + 1, rank=cfg.rank,
                                layers=(self.rsr_layer,), balance_loss_weight=0.0, seed=cfg.seed)
                apply_rsr(self.dit, rsr)
                self.dit.requires_grad_(True)  # trained from scratch (apply_rsr freezes the base)
                self._proc.rsr.state_grad = True
                out_dim = len(APPEARANCES) if cfg.decoder == "cells" else cfg.cell_px * cfg.cell_px * 3
                self.decoder = StateDecoder(cfg.width, cfg.heads, cfg.decoder_layers, out_dim)
                self.register_buffer("atlas", appearance_atlas(cfg.cell_px), persistent=False)  # (20, c*c*3)
                self.head = None
            else:
                self.decoder = None
                self.head = ActionHead(cfg.width, cfg.heads, cfg.plan_steps, self._matched_hidden())
                self._tokens: Tensor | None = None
                self.dit.transformer_blocks[-1].register_forward_hook(self._grab_tokens)
            self._init_weights()

    # -- construction --------------------------------------------------------------------------------------
    def _matched_hidden(self) -> int:
        """Hidden width of the baseline's MLP that makes its parameter count equal the RSR planner's."""
        twin = VisualPlanner(PlannerConfig(**{**asdict(self.config), "recursive": True}))
        target = _count(twin) - _count(self.dit)
        per = self.config.width + 1 + 4  # each hidden unit: a row of Linear(D, H) + bias + a column of Linear(H, 4)
        fixed = _count(ActionHead(self.config.width, self.config.heads, self.config.plan_steps, 1)) - per
        return max(1, round((target - fixed) / per))

    def _init_weights(self) -> None:
        """All initialisation in one place (diffusers' defaults for the DiT otherwise).

        Unit-scale position embeddings and small random LoRA B (instead of the core's zero B, whose purpose is
        to start from a pretrained base; here nothing is pretrained): with B = 0 every intermediate step
        starts with Q = K = V = 0, i.e. uniform attention, and learning where the agent moves was measured to
        stall (the decoder drew a blur over all cells)."""
        if isinstance(self.dit.pos_embed.row, nn.Parameter):
            nn.init.normal_(self.dit.pos_embed.row, std=1.0)
            nn.init.normal_(self.dit.pos_embed.col, std=1.0)
        if self.config.recursive:
            nn.init.normal_(self._proc.rsr.experts.lora_B, std=0.02)
        if self.decoder is not None:
            nn.init.zeros_(self.decoder.out.weight)
            nn.init.constant_(self.decoder.out.bias, 0.0 if self.config.decoder == "cells" else 0.5)
        if self.head is not None:
            nn.init.normal_(self.head.queries, std=0.02)

    @property
    def _proc(self):
        return rsr_layers(self.dit)[self.rsr_layer]

    # -- forward -------------------------------------------------------------------------------------------
    def _grab_tokens(self, _module, _inputs, output: Tensor) -> None:
        self._tokens = output

    def _run_dit(self, frames: Tensor) -> None:
        """frames: (B, n*c, n*c, 3) float in [0, 1]."""
        b, px = frames.shape[0], frames.shape[1]
        n = px // self.config.cell_px
        x = frames.permute(0, 3, 1, 2) * 2 - 1  # (B, 3, H, W) in [-1, 1]
        t = torch.zeros(b, dtype=torch.long, device=frames.device)  # no diffusion: timestep 0
        labels = torch.full((b,), n, dtype=torch.long, device=frames.device)
        self.dit(x, timestep=t, class_labels=labels)

    def forward(self, frames: Tensor, actions: Tensor | None = None, routing: str = "token") -> PlanOutput:
        """Plan from start frames (B, n*c, n*c, 3) in [0, 1].

        RSR: ``actions`` (B, P) long (padding may be any id in 0..3) are forced through ``force_routing``;
        None lets the gate route (inference): ``routing="token"`` as the core routes (per-token argmax in eval
        mode), ``"sample"`` one expert per sample per step (``per_sample_routing``). Baseline: ``actions`` and
        ``routing`` are ignored.
        """
        p = self.config.plan_steps
        if self.head is not None:
            self._run_dit(frames)
            logits = self.head(self._tokens)  # (B, P, 4)
            return PlanOutput(logits[:, :, None], None, logits.argmax(-1)[:, :, None])
        proc = self._proc
        proc.rsr.record_states = True  # (a ``routing_trace`` context turns it off when it ends)
        route = None
        if actions is not None:  # (B, P + 1): the final, base-integrating step gets expert 0 (unsupervised)
            route = torch.cat([actions.clamp_min(0), actions.new_zeros(actions.shape[0], 1)], 1)
        if route is not None:
            context = force_routing(self.dit, route)
        elif routing == "sample":
            context = per_sample_routing(proc.rsr.gate)
        else:
            context = nullcontext()
        with context:
            self._run_dit(frames)
        steps = proc.last_steps
        logits = torch.stack([s.logits for s in steps[:p]], 1)  # (B, P, N, M): step t chooses move t
        states = torch.stack([s.state for s in steps[1:]], 1)  # (B, P, N, D): h_{t+1}, after move t
        experts = torch.stack([s.experts for s in steps[:p]], 1)  # (B, P, N)
        return PlanOutput(logits, states, experts)

    def decode(self, states: Tensor) -> Tensor:
        """(K, N, D) states -> (K, n*c, n*c, 3) frames. "cells" decoder: every cell drawn as its most likely
        appearance with the env's own tile pixels (exact tiles, values in [0, 1]); "pixels": the regressed
        pixels (unclamped)."""
        k, n_tok = states.shape[:2]
        n, c = math.isqrt(n_tok), self.config.cell_px
        out = self.decoder(states)
        if self.config.decoder == "cells":
            out = self.atlas[self.cell_appearance(out)]  # (K, N, c*c*3)
        cells = out.view(k, n, n, c, c, 3)
        return cells.permute(0, 1, 3, 2, 4, 5).reshape(k, n * c, n * c, 3)

    def cell_appearance(self, logits: Tensor) -> Tensor:
        """(K, N, 20) appearance logits -> (K, N) appearance index per cell. ``render="argmax"``: each cell's
        most likely appearance. ``"one_agent"``: a frame shows exactly one agent, so the agent goes to the cell
        with the highest total agent probability (with its most likely pose there) and every other cell gets
        its most likely agent-free appearance."""
        if self.config.render == "argmax":
            return logits.argmax(-1)
        k, n_tok = logits.shape[:2]
        logp = logits.log_softmax(-1).view(k, n_tok, len(TILES), len(POSES))  # log p(tile, pose); pose 0: none
        agent_mass = logp[..., 1:].logsumexp((-1, -2))  # (K, N) log p(agent on this cell)
        cell = agent_mass.argmax(-1)  # (K,)
        empty = logp[..., 0].argmax(-1) * len(POSES)  # (K, N) best agent-free appearance
        best_agent = logp[..., 1:].flatten(-2).argmax(-1)  # (K, N) over tile x pose 1..4
        agent = (best_agent // (len(POSES) - 1)) * len(POSES) + best_agent % (len(POSES) - 1) + 1
        rows = torch.arange(k, device=logits.device)
        out = empty.clone()
        out[rows, cell] = agent[rows, cell]
        return out

    @torch.no_grad()
    def plan(self, frames: Tensor, routing: str | None = None) -> tuple[Tensor, Tensor]:
        """Inference with the gate alone (``routing``: "sample" / "token", default ``config.routing``).
        RSR: ((B, P, H, W, 3) decoded frames in [0, 1], (B, P) majority expert per move). Baseline:
        (None, (B, P) actions)."""
        out = self(frames, routing=routing or self.config.routing)
        votes = out.experts.mode(-1).values  # (B, P)
        if self.head is not None:
            return None, votes
        b, p = out.states.shape[:2]
        frames_out = self.decode(out.states.flatten(0, 1)).clamp(0, 1)
        return frames_out.view(b, p, *frames_out.shape[1:]), votes

    # -- files ---------------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """``planner.json`` + ``planner.safetensors`` (no pickle)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "planner.json").write_text(self.config.to_json() + "\n")
        state = {k: v.detach().contiguous().clone() for k, v in self.state_dict().items()}
        save_file(state, str(folder / "planner.safetensors"))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> VisualPlanner:
        folder = Path(folder)
        if not (folder / "planner.json").is_file():
            raise FileNotFoundError(f"{folder} has no planner.json (write one with `thinkpix frozenlake train`)")
        model = cls(PlannerConfig.from_json((folder / "planner.json").read_text()))
        model.load_state_dict(load_file(str(folder / "planner.safetensors")), strict=True)
        return model.eval()


def parameter_count(model: nn.Module) -> int:
    return _count(model)
