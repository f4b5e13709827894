"""The decisive reproduction's verdicts: which images a comparison pairs, the paired comparison of two rows,
the claims' verdicts (uncorrected and Holm's) and what a row's training and sampling cost.

Every comparison is paired image by image (the rows share prompts and noise) with the crossed seed x prompt
model of ``benchmarks.stats``. A row without training randomness (the base) pairs with every seed of the other
row: its images are the same whatever the seed.
"""

from __future__ import annotations

import math

import numpy as np

from benchmarks.reproduction_claims import Claim
from benchmarks.stats import Comparison, compare_verdicts, holm
from thinkpix.shapes.recipes import COMPOSITIONAL_TAGS

ACCEPTED_MDE = 0.03  # the line: a claim left unresolved must still rule out effects of 3 points or more


def held_out_verdicts(result: dict) -> list[dict]:
    return result["geneval"]["verdicts"]


def train_prompt_verdicts(result: dict) -> list[dict]:
    """The training-prompt images of the four compositional tags (the fine-tuning distribution) as verdict
    dicts; the repeats of a prompt are its samples."""
    found, index, seen = [], {}, {}
    scored = result["train_prompts"]
    for tag, prompt, correct in zip(scored["tags"], scored["prompts"], scored["correct"]):
        if tag in COMPOSITIONAL_TAGS:
            i = index.setdefault((tag, prompt), len(index))
            seen[i] = seen.get(i, -1) + 1
            found.append({"prompt_index": i, "sample_index": seen[i], "tag": tag, "correct": correct})
    return found


def untrained(rows: list[dict]) -> bool:
    """One result with no training steps (the base): its images are the same whatever the seed."""
    return len(rows) == 1 and not rows[0].get("train_steps")


def by_seed(rows: list[dict], verdicts, seeds: list[int]) -> dict[int, list[dict]]:
    if untrained(rows):
        return {seed: verdicts(rows[0]) for seed in seeds}
    return {r["seed"]: verdicts(r) for r in rows if r["seed"] in seeds}


def paired(better: list[dict], worse: list[dict], verdicts=held_out_verdicts) -> tuple[Comparison, int] | None:
    """``better`` minus ``worse`` on the seeds both have (against the base: every seed of the other row), and
    how many seeds that is; None when there is nothing to pair."""
    trained = [rows for rows in (better, worse) if rows and not untrained(rows)]
    if not better or not worse or not trained:
        return None
    seeds = sorted(set.intersection(*({r["seed"] for r in rows} for rows in trained)))
    if not seeds:
        return None
    return compare_verdicts(by_seed(better, verdicts, seeds), by_seed(worse, verdicts, seeds)), len(seeds)


ONE_SEED = "no verdict: one seed"  # its interval has no seed-to-seed term, so it would understate the noise


def verdict(comparison: Comparison, seeds: int) -> str:
    if seeds < 2:
        return ONE_SEED
    low, high = comparison.mean - comparison.half_width, comparison.mean + comparison.half_width
    return "supported" if low > 0 else "contradicted" if high < 0 else "not resolved"


def claim_lines(claims: list[Claim], results: dict[str, list[dict]]) -> list[dict]:
    """Per claim: the paired comparison (None when a row is missing), seeds, verdicts uncorrected and Holm's
    (whose family is the claims with two seeds or more)."""
    found = [paired(results.get(c.better, []), results.get(c.worse, [])) for c in claims]
    rejected = holm([f[0].p_value if f and f[1] > 1 else math.nan for f in found])
    lines = []
    for claim, result, holm_rejects in zip(claims, found, rejected):
        if result is None:
            lines.append({"claim": claim, "comparison": None})
            continue
        comparison, seeds = result
        said = verdict(comparison, seeds)
        lines.append({"claim": claim, "comparison": comparison, "seeds": seeds, "verdict": said,
                      "holm": said if holm_rejects or said == ONE_SEED else "not resolved"})
    return lines


def points(comparison: Comparison) -> str:
    return f"{100 * comparison.mean:+.2f} ± {100 * comparison.half_width:.2f}"


def train_cpu_seconds(result: dict) -> float | None:
    """CPU seconds of a (row, seed)'s whole training: per step as timed (a resumed run times only the steps it
    ran) times its steps; None where it was recorded on the wall clock only (rows before session 12)."""
    if not result["train_steps"]:
        return 0.0
    timed = result.get("train_steps_timed")
    return result["train_cpu_seconds"] / timed * result["train_steps"] if timed else None


def sample_cpu_seconds(result: dict) -> float | None:
    return result["geneval"].get("sample_cpu_seconds")


def mean_of_recorded(rows: list[dict], value) -> float:
    """Mean over the seeds that recorded ``value`` (NaN when none did)."""
    values = [v for v in map(value, rows) if v is not None]
    return float(np.mean(values)) if values else math.nan
