"""Training data in the layouts users already have.

* Image-caption folder: images plus ``metadata.jsonl`` with ``{"file_name": ..., "text": ...}`` lines
  (the Hugging Face ``imagefolder`` layout, as written by ``thinkpix shapes make-dataset``).
* Class folder: ``<root>/<class name>/*.png`` (the torchvision ``ImageFolder`` layout; classes sorted).

Batches are drawn by ``batch_indices``: a seeded permutation per epoch, sharded across processes, so
that a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import UserError
from ..images import rgb8

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class ImageDataset:
    """Images in memory as a (N, 3, H, W) uint8 tensor, with captions or class ids.

    Everything is held in memory (uint8): right for the Shapes world and fine-tuning sets of a few
    thousand images; a streaming loader for large sets is not implemented.
    """

    images: torch.Tensor
    captions: list[str] | None = None
    labels: torch.Tensor | None = None
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def pixels(self, index: torch.Tensor) -> torch.Tensor:
        """Images ``index`` as float in [-1, 1]: (B, 3, H, W)."""
        return self.images[index].float() / 127.5 - 1.0

    @property
    def kind(self) -> str:
        return "caption" if self.captions is not None else "class"


def _load_image(path: Path, size: int | None) -> np.ndarray:
    try:
        with Image.open(path) as img:
            rgb = rgb8(img)
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"unreadable image {path}: {err}") from None
    if size is not None and rgb.shape[:2] != (size, size):
        rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BICUBIC), dtype=np.uint8)
    return rgb


def _to_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    sizes = sorted({a.shape[:2] for a in arrays})
    if len(sizes) > 1:
        raise UserError(f"the images have different sizes {sizes[:4]}: pass --image-size to resize them")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load_image_folder(root: str | Path, image_size: int | None = None, caption_column: str = "text") -> ImageDataset:
    """Load an image-caption folder or a class folder (detected by the presence of ``metadata.jsonl``).

    ``caption_column``: the key of ``metadata.jsonl`` holding the caption (diffusers' ``--caption_column``).
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist")
    if (root / "metadata.jsonl").is_file():
        return _load_captions(root, image_size, caption_column)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise UserError(f"data folder {root} is empty: expected metadata.jsonl with images, or class sub-folders")
    arrays, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                arrays.append(_load_image(path, image_size))
                labels.append(label)
    if not arrays:
        raise UserError(f"data folder {root} has class folders but no images ({', '.join(IMAGE_SUFFIXES)})")
    return ImageDataset(_to_tensor(arrays), labels=torch.tensor(labels), class_names=classes)


def _load_captions(root: Path, image_size: int | None, caption_column: str) -> ImageDataset:
    arrays, captions = [], []
    for line_no, line in enumerate((root / "metadata.jsonl").read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            name, text = record["file_name"], record[caption_column]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise UserError(
                f"{root / 'metadata.jsonl'} line {line_no} is malformed ({err}): expected "
                f'{{"file_name": ..., "{caption_column}": ...}} (the caption column is --caption-column)'
            ) from None
        if not isinstance(text, str) or not isinstance(name, str):  # null would train on the caption "None"
            raise UserError(f"{root / 'metadata.jsonl'} line {line_no}: \"file_name\" and \"{caption_column}\" must be "
                            f"strings, "
                            f"got {json.dumps(name)} and {json.dumps(text)} (use \"\" for an empty caption)")
        arrays.append(_load_image(root / name, image_size))
        captions.append(text)
    if not arrays:
        raise UserError(f"data folder {root} is empty: metadata.jsonl lists no images")
    return ImageDataset(_to_tensor(arrays), captions=captions)


def batch_indices(n: int, batch_size: int, micro_step: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Indices of micro-batch ``micro_step`` for process ``rank`` of ``world``.

    Each epoch is a permutation seeded by (seed, epoch); a global batch of ``batch_size`` is split
    into equal shards, one per process (like DistributedSampler). Depends only on its arguments.
    """
    if batch_size % world:
        raise ValueError(f"batch_size={batch_size} must be divisible by the number of processes ({world})")
    per_epoch = max(1, n // batch_size)
    epoch, within = divmod(micro_step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g)
    if n < batch_size:  # tiny data sets: repeat the permutation
        order = order.repeat(-(-batch_size // n))
    start = within * batch_size
    shard = batch_size // world
    return order[start + rank * shard : start + (rank + 1) * shard]
