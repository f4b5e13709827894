"""The decisive reproduction's verdicts, report and answer: pairing with the base, claims with Holm, the plots."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import compositional_answer as answers  # noqa: E402
from benchmarks import compositional_report as report  # noqa: E402
from benchmarks import compositional_verdicts as verdicts  # noqa: E402
from benchmarks.reproduce_compositional import DESIGN  # noqa: E402
from benchmarks.reproduction_claims import Claim  # noqa: E402
from benchmarks.stats import Comparison  # noqa: E402

TAGS = report.TAGS
PROMPTS = 12  # per tag
SAMPLES = 4


def _result(seed: int, rate: float, steps: int = 10) -> dict:
    """A cached (row, seed) with held-out verdicts drawn at ``rate`` (per-seed noise) and training prompts."""
    rng = np.random.default_rng(1000 * seed + int(1000 * rate))
    drawn = [{"prompt_index": t * PROMPTS + p, "sample_index": k, "tag": tag, "correct": bool(rng.random() < rate)}
                for t, tag in enumerate(TAGS) for p in range(PROMPTS) for k in range(SAMPLES)]
    scores = {tag: float(np.mean([v["correct"] for v in drawn if v["tag"] == tag])) for tag in TAGS}
    train = [(tag, f"{tag} prompt {i % 5}", bool(rng.random() < rate)) for tag in TAGS for i in range(20)]
    return {"seed": seed, "train_steps": steps, "train_seconds": 1.0, "train_cpu_seconds": 0.5 * steps,
            "train_steps_timed": steps, "trainable_params": 10,
            "geneval": {"verdicts": drawn, "scores": {**scores, "overall": float(np.mean(list(scores.values())))},
                        "sample_seconds": 2.0, "sample_cpu_seconds": 1.0 + rate, "latent_steps": None},
            "train_prompts": {"tags": [t for t, _, _ in train], "prompts": [p for _, p, _ in train],
                              "correct": [c for _, _, c in train]}}


def test_the_base_pairs_with_every_seed_and_training_prompts_keep_the_four_tags():
    base = [_result(0, 0.3, steps=0)]
    sft = [_result(s, 0.6) for s in range(3)]
    comparison, seeds = verdicts.paired(sft, base, verdicts.train_prompt_verdicts)
    assert seeds == 3 and comparison.mean > 0.15 and comparison.mean - comparison.half_width > 0
    kept = verdicts.train_prompt_verdicts(sft[0])
    assert {v["tag"] for v in kept} == {"two_object", "counting", "position", "color_attr"} and len(kept) == 80
    assert max(v["sample_index"] for v in kept) == 3  # 20 images of 5 prompts: the repeats are samples
    assert verdicts.paired(base, base) is None
    # two trained rows pair on the seeds both have
    assert verdicts.paired(sft, [_result(s, 0.5) for s in (1, 2, 5)])[1] == 2


def test_claims_get_holm_verdicts_a_forest_plot_and_a_generated_answer(tmp_path):
    results = {"base": [_result(0, 0.3, steps=0)], "A": [_result(s, 0.7) for s in range(5)],
               "B": [_result(s, 0.4) for s in range(5)], "C": [_result(s, 0.41) for s in range(5)],
               "D": [_result(0, 0.9)]}
    claims = [Claim("A beats B", "t2i", "A", "B"), Claim("B beats C", "t2i", "B", "C"),
              Claim("missing", "t2i", "A", "nowhere"), Claim("D beats B", "t2i", "D", "B")]
    lines = verdicts.claim_lines(claims, results)
    assert lines[0]["verdict"] == "supported" and lines[0]["holm"] == "supported" and lines[0]["seeds"] == 5
    assert lines[1]["verdict"] == "not resolved" and lines[2]["comparison"] is None
    # one seed: a 50-point gap gets no verdict, since its interval has no seed-to-seed term
    assert lines[3]["comparison"].mean > 0.4 and lines[3]["verdict"] == lines[3]["holm"] == verdicts.ONE_SEED
    assert report.forest_plot(lines, tmp_path / "forest.png").stat().st_size > 0
    said = "\n".join(answers.answer(lines, results, finished=16, planned=45, budget_choice="By a pilot."))
    assert "16 of 45" in said and "A beats B" in said and "**supported**" in said and "not run yet" in said
    mde = 100 * lines[1]["comparison"].mde
    assert f"an effect of {mde:.1f} points or more" in said
    assert "- D beats B: " in said and "on one seed: **no verdict** until a second seed" in said


def test_the_report_lists_a_command_for_every_row(tmp_path):
    results = {"base": [_result(0, 0.3, steps=0)], "SFT (middle)": [_result(s, 0.5) for s in range(2)]}
    context = {"command": "cmd", "base": "`the-base`", "budget": "budget", "protocol": "v2", "held_out_images": 288,
               "finished": 3, "planned": 45, "budget_choice": "Chosen on training prompts by a pilot."}
    out = tmp_path / "reproduction.md"
    report.write_report(context, DESIGN, [], results, {}, out)
    text = out.read_text()
    assert "| SFT (middle) | - | 2 |" in text and "| base | - | 1 |" in text
    for plan in DESIGN:
        assert f'--rows "{plan.row.name}" --seeds ' + " ".join(map(str, range(plan.seeds))) in text
    assert "the pilot that chose it" in text
    assert "**How the budget was chosen.** Chosen on training prompts by a pilot." in text
    assert "fine-tunes `the-base` on the `compositional` recipe" in text
    earlier = "# v1\n\n## Table 2\n\nrows\n\n## The paper's claims, paired by seed\n\n| claim | MDE |\n\n"
    (tmp_path / "paper_tables_v1.md").write_text(earlier + "## Rerunning one row\n\nnot quoted\n")
    report.write_report(context, DESIGN, [], results, {}, out)
    text = out.read_text()
    assert "### The paper's claims, paired by seed" in text and "| claim | MDE |" in text
    assert "not quoted" not in text and "## Table 2" not in text


def test_the_answer_puts_every_rsr_row_against_lora_in_words_with_its_cost():
    results = {"SFT (middle)": [_result(s, 0.4) for s in range(5)],
               "RSR M=2, T=2 (middle)": [{**_result(s, 0.7), "gate": "recommended", "trainable_params": 60}
                                         for s in range(5)],
               "SFT (three layers)": [_result(s, 0.4) for s in range(2)],
               "RSR M=2, T=2 (three layers), paper gate": [{**_result(s, 0.41), "gate": "paper"} for s in range(2)]}
    table = "\n".join(answers.versus_lora(results))
    beats = next(line for line in table.splitlines() if line.startswith("| RSR M=2, T=2 (middle) |"))
    assert "| recommended |" in beats and "| 5 | beats LoRA by 32.1 points |" in beats
    assert beats.endswith("| 1.00x | 1.21x | 6.0x |")  # train CPU, sample CPU (1.7 s / 1.4 s), 60 / 10 params
    unresolved = next(line for line in table.splitlines() if "three layers), paper gate" in line)
    assert "| paper |" in unresolved and "not resolved yet; only a gain of" in unresolved
    assert "(middle), paper gate" not in table  # a row not run yet has no line
    assert answers.versus_lora({"SFT (middle)": results["SFT (middle)"]}) == []
    one = {"SFT (middle)": results["SFT (middle)"], "RSR M=2, T=2 (middle)": results["RSR M=2, T=2 (middle)"][:1]}
    assert "| 1 | one seed so far: no verdict |" in "\n".join(answers.versus_lora(one))
    close = Comparison(0.001, 0.005, 30.0)
    assert answers.in_words(close, 5).startswith("no difference resolved; a gain of 1.4 points")


def test_the_headline_answers_from_the_holm_verdicts_against_lora_with_the_cost():
    sft = [_result(s, 0.4) for s in range(5)]
    rsr = [{**_result(s, 0.7), "trainable_params": 60} for s in range(5)]
    claims = [Claim("RSR beats SFT (LoRA), middle layer", "t2i", "RSR (middle)", "SFT (middle)"),
              Claim("RSR beats SFT (LoRA), three layers", "t2i", "RSR (three)", "SFT (three layers)"),
              Claim("Recursion helps", "t2i", "RSR (middle)", "SFT-free row")]
    results = {"SFT (middle)": sft, "RSR (middle)": rsr, "SFT (three layers)": sft, "RSR (three)": sft[::-1]}
    said = answers.headline(verdicts.claim_lines(claims, results), results)[0]
    assert said.startswith("**Does RSR (M=2, T=2, recommended gate) beat LoRA here? Yes.** On the middle layer it "
                           "beats LoRA by 32.1 points (")
    assert "; on three layers no difference is resolved (+0.00 ± 0.00 points, 5 seeds" in said
    assert "It takes 1.00x SFT's training CPU time and 1.00-1.21x its sampling CPU time, with 1.00-6.00x" in said
    results["RSR (middle)"] = [_result(s, 0.4) for s in range(5)][::-1]
    assert "beat LoRA here? Not measurably.**" in answers.headline(verdicts.claim_lines(claims, results), results)[0]
    results["SFT (middle)"] = rsr
    said = answers.headline(verdicts.claim_lines(claims, results), results)[0]
    assert "beat LoRA here? No: LoRA is better.** On the middle layer it trails LoRA by 32.1 points" in said
    assert answers.headline(verdicts.claim_lines(claims[2:], results), results) == []


def test_the_headline_names_a_difference_outside_the_claims_as_a_lead_with_both_verdicts():
    sft = [_result(s, 0.4) for s in range(5)]
    claims = [Claim("RSR beats SFT (LoRA), three layers", "t2i", "RSR M=2, T=2 (three layers)", "SFT (three layers)")]
    results = {"SFT (three layers)": sft, "RSR M=2, T=2 (three layers)": sft[::-1]}
    lines = verdicts.claim_lines(claims, results)
    assert answers.headline(lines, results)[0].endswith(
        "The paper gate and M=5, T=5 (the table below, outside the claims) resolve no difference from LoRA.")
    results["RSR M=2, T=2 (three layers), paper gate"] = [_result(s, 0.7) for s in range(3)]
    results["RSR M=5, T=5 (three layers)"] = [_result(s, 0.4) for s in range(2)]  # no difference
    said = answers.headline(lines, results)[0]
    assert ("Outside the planned claims, RSR M=2, T=2 (three layers), paper gate beats LoRA by " in said
            and "3 seeds, p = 0.001; still resolved after Holm over the 2 comparisons outside the claims): a lead "
            "to test as a planned claim on fresh seeds, not a finding." in said and "M=5, T=5 (three" not in said)
    results["base"] = [_result(0, 0.7, steps=0)]  # the lead is level with the base: LoRA lost ground, RSR did not gain
    said = answers.headline(lines, results)[0]
    assert "comparisons outside the claims) and " in said and " points against the base: a lead" in said


def _sampled_folder(root: Path) -> Path:
    """A held-out GenEval folder of 32px images, one per (prompt, first sample), marked complete."""
    for prompt in range(len(TAGS) * PROMPTS):
        folder = root / f"{prompt:05d}"
        (folder / "samples").mkdir(parents=True)
        Image.new("RGB", (32, 32), (prompt, 0, 0)).save(folder / "samples" / "00000.png")
        (folder / "metadata.jsonl").write_text(f'{{"prompt": "a photo of prompt {prompt}"}}')
    (root / "sampled.json").write_text("{}")
    return root


def test_the_sample_grid_leaves_out_a_row_whose_result_is_not_written_yet(tmp_path):
    folders = {name: _sampled_folder(tmp_path / str(i)) for i, name in enumerate(report.GRID_ROWS)}
    results = {"base": [_result(0, 0.3, steps=0)], "SFT (middle)": [_result(1, 0.5), _result(0, 0.5)]}
    path = report.sample_grid(folders, results, tmp_path / "grid.png")  # RSR sampled, its result still pending
    two_rows = np.asarray(Image.open(path)).shape
    results["RSR M=2, T=2 (middle)"] = [_result(0, 0.6)]
    three_rows = np.asarray(Image.open(report.sample_grid(folders, results, path))).shape
    assert three_rows[1] == two_rows[1] and three_rows[0] > two_rows[0]  # same columns, one more row of tiles
    assert report.sample_grid(folders, {"base": results["base"]}, path) is None  # one row is no comparison


def test_cpu_cost_scales_a_resumed_run_and_leaves_out_seeds_timed_on_the_wall_clock_only():
    resumed = {**_result(1, 0.5), "train_cpu_seconds": 2.0, "train_steps_timed": 4}  # 4 of its 10 steps ran here
    assert verdicts.train_cpu_seconds(resumed) == 5.0 and verdicts.train_cpu_seconds(_result(0, 0.3, steps=0)) == 0.0
    wall_only = _result(0, 0.5)
    del wall_only["train_cpu_seconds"], wall_only["train_steps_timed"], wall_only["geneval"]["sample_cpu_seconds"]
    assert verdicts.train_cpu_seconds(wall_only) is None
    assert verdicts.mean_of_recorded([wall_only, resumed], verdicts.train_cpu_seconds) == 5.0
    results = {"base": [_result(0, 0.3, steps=0)], "SFT (middle)": [wall_only, resumed],
               "SFT (three layers)": [wall_only]}
    table = "\n".join(report.cost_table(DESIGN, results))
    assert "| 5 | 2 | 1.15x | 1 | 2 |" in table  # train CPU (resumed seed only), sample CPU 1.5 / 1.3, wall
    assert "| - | - | - | 1 | 2 |" in table  # no seed recorded CPU time
