"""Dispatch paths of the expert bank side by side, in one run (issue 10), written to ``docs/results/dispatch.md``.

    python benchmarks/dispatch.py --quick            # D=1152, N in {256, 2048, 8192}, all M, uniform + one-expert
    python benchmarks/dispatch.py                    # D in {1152, 1536}, N in {256, 2048, 8192}, 3 routings

Each allocator setting (``--allocators``, see ``common.HEAP_ENV``) and thread count runs in its own child
process. Inside a child the paths of one (mode, D, N, routing) group are timed round-robin (``--rounds`` rounds
of ``Timer.blocked_autorange``), so that load from other jobs hits them alike; a time is the minimum over all
blocks (the median is kept too), and ratios compare paths of the same group.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import child_env, command_line, machine_facts, median_ms, resolve_clock, time_runs
from benchmarks.paths import PATHS, ROUTING_FREE, VARIANTS, Case, make_case, trainable
from benchmarks.report import write_report

ROUTINGS = ("uniform", "skewed", "one-expert")


def make_index(routing: str, n: int, num_experts: int, g: torch.Generator) -> torch.Tensor:
    """Routes: uniform; skewed (70% of tokens on expert 0, the rest uniform over the others); one expert."""
    if routing == "uniform" or num_experts == 1:
        return torch.randint(num_experts, (n,), generator=g)
    if routing == "skewed":
        other = torch.randint(1, num_experts, (n,), generator=g)
        return torch.where(torch.rand(n, generator=g) < 0.7, torch.zeros_like(other), other)
    if routing == "one-expert":
        return torch.full((n,), num_experts - 1, dtype=torch.long)
    raise ValueError(f"routing={routing!r} is invalid: allowed values are {ROUTINGS}")


def grad_outputs(outs: tuple[torch.Tensor, ...], grads: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Output gradients: ``grads`` (3, n, D) for a (3, n, D) output, its slices for (n, D) outputs."""
    if len(outs) == 3 and all(o.dim() == 2 for o in outs):
        return tuple(grads[j] for j in range(3))
    return tuple(grads if o.dim() == 3 else grads[0] for o in outs)


def runner(case: Case, path: str, mode: str, grads: torch.Tensor):
    """A zero-argument callable running ``path`` forward (no grad) or forward + backward (input grads too)."""
    fn = PATHS[path]
    if mode == "forward":
        def run() -> None:
            with torch.no_grad():
                fn(case)
        return run
    inputs = trainable(case, path)

    def run_backward() -> None:
        out = fn(case)
        outs = out if isinstance(out, tuple) else (out,)
        torch.autograd.grad(outs, inputs, grad_outputs(outs, grads), allow_unused=True)
    return run_backward


def group_plan(routing: str, ms: list[int], paths: list[str]) -> list[tuple[str, int, int]]:
    """(path, key, M) of every timed task of one group; paths independent of M or of the routing are timed once
    (key 0 for the M-independent ones)."""
    plan, first = [], True
    for m in ms:
        if routing != "uniform" and m == 1:
            continue  # one expert: every routing is the same
        for path in paths:
            if path in ("single", "peft") and not first:
                continue  # independent of M: timed once per group, stored as M=0
            if path in ROUTING_FREE + ("base+sorted",) and path != "single" and routing != "uniform":
                continue
            if path == "base+sorted" and m not in (min(ms), max(ms)):
                continue  # as costly as peft: only at the ends of the M range
            if path in VARIANTS and routing == "one-expert":
                continue  # the same one-expert shortcut as the core
            plan.append((path, 0 if path in ("single", "peft") else m, m))
        first = False
    return plan


def group_tasks(mode: str, dim: int, n: int, routing: str, ms: list[int], rank: int, paths: list[str]):
    """(path, M, callable) for the tasks of ``group_plan``."""
    g = torch.Generator().manual_seed(dim + n)
    x = torch.randn(n, dim, generator=g).requires_grad_()
    grads = torch.randn(3, n, dim, generator=g)
    cases = {m: make_case(x, make_index(routing, n, m, g), m, rank, seed=m)
             for m in ms if routing == "uniform" or m > 1}
    return [(path, key, runner(cases[m], path, mode, grads)) for path, key, m in group_plan(routing, ms, paths)]


