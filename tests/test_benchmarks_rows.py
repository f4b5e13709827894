"""The row runner shared by ``reproduce_tables`` and ``compute_matched``: fine-tune, sample, score, cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.shapes_rows import Budget, Row, cached, finetuned, fingerprint, geneval_row, mean_ci  # noqa: E402

from thinkpix.shapes import ShapesTextToImagePipeline  # noqa: E402
from thinkpix.shapes.dataset import make_dataset  # noqa: E402
from thinkpix.shapes.prompts import evaluation_metadata  # noqa: E402


def test_mean_ci_is_students_t_interval():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.302653 * 1.0 / 3**0.5, rel=1e-5)  # t(0.975, 2) * sd / sqrt(n)
    assert mean_ci([5.0])[0] == 5.0


def test_cached_computes_once_and_leaves_no_partial_file(tmp_path):
    calls = []
    path = tmp_path / "rows" / "r.json"
    assert cached(path, lambda: calls.append(1) or {"x": 1}) == {"x": 1}
    assert cached(path, lambda: calls.append(1) or {"x": 2}) == {"x": 1}
    assert calls == [1] and not list(path.parent.glob("*.tmp"))

    def crash():
        raise RuntimeError("killed mid-row")

    with pytest.raises(RuntimeError):
        cached(tmp_path / "other.json", crash)
    assert not (tmp_path / "other.json").exists()  # a crashed row is redone on the next run


def test_a_row_fine_tunes_samples_and_scores_a_saved_pipeline(tmp_path):
    pipe = ShapesTextToImagePipeline.from_scratch("mmdit-s", seed=0, width=32, head_dim=16, num_layers=2)
    pipe.save_pretrained(tmp_path / "base")
    key = fingerprint(str(tmp_path / "base"))
    assert len(key) == 8 and key == fingerprint(str(tmp_path / "base"))
    pipe.register_to_config(guidance_interval=[0.0, 0.6])  # another sampler: rows must not be shared
    pipe.save_pretrained(tmp_path / "guided")
    assert fingerprint(str(tmp_path / "guided")) != key
    data = make_dataset(tmp_path / "data", n=8, seed=0, variant="caption", split="train")
    budget = Budget(train_images=8, finetune_steps=2, batch_size=4, geneval_prompts=2, samples=1, sample_steps=2)
    row = Row("rsr", "rsr", {"num_experts": 2, "latent_steps": 3, "rank": 2})
    target, cost = finetuned(str(tmp_path / "base"), data, row, 0, 2, 4, tmp_path / "train")
    assert cost["train_steps"] == 2 and cost["trainable_params"] > 0
    result = geneval_row(target, evaluation_metadata()[:2], tmp_path / "geneval", budget, seed=0)
    assert result["images"] == 2 and result["latent_steps"] == 3
    assert 0 <= result["scores"]["overall"] <= 1
    json.dumps(result)  # cacheable
    base, base_cost = finetuned(str(tmp_path / "base"), data, Row("base", "base"), 0, 2, 4, tmp_path / "b")
    assert base_cost["trainable_params"] == 0
    assert geneval_row(base, evaluation_metadata()[:2], tmp_path / "g2", budget, seed=0)["latent_steps"] is None


def test_seed_results_resume_and_report_only(tmp_path):
    from benchmarks.reproduce_tables import seed_results

    calls = []
    compute = lambda s: calls.append(s) or {"seed": s}  # noqa: E731
    assert seed_results(tmp_path, [0, 1], True, compute) == []  # nothing finished, nothing computed
    assert seed_results(tmp_path, [0], False, compute) == [{"seed": 0}]
    assert seed_results(tmp_path, [0, 1, 2], True, compute) == [{"seed": 0}]
    assert seed_results(tmp_path, [0, 1], False, compute) == [{"seed": 0}, {"seed": 1}]
    assert calls == [0, 1]  # seed 0 was not recomputed


def test_claims_are_judged_on_paired_seed_differences():
    from benchmarks.reproduction_claims import Claim, check

    def rows(better, worse):
        return {"t2i": {"a": [{"geneval": {"scores": {"overall": v}}} for v in better],
                        "b": [{"geneval": {"scores": {"overall": v}}} for v in worse]}}

    claim = Claim("a beats b", "t2i", "a", "b")
    # each row alone varies by 20 points over seeds, but a is 2 points above b on every seed
    assert check(claim, rows([0.30, 0.10, 0.50], [0.28, 0.08, 0.48]), 100.0)[0] == "supported"
    assert check(claim, rows([0.28, 0.08, 0.48], [0.30, 0.10, 0.50]), 100.0)[0] == "contradicted"
    assert check(claim, rows([0.30, 0.10, 0.50], [0.28, 0.12, 0.48]), 100.0)[0] == "not resolved"
    lower = Claim("a has lower FD", "class", "a", "b", "fid", lower=True)
    fd = {"class": {"a": [{"metrics": {"fid": v}} for v in (10.0, 20.0, 30.0)],
                    "b": [{"metrics": {"fid": v}} for v in (11.0, 21.2, 31.1)]}}
    assert check(lower, fd, 1.0)[0] == "supported"
    assert check(Claim("x", "dpg", "a", "missing"), {"dpg": {}}, 100.0) == ("not run", "-")


def test_row_folders_are_slugs():
    assert Row("RSR w/o recursion M=2, T=1 (middle)").slug == "rsr-w-o-recursion-m-2-t-1-middle"


def test_a_class_row_fine_tunes_the_shipped_dit_and_measures_fd(tmp_path):
    from benchmarks.reproduce_tables import class_row

    data = make_dataset(tmp_path / "data", n=8, seed=1, variant="class", split="train")
    reference = make_dataset(tmp_path / "reference", n=16, seed=2, variant="class", split="train")
    budget = Budget(train_images=8, finetune_steps=2, batch_size=4, sample_steps=2, class_samples=16)
    row = Row("rsr", "rsr", {"num_experts": 2, "latent_steps": 2, "rank": 2})
    result = class_row(row, 0, budget, tmp_path / "work", data, reference)
    assert result["images"] == 16 and result["train_steps"] == 2
    assert result["metrics"]["fid"] > 0 and 0 <= result["metrics"]["precision"] <= 1
    json.dumps(result)  # cacheable


def test_guidance_interval_sweep_caches_chooses_at_the_protocol_scale_and_ships(tmp_path, monkeypatch):
    from benchmarks import guidance_interval

    from thinkpix.shapes import ShapesClassPipeline

    tiny = dict(width=32, head_dim=16, num_layers=2)
    ShapesTextToImagePipeline.from_scratch("mmdit-s", seed=0, **tiny).save_pretrained(tmp_path / "t2i")
    ShapesClassPipeline.from_scratch("dit-s", seed=0, scheduler="flow", **tiny).save_pretrained(tmp_path / "class")
    monkeypatch.setattr(guidance_interval, "SHIPPED", {"shapes-t2i": tmp_path / "t2i",
                                                       "shapes-class": tmp_path / "class"})
    args = ["--t2i", str(tmp_path / "t2i"), "--class-model", str(tmp_path / "class"), "--highs", "1", "0.5",
            "--scales", "4", "2", "--steps", "2", "--per-class", "1", "--work", str(tmp_path / "work"),
            "--out", str(tmp_path / "gi.md")]
    assert guidance_interval.main(args + ["--ship"]) == 0  # both bases
    results = json.loads((tmp_path / "gi.json").read_text())
    assert set(results["t2i"]) == set(results["class"]) == {"1@4", "1@2", "0.5@4", "0.5@2"}
    for kind in ("t2i", "class"):
        chosen = results["chosen"][kind]
        assert chosen.endswith("@4")  # chosen at the protocol scale only
        assert results[kind][chosen]["selection"] == max(results[kind][k]["selection"] for k in ("1@4", "0.5@4"))
        shipped = json.loads((tmp_path / kind / "model_index.json").read_text())["guidance_interval"]
        assert shipped == (None if chosen == "1@4" else [0.0, 0.5])
    single = results["t2i"]["0.5@4"]["single_object"]
    assert single["images"] == 64 and 0 <= single["empty"] <= 1
    cache = tmp_path / "work" / "t2i" / results["weights"]["t2i"] / "h0.5-g4" / "result.json"  # keyed by weights
    stamp = cache.stat().st_mtime_ns
    assert guidance_interval.main(args) == 0  # a rerun reads every setting from the cache, --ship changed nothing
    assert cache.stat().st_mtime_ns == stamp
