"""Shapes-GenEval protocols: v2 is balanced, keeps the held-out split, and fixes the noise per image."""

import json
from dataclasses import dataclass

import numpy as np
import pytest

from thinkpix.cli import main
from thinkpix.eval.geneval import generate_protocol, score_geneval_images
from thinkpix.shapes import ShapesTextToImagePipeline
from thinkpix.shapes import protocol as protocols
from thinkpix.shapes.metadata import TAGS
from thinkpix.shapes.prompts import HELDOUT_BINDINGS, bindings, evaluation_metadata
from thinkpix.train import TrainTarget


def test_v2_gives_every_tag_at_least_100_images_and_v1_stays_as_it_was():
    v2, v1 = protocols.get_protocol("v2"), protocols.get_protocol("v1")
    assert set(v2.images_per_tag()) == set(TAGS)
    assert min(v2.images_per_tag().values()) >= 100
    assert v2.samples_per_prompt()["color_attr"] == 4  # GenEval's 4 where a tag has many prompts
    assert v1.images_per_tag() == {"single_object": 8, "two_object": 24, "counting": 8, "colors": 16,
                                   "position": 24, "color_attr": 92}
    assert len(v1.jobs()) == 172 and all(job.noise_seed is None for job in v1.jobs())


def test_v2_prompts_are_the_held_out_set():
    records = protocols.get_protocol("v2").records()
    assert records == evaluation_metadata()
    assert all(bindings(meta) <= HELDOUT_BINDINGS for meta in records)


def test_image_seeds_are_fixed_per_prompt_and_sample_and_differ_between_them():
    jobs = protocols.get_protocol("v2").jobs(seed=0)
    assert [j.noise_seed for j in jobs] == [j.noise_seed for j in protocols.get_protocol("v2").jobs(seed=0)]
    assert len({j.noise_seed for j in jobs}) == len(jobs)
    assert jobs[0].noise_seed != protocols.get_protocol("v2").jobs(seed=1)[0].noise_seed
    assert protocols.image_seed(0, "a photo of a circle", 3) == protocols.image_seed(0, "a photo of a circle", 3)


def test_unknown_protocol_names_the_allowed_ones():
    with pytest.raises(ValueError, match="protocol='v3'.*v1, v2"):
        protocols.get_protocol("v3")


@pytest.fixture
def tiny_target():
    return TrainTarget(ShapesTextToImagePipeline.from_scratch("mmdit-s", seed=0, width=32, head_dim=16, num_layers=2))


def test_per_image_seeds_make_an_image_independent_of_its_batch(tiny_target):
    prompts = ["a photo of a circle", "a photo of two squares", "a photo of a red diamond"]
    together = tiny_target.sample(prompts, seed=[11, 12, 13], steps=2)
    alone = tiny_target.sample(prompts[1:2], seed=[12], steps=2)
    np.testing.assert_allclose(together[1], alone[0], atol=1e-5)
    with pytest.raises(ValueError, match="one per image"):
        tiny_target.sample(prompts, seed=[1, 2], steps=2)


@dataclass(frozen=True)
class SmallProtocol(protocols.Protocol):
    def records(self):
        return evaluation_metadata()[:3]


def test_generate_protocol_writes_pairable_images_whatever_the_batch_size(tiny_target, tmp_path, monkeypatch):
    monkeypatch.setitem(protocols.PROTOCOLS, "v2", SmallProtocol("v2", 15, per_image_noise=True))
    generate_protocol(tiny_target, "v2", tmp_path / "a", seed=0, steps=2, batch_size=5, progress=False)
    generate_protocol(tiny_target, "v2", tmp_path / "b", seed=0, steps=2, batch_size=2, progress=False)
    assert json.loads((tmp_path / "a" / "00000" / "metadata.jsonl").read_text()) == evaluation_metadata()[0]
    files = sorted(p.name for p in (tmp_path / "a" / "00000" / "samples").iterdir())
    assert files == [f"{n:05d}.png" for n in range(5)]  # 3 single_object prompts, 15 images: 5 each
    for png in (tmp_path / "a").rglob("*.png"):
        other = tmp_path / "b" / png.relative_to(tmp_path / "a")
        assert png.read_bytes() == other.read_bytes()
    verdicts = score_geneval_images(tmp_path / "a")
    assert {(v["prompt_index"], v["sample_index"]) for v in verdicts} == {(i, n) for i in range(3) for n in range(5)}
    with pytest.raises(SystemExit):
        main(["generate", "geneval", "--model", "shapes-t2i", "--protocol", "v9", "--out", str(tmp_path)])