def estimate_seconds(args: argparse.Namespace) -> float:
    """Rough wall time of the whole run, printed before it starts. ``blocked_autorange`` sizes its block with one
    call, then times blocks until ``min_run_time`` has passed on the run's clock: a task-round takes one call
    plus max(min_run_time, one call), where CPU-clock seconds last wall/CPU times longer on a loaded machine.
    A call is taken as twice a single-LoRA call of its (mode, D, N), timed here for half a second (wall and CPU);
    the profile runs 4 paths 6 times. It assumes the load of other jobs stays as it is now: a guide, not a promise."""
    torch.set_num_threads(args.threads[0])
    cpu_clock = resolve_clock(args.clock, args.threads[0]) == "cpu"
    total = 0.0
    for mode in args.modes:
        for dim in args.dims:
            for n in args.tokens:
                g = torch.Generator().manual_seed(0)
                x = torch.randn(n, dim, generator=g).requires_grad_()
                run = runner(make_case(x, torch.zeros(n, dtype=torch.long), 1, args.rank), "single", mode,
                             torch.randn(3, n, dim, generator=g))
                run()  # warm-up
                wall, cpu, calls = time.perf_counter(), time.process_time(), 0
                while time.perf_counter() - wall < 0.5 or not calls:  # long enough to see this machine's load
                    run()
                    calls += 1
                wall, cpu = (time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls
                stretch = wall / max(cpu, 1e-9) if cpu_clock else 1.0
                call = 2.0 * wall
                tasks = sum(len(group_plan(r, args.experts, args.paths)) for r in args.routings)
                total += tasks * args.rounds * (call + max(args.min_run_time * stretch, call))
                if args.profile and mode == "forward+backward" and n == max(args.tokens) and dim == args.dims[0]:
                    total += 4 * 6 * call
    return total * len(args.allocators) * len(args.threads)


def run_grid(args: argparse.Namespace) -> dict:
    """Time every group of the grid; returns rows and errors (JSON-ready)."""
    threads = args.threads[0]
    clock = resolve_clock(args.clock, threads)
    torch.set_num_threads(threads)
    rows, errors = [], {}
    for mode in args.modes:
        for dim in args.dims:
            for n in args.tokens:
                for routing in args.routings:
                    tasks = group_tasks(mode, dim, n, routing, args.experts, args.rank, args.paths)
                    times: dict[tuple[str, int], list[float]] = {}
                    for _ in range(args.rounds):
                        for path, m, run in tasks:
                            if path in errors:
                                continue
                            try:
                                ts = time_runs(run, threads, args.min_run_time, clock)
                            except Exception as err:  # e.g. grouped_mm without a kernel for this device/dtype
                                errors[path] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
                                continue
                            times.setdefault((path, m), []).extend(ts)
                    for (path, m), ts in times.items():
                        rows.append(dict(mode=mode, dim=dim, n=n, routing=routing, m=m, path=path,
                                         ms=1e3 * min(ts), median_ms=median_ms(ts), runs=len(ts)))
                    print(f"[dispatch] {mode} D={dim} N={n} {routing}: "
                          + ", ".join(f"{p}/M{m}={1e3 * min(t):.1f}" for (p, m), t in times.items()), flush=True)
    return dict(rows=rows, errors=errors, clock=clock, profile=profile(args) if args.profile else [])


def profile(args: argparse.Namespace) -> list[dict]:
    """Self CPU time per op of the core sorted path, two variants and single LoRA: M = max, uniform, fwd+bwd."""
    dim, n, m = args.dims[0], max(args.tokens), max(args.experts)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=g).requires_grad_()
    case = make_case(x, make_index("uniform", n, m, g), m, args.rank)
    grads = torch.randn(3, n, dim, generator=g)
    tables, iters = [], 5
    for path in ("sorted", "sorted-v0", "sorted-v1", "single"):
        run = runner(case, path, "forward+backward", grads)
        run()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(iters):
                run()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        top = [dict(op=e.key, ms=e.self_cpu_time_total / 1e3 / iters, share=e.self_cpu_time_total / total,
                    calls=e.count // iters) for e in events[:12]]
        tables.append(dict(path=path, dim=dim, n=n, m=m, total_ms=total / 1e3 / iters, top=top))
    return tables


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="reduced grid: D=1152, uniform and one-expert routing")
    p.add_argument("--threads", type=int, nargs="+", default=[2],
                   help="torch threads (Timer num_threads); several values run one worker each")
    p.add_argument("--clock", choices=("auto", "wall", "cpu"), default="auto",
                   help="Timer clock; auto: process CPU time with 1 thread, wall-clock time otherwise")
    p.add_argument("--rank", type=int, default=128)
    p.add_argument("--dims", type=int, nargs="+", default=None)
    p.add_argument("--tokens", type=int, nargs="+", default=None,
                   help="default: 256 (one DiT-XL/2 sample), 2048, 8192; the target is judged on 2048 and 8192")
    p.add_argument("--experts", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--routings", nargs="+", choices=ROUTINGS, default=None)
    p.add_argument("--modes", nargs="+", choices=("forward", "forward+backward"),
                   default=["forward", "forward+backward"])
    p.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS))
    p.add_argument("--rounds", type=int, default=None,
                   help="round-robin rounds per group (default 4 with --quick, else 6)")
    p.add_argument("--min-run-time", type=float, default=None,
                   help="seconds per blocked_autorange (default 0.1 with --quick, else 0.5)")
    p.add_argument("--allocators", nargs="+", choices=("default", "heap"), default=["default", "heap"])
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the per-op profile")
    p.add_argument("--out", type=Path, default=Path("docs/results/dispatch.md"))
    p.add_argument("--note", default="", help="a paragraph added to the report (e.g. why these settings)")
    p.add_argument("--save-json", type=Path, default=None, help="also save the raw results to this file")
    p.add_argument("--from-json", type=Path, default=None, help="rewrite the report from saved results, no timing")
    p.add_argument("--worker-json", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.dims = args.dims or ([1152] if args.quick else [1152, 1536])
    args.tokens = args.tokens or [256, 2048, 8192]
    args.routings = args.routings or (["uniform", "one-expert"] if args.quick else list(ROUTINGS))
    # The full grid is run for verdicts: 3 rounds of 0.1 s blocks (one or two calls each) flipped verdicts on
    # noise on the shared 2-core machine, 6 rounds of 0.5 s did not (dispatch_target.md). --quick stays short.
    args.rounds = args.rounds or (4 if args.quick else 6)
    args.min_run_time = args.min_run_time or (0.1 if args.quick else 0.5)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker_json is not None:
        args.worker_json.write_text(json.dumps(run_grid(args)))
        return
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        out, note = args.out, args.note
        args = argparse.Namespace(**{**saved["args"], "out": out, "note": note or saved["args"].get("note", "")})
        results, command, facts = saved["results"], saved["command"], saved["facts"]
    else:
        results = {}
        user_args = argv if argv is not None else sys.argv[1:]
        started = time.perf_counter()
        hint = "; `--allocators default` halves it" if len(args.allocators) > 1 else ""
        print(f"[dispatch] estimated {estimate_seconds(args) / 60:.1f} min on this machine as loaded now "
              f"({len(args.allocators)} allocator(s) x {len(args.threads)} thread count(s){hint})", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            for allocator in args.allocators:
                for threads in args.threads:
                    out = Path(tmp) / f"{allocator}-{threads}.json"
                    worker = [sys.executable, str(Path(__file__).resolve()), *user_args,
                              "--threads", str(threads), "--worker-json", str(out)]
                    print(f"[dispatch] allocator={allocator} threads={threads}", flush=True)
                    subprocess.run(worker, env=child_env(allocator), check=True)
                    results[f"allocator `{allocator}`, {threads} thread(s)"] = json.loads(out.read_text())
        print(f"[dispatch] timed in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
        command, facts = command_line(), machine_facts(args.threads)
        if args.save_json is not None:
            plain = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
            args.save_json.write_text(json.dumps(dict(args=plain, results=results, command=command, facts=facts)))
    write_report(args, results, command, facts, VARIANTS)
    errors = {k: v for r in results.values() for k, v in r["errors"].items()}
    print(f"[dispatch] wrote {args.out}" + "".join(f"; {k}: n/a ({v})" for k, v in errors.items()))


if __name__ == "__main__":
    main()
