"""Dataset export: caption folder with metadata.jsonl and class folders."""

import json

import numpy as np
import pytest
from PIL import Image

from thinkpix.shapes import make_dataset
from thinkpix.shapes.dataset import class_names, main
from thinkpix.shapes.text import validate_prompt


def test_caption_variant_is_an_imagefolder(tmp_path):
    out = make_dataset(tmp_path / "train", n=12, seed=0, image_size=64)
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [line["file_name"] for line in lines] == [f"{i:05d}.png" for i in range(12)]
    for line in lines:
        assert set(line) == {"file_name", "text"}
        validate_prompt(line["text"])
        image = np.asarray(Image.open(out / line["file_name"]))
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    again = make_dataset(tmp_path / "again", n=12, seed=0, image_size=64)
    assert (again / "metadata.jsonl").read_text() == (out / "metadata.jsonl").read_text()
    assert (again / "00003.png").read_bytes() == (out / "00003.png").read_bytes()


def test_class_variant_and_main(tmp_path):
    assert main([str(tmp_path / "cls"), "--n", "25", "--variant", "class", "--split", "eval"]) == 0
    folders = sorted(p.name for p in (tmp_path / "cls").iterdir())
    assert folders == sorted(class_names("eval"))
    assert not set(class_names("eval")) & set(class_names("train"))
    assert sum(len(list(p.iterdir())) for p in (tmp_path / "cls").iterdir()) == 25


def test_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match=r"variant='video' .*allowed values: caption, class"):
        make_dataset(tmp_path, n=1, seed=0, variant="video")
    with pytest.raises(ValueError, match=r"n=0 must be a positive int"):
        make_dataset(tmp_path, n=0, seed=0)


def test_rewriting_a_set_never_exposes_a_partial_file(tmp_path, monkeypatch):
    """Two benchmark processes may write the same deterministic set into one folder while a third reads it:
    every file appears whole (written beside it, then renamed), and no temporary file is left."""
    from thinkpix.shapes import dataset

    out = make_dataset(tmp_path / "set", n=6, seed=0)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    seen = []
    real_replace = dataset.os.replace

    def replace(src, dst):  # at each rename the target is still the complete old file
        seen.append(Image.open(dst).size if str(dst).endswith(".png") else None)
        real_replace(src, dst)

    monkeypatch.setattr(dataset.os, "replace", replace)
    make_dataset(out, n=6, seed=0)
    assert seen.count((32, 32)) == 6
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
