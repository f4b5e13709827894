"""The pilot's loss check: same draws for every model, one row per finished pilot adapter."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import finetune_loss  # noqa: E402
from benchmarks.finetune_pilot import ARMS  # noqa: E402
from benchmarks.shapes_rows import finetuned, fingerprint  # noqa: E402

from thinkpix.pipelines import TrainTarget, load_pipeline  # noqa: E402
from thinkpix.shapes.dataset import make_dataset  # noqa: E402
from thinkpix.train.data import load_image_folder  # noqa: E402


def test_the_loss_table_pairs_the_base_with_every_pilot_adapter(tmp_path, monkeypatch):
    monkeypatch.setattr(finetune_loss, "IMAGES", 8)
    monkeypatch.setattr(finetune_loss, "BATCH", 4)
    monkeypatch.setattr(finetune_loss, "DRAWS", 1)
    monkeypatch.setattr(finetune_loss, "TRAIN_IMAGES", 8)
    work = tmp_path / "work"
    pilot = work / fingerprint(finetune_loss.BASE)  # where the pilot keeps this base's data and adapters
    data = make_dataset(pilot / "data", n=8, seed=0, recipe="compositional")
    arm = ARMS["lr1e-3"]
    finetuned(finetune_loss.BASE, data, arm, 0, 2, 4, pilot / arm.slug / "seed0" / "train")
    base = TrainTarget(load_pipeline(finetune_loss.BASE))
    base.transformer.eval()
    images = load_image_folder(data)
    once, twice = (finetune_loss.mean_loss(base, images, False, seed=0) for _ in range(2))
    assert once == twice  # the same draws every time: differences between models are paired
    assert finetune_loss.mean_loss(base, images, True, seed=0) != once  # the empty prompt is another branch
    out = tmp_path / "loss.md"
    assert finetune_loss.main(["--work", str(work), "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| base", f"| {arm.name}, seed0"]
    assert "%)" not in rows[0] and rows[1].count("%)") == 3
