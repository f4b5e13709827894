"""Train the ``shapes`` feature extractor (:class:`~thinkpix.eval.extractors.ShapesFeatureNet`).

Data: the Shapes class dataset (``thinkpix shapes make-dataset --variant class``), both splits so
that all 28 (colour, shape) classes of :data:`~thinkpix.shapes.models.CLASS_NAMES` are present
(the train split holds 20 of them, the eval split the 8 held-out pairs). A second pair of datasets
with another seed is the held-out test set. Output: ``model.safetensors`` + ``config.json`` (with
the test accuracy) in ``out``; a few minutes on one CPU thread with the defaults.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..shapes.dataset import class_names, make_dataset
from ..shapes.models import CLASS_NAMES
from .extractors import CONFIG_NAME, WEIGHTS_NAME, ShapesFeatureNet, to_model_input


def load_class_folder(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, H, W, 3) images and CLASS_NAMES ids of a ``<colour>_<shape>/*.png`` folder."""
    images, labels = [], []
    for class_dir in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        if class_dir.name not in CLASS_NAMES:
            raise ValueError(f"{class_dir} is not a Shapes class folder; expected one of {list(CLASS_NAMES)}")
        for path in sorted(class_dir.glob("*.png")):
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB")))
            labels.append(CLASS_NAMES.index(class_dir.name))
    if not images:
        raise ValueError(f"{folder} holds no class images")
    return np.stack(images), np.asarray(labels)


def make_all_classes(root: Path, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` images of each of the 28 classes via ``make_dataset`` (train + eval splits)."""
    parts = []
    for split in ("train", "eval"):
        folder = make_dataset(root / split, per_class * len(class_names(split)), seed, variant="class", split=split)
        parts.append(load_class_folder(folder))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@torch.no_grad()
def accuracy(model: ShapesFeatureNet, images: np.ndarray, labels: np.ndarray, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(to_model_input(images[start : start + batch_size], model.image_size))[2]
        correct += int((logits.argmax(1).numpy() == labels[start : start + batch_size]).sum())
    return correct / len(images)


def train_extractor(out: str | Path, per_class: int = 1000, test_per_class: int = 200, epochs: int = 6,
                    batch_size: int = 64, lr: float = 2e-3, seed: int = 0, log=print) -> dict:
    """Train, evaluate on fresh renders, and write ``out/model.safetensors`` + ``out/config.json``."""
    from safetensors.torch import save_file

    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        train_x, train_y = make_all_classes(Path(tmp) / "train", per_class, seed)
        test_x, test_y = make_all_classes(Path(tmp) / "test", test_per_class, seed + 1)
    torch.manual_seed(seed)
    model = ShapesFeatureNet(num_classes=len(CLASS_NAMES))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(train_x) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    rng = np.random.default_rng(seed)
    inputs, targets = to_model_input(train_x, model.image_size), torch.as_tensor(train_y)
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(train_x))
        losses = []
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = torch.as_tensor(order[start : start + batch_size])
            loss = F.cross_entropy(model(inputs[idx])[2], targets[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        log(f"epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4f}, test accuracy "
            f"{accuracy(model, test_x, test_y):.4f} ({time.time() - started:.0f}s)")
    test_accuracy = accuracy(model, test_x, test_y)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / WEIGHTS_NAME))
    config = {
        "architecture": "ShapesFeatureNet", **model.config(), "class_names": list(CLASS_NAMES),
        "features": {"pool": "relu(conv4) global average (FID, precision, recall)",
                     "spatial": "relu(conv3) 8x8 map, first spatial_channels channels, flattened (sFID)",
                     "logits": "class logits (Inception Score)"},
        "training": {"per_class": per_class, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                     "seconds": round(time.time() - started, 1)},
        "test": {"per_class": test_per_class, "seed": seed + 1, "accuracy": test_accuracy},
    }
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return config
