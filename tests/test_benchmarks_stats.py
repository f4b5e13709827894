"""benchmarks.stats on simulated Shapes-GenEval rows whose true difference is known."""

import math

import numpy as np
import pytest
from benchmarks.shapes_rows import mean_ci
from benchmarks.stats import (
    Cells,
    compare_verdicts,
    holm,
    mde,
    paired_estimate,
    row_interval,
    seed_comparison,
)

PROMPTS = {"single_object": 4, "two_object": 12, "counting": 4, "colors": 8, "position": 12, "color_attr": 46}
SAMPLES = {"single_object": 46, "two_object": 16, "counting": 46, "colors": 23, "position": 16, "color_attr": 4}
BASE = {"single_object": 0.9, "two_object": 0.35, "counting": 0.4, "colors": 0.8, "position": 0.15, "color_attr": 0.05}


def simulate(rng, delta, seeds=3, seed_sd=0.01, prompt_sd=0.03):
    """Cells of the paired difference A - B: both rows share the noise of every image (a common uniform), A's
    success probability is B's plus ``delta``, a training-seed effect and a prompt effect (mean zero)."""
    tags = [tag for tag, n in PROMPTS.items() for _ in range(n)]
    k = np.array([SAMPLES[t] for t in tags])
    # success rates kept inside [0.15, 0.85] so that clipping never shifts the true difference
    p_b = np.clip(np.array([BASE[t] for t in tags]) + rng.normal(0, 0.1, len(tags)), 0.15, 0.85)
    shift = delta + rng.normal(0, prompt_sd, len(tags))[None, :] + rng.normal(0, seed_sd, (seeds, 1))
    p_a = np.clip(p_b + shift, 0.0, 1.0)
    mean, square = np.zeros((seeds, len(tags))), np.zeros((seeds, len(tags)))
    for n in set(k.tolist()):
        cols = np.flatnonzero(k == n)
        u = rng.random((seeds, len(cols), n))
        d = (u < p_a[:, cols, None]).astype(float) - (u < p_b[None, cols, None])
        mean[:, cols], square[:, cols] = d.mean(axis=2), (d * d).mean(axis=2)
    return Cells(mean, square, tuple(tags), k.astype(float))


@pytest.mark.parametrize(("seeds", "seed_sd"), [(1, 0.0), (3, 0.01), (5, 0.02)])
def test_interval_covers_the_true_difference_about_95_percent_of_the_time(seeds, seed_sd):
    """(One seed cannot see a training-seed effect, so that case simulates none.)"""
    rng = np.random.default_rng(seeds)
    hits = []
    for _ in range(300):
        est = paired_estimate(simulate(rng, 0.02, seeds=seeds, seed_sd=seed_sd))
        hits.append(abs(est.mean - 0.02) <= est.half_width)
    assert 0.92 <= np.mean(hits) <= 0.985


def test_an_effect_of_the_reported_mde_is_detected_about_80_percent_of_the_time():
    rng = np.random.default_rng(7)
    predicted = np.mean([paired_estimate(simulate(rng, 0.0)).mde for _ in range(100)])
    rejected = [paired_estimate(simulate(rng, predicted)).p_value < 0.05 for _ in range(300)]
    assert 0.72 <= np.mean(rejected) <= 0.88
    assert 0.005 < predicted < 0.05  # the v2 design with 3 seeds resolves a few points, not tens


def test_the_null_is_rejected_about_5_percent_of_the_time():
    rng = np.random.default_rng(11)
    rejected = [paired_estimate(simulate(rng, 0.0)).p_value < 0.05 for _ in range(300)]
    assert np.mean(rejected) <= 0.08


def test_mde_is_the_t_quantiles_times_the_standard_error():
    assert mde(1.0, math.inf) == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    assert mde(0.5, 2) == pytest.approx(0.5 * (4.302653 + 1.060660), abs=1e-5)


def test_seed_comparison_matches_students_t_over_seeds():
    diffs = [0.01, 0.04, -0.02]
    mean, half = mean_ci(diffs)
    c = seed_comparison(diffs)
    assert c.mean == pytest.approx(mean) and c.half_width == pytest.approx(half)
    assert math.isnan(seed_comparison([0.01]).se)


def test_holm_steps_down():
    assert holm([0.01, 0.04, 0.03, 0.2]) == [True, False, False, False]  # 0.01 <= 0.05/4, 0.03 > 0.05/3
    assert holm([0.001, 0.012, 0.02, 0.9]) == [True, True, True, False]
    assert holm([float("nan"), 0.01]) == [False, True]


def verdicts(rng, p, tags=("single_object", "color_attr"), prompts=2, samples=30):
    return [{"prompt_index": i, "sample_index": n, "tag": tags[i % len(tags)], "correct": bool(rng.random() < p)}
            for i in range(prompts * len(tags)) for n in range(samples)]


def test_verdict_rows_pair_image_by_image():
    rng = np.random.default_rng(0)
    a = {0: verdicts(rng, 0.7), 1: verdicts(rng, 0.7)}
    b = {0: verdicts(rng, 0.4), 1: verdicts(rng, 0.4)}
    c = compare_verdicts(a, b)
    assert 0.15 < c.mean < 0.45 and c.half_width > 0
    fixed = row_interval(a)
    assert 0.55 < fixed.mean < 0.85 and 0 < fixed.half_width < 0.15
    with pytest.raises(ValueError, match="do not pair up"):
        compare_verdicts(a, {0: b[0][:-1], 1: b[1]})
    with pytest.raises(ValueError, match="prompts='any'"):
        paired_estimate(simulate(rng, 0.0), prompts="any")
