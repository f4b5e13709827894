"""Feature extractors for the generation-quality metrics of :mod:`thinkpix.eval.fid`, in a small registry.

Each extractor maps a batch of uint8 NHWC images to three feature sets, the ones the ADM evaluator
(openai/guided-diffusion, evaluations/evaluator.py) takes from Inception-v3:

* ``pool``: pooled features for FID, precision and recall (ADM: ``pool_3``, 2048-d);
* ``spatial``: an early spatial map's first channels, flattened, for sFID (ADM: the first 7
  channels of ``mixed_6/conv``, 17x17);
* ``logits``: class logits for the Inception Score (ADM: the softmax of the 1008-way classifier).

Registered extractors:

* ``shapes``: :class:`ShapesFeatureNet`, a small CNN trained to classify the 28 Shapes classes
  (:data:`thinkpix.shapes.models.CLASS_NAMES`), shipped in ``assets/shapes-features`` (safetensors
  and a config json; trained by ``thinkpix eval train-extractor``, whose ``--out`` folder
  ``--extractor-weights`` takes instead);
* ``inception``: torch-fidelity's ``FeatureExtractorInceptionV3`` (the network torchmetrics' FID
  wraps), loaded from a local weights file given with ``--extractor-weights``; nothing is
  downloaded.

``register_extractor(name, factory)`` adds another one; ``get_extractor(name, **options)`` builds one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SHAPES_FEATURES_DIR = ASSETS / "shapes-features"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


@dataclass
class Features:
    """Per-image features: ``pool`` (N, D), ``spatial`` (N, S), ``logits`` (N, C); float64 numpy."""

    pool: np.ndarray
    spatial: np.ndarray
    logits: np.ndarray


class ShapesFeatureNet(nn.Module):
    """A small CNN for 32x32 Shapes images: 3 conv stages, global average pooling, a linear classifier.

    ``forward(x)`` takes images in [-1, 1] (N, 3, 32, 32) and returns ``(pool, spatial, logits)``:
    the pooled ``channels[-1]``-d vector; the first ``spatial_channels`` channels of the third conv
    block's 8x8 output (after its ReLU, before pooling) flattened, 7 x 8 x 8 = 448-d (ADM: the first 7
    channels of ``mixed_6/conv``, a conv block in Inception's middle 17x17 stage, 2023-d); the logits.
    """

    def __init__(self, num_classes: int = 28, channels: tuple[int, ...] = (16, 32, 64, 128),
                 spatial_channels: int = 7, image_size: int = 32):
        super().__init__()
        c1, c2, c3, c4 = channels
        self.num_classes, self.channels, self.spatial_channels = num_classes, tuple(channels), spatial_channels
        self.image_size = image_size
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1)     # 32x32
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)    # 16x16
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)    # 8x8: the sFID map
        self.conv4 = nn.Conv2d(c3, c4, 3, padding=1)    # 4x4, then global average pooling
        self.head = nn.Linear(c4, num_classes)

    def config(self) -> dict:
        return {"num_classes": self.num_classes, "channels": list(self.channels),
                "spatial_channels": self.spatial_channels, "image_size": self.image_size}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        s = F.relu(self.conv3(h))  # the sFID map
        h = F.max_pool2d(s, 2)
        pool = F.relu(self.conv4(h)).mean(dim=(2, 3))
        return pool, s[:, : self.spatial_channels].flatten(1), self.head(pool)


def to_model_input(images: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) images to float (N, 3, size, size) in [-1, 1] (antialiased bilinear resize if needed)."""
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


