"""GenEval layout: generation writes the official layout; scoring a folder of ground-truth renders is ~perfect."""

import json

import numpy as np
from PIL import Image

from thinkpix.cli import main
from thinkpix.eval.geneval import generate_geneval, score_geneval_folder
from thinkpix.shapes import ShapesTextToImagePipeline, evaluation_metadata, render_scene, scene_for_metadata
from thinkpix.train import TrainTarget


def write_ground_truth(folder, records, samples=2, seed=0):
    rng = np.random.default_rng(seed)
    for i, record in enumerate(records):
        (folder / f"{i:05d}" / "samples").mkdir(parents=True)
        (folder / f"{i:05d}" / "metadata.jsonl").write_text(json.dumps(record) + "\n")
        for n in range(samples):
            image = render_scene(scene_for_metadata(record, rng))
            Image.fromarray(image).save(folder / f"{i:05d}" / "samples" / f"{n:05d}.png")


def test_ground_truth_renders_in_the_geneval_layout_score_at_least_99(tmp_path, capsys):
    records = evaluation_metadata()
    write_ground_truth(tmp_path, records)
    scores, results = score_geneval_folder(tmp_path)
    assert len(results) == 2 * len(records)
    assert scores["overall"] >= 0.99
    assert main(["eval", "geneval", str(tmp_path), "--json", str(tmp_path / "s.json")]) == 0
    assert "overall" in capsys.readouterr().out
    assert json.loads((tmp_path / "s.json").read_text())["scores"]["overall"] == scores["overall"]


def test_wrong_images_score_low(tmp_path):
    records = evaluation_metadata()
    write_ground_truth(tmp_path, records)
    shuffled = tmp_path / "shuffled"
    write_ground_truth(shuffled, records[1:] + records[:1])  # every image answers another prompt
    for i, record in enumerate(records):
        (shuffled / f"{i:05d}" / "metadata.jsonl").write_text(json.dumps(record) + "\n")
    assert score_geneval_folder(shuffled)[0]["overall"] < 0.7


def test_generation_writes_the_official_layout(tmp_path):
    pipe = ShapesTextToImagePipeline.from_scratch("mmdit-s", seed=0, width=32, head_dim=16, num_layers=2)
    records = evaluation_metadata()[:3]
    generate_geneval(TrainTarget(pipe), records, tmp_path, samples=2, steps=2, batch_size=4, progress=False)
    for i, record in enumerate(records):
        assert json.loads((tmp_path / f"{i:05d}" / "metadata.jsonl").read_text()) == record
        files = sorted(p.name for p in (tmp_path / f"{i:05d}" / "samples").iterdir())
        assert files == ["00000.png", "00001.png"]
    assert set(score_geneval_folder(tmp_path)[0]) >= {"overall"}


def test_generated_images_record_prompt_seed_and_batch_row(tmp_path):
    pipe = ShapesTextToImagePipeline.from_scratch("mmdit-s", seed=0, width=32, head_dim=16, num_layers=2)
    records = evaluation_metadata()[:3]
    generate_geneval(TrainTarget(pipe), records, tmp_path, samples=2, steps=2, seed=10, batch_size=4, progress=False)
    with Image.open(tmp_path / "00002" / "samples" / "00001.png") as image:  # job 5: the second batch, row 1
        text = image.text
    assert text["prompt"] == records[2]["prompt"]
    assert (text["seed"], text["batch_index"], text["batch_size"]) == ("14", "1", "2")
    assert text["num_inference_steps"] == "2"
