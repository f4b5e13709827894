"""Paired statistics for Shapes-GenEval rows: intervals, minimum detectable effects and Holm's correction.

The unit is one image: two rows sampled with the same seed under protocol ``v2`` (:mod:`thinkpix.shapes.protocol`)
see the same noise image by image, so the difference of their verdicts on image ``(prompt, sample)`` is paired.
GenEval's overall is the unweighted mean of the six tag scores, so prompt ``p`` of tag ``t`` weighs
``a_p = k_p / (T K_t)`` (``k_p`` its images, ``K_t`` the tag's, ``T`` tags) and the overall difference is
``theta = sum_p a_p c_p``, with ``c_p`` the prompt's mean difference over seeds.

Noise model (a crossed random-effects model, what a two-way cluster bootstrap over seeds and prompts estimates)::

    m[s, p] = theta_t + alpha_s + beta_p + eps_sp      (m: mean paired difference of seed s on prompt p)

``alpha`` is the training seed's effect, ``beta`` the prompt's, ``eps`` sampling noise. The variance of the
estimate is estimated in closed form, as the cluster bootstrap would, bias-corrected (``n / (n - 1)``):

* seeds: ``var_s(r_s) / S`` with ``r_s`` seed ``s``'s overall difference (``S - 1`` degrees of freedom);
* prompts, within each tag (the tags are strata, every resample keeps all six): ``n_t / (n_t - 1) *
  sum_p (a_p (c_p - cbar_t))^2`` (``n_t - 1`` degrees of freedom each);
* both terms hold the sampling noise ``eps``; it is counted once by subtracting the interaction mean square
  (two seeds or more).

The interval is ``theta +- t_df * se`` with Satterthwaite's degrees of freedom over the terms, and the minimum
detectable effect of a two-sided test at level ``alpha`` with power ``power`` is ``(t_{df,1-alpha/2} +
t_{df,power}) * se``. With one seed, the seed term is unknown and left out (the interval is then about prompts
and sampling only). ``prompts="fixed"`` treats the prompt set as the whole population (the held-out set lists
every prompt with held-out bindings): only sampling noise within each prompt is left, the right frame for one
row's score under one protocol.

API::

    comparison = compare_verdicts(rows_a, rows_b)   # {seed: [verdict dicts of score_geneval_images]} each
    comparison.mean, comparison.half_width, comparison.mde, comparison.p_value
    single = row_interval(rows_a, prompts="fixed")   # one row's overall with its interval
    seed_comparison([d_seed0, d_seed1, d_seed2])     # from per-seed aggregate differences only
    holm([p1, p2, ...])                              # which hypotheses Holm's step-down rejects
    design_mde(components, seeds=5, images_per_tag={...})   # planning: the MDE of another design
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

ALPHA = 0.05
POWER = 0.8


@dataclass(frozen=True)
class Comparison:
    """An estimate (points are fractions: 0.03 is 3 points) with its standard error and what it can detect."""

    mean: float
    se: float
    df: float
    alpha: float = ALPHA
    power: float = POWER

    @property
    def half_width(self) -> float:
        return float(st.t.ppf(1 - self.alpha / 2, self.df) * self.se) if self.se > 0 else 0.0

    @property
    def mde(self) -> float:
        return mde(self.se, self.df, self.alpha, self.power)

    @property
    def p_value(self) -> float:
        if self.se == 0:
            return 0.0 if self.mean != 0 else 1.0
        return float(2 * st.t.sf(abs(self.mean) / self.se, self.df))


def mde(se: float, df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable effect of a two-sided t test: ``(t_{1-alpha/2} + t_{power}) * se``."""
    return float((st.t.ppf(1 - alpha / 2, df) + st.t.ppf(power, df)) * se)


def _satterthwaite(terms: list[tuple[float, float]]) -> float:
    """Degrees of freedom of a sum of variance terms ``(value, df)``."""
    total = sum(v for v, _ in terms)
    denom = sum(v * v / d for v, d in terms if d > 0 and v > 0)
    return total * total / denom if denom > 0 else math.inf


@dataclass(frozen=True)
class Cells:
    """Per (seed, prompt) cells of a row or a paired difference: ``mean[s, p]`` and ``square[s, p]`` (mean of the
    squared values) over prompt ``p``'s ``images[p]`` images in seed ``s``, and each prompt's ``tags[p]``."""

    mean: np.ndarray
    square: np.ndarray
    tags: tuple
    images: np.ndarray

    @property
    def weights(self) -> np.ndarray:
        """``a_p = k_p / (T K_t)``: GenEval's overall is the unweighted mean of the tag means over images."""
        names = list(dict.fromkeys(self.tags))
        weights = np.zeros(len(self.tags))
        for tag in names:
            members = self.members(tag)
            weights[members] = self.images[members] / self.images[members].sum() / len(names)
        return weights

    def members(self, tag: str) -> np.ndarray:
        return np.array([t == tag for t in self.tags])


