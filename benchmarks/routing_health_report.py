"""The report of ``benchmarks/routing_health.py``: tables per shape, decisiveness plots, the recommended setting.

Selection rule (fixed before the sweep, on training data only): among the options whose training-mode routes
agree with the eval-mode routes for at least ``AGREEMENT_TARGET`` of the held-in tokens and that keep every
expert at or above ``MIN_SHARE`` of the tokens (or whose lopsidedness is input-dependent), the lowest held-in
denoising loss at M=2, T=2 wins; training-prompt Shapes-GenEval is reported next to it.
"""

from __future__ import annotations

import math
from pathlib import Path

from thinkpix.analysis.stats import COLLAPSE_SHARE

AGREEMENT_TARGET = 0.9
MIN_SHARE = 0.05
INPUT_DEPENDENT = 0.2  # mean per-sample TV from the batch's usage above which lopsidedness follows the input


def fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def healthy(r: dict) -> bool:
    h = r["held_in"]
    balanced = h["min_utilisation"] >= MIN_SHARE or h["input_dependence"] >= INPUT_DEPENDENT
    return (h["train_mode_agreement"] or 0) >= AGREEMENT_TARGET and balanced and h["max_utilisation"] <= COLLAPSE_SHARE


def flags(r: dict) -> str:
    h = r["held_in"]
    out = []
    if h["max_utilisation"] > COLLAPSE_SHARE:
        out.append("collapsed")
    elif h["min_utilisation"] < MIN_SHARE:
        out.append("expert < 5%" + (" (input-dependent)" if h["input_dependence"] >= INPUT_DEPENDENT else ""))
    return ", ".join(out) or "ok"


def _delta(r: dict, paper: dict | None, digits: int) -> str:
    if paper is None or r is paper:
        return ""
    loss = r["held_in"]["loss"] - paper["held_in"]["loss"]
    geneval = 100 * (r["geneval_train_prompts"]["overall"] - paper["geneval_train_prompts"]["overall"])
    return f" ({loss:+.{digits}f})", f" ({geneval:+.1f})"


def table(rows: list[dict]) -> list[str]:
    paper = next((r for r in rows if r["option"] == "paper"), None)
    lines = ["| option | train/eval route agreement (end) | agreement at Gumbel(0,1) | mean margin | utilisation "
             "| flags | input dependence | expert cosine | gate/expert grad | held-in loss (vs paper) "
             "| GenEval, train prompts (vs paper) | train s |", "|---|" + "---|" * 11]
    for r in rows:
        h = r["held_in"]
        usage = " / ".join(f"{u:.2f}" for u in h["utilisation"])
        dloss, dgen = _delta(r, paper, 4) or ("", "")
        lines.append(f"| {r['option']} | {fmt(h['train_mode_agreement'])} | {fmt(h['agreement_unit_noise'])} "
                     f"| {fmt(h['margin'], 2)} | {usage} | {flags(r)} | {fmt(h['input_dependence'], 2)} "
                     f"| {fmt(h['divergence'], 2)} | {fmt(r['curves']['gate_to_expert_grad'], 3)} "
                     f"| {fmt(h['loss'], 4)}{dloss} | {fmt(100 * r['geneval_train_prompts']['overall'], 1)}{dgen} "
                     f"| {r['train_seconds']:.0f} |")
    return lines


def mean_agreement(r: dict) -> float | None:
    """Measured train/eval route agreement averaged over the whole run (the curve), not only its end."""
    values = [v for v in r["curves"]["sampled_agreement"] if v is not None]
    return sum(values) / len(values) if values else None


