"""The decisive reproduction's pilot and driver: paired intervals, the budget ladder, jobs, switch points."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import compositional_verdicts, finetune_pilot, reproduce_compositional, shapes_rows  # noqa: E402
from benchmarks.reproduce_compositional import DESIGN, Plan, config_key, jobs  # noqa: E402
from benchmarks.shapes_rows import Budget, Row, claimed, finetuned  # noqa: E402

from thinkpix.shapes import ShapesTextToImagePipeline  # noqa: E402
from thinkpix.shapes.dataset import make_dataset  # noqa: E402
from thinkpix.shapes.recipes import COMPOSITIONAL_TAGS  # noqa: E402
from thinkpix.train import config as train_config  # noqa: E402


def _tiny_base(tmp_path: Path, trained: bool = False) -> Path:
    """A 2-layer text-to-image pipeline saved under ``tmp_path / "base"``; ``trained``: weights moved off their
    initialisation (a fresh model's zero-initialised output layer passes no gradient to an adapter)."""
    pipe = ShapesTextToImagePipeline.from_scratch("mmdit-s", seed=0, width=32, head_dim=16, num_layers=2)
    if trained:
        torch.manual_seed(0)
        with torch.no_grad():
            for param in pipe.transformer.parameters():
                param.add_(0.05 * torch.randn_like(param))
    pipe.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def _small_pilot_images(monkeypatch) -> None:
    """Two training-prompt images a tag, sampled in 2 steps."""
    monkeypatch.setattr(finetune_pilot, "IMAGES_PER_TAG", {tag: 2 for tag in finetune_pilot.IMAGES_PER_TAG})
    monkeypatch.setattr(finetune_pilot, "SAMPLE_STEPS", 2)


def _design(prompts_per_tag: int = 12, repeats: int = 2):
    tags = [t for t in COMPOSITIONAL_TAGS for _ in range(prompts_per_tag * repeats)]
    prompts = [f"{t}-{i // repeats}" for t in COMPOSITIONAL_TAGS for i in range(prompts_per_tag * repeats)]
    return tags, prompts


def test_pilot_records_balance_tags_from_training_prompts_only():
    from thinkpix.shapes.prompts import training_metadata

    records = finetune_pilot.pilot_records()
    training = {m["prompt"] for m in training_metadata()}
    assert all(r["prompt"] in training for r in records)
    for tag, count in finetune_pilot.IMAGES_PER_TAG.items():
        assert sum(r["tag"] == tag for r in records) == count


def test_paired_interval_is_exact_on_a_constant_shift_and_covers_a_known_difference():
    tags, prompts = _design()
    point, low, high = finetune_pilot.paired_interval(np.full(len(tags), 0.25), tags, prompts, reps=200)
    assert point == pytest.approx(0.25) and low == pytest.approx(0.25) and high == pytest.approx(0.25)
    # per-prompt success rates vary; the model gains 10 points on every prompt: the interval covers +0.10
    rng = np.random.default_rng(1)
    covered, widths = 0, []
    for _ in range(40):
        rate = np.repeat(rng.uniform(0.1, 0.7, len(tags) // 2), 2)
        base = rng.random(len(tags)) < rate
        tuned = rng.random(len(tags)) < rate + 0.10
        point, low, high = finetune_pilot.paired_interval(tuned.astype(float) - base, tags, prompts, reps=300,
                                                          seed=int(rng.integers(1 << 30)))
        covered += low <= 0.10 <= high
        widths.append(high - low)
    assert covered >= 32  # 95% nominal; 40 draws
    assert 0.05 < np.median(widths) < 0.4


def test_a_budget_ladder_resumed_equals_one_run(tmp_path):
    _tiny_base(tmp_path, trained=True)
    data = make_dataset(tmp_path / "data", n=16, seed=0, recipe="compositional")
    row = Row("sft", "sft", {"rank": 2})
    finetuned(str(tmp_path / "base"), data, row, 0, 2, 4, tmp_path / "ladder", resume=True)
    _, cost = finetuned(str(tmp_path / "base"), data, row, 0, 4, 4, tmp_path / "ladder", resume=True)
    finetuned(str(tmp_path / "base"), data, row, 0, 4, 4, tmp_path / "once")
    assert cost["train_steps"] == 4
    ladder = load_file(tmp_path / "ladder" / "rsr" / "rsr_weights.safetensors")
    once = load_file(tmp_path / "once" / "rsr" / "rsr_weights.safetensors")
    assert ladder.keys() == once.keys() and all(torch.equal(ladder[k], once[k]) for k in once)
    two = finetuned(str(tmp_path / "base"), data, row, 0, 2, 4, tmp_path / "two")
    assert two[1]["train_steps"] == 2
    after_two = load_file(tmp_path / "two" / "rsr" / "rsr_weights.safetensors")
    assert any(not torch.equal(after_two[k], once[k]) for k in once)  # the ladder really trained on


def test_jobs_fill_central_rows_to_five_seeds_then_the_others_then_the_middle_rows_extra_seeds(monkeypatch):
    monkeypatch.setattr(reproduce_compositional, "RECOMMENDED_PRESET", None)
    everything = jobs(DESIGN, None, None, False)
    central, middle = reproduce_compositional.CENTRAL, reproduce_compositional.MIDDLE
    assert len(everything) == sum(p.seeds for p in DESIGN) == 1 + 5 * middle + 2 * central + 3 * 3 == 60
    first = [job for job in everything if job[0].seeds >= central and job[1] < central]
    others = [job for job in everything if job[0].seeds < central]
    extra = [job for job in everything if job[1] >= central]
    assert everything == first + others + extra and len(first) == 7 * 5  # the acceptance's rows fill first
    assert {p.row.name for p, _ in extra} == {p.row.name for p in DESIGN if "middle" in p.row.name
                                              and p.seeds == middle} and len(extra) == 5 * 3
    for group in (first, others, extra):
        assert [s for _, s in group] == sorted(s for _, s in group)  # seed-major: balanced when stopped
    ready = jobs(DESIGN, None, None, True)
    assert {p.gate for p, _ in ready} == {None, "paper"} and len(ready) == 1 + 2 * middle + central + 2 * 3
    assert [p.row.name for p, _ in ready].count("base") == 1
    waiting = next(p for p in DESIGN if p.gate == "recommended")
    with pytest.raises(ValueError, match="RECOMMENDED_PRESET"):
        waiting.resolved()
    assert [s for _, s in jobs(DESIGN, [3], ["SFT (middle)"], False)] == [3]


def test_the_cpu_signature_names_the_kernels_and_the_variables_that_override_them(monkeypatch):
    for name in shapes_rows.ISA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    plain = shapes_rows.cpu_signature()
    assert plain["capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(plain) - {"machine"} == {"capability", "processor"}  # machine: only where torch's differs
    # a capability forced below the machine's (ATEN_CPU_CAPABILITY, read when torch starts) keeps the machine's
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    forced = shapes_rows.cpu_signature()
    assert forced["machine"] in shapes_rows.CAPABILITY_FLAGS  # every x86-64 machine these tests run on has AVX2
    assert reproduce_compositional.describe_cpu(forced) == f"DEFAULT kernels on {forced['processor']}, an " \
        f"{forced['machine']} machine"
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    assert shapes_rows.cpu_signature()["MKL_ENABLE_INSTRUCTIONS"] == "AVX2"
    assert reproduce_compositional.describe_cpu(shapes_rows.cpu_signature()).endswith("(MKL_ENABLE_INSTRUCTIONS=AVX2)")
    assert reproduce_compositional.describe_cpu(None) == "an unrecorded CPU"
    assert reproduce_compositional.describe_cpu({"capability": "AVX2", "processor": "AMD EPYC"}) == (
        "AVX2 kernels on AMD EPYC")


def test_config_key_follows_the_resolved_preset(monkeypatch):
    budget = Budget(train_images=8, finetune_steps=10, batch_size=4)
    routed = replace(train_config.PRESETS["shapes"], gumbel_tau=1.0)
    monkeypatch.setitem(train_config.PRESETS, "shapes-routed", routed)
    monkeypatch.setattr(reproduce_compositional, "RECOMMENDED_PRESET", "shapes-routed")
    plan = Plan(Row("RSR", "rsr", {"layers": "middle"}), 3, "recommended")
    paper = Plan(Row("RSR", "rsr", {"layers": "middle"}), 3, "paper")
    assert plan.ready() and plan.resolved().preset == "shapes-routed"
    assert config_key(plan.resolved(), budget) != config_key(paper.resolved(), budget)
    # the same resolved config through another preset name is the same row
    three = Row("RSR", "rsr", {"layers": "middle"}, "shapes-three")
    assert config_key(three, budget) == config_key(paper.resolved(), budget)


def test_every_committed_row_is_found_under_todays_config_keys():
    """A new knob in TrainConfig changes every config key, and the committed rows would be trained again:
    result-neutral knobs go into ``RESULT_NEUTRAL`` instead."""
    rows_dir = Path(__file__).resolve().parents[1] / "docs/results/compositional_rows"
    expected = {reproduce_compositional.row_path(rows_dir, plan, 0, reproduce_compositional.DECISIVE).parent
                for plan in DESIGN if plan.ready()}
    design = next(iter(expected)).parent
    committed = {folder for folder in design.iterdir() if folder.is_dir()}
    assert committed and committed <= expected, sorted(p.name for p in committed - expected)


def test_the_driver_runs_caches_and_resumes_rows_on_a_tiny_base(tmp_path, monkeypatch):
    _tiny_base(tmp_path)
    monkeypatch.setattr(reproduce_compositional, "BASE", str(tmp_path / "base"))
    monkeypatch.setattr(reproduce_compositional, "PROTOCOL", "v1")  # 172 images; v2 (1120) below
    monkeypatch.setattr(reproduce_compositional, "DECISIVE", Budget(train_images=16, finetune_steps=2, batch_size=4,
                                                                    samples=1, sample_steps=2))
    _small_pilot_images(monkeypatch)
    args = ["--rows", "base", "SFT (middle)", "--seeds", "0", "--work", str(tmp_path / "work"), "--rows-dir",
            str(tmp_path / "rows"), "--out", str(tmp_path / "report.md")]
    assert reproduce_compositional.main(args) == 0
    cached_rows = sorted((tmp_path / "rows").rglob("seed0.json"))
    assert len(cached_rows) == 2
    stamps = [p.stat().st_mtime_ns for p in cached_rows]
    assert reproduce_compositional.main(args) == 0  # a rerun trains and samples nothing
    assert [p.stat().st_mtime_ns for p in cached_rows] == stamps
    result = json.loads(next(p for p in cached_rows if "sft-middle" in str(p)).read_text())
    assert result["train_steps"] == 2 and result["protocol"] == reproduce_compositional.PROTOCOL
    assert result["train_steps_timed"] == 2 and result["train_cpu_seconds"] > 0  # CPU time: immune to other jobs
    assert result["geneval"]["sample_cpu_seconds"] > 0 and result["train_prompts"]["sample_cpu_seconds"] > 0
    found = result["geneval"]["verdicts"]
    assert len(found) == 172 and {v["tag"] for v in found} == set(finetune_pilot.IMAGES_PER_TAG)
    assert np.mean([v["correct"] for v in found if v["tag"] == "colors"]) == result["geneval"]["scores"]["colors"]
    assert len(result["train_prompts"]["correct"]) == 12
    report = (tmp_path / "report.md").read_text()
    assert "| SFT (middle) | - |" in report and "| base | - |" in report
    # each cached row is reproduced from nothing (CPU runs are deterministic), and a changed cache is caught
    sft_only = [*args[:1], "SFT (middle)", *args[3:], "--verify"]
    assert reproduce_compositional.main(sft_only) == 0
    recomputed = list((tmp_path / "work" / "verify").rglob("seed0"))
    assert len(recomputed) == 1 and recomputed[0].parent.name.startswith("sft-middle-")
    tampered = next(p for p in cached_rows if "sft-middle" in str(p))
    changed = json.loads(tampered.read_text())
    changed["geneval"]["verdicts"][0]["correct"] = not changed["geneval"]["verdicts"][0]["correct"]
    tampered.write_text(json.dumps(changed))
    record = tampered.with_name("verified-seed0.json")
    assert json.loads(record.read_text())[-1]["reproduced"]
    cpu = torch.backends.cpu.get_cpu_capability()
    assert json.loads(record.read_text())[-1]["cpu"]["capability"] == result["cpu"]["capability"] == cpu
    assert reproduce_compositional.main(sft_only) == 1
    assert json.loads(record.read_text())[-1]["differing_images"] == {"geneval": 1, "train_prompts": 0}
    tampered.write_text(json.dumps(result))
    assert reproduce_compositional.main(sft_only) == 0
    assert reproduce_compositional.main([*args, "--report-only"]) == 0
    kernels = f"{cpu} kernels on {result['cpu']['processor']}"
    assert (f"- SFT (middle), seed 0: all 172 held-out and 12 training-prompt verdicts reproduced (recomputed on "
            f"{kernels}, cached from {kernels})") in (tmp_path / "report.md").read_text()
    checked = next(line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("Rows with"))
    assert checked.startswith("Rows with a job reproduced verdict for verdict: 1 of ") and "not yet: base, " in checked
    assert "SFT (middle)" not in checked
    status = next(line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("**Status"))
    assert "Not finished yet: SFT (middle), seeds 1, 2, 3, 4, 5, 6, 7; SFT (three layers), seeds 0, 1, 2, 3, 4; " in (
        status) and "base" not in status
    assert "- SFT (middle), seed 0: differs in 1 of 172 held-out and 0 of 12 training-prompt verdicts" in (
        tmp_path / "report.md").read_text()  # every verification is kept
    assert len(json.loads(record.read_text())) == 3
    # another protocol: new result files, the trained adapters are re-scored, not trained again
    state = next((tmp_path / "work").rglob("sft-middle-*/seed0/train/checkpoints/checkpoint-2/state.json"))
    trained_at = state.stat().st_mtime_ns
    monkeypatch.setattr(reproduce_compositional, "PROTOCOL", "v2")
    assert reproduce_compositional.main(args) == 0
    assert state.stat().st_mtime_ns == trained_at
    rescored = [p for p in (tmp_path / "rows").rglob("seed0.json") if "v2" in str(p)]
    assert len(rescored) == 2
    again = json.loads(next(p for p in rescored if "sft-middle" in str(p)).read_text())
    assert again["train_seconds"] == result["train_seconds"] and again["protocol"] == "v2"
    # a new detector version re-scores the saved images: nothing is loaded, trained or sampled
    def no_model(*args, **kwargs):
        raise AssertionError("a re-score must not load a model")

    monkeypatch.setattr(reproduce_compositional, "finetuned", no_model)
    monkeypatch.setattr(reproduce_compositional, "DETECTOR_VERSION", "test")
    assert reproduce_compositional.main(args) == 0
    rescored = json.loads(next((tmp_path / "rows").rglob("*v2-dtest/sft-middle*/seed0.json")).read_text())
    assert rescored["detector"] == "test" and rescored["geneval"]["verdicts"] == again["geneval"]["verdicts"]
    assert rescored["geneval"]["sample_seconds"] == again["geneval"]["sample_seconds"]


def test_the_pilot_climbs_its_ladder_once_and_reports_every_cached_rung(tmp_path, monkeypatch):
    _tiny_base(tmp_path)
    monkeypatch.setattr(finetune_pilot, "BASE", str(tmp_path / "base"))
    monkeypatch.setattr(finetune_pilot, "TRAIN_IMAGES", 16)
    monkeypatch.setattr(finetune_pilot, "BATCH_SIZE", 4)
    _small_pilot_images(monkeypatch)
    args = ["--seeds", "0", "--ladder", "1", "2", "--work", str(tmp_path / "work"), "--rows-dir",
            str(tmp_path / "rows"), "--out", str(tmp_path / "pilot.md")]
    assert finetune_pilot.main(args) == 0
    cached_rungs = sorted((tmp_path / "rows").rglob("seed0-step*.json"))
    assert [p.name for p in cached_rungs] == ["seed0-step1.json", "seed0-step2.json"]
    second = json.loads(cached_rungs[1].read_text())
    assert second["train_steps"] == 2 and len(second["correct"]) == 12
    report = (tmp_path / "pilot.md").read_text()
    assert "--seeds 0 --ladder 1 2" in report
    assert "| SFT (middle) | 1 |" in report and "| SFT (middle) | 2 |" in report
    assert "`compositional` 0; `objects` 0." in report
    stamps = [p.stat().st_mtime_ns for p in cached_rungs]
    assert finetune_pilot.main(args) == 0  # a rerun trains and samples nothing
    assert [p.stat().st_mtime_ns for p in cached_rungs] == stamps


def test_the_budget_rule_needs_a_gain_and_a_floor():
    def rung(steps, gain, low, compositional, seeds=2, name="SFT (middle)"):
        return {"name": name, "steps": steps, "seeds": seeds, "difference": gain, "interval": [low, gain + 0.02],
                "compositional": compositional}

    choose = finetune_pilot.chosen_budget
    assert choose([rung(250, 0.05, 0.01, 0.30), rung(1000, 0.06, 0.02, 0.31), rung(2000, 0.02, -0.01, 0.27)])[0] == 250
    assert choose([rung(250, 0.01, -0.01, 0.30), rung(1000, 0.06, 0.02, 0.31)])[0] == 1000  # 250 is 5 points behind
    assert choose([rung(250, 0.03, -0.01, 0.30)]) == (None, "the best rung (250 steps) does not beat the base: its "
                                                            "interval includes zero")
    steps, reason = choose([rung(250, 0.008, 0.0001, 0.008), rung(1000, 0.016, 0.005, 0.016)])  # the objects base
    assert steps is None and "floor of 10% compositional (at most 1.6%)" in reason
    assert choose([rung(1000, 0.06, 0.02, 0.31, seeds=1), rung(1000, 0.06, 0.02, 0.31, name="other")])[0] is None


def test_the_plan_measures_each_kind_of_row_once_and_sums_hours(tmp_path, monkeypatch, capsys):
    from benchmarks import compositional_plan

    _tiny_base(tmp_path)
    monkeypatch.setattr(compositional_plan, "STEPS", 2)
    monkeypatch.setattr(compositional_plan, "IMAGES", 4)
    rsr = Row("RSR", "rsr", {"num_experts": 2, "latent_steps": 2, "rank": 2})
    design = [Plan(Row("base", "base"), 1, None), Plan(rsr, 5, "recommended"),
              Plan(Row("RSR, paper gate", "rsr", rsr.fields), 3, "paper")]  # same kind as the recommended row
    budget = Budget(train_images=8, finetune_steps=100, batch_size=4, sample_steps=2)
    args = (design, budget, "v1x4", 344, tmp_path / "work", tmp_path / "rows", str(tmp_path / "base"))
    assert compositional_plan.print_plan(*args) == 0
    measured = json.loads(next((tmp_path / "rows").glob("cost-*.json")).read_text())
    assert len(measured) == 2  # base and one RSR kind
    rsr_cost = measured[compositional_plan.kind(rsr)]
    assert rsr_cost["seconds_per_step"] > 0 and rsr_cost["seconds_per_image"] > 0
    table = (tmp_path / "rows" / "plan-344.md").read_text()
    per_seed = 100 * rsr_cost["seconds_per_step"] + (344 + 240) * rsr_cost["seconds_per_image"]
    assert f"| RSR | recommended | 5 | {rsr_cost['seconds_per_step']:.2f} |" in table
    assert f"{per_seed * 5 / 3600:.2f}" in table
    assert "| base |" in capsys.readouterr().out


def test_claims_use_paired_per_image_verdicts_with_mde_and_holm():
    from benchmarks.reproduction_claims import Claim

    rng = np.random.default_rng(0)

    def row(shift: float) -> list[dict]:
        out = []
        for seed in range(3):
            draw = np.random.default_rng(seed)  # the same images (noise) for both rows of a seed
            verdicts = [{"prompt_index": p, "sample_index": n, "tag": tag,
                         "correct": bool(draw.random() < 0.3 + shift + 0.01 * rng.random())}
                        for p, tag in enumerate(COMPOSITIONAL_TAGS * 10) for n in range(8)]
            out.append({"seed": seed, "geneval": {"verdicts": verdicts}})
        return out

    rows = {"a": row(0.4), "b": row(0.0)}
    claims = [Claim("a beats b", "t2i", "a", "b"), Claim("b beats a", "t2i", "b", "a"),
              Claim("missing", "t2i", "a", "c")]
    found, reverse, missing = compositional_verdicts.claim_lines(claims, rows)
    assert found["verdict"] == found["holm"] == "supported" and found["seeds"] == 3
    assert 100 * found["comparison"].mean > 20 and found["comparison"].mde > 0
    assert reverse["verdict"] == "contradicted" and missing["comparison"] is None


def test_a_claim_is_held_by_one_process_and_dropped_when_it_dies(tmp_path):
    lock = tmp_path / "claims" / "row" / "seed0.lock"
    with claimed(lock) as first, claimed(lock) as second:
        assert first and not second  # another open of the lock (as another process makes) is refused
    with claimed(lock) as again:
        assert again  # released at the end of the block
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(lock)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with claimed(lock) as mine:
            assert not mine
    finally:
        holder.kill()
        holder.wait()
    with claimed(lock) as mine:
        assert mine  # a killed run leaves no stale claim
