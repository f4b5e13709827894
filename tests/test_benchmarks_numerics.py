"""Every benchmarked dispatch path (``benchmarks/paths.py``) computes the dense reference, forward and backward."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.dispatch import estimate_seconds, grad_outputs, group_plan, group_tasks, make_index, parse_args  # noqa: E402
from benchmarks.paths import PATHS, Case, make_case, trainable  # noqa: E402

DIM, RANK, TOKENS = 24, 4, 37
ROUTED = ["sorted", "loop", "grouped_mm", "sorted-v0", "sorted-v1"]


def _case(routing: str, num_experts: int) -> Case:
    g = torch.Generator().manual_seed(num_experts)
    x = torch.randn(TOKENS, DIM, generator=g).requires_grad_()
    return make_case(x, make_index(routing, TOKENS, num_experts, g), num_experts, RANK, seed=3)


def _grads(case: Case, path: str, out, g: torch.Tensor) -> list[torch.Tensor | None]:
    outs = out if isinstance(out, tuple) else (out,)
    return list(torch.autograd.grad(outs, trainable(case, path), grad_outputs(outs, g), allow_unused=True))


@pytest.mark.parametrize("num_experts", [1, 2, 5])
@pytest.mark.parametrize("routing", ["uniform", "skewed", "one-expert"])
@pytest.mark.parametrize("path", ROUTED)
def test_routed_paths_equal_dense(path: str, routing: str, num_experts: int) -> None:
    case = _case(routing, num_experts)
    g = torch.randn(3, TOKENS, DIM, generator=torch.Generator().manual_seed(7))
    ref = PATHS["dense"](case)
    ref_grads = _grads(case, "dense", ref, g)
    out = PATHS[path](case)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for got, want in zip(_grads(case, path, out, g), ref_grads):
        if got.shape == case.w.shape:  # hard dispatch gives the gate only the selected term (Switch-style)
            mask = torch.nn.functional.one_hot(case.idx, num_experts).bool()
            torch.testing.assert_close(got[mask], want[mask], rtol=1e-4, atol=1e-5)
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("path", ["sorted", "sorted-v0", "sorted-v1", "attn-order"])
def test_sorted_variants_match_core_gradients(path: str) -> None:
    case = _case("uniform", 4)
    g = torch.randn(3, TOKENS, DIM, generator=torch.Generator().manual_seed(7))
    want = _grads(case, "sorted", PATHS["sorted"](case), g)
    out = PATHS[path](case)
    if path == "attn-order":  # sorted Q/K/V plus one un-permuted slice; compare after un-permuting
        order = torch.argsort(case.idx, stable=True)
        torch.testing.assert_close(out[1], PATHS["sorted"](case)[0])
        full = torch.empty_like(out[0]).index_copy(1, order, out[0])
        torch.testing.assert_close(full, PATHS["sorted"](case))
        return
    for got, ref in zip(_grads(case, path, out, g), want):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_single_lora_and_peft_are_plain_lora() -> None:
    case = _case("uniform", 1)
    x, r = case.x, RANK
    a, b = case.single_a, case.single_b
    single = PATHS["single"](case)
    for j in range(3):
        torch.testing.assert_close(single[j], x @ a[:, j * r : (j + 1) * r] @ b[j])
    base = case.base(x)
    for proj, out, want_base in zip(("to_q", "to_k", "to_v"), PATHS["peft"](case), base):
        layer = getattr(case.peft, proj)
        lora = layer.lora_B["default"](layer.lora_A["default"](x)) * layer.scaling["default"]
        torch.testing.assert_close(out, want_base + lora, rtol=1e-5, atol=1e-5)
    for got, base_p, delta in zip(PATHS["base+sorted"](case), base, PATHS["sorted"](case)):
        torch.testing.assert_close(got, base_p + delta)


def test_training_log_reads_resumed_runs_and_the_latest_launch_wins(tmp_path):
    import time

    from benchmarks.training_log import read_scalars, windowed_means
    from torch.utils.tensorboard import SummaryWriter

    first = SummaryWriter(str(tmp_path / "run" / "a"))
    for step in range(1, 7):  # killed after step 6; its last checkpoint was step 4
        first.add_scalar("train/loss", 1.0, step)
    first.close()
    time.sleep(1.1)  # event files are ordered by the write time in their names (whole seconds)
    second = SummaryWriter(str(tmp_path / "run" / "b"))
    for step in range(5, 9):
        second.add_scalar("train/loss", 2.0, step)
        second.add_scalar("train/lr", 0.1 * step, step)
    second.close()
    scalars = read_scalars(tmp_path / "run")
    assert scalars["train/loss"] == {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 2.0, 6: 2.0, 7: 2.0, 8: 2.0}
    assert scalars["train/lr"][8] == pytest.approx(0.8)
    assert windowed_means(scalars["train/loss"], [0, 4, 6, 8], window=4) == [None, 1.0, 1.5, 2.0]
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        read_scalars(tmp_path / "empty")
    time.sleep(1.1)
    continued = SummaryWriter(str(tmp_path / "continued"))  # a copied checkpoint resumed in another folder
    continued.add_scalar("train/loss", 3.0, 8)
    continued.add_scalar("train/loss", 3.0, 9)
    continued.close()
    merged = read_scalars([tmp_path / "run", tmp_path / "continued"])["train/loss"]
    assert merged == {**scalars["train/loss"], 8: 3.0, 9: 3.0}


def test_wilson_interval_matches_the_textbook_values():
    from benchmarks.base_quality import wilson

    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)  # (p + z²/2n ± z sqrt(...)) / (1 + z²/n)
    low, high = wilson(0, 20)
    assert low == 0.0 and high == pytest.approx(0.1611, abs=1e-4)
    assert wilson(20, 20)[1] == pytest.approx(1.0)


def test_dispatch_estimate_covers_every_timed_task():
    argv = ["--quick", "--dims", "32", "--tokens", "64", "--rank", "4", "--experts", "1", "2", "--no-profile"]
    args = parse_args(argv + ["--allocators", "default"])
    plans = {r: group_plan(r, args.experts, args.paths) for r in args.routings}
    for routing, plan in plans.items():  # the plan is exactly what is timed
        tasks = group_tasks("forward", 32, 64, routing, args.experts, args.rank, args.paths)
        assert [(p, key) for p, key, _ in plan] == [(p, key) for p, key, _ in tasks]
    floor = sum(map(len, plans.values())) * len(args.modes) * args.rounds * args.min_run_time
    assert estimate_seconds(args) >= floor  # every task-round lasts at least min_run_time
    assert estimate_seconds(parse_args(argv)) >= 2 * floor  # two allocator processes by default