def plot_curves(rows: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        c = r["curves"]
        left.plot(c["steps"], c["sampled_agreement"], label=r["option"])
        right.plot(c["steps"], c["margin"], label=r["option"])
    left.axhline(AGREEMENT_TARGET, color="grey", lw=0.8, ls="--")
    left.set(xlabel="training step", ylabel="share of tokens: training route = argmax route",
             title=f"{title}: route agreement while training")
    right.set(xlabel="training step", ylabel="mean top-two logit margin", title=f"{title}: gate margin",
              yscale="log")
    right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _vs_paper(best: dict, paper: dict) -> str:
    agree = best["held_in"]["train_mode_agreement"], paper["held_in"]["train_mode_agreement"]
    dl = best["held_in"]["loss"] - paper["held_in"]["loss"]
    dg = 100 * (best["geneval_train_prompts"]["overall"] - paper["geneval_train_prompts"]["overall"])
    return (f"route agreement {fmt(agree[0])} vs the paper's {fmt(agree[1])}, held-in loss "
            f"{fmt(best['held_in']['loss'], 4)} vs {fmt(paper['held_in']['loss'], 4)} ({dl:+.4f}), training-prompt "
            f"GenEval {dg:+.1f} points")


def recommendation(groups: dict[tuple[str, str], list[dict]]) -> list[str]:
    lines = []
    for (budget, shape), rows in groups.items():
        paper = next((r for r in rows if r["option"] == "paper"), None)
        winners = sorted((r for r in rows if healthy(r)), key=lambda r: r["held_in"]["loss"])
        if paper is None:
            continue
        if not winners:
            lines.append(f"- {budget}, {shape}: no option met the rule.")
            continue
        best = winners[0]
        lines.append(f"- {budget}, {shape}: **{best['option']}** (`{best['fields']}`) wins by the rule: "
                     f"{_vs_paper(best, paper)}; {len(winners)} of {len(rows)} options met the rule.")
    return lines or ["No budget has both the paper row and an option yet: no recommendation."]


def acceptance(groups: dict[tuple[str, str], list[dict]], option: str | None = None) -> list[str]:
    """Whether the recommended option meets the issue's acceptance line at the reproduction's budget and M=2."""
    from benchmarks.routing_health import RECOMMENDED

    rows = groups.get(("pilot", "M=2, T=2"), [])
    lines = []
    for r in rows:
        h = r["held_in"]
        verdict = "meets" if healthy(r) else "does not meet"
        lines.append(f"- {r['option']}{' (recommended)' if r['option'] == (option or RECOMMENDED) else ''}: "
                     f"{verdict} it: train/eval route agreement {fmt(h['train_mode_agreement'])} at the end "
                     f"(mean over the run {fmt(mean_agreement(r))}), smallest expert share "
                     f"{fmt(h['min_utilisation'])}, input dependence {fmt(h['input_dependence'], 2)}.")
    return lines or ["No row at the reproduction's budget yet."]


def write_report(out: Path, results: list[dict], rows_dir: Path, overhead: dict | None = None) -> None:
    out = Path(out)
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["budget_name"], r["shape"]), []).append(r)
    lines = ["# Routing health: does the gate learn?", "",
             f"Produced by `python -m benchmarks.routing_health`; rows cached under `{rows_dir}`.", "",
             __doc__.split("\n\n", 1)[1].strip(), ""]
    for (budget, shape), rows in groups.items():
        tag = f"{budget}_M{shape[2]}"
        png = plot_curves(rows, out.parent / "routing_health" / f"decisiveness_{tag}.png", f"{shape} ({budget})")
        lines += [f"## {shape}, {budget} budget", "", f"Budget: `{rows[0]['budget']}`.", "", *table(rows), "",
                  f"![decisiveness {shape} {budget}]({png.relative_to(out.parent)})", ""]
    if overhead:
        lines += ["## Cost of the metrics", "", f"One training forward + backward of `shapes-t2i` with M=5, T=5 "
                  f"(batch {overhead['batch']}, {overhead['threads']} thread(s), CPU time, median of "
                  f"{overhead['rounds']} interleaved rounds): {overhead['off_ms']:.0f} ms without the routing-health "
                  f"metrics, {overhead['on_ms']:.0f} ms with them and their logged scalars "
                  f"({100 * overhead['overhead']:+.1f}%).", ""]
    lines += ["## Selection by the rule", "", *recommendation(groups), "", "## Acceptance (reproduction's budget, M=2)",
              "", *acceptance(groups), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
