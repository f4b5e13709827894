"""Markdown report of ``benchmarks/overhead.py``: times, ratios, ideal FLOPs overheads, memory and verdicts."""

from __future__ import annotations

import argparse
import statistics

from benchmarks.flops import dit_base_macs, rsr_extra_macs_exact, rsr_extra_macs_field, sd3_base_macs

FORWARD_LIMIT, TRAIN_LIMIT, MEMORY_LIMIT = 1.25, 1.05, 0.10
M5T5, M1T1, PEFT = "RSR M=5 T=5, L=(4,8,12)", "RSR M=1 T=1, L=(4,8,12)", "peft LoRA r=128, L=(4,8,12)"


def _min_ms(ts: list[float]) -> float | None:
    return 1e3 * min(ts) if ts else None


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _spread(xs: list[float]) -> str:
    return f"{min(xs):.3f}-{max(xs):.3f}" if xs else ""


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def _ms(x: float | None) -> str:
    return "" if x is None else f"{x:.0f}"


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(x) + " |" for x in lines]


def base_macs(kind: str, n: int, dim: int, text: int) -> float:
    return dit_base_macs(n, dim) if kind == "dit-xl-2" else sd3_base_macs(n, text, dim)


def ideal(kind: str, variant, n: int, dim: int, text: int, rank: int) -> tuple[float, float]:
    """(field-facts formula, exact count) ideal overhead of a variant over the base, as fractions."""
    base = base_macs(kind, n, dim, text)
    if variant.kind == "base":
        return 0.0, 0.0
    layers = len(variant.layers)
    if variant.kind == "peft":
        lora = layers * 6 * rank * n * dim / base
        return lora, lora
    args = (n, dim, rank, variant.experts, variant.steps, layers, text)
    return rsr_extra_macs_field(*args) / base, rsr_extra_macs_exact(*args) / base


