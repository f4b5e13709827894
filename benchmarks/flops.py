"""Multiply-add counts (forward, per sample) of the hosts and of RSR, for the ideal overhead of ``overhead.py``.

Base counts cover the transformer blocks (plus SD3's context embedder); patch embedding, timestep/class/pooled
embeddings and the final layer are left out (well under 1% here). Layer norms, softmax and other element-wise
work are not multiply-adds and are not counted.
"""

from __future__ import annotations


def dit_base_macs(n: int, dim: int, depth: int = 28) -> float:
    """DiT: ``depth x (12 N D^2 + 2 N^2 D + 6 D^2)``.

    Per block: Q/K/V and output projections 4 N D^2, MLP (4x) 8 N D^2, attention scores and values 2 N^2 D,
    adaLN-Zero modulation (D -> 6D, once per sample) 6 D^2.
    """
    return depth * (12 * n * dim**2 + 2 * n**2 * dim + 6 * dim**2)


def sd3_base_macs(n: int, text: int, dim: int, depth: int = 24, joint_dim: int = 4096) -> float:
    """SD3 (MMDiT, ``JointTransformerBlock``): blocks plus the context embedder ``L x joint_dim x D``.

    A block has a vision and a text stream, each with Q/K/V, output projection and MLP (12 D^2 per token),
    joint attention over N + L tokens (2 (N + L)^2 D) and adaLN-Zero for both streams (6 D^2 each). The last
    block is ``context_pre_only``: its text stream has only Q/K/V (3 L D^2) and an ``AdaLayerNormContinuous``
    (2 D^2).
    """
    tokens = n + text
    block = 12 * tokens * dim**2 + 2 * tokens**2 * dim + 12 * dim**2
    last = 12 * n * dim**2 + 3 * text * dim**2 + 2 * tokens**2 * dim + 8 * dim**2
    return (depth - 1) * block + last + text * joint_dim * dim


def rsr_extra_macs_field(n: int, dim: int, rank: int, experts: int, steps: int, layers: int, text: int = 0) -> float:
    """Field-facts formula: ``T x L x N D (4 D + 6 r + M + 2 (N + N_text))``.

    It counts, for every latent step of every looped layer, base Q/K/V and output projection (4 D), a top-1
    LoRA on Q/K/V (6 r), the gate (M) and the attention (2 (N + N_text)).
    """
    return steps * layers * n * dim * (4 * dim + 6 * rank + experts + 2 * (n + text))


def rsr_extra_macs_exact(n: int, dim: int, rank: int, experts: int, steps: int, layers: int, text: int = 0) -> float:
    """What ``thinkpix`` adds over the base layer (paper Algorithm 1), per looped layer.

    Every step runs the top-1 LoRA on Q/K/V (6 r N D) and, for M > 1, the gate (M N D) plus its latent-step
    embedding MLP (256 D + D^2); the T - 1 intermediate steps each add one more joint attention
    (2 (N + L)^2 D: text queries are recomputed too). Base Q/K/V and the output projection run once, as in the
    base layer, so they add nothing.
    """
    gate = (experts * n * dim + 256 * dim + dim**2) if experts > 1 else 0
    per_layer = steps * (6 * rank * n * dim + gate) + (steps - 1) * 2 * (n + text) ** 2 * dim
    return layers * per_layer
