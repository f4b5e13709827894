"""Generation-quality metrics (ADM evaluator formulas) against independent implementations, the
feature extractors, the .npz format and sharded sampling (1 and 2 processes)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.neighbors import NearestNeighbors
from torchmetrics.image.fid import _compute_fid

from thinkpix.cli import main
from thinkpix.eval.extractors import SHAPES_FEATURES_DIR, extract_features, get_extractor, register_extractor
from thinkpix.eval.fid import (
    evaluate_folders_or_npz,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_score,
    load_images,
    precision_recall,
    save_npz,
)
from thinkpix.eval.sample_npz import sample_npz, shard_batches
from thinkpix.shapes import ShapesClassPipeline, ShapesTextToImagePipeline, render_scene, scene_for_metadata
from thinkpix.shapes.prompts import training_metadata

TINY = dict(width=32, num_layers=2, head_dim=16)


def gaussian_sets(n=400, d=24, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3
    b = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3 + 0.2
    return a, b


# FID


def test_fid_matches_torchmetrics_formula_on_the_same_features():
    a, b = gaussian_sets()
    (mu1, s1), (mu2, s2) = feature_statistics(a), feature_statistics(b)
    theirs = _compute_fid(*(torch.from_numpy(x) for x in (mu1, s1, mu2, s2))).item()
    for method in ("eigh", "sqrtm"):
        ours = frechet_distance(mu1, s1, mu2, s2, method=method)
        assert ours == pytest.approx(theirs, rel=1e-3), method
    # torchmetrics' covariance is the same unbiased (N - 1) estimate
    centred = torch.from_numpy(a) - torch.from_numpy(a).mean(0)
    assert np.allclose((centred.T @ centred / (len(a) - 1)).numpy(), s1)


def test_fid_of_a_set_with_itself_is_zero_and_a_mean_shift_raises_it():
    a, _ = gaussian_sets()
    assert abs(fid_from_features(a, a)) < 1e-6
    shifts = [fid_from_features(a, a + delta) for delta in (0.1, 0.5, 1.0)]
    assert shifts[0] < shifts[1] < shifts[2]
    assert shifts[1] == pytest.approx(0.25 * a.shape[1], rel=1e-6)  # same covariance: FID = |shift|^2


# Inception Score


def direct_inception_score(logits, splits):
    probs = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1).numpy()
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(axis=0)
        kl = [np.sum(p * np.log(p / marginal)) for p in part]
        scores.append(np.exp(np.mean(kl)))
    return np.mean(scores), np.std(scores)


def test_inception_score_matches_the_direct_formula_and_known_values():
    logits = np.random.default_rng(0).normal(scale=3.0, size=(1000, 28))
    assert inception_score(logits) == pytest.approx(direct_inception_score(logits, 10), rel=1e-9)
    confident = np.full((280, 28), -50.0)
    confident[np.arange(280), np.arange(280) % 28] = 50.0  # every class equally often, fully confident
    assert inception_score(confident)[0] == pytest.approx(28.0, rel=1e-6)
    assert inception_score(np.zeros((50, 28)))[0] == pytest.approx(1.0)


# precision / recall


def brute_force_precision_recall(ref, samples, k=3):
    radius = lambda x: NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)[0][:, k]  # self is neighbour 0
    ref_r, sample_r = radius(ref), radius(samples)
    d = np.linalg.norm(samples[:, None] - ref[None], axis=2)  # (samples, ref)
    precision = (d <= ref_r[None, :]).any(axis=1).mean()  # a sample inside some reference ball
    recall = (d <= sample_r[:, None]).any(axis=0).mean()  # a reference point inside some sample ball
    return precision, recall


def test_precision_recall_match_brute_force_nearest_neighbours():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(300, 8))
    samples = rng.normal(size=(250, 8)) * 0.6 + 0.5  # narrower and shifted: precision > recall
    ours = precision_recall(ref, samples)
    assert ours == pytest.approx(brute_force_precision_recall(ref, samples), abs=1e-12)
    assert ours[0] > ours[1]
    assert precision_recall(ref, ref) == (1.0, 1.0)


# extractors and files


def test_inception_extractor_without_weights_gives_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="--extractor-weights"):
        get_extractor("inception")
    with pytest.raises(FileNotFoundError, match="--extractor-weights"):
        get_extractor("inception", weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="unknown feature extractor 'clip'"):
        get_extractor("clip")
    save_npz(tmp_path / "a.npz", np.zeros((4, 32, 32, 3), np.uint8))
    assert main(["eval", "fid", "--ref", str(tmp_path / "a.npz"), "--samples", str(tmp_path / "a.npz"),
                 "--extractor", "inception"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--extractor-weights" in err[0]


def test_npz_round_trip_and_folders(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    path = save_npz(tmp_path / "s.npz", images, labels=np.arange(5))
    with np.load(path) as data:
        assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (5, 32, 32, 3)
    assert np.array_equal(load_images(path), images)
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    assert np.array_equal(load_images(tmp_path), images)
    np.savez(tmp_path / "bad.npz", images=images)
    with pytest.raises(ValueError, match="arr_0"):
        load_images(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="uint8"):
        save_npz(tmp_path / "f.npz", images.astype(np.float32))


def render_set(n, seed):
    rng = np.random.default_rng(seed)
    records = training_metadata()
    return np.stack([render_scene(scene_for_metadata(records[rng.integers(len(records))], rng)) for _ in range(n)])


@pytest.mark.skipif(not (SHAPES_FEATURES_DIR / "model.safetensors").is_file(), reason="shapes extractor not shipped")
def test_shipped_shapes_extractor_separates_real_from_noise(tmp_path, capsys):
    config = json.loads((SHAPES_FEATURES_DIR / "config.json").read_text())
    assert config["test"]["accuracy"] >= 0.95 and config["num_classes"] == 28
    real_a, real_b = render_set(150, 0), render_set(150, 1)
    noise = np.random.default_rng(2).integers(0, 256, real_a.shape, dtype=np.uint8)
    extractor = get_extractor("shapes")
    fa, fb, fn = (extract_features(extractor, x) for x in (real_a, real_b, noise))
    assert fa.pool.shape == (150, 128) and fa.spatial.shape == (150, 7 * 8 * 8) and fa.logits.shape == (150, 28)
    assert fid_from_features(fa.pool, fb.pool) * 5 < fid_from_features(fa.pool, fn.pool)
    save_npz(tmp_path / "a.npz", real_a)
    save_npz(tmp_path / "n.npz", noise)
    assert main(["eval", "fid", "--ref", str(tmp_path / "a.npz"), "--samples", str(tmp_path / "n.npz"),
                 "--json", str(tmp_path / "m.json")]) == 0
    assert "sFID" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["precision"] < 0.1 and metrics["num_samples"] == 150
    assert set(metrics) >= {"fid", "sfid", "inception_score", "precision", "recall"}
    assert metrics["extractor_weights"] == "shipped"


def test_fid_takes_a_retrained_shapes_extractor_folder(tmp_path, capsys):
    """``train-extractor --out DIR`` then ``eval fid --extractor-weights DIR`` (or its model.safetensors): the
    metrics come from those weights, and a folder without an extractor is one error line."""
    from thinkpix.eval.train_extractor import train_extractor

    train_extractor(tmp_path / "mine", per_class=2, test_per_class=1, epochs=1, batch_size=8, log=lambda _: None)
    save_npz(tmp_path / "a.npz", render_set(40, 0))
    save_npz(tmp_path / "b.npz", render_set(40, 1))
    found = {}
    for name, weights in (("shipped", []), ("mine", ["--extractor-weights", str(tmp_path / "mine")]),
                          ("file", ["--extractor-weights", str(tmp_path / "mine" / "model.safetensors")])):
        assert main(["eval", "fid", "--ref", str(tmp_path / "a.npz"), "--samples", str(tmp_path / "b.npz"),
                     "--json", str(tmp_path / f"{name}.json"), *weights]) == 0
        found[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert found["mine"]["fid"] == found["file"]["fid"] != found["shipped"]["fid"]
    assert found["mine"]["extractor_weights"] == str(tmp_path / "mine")
    capsys.readouterr()
    assert main(["eval", "fid", "--ref", str(tmp_path / "a.npz"), "--samples", str(tmp_path / "b.npz"),
                 "--extractor-weights", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--extractor-weights" in err[0] and "train-extractor" in err[0]


def test_registered_extractor_is_used_by_the_evaluation(tmp_path):
    def mean_colour(weights=None, device="cpu"):
        def extract(images):
            x = torch.as_tensor(images).double().flatten(1, 2)  # (N, HW, 3)
            pool = torch.cat([x.mean(1), x.std(1)], 1)
            return pool, pool, pool[:, :3]
        return extract

    register_extractor("mean-colour", mean_colour)
    a = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    save_npz(tmp_path / "a.npz", a)
    metrics = evaluate_folders_or_npz(tmp_path / "a.npz", tmp_path / "a.npz", extractor="mean-colour")
    assert abs(metrics["fid"]) < 1e-6 and metrics["precision"] == metrics["recall"] == 1.0


# sharded sampling


def test_shards_cover_every_index_once():
    for world in (1, 2, 3):
        covered = sorted(i for r in range(world) for batch in shard_batches(11, 2, r, world) for i in batch)
        assert covered == list(range(11))


@pytest.fixture(scope="module")
def class_pipe_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cls") / "pipe"
    pipe = ShapesClassPipeline.from_scratch("dit-s", seed=0, **TINY)
    with torch.no_grad():  # adaLN-Zero predicts 0: jitter so that samples depend on the condition
        g = torch.Generator().manual_seed(1)
        for p in pipe.transformer.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    pipe.save_pretrained(folder)
    return folder


def test_sample_npz_single_process_class_and_text(class_pipe_dir, tmp_path):
    out = sample_npz(class_pipe_dir, 5, tmp_path / "c.npz", batch_size=2, steps=2, progress=False)
    with np.load(out) as data:
        assert data["arr_0"].shape == (5, 32, 32, 3) and data["arr_0"].dtype == np.uint8
        assert data["labels"].shape == (5,) and data["labels"].max() < 28
        first = data["arr_0"]
    assert not (tmp_path / "c.npz.shards").exists()
    again = sample_npz(class_pipe_dir, 5, tmp_path / "c2.npz", batch_size=2, steps=2, seed=0, progress=False)
    assert np.array_equal(load_images(again), first)
    ShapesTextToImagePipeline.from_scratch("mmdit-s", seed=0, **TINY).save_pretrained(tmp_path / "t2i")
    out = sample_npz(tmp_path / "t2i", 3, tmp_path / "t.npz", batch_size=2, steps=1, progress=False)
    with np.load(out) as data:
        assert data["arr_0"].shape == (3, 32, 32, 3) and all(p.startswith("a photo of") for p in data["prompts"])


def test_two_processes_give_the_same_npz_as_one(class_pipe_dir, tmp_path):
    args = ["sample-npz", "--model", str(class_pipe_dir), "--num-samples", "7", "--batch-size", "2",
            "--num-inference-steps", "2", "--seed", "3"]
    assert main([*args, "--out", str(tmp_path / "one.npz")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no",  # torchrun; gloo on CPU
           "-m", "thinkpix.cli", *args, "--out", str(tmp_path / "two.npz")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(tmp_path / "one.npz") as one, np.load(tmp_path / "two.npz") as two:
        assert np.array_equal(one["arr_0"], two["arr_0"]) and np.array_equal(one["labels"], two["labels"])
        assert len(np.unique(one["arr_0"].reshape(7, -1), axis=0)) == 7