def host_section(kind: str, res: dict, hosts: dict, variants: list, rank: int, batch: int) -> tuple[list[str], dict]:
    """Markdown lines for one host and the numbers the verdicts need."""
    cls, config, side, text, _ = hosts[kind]
    n = (side // config["patch_size"]) ** 2
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    times = res["times"]
    base_fwd = _min_ms(times["base"]["forward"])
    macs = base_macs(kind, n, dim, text)
    md = [f"## {cls.__name__} ({kind})", "",
          f"- N = {n} vision tokens (latent {side}x{side}, patch {config['patch_size']}), D = {dim}, "
          f"{config['num_layers']} blocks, text tokens = {text}, batch {batch}, rank {rank}",
          f"- base forward: {macs / 1e9:.1f} G multiply-adds per sample; " + (
              "not timed in this run" if base_fwd is None else
              f"measured {base_fwd:.0f} ms, i.e. {2 * macs * batch / (base_fwd * 1e-3) / 1e9:.0f} GFLOP/s"), ""]
    lines, numbers, ratios = [], {}, times["_ratios"]
    for v in variants:
        fwd, train = _min_ms(times[v.name]["forward"]), _min_ms(times[v.name]["train"])
        fwd_ratio, train_ratio = _median(ratios[v.name]["forward"]), _median(ratios[v.name]["train"])
        over = None if fwd_ratio is None else fwd_ratio - 1
        field, exact = ideal(kind, v, n, dim, text, rank)
        numbers[v.name] = dict(over=over, field=field, exact=exact, train=train, train_ratio=train_ratio)
        lines.append([v.name, _ms(fwd), _pct(over), _spread(ratios[v.name]["forward"]), _pct(field), _pct(exact),
                      "" if over is None or not field else f"{over / field:.2f}", _ms(train),
                      "" if train_ratio is None else f"{train_ratio:.3f}", _spread(ratios[v.name]["train"])])
    md += _table(["variant", "forward ms (min)", "overhead vs base (median of pairs)", "pair ratios", "ideal (field "
                  "formula)", "ideal (exact count)", "measured / ideal (field)", "train step ms (min)",
                  "train / peft (median of pairs)", "pair ratios"], lines)
    pairs = {len(r["forward"]) for r in ratios.values() if r["forward"]} | {len(r["train"]) for r in ratios.values()
                                                                             if r["train"]}
    md += ["", f"Each ratio is the median over {', '.join(map(str, sorted(pairs)))} pairs (variant and reference "
               "timed back to back, order alternating); `pair ratios` gives their range. Times are minima over all "
               "timed calls; the base and peft were timed once per pair. The base has no trainable parameters, so "
               "it has no training step; the checkpointed variant differs only in training.", ""]
    if res["memory"]:
        t1 = next(m for m in res["memory"] if m["name"].startswith("RSR M=5 T=1"))
        mem_lines = []
        for m in res["memory"]:
            grow, t1_grow = m["peak"] - m["before"], t1["peak"] - t1["before"]
            saved = m.get("saved")
            mem_lines.append([m["name"], f"{m['before']:.0f}", f"{m['peak']:.0f}", f"{grow:.0f}",
                              _pct(m["peak"] / t1["peak"] - 1), _pct(grow / t1_grow - 1 if t1_grow else None),
                              "" if saved is None else f"{saved:.0f}",
                              "" if saved is None else _pct(saved / t1["saved"] - 1 if t1["saved"] else None)])
            numbers[m["name"] + " memory"] = dict(peak=m["peak"], grow=grow, saved=saved)
        md += ["Memory of one training step (MiB; fresh process per row). `before` = resident set after building the "
               "model and installing the adapter; `peak` = peak resident set (`ru_maxrss`); `growth` = peak - "
               "before; `saved` = tensors the forward keeps for backward (unique storages, weights excluded; "
               "counted with `torch.autograd.graph.saved_tensors_hooks`, exact where the resident set is blurred "
               "by the allocator). T=1 has no intermediate latent step, so checkpointing changes nothing there.", ""]
        md += _table(["configuration", "before", "peak", "growth", "peak vs M=5 T=1", "growth vs M=5 T=1", "saved",
                      "saved vs M=5 T=1"], mem_lines)
        numbers["_t1"] = dict(peak=t1["peak"], grow=t1["peak"] - t1["before"], saved=t1.get("saved"))
    if "_profile" in times:
        md += ["", "Where the forward overhead goes (torch.profiler, self CPU ms of one forward; ops sorted by the "
               "difference RSR M=5 T=5 - base):", ""]
        prof = times["_profile"]
        base, rsr = prof.get("base", {}), prof.get(M5T5, {})
        delta = sorted(((rsr.get(k, 0) - base.get(k, 0), k) for k in set(base) | set(rsr)), reverse=True)
        md += _table(["op", "base ms", "RSR ms", "difference ms"],
                     [[k, f"{base.get(k, 0):.1f}", f"{rsr.get(k, 0):.1f}", f"{d:+.1f}"] for d, k in delta[:12]])
        md += ["", f"Total self CPU: base {sum(base.values()):.0f} ms, RSR {sum(rsr.values()):.0f} ms.", ""]
    return md + [""], numbers


def verdicts(results_numbers: dict[str, dict]) -> list[str]:
    md = ["## Targets", ""]
    dit = results_numbers.get("dit-xl-2")
    if dit:
        d = dit[M5T5]
        met = d["over"] <= FORWARD_LIMIT * d["field"]
        md.append(f"- **RSR M=5, T=5 on layers 4, 8 and 12 of DiT-XL/2: the measured forward overhead over base is at "
                  f"most 1.25x the ideal FLOPs overhead.** Measured {_pct(d['over'])}; ideal (field formula) "
                  f"{_pct(d['field'])}, so the limit is {_pct(FORWARD_LIMIT * d['field'])}: "
                  f"**{'met' if met else 'missed'}** ({d['over'] / d['field']:.2f}x the ideal). Against the exact "
                  f"count of what the code computes ({_pct(d['exact'])}, limit {_pct(FORWARD_LIMIT * d['exact'])}) "
                  f"it is **{'met' if d['over'] <= FORWARD_LIMIT * d['exact'] else 'missed'}** "
                  f"({d['over'] / d['exact']:.2f}x).")
    for kind, nums in results_numbers.items():
        q, r, p = nums[M1T1]["train_ratio"], nums[M1T1]["train"], nums[PEFT]["train"]
        if q is not None:
            state = "met" if q <= TRAIN_LIMIT else f"missed by {100 * (q - TRAIN_LIMIT):.1f} points"
            md.append(f"- **RSR with M=1, T=1: a training step takes at most 1.05x peft LoRA on the same layers** "
                      f"({kind}, layers 4, 8, 12): median of paired ratios {q:.3f}x (minima {r:.0f} ms vs "
                      f"{p:.0f} ms = {r / p:.3f}x): **{state}**.")
        t5 = nums.get("RSR M=5 T=5, L=(4,8,12), ckpt memory")
        if t5 and "_t1" in nums:
            g = t5["peak"] / nums["_t1"]["peak"] - 1
            ga = t5["grow"] / nums["_t1"]["grow"] - 1
            saved = "" if t5["saved"] is None else (f"; activations saved for backward "
                                                    f"{_pct(t5['saved'] / nums['_t1']['saved'] - 1)}")
            md.append(f"- **Peak training memory grows by at most 10% from T=1 to T=5 with checkpointing** ({kind}, "
                      f"M=5, layers 4, 8, 12): total peak {_pct(g)}: **{'met' if g <= MEMORY_LIMIT else 'missed'}** "
                      f"(the step's own growth above the resident weights {_pct(ga)}{saved}).")
    return md + [""]


def write_report(args: argparse.Namespace, results: dict, command: str, facts: list[str], hosts: dict,
                 variants: list, rank: int) -> None:
    sections, numbers = [], {}
    for kind, res in results.items():
        lines, numbers[kind] = host_section(kind, res, hosts, variants, rank, args.batch)
        sections += lines
    md = ["# RSR overhead in DiT-XL/2 and SD3-medium", "",
          f"Produced by `{command}` (written by `benchmarks/overhead.py`; rerun to refresh).", "", *facts,
          "- models: the published architectures with random N(0, 0.02) weights (built on the meta device, then "
          "materialised), fp32; adapters installed and removed in turn on one model",
          f"- timing: {args.rounds} round{'s' * (args.rounds != 1)} of {' and '.join(args.modes)}; in each, every "
          "variant is installed, timed with "
          f"`Timer.blocked_autorange(min_run_time={args.min_run_time})` and removed, right next to its reference "
          "(forward: base; training step: peft), the order of the pair alternating between rounds. Forward = eval "
          "mode under `no_grad`; training step = train-mode forward, mean-squared loss (+ `aux_loss` for RSR), "
          "backward into the trainable parameters only, no optimizer step",
          "- memory: peak resident set size (`ru_maxrss`) of a fresh child process that builds the model, installs "
          "one configuration and runs one training step (`tracemalloc` does not see torch's allocations; on a GPU "
          "`torch.cuda.max_memory_allocated` would be the measure)",
          "- ideal overheads: multiply-adds of the variant's extra work / those of the base forward "
          "(`benchmarks/flops.py`). The field formula counts T x L x N D (4 D + 6 r + M + 2 (N + N_text)): base "
          "Q/K/V and output projection at every latent step; the code (Algorithm 1) applies them once, so the "
          "exact count is T (6 r + M) N D per layer plus (T - 1) extra attentions 2 (N + N_text)^2 D.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(md + verdicts(numbers) + sections).rstrip() + "\n")