def cells(rows: dict[int, list[dict]], value=lambda v: float(v["correct"])) -> Cells:
    """:class:`Cells` of verdict dicts (``prompt_index``, ``sample_index``, ``tag`` and what ``value`` reads),
    one list per seed. Every seed must hold the same images."""
    seeds = sorted(rows)
    keys = {(v["prompt_index"], v["sample_index"]) for v in rows[seeds[0]]}
    index = {p: i for i, p in enumerate(sorted({k[0] for k in keys}))}
    total, square = np.zeros((len(seeds), len(index))), np.zeros((len(seeds), len(index)))
    images = np.zeros(len(index))
    tags: list = [None] * len(index)
    for s, seed in enumerate(seeds):
        if {(v["prompt_index"], v["sample_index"]) for v in rows[seed]} != keys:
            raise ValueError(f"seed {seed} holds other images than seed {seeds[0]}: rows do not pair up")
        for v in rows[seed]:
            i = index[v["prompt_index"]]
            total[s, i] += value(v)
            square[s, i] += value(v) ** 2
            tags[i] = v["tag"]
            images[i] += s == 0
    return Cells(total / images, square / images, tuple(tags), images)


def paired_estimate(data: Cells, prompts: str = "random", alpha: float = ALPHA, power: float = POWER) -> Comparison:
    """The overall (unweighted mean over tags) of ``data`` with its variance from the crossed model above."""
    if prompts not in ("random", "fixed"):
        raise ValueError(f"prompts={prompts!r} is not allowed; allowed values: random, fixed")
    m, weights, seeds = data.mean, data.weights, data.mean.shape[0]
    prompt_means = m.mean(axis=0)
    estimate = float(weights @ prompt_means)
    # sampling variance of one seed's overall: the variance over each prompt's images (prompts held fixed)
    within = data.images / np.maximum(data.images - 1, 1) * np.maximum(data.square - m**2, 0.0)
    sampling = float((weights**2 * within.mean(axis=0) / data.images).sum())
    seed_var = float((m @ weights).var(ddof=1)) if seeds > 1 else 0.0
    if prompts == "fixed":
        # seeds: sigma_alpha^2 / S beyond the sampling noise, plus the sampling noise of the S seeds' mean
        terms = [(sampling / seeds, float(data.images.sum() - len(data.images)))]
        if seeds > 1:
            terms.append((max(seed_var - sampling, 0.0) / seeds, seeds - 1))
        return Comparison(estimate, math.sqrt(sum(v for v, _ in terms)), _satterthwaite(terms), alpha, power)
    terms = [(seed_var / seeds, seeds - 1)] if seeds > 1 else []
    residual = 0.0
    for tag in dict.fromkeys(data.tags):
        members = data.members(tag)
        a, c, n = weights[members], prompt_means[members], int(members.sum())
        if n < 2:
            continue
        centre = (a @ c) / a.sum()
        terms.append((n / (n - 1) * float(((a * (c - centre)) ** 2).sum()), n - 1))
        if seeds > 1:  # the interaction mean square: sampling noise, held by both the seed and the prompt term
            block = m[:, members]
            inter = block - block.mean(axis=0) - block.mean(axis=1, keepdims=True) + block.mean()
            residual += float((a * a).sum()) * float((inter**2).sum()) / ((seeds - 1) * (n - 1)) / seeds
    variance = sum(v for v, _ in terms)
    variance = max(variance - residual, max((v for v, _ in terms), default=0.0))
    return Comparison(estimate, math.sqrt(variance), _satterthwaite(terms), alpha, power)


def compare_verdicts(rows_a: dict[int, list[dict]], rows_b: dict[int, list[dict]], prompts: str = "random",
                     alpha: float = ALPHA, power: float = POWER) -> Comparison:
    """Row A minus row B, paired image by image within each seed (same seeds, same images)."""
    if sorted(rows_a) != sorted(rows_b):
        raise ValueError(f"rows have different seeds: {sorted(rows_a)} and {sorted(rows_b)}")
    diffs = {}
    for seed in rows_a:
        b = {(v["prompt_index"], v["sample_index"]): v["correct"] for v in rows_b[seed]}
        if set(b) != {(v["prompt_index"], v["sample_index"]) for v in rows_a[seed]}:
            raise ValueError(f"seed {seed}: the rows scored different images, so they do not pair up")
        diffs[seed] = [{**v, "correct": float(v["correct"]) - float(b[(v["prompt_index"], v["sample_index"])])}
                       for v in rows_a[seed]]
    return paired_estimate(cells(diffs), prompts=prompts, alpha=alpha, power=power)


def row_interval(rows: dict[int, list[dict]], prompts: str = "fixed", alpha: float = ALPHA) -> Comparison:
    """One row's overall with its interval (``prompts="fixed"``: sampling noise of this protocol only)."""
    return paired_estimate(cells(rows), prompts=prompts, alpha=alpha)


def seed_comparison(per_seed_differences: list[float], alpha: float = ALPHA, power: float = POWER) -> Comparison:
    """From per-seed aggregate differences only (rows cached without per-image verdicts): Student's t over seeds."""
    values = np.asarray(per_seed_differences, dtype=np.float64)
    if values.size < 2:
        return Comparison(float(values.mean()), math.nan, math.nan, alpha, power)
    return Comparison(float(values.mean()), float(values.std(ddof=1) / math.sqrt(values.size)), values.size - 1,
                      alpha, power)


def holm(p_values: list[float], alpha: float = ALPHA) -> list[bool]:
    """Holm's step-down: which hypotheses are rejected at family-wise level ``alpha`` (NaN p-values: never)."""
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    rejected = [False] * len(p_values)
    for rank, (p, i) in enumerate(order):
        if p > alpha / (len(order) - rank):
            break
        rejected[i] = True
    return rejected
