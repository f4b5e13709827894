"""Helpers shared by the benchmarks: timing with ``torch.utils.benchmark``, machine facts, allocator settings."""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch.utils.benchmark import Timer

# glibc serves every allocation above its mmap threshold (at most 32 MiB, dynamic) with a fresh mmap and
# unmaps it on free, so each new full-width buffer pays first-touch page faults (about 16 ms for 36 MiB on
# the 2-core machine). These settings keep all memory in the heap instead, which is what a caching
# allocator (CUDA's, or jemalloc/tcmalloc on CPU) gives; they must be set before the process starts.
HEAP_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 36)}
ALLOCATORS = {"default": {}, "heap": HEAP_ENV}


def allocator_name() -> str:
    """The allocator setting of this process: ``"heap"`` when ``HEAP_ENV`` is in the environment."""
    return "heap" if all(os.environ.get(k) == v for k, v in HEAP_ENV.items()) else "default"


def child_env(allocator: str) -> dict[str, str]:
    """Environment for a child process with the given allocator setting."""
    env = {k: v for k, v in os.environ.items() if k not in HEAP_ENV}
    env.update(ALLOCATORS[allocator])
    return env


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK_NOTE = {
    "wall": "wall-clock time (`time.perf_counter`)",
    "cpu": "CPU time of the process (`time.process_time`): with one thread this is the work done, and time "
           "the scheduler gives to other jobs on the shared cores is not counted (it sums the threads with more)",
}


def resolve_clock(clock: str, threads: int) -> str:
    """``auto`` means CPU time with one thread (robust on a shared machine) and wall-clock time otherwise."""
    return ("cpu" if threads == 1 else "wall") if clock == "auto" else clock


def time_runs(fn: Callable[[], object], threads: int, min_run_time: float, clock: str = "wall") -> list[float]:
    """Seconds per call of ``fn``, one value per block of ``Timer.blocked_autorange`` (threads set explicitly)."""
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads, timer=CLOCKS[clock])
    return list(timer.blocked_autorange(min_run_time=min_run_time).times)


def median_ms(times: list[float]) -> float:
    return 1e3 * statistics.median(times)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts(threads: list[int]) -> list[str]:
    """Markdown bullet lines describing the machine and the software."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    return [
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- CPU: {cpu_model()}, {cores} cores visible to the process (shared with other jobs)",
        f"- load average (1/5/15 min) when the report was written: {load}",
        f"- torch {torch.__version__}, Python {platform.python_version()}, {platform.system()} {platform.release()}",
        f"- torch threads: {', '.join(map(str, threads))} (`num_threads` of every `Timer`, `torch.set_num_threads`)",
        "- dtype: float32",
    ]


def command_line() -> str:
    """The command that produced a report, as a shell line from the repository root."""
    return " ".join(shlex.quote(a) for a in ["python", *sys.argv])


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