class ShapesExtractor:
    """The ``shapes`` extractor: :class:`ShapesFeatureNet` weights loaded with safetensors from ``path``, a
    ``train-extractor --out`` folder or its ``model.safetensors`` (default: the shipped one)."""

    name = "shapes"

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu"):
        from safetensors.torch import load_file

        path = Path(path) if path is not None else SHAPES_FEATURES_DIR
        path = path.parent if path.name == WEIGHTS_NAME else path
        weights, config = path / WEIGHTS_NAME, path / CONFIG_NAME
        if not weights.is_file() or not config.is_file():
            raise FileNotFoundError(f"--extractor-weights {path}: no shapes feature extractor there ({WEIGHTS_NAME} + "
                                    f"{CONFIG_NAME}); train one with `thinkpix eval train-extractor --out {path}`")
        self.config = json.loads(config.read_text())
        arch = {k: self.config[k] for k in ("num_classes", "channels", "spatial_channels", "image_size")}
        self.model = ShapesFeatureNet(**{**arch, "channels": tuple(arch["channels"])})
        self.model.load_state_dict(load_file(str(weights)))
        self.device = torch.device(device)
        self.model.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model(to_model_input(images, self.model.image_size).to(self.device))


class InceptionExtractor:
    """The ``inception`` extractor: torch-fidelity's ``FeatureExtractorInceptionV3`` (FID's Inception-v3,
    as torchmetrics uses it) from a local weights file; nothing is downloaded.

    Features as in the ADM evaluator: ``pool`` = the 2048-d pool_3 features, ``logits`` = the
    unbiased 1008-way logits, ``spatial`` = the first 7 channels of ``Mixed_6d.branch1x1`` (TF's
    ``mixed_6/conv``: mixed, mixed_1.. mixed_10 are Mixed_5b..Mixed_7c; 17x17) flattened, taken by a
    forward hook. Not checked against ADM's numbers here (no weights on this machine).
    """

    name = "inception"

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu"):
        if weights is None:
            raise ValueError("the inception extractor needs local weights: pass --extractor-weights PATH "
                             "(pt_inception-2015-12-05-6726825d.pth, the FID Inception weights); "
                             "thinkpix never downloads them")
        if not Path(weights).is_file():
            raise FileNotFoundError(f"--extractor-weights {weights}: no such file (the FID Inception weights, "
                                    "pt_inception-2015-12-05-6726825d.pth)")
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError:
            raise ValueError("the inception extractor needs torch-fidelity (`pip install torch-fidelity`); "
                             "the shapes extractor works without it") from None
        self.model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                 feature_extractor_weights_path=str(weights))
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self._spatial: list[torch.Tensor] = []
        self.model.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, out: self._spatial.append(out))

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self._spatial.clear()
        x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).contiguous().to(self.device)  # uint8 NCHW
        pool, logits = self.model(x)
        return pool, self._spatial[-1][:, :7].flatten(1), logits


EXTRACTORS: dict[str, Callable[..., object]] = {
    "shapes": lambda weights=None, device="cpu": ShapesExtractor(weights, device),
    "inception": lambda weights=None, device="cpu": InceptionExtractor(weights, device),
}
"""name -> ``factory(weights=None, device="cpu")`` returning ``extractor(uint8 NHWC) -> (pool, spatial, logits)``."""


def register_extractor(name: str, factory: Callable[..., object]) -> None:
    """Add (or replace) an extractor ``factory(weights=None, device="cpu")``."""
    EXTRACTORS[name] = factory


def get_extractor(name: str, weights: str | Path | None = None, device: str | torch.device = "cpu"):
    """Build the extractor ``name`` (``weights``: its weights file or folder, if it takes one)."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; choose one of {', '.join(sorted(EXTRACTORS))}")
    return EXTRACTORS[name](weights=weights, device=device)


def extract_features(extractor, images: np.ndarray, batch_size: int = 256) -> Features:
    """Run ``extractor`` over uint8 (N, H, W, 3) ``images`` in batches; returns float64 :class:`Features`."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    parts: list[list[np.ndarray]] = [[], [], []]
    for start in range(0, len(images), batch_size):
        for part, out in zip(parts, extractor(images[start : start + batch_size])):
            part.append(out.detach().cpu().double().numpy())
    return Features(*(np.concatenate(p) for p in parts))
