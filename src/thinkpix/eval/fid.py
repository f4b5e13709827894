"""Generation-quality metrics as the ADM evaluator computes them: FID, sFID, IS, precision, recall.

Formulas follow openai/guided-diffusion, ``evaluations/evaluator.py`` (the evaluator DiT and the
paper's Table 1 use):

* FID (``FIDStatistics.frechet_distance``): ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2))``
  on pooled features with ``np.cov`` (N - 1) covariances; ADM's ``scipy.linalg.sqrtm`` route is
  ``method="sqrtm"``, the default computes the same trace with symmetric eigendecompositions;
* sFID: the same distance on the spatial features (ADM: ``mixed_6/conv``, first 7 channels);
* IS (``compute_inception_score``): ``exp(mean_x KL(p(y|x) || p(y)))`` per split, averaged over
  splits; ADM uses splits of 5000 images, i.e. 10 splits of its 50k samples: we use 10 splits;
* precision / recall (``ManifoldEstimator``, ``compute_prec_recall``): each set's manifold is the
  union of balls around its points whose radius is the squared distance to the k-th (k = 3) nearest
  neighbour (the point itself is the 0-th); precision = fraction of samples inside the reference
  manifold, recall = fraction of reference images inside the sample manifold.

Inputs are image folders or ADM-style ``.npz`` files (key ``arr_0``: uint8 NHWC), the format
DiT's ``sample_ddp.py`` writes and :mod:`thinkpix.eval.sample_npz` writes here.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import linalg

from ..errors import UserError, check_positive_int
from ..images import rgb8
from .extractors import Features, extract_features, get_extractor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
PR_NEIGHBOURHOOD = 3  # ADM: ManifoldEstimator(nhood_sizes=(3,))
IS_SPLITS = 10  # ADM: split_size=5000 over 50k samples


# images in and out


def load_images(path: str | Path) -> np.ndarray:
    """uint8 (N, H, W, 3) images from an ``.npz`` (``arr_0``) or from every image file under a folder (sorted)."""
    path = Path(path)
    if path.suffix == ".npz":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such .npz file")
        try:
            with np.load(path) as data:
                if "arr_0" not in data:
                    raise UserError(f"{path} has no arr_0 (keys: {sorted(data.files)}): expected ADM-style samples")
                images = data["arr_0"]
        except (OSError, EOFError, zipfile.BadZipFile) as err:  # truncated or not an .npz at all
            raise UserError(f"{path} is not a readable .npz file (truncated or corrupt): {err}") from None
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.name != "grid.png")
        if not files:
            raise ValueError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        arrays = []
        for file in files:
            with Image.open(file) as image:
                arrays.append(rgb8(image))
        if len({a.shape for a in arrays}) > 1:
            raise ValueError(f"{path} mixes image sizes {sorted({a.shape for a in arrays})}")
        images = np.stack(arrays)
    else:
        raise FileNotFoundError(f"{path}: neither an image folder nor an .npz file")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{path}: expected uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
    return images


def save_npz(path: str | Path, images: np.ndarray, **extra: np.ndarray) -> Path:
    """Write ``arr_0`` (uint8 NHWC, the ADM evaluator's sample-batch key) plus ``extra`` arrays."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, arr_0=images, **extra)
    return path


# FID / sFID


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (``np.cov``, N - 1) of (N, D) features, as ADM's ``FIDStatistics``."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6, method: str = "eigh") -> float:
    """Fréchet distance between two Gaussians (ADM ``FIDStatistics.frechet_distance``).

    ``method="sqrtm"`` is ADM's computation: ``scipy.linalg.sqrtm(S1 S2)``, retried with ``eps * I``
    added to both covariances when the product is singular, an error on a non-negligible imaginary
    part. ``method="eigh"`` (default) computes the same trace as ``tr sqrt(A S2 A)`` with
    ``A = S1^(1/2)`` (a symmetric PSD matrix, similar to ``S1 S2``'s square root), by two symmetric
    eigendecompositions: several times faster on the 2k-d sFID features, equal up to rounding.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics differ in shape: {mu1.shape} vs {mu2.shape}, {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    if method == "eigh":
        w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
        root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        inner = root @ sigma2 @ root
        tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    elif method == "sqrtm":
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():  # ADM: "fid calculation produces singular product; adding eps"
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
        if np.iscomplexobj(covmean):
            if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
                raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in the covariance square root")
            covmean = covmean.real
        tr_covmean = np.trace(covmean)
    else:
        raise ValueError(f"method={method!r} is not allowed; allowed values: eigh, sqrtm")
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def fid_from_features(ref: np.ndarray, samples: np.ndarray) -> float:
    """FID between two (N, D) feature sets."""
    return frechet_distance(*feature_statistics(ref), *feature_statistics(samples))


# Inception Score


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def inception_score(logits: np.ndarray, splits: int = IS_SPLITS) -> tuple[float, float]:
    """(mean, std) over ``splits`` contiguous splits of ``exp(mean KL(p(y|x) || p(y)))`` (ADM
    ``compute_inception_score``, which reports the mean; splits of 5000 = 10 splits of 50k)."""
    probs = softmax(logits)
    splits = max(1, min(splits, len(probs)))
    scores = []
    for part in np.array_split(probs, splits):
        kl = part * (np.log(part + 1e-12) - np.log(part.mean(axis=0, keepdims=True) + 1e-12))
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


# precision / recall


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances, clamped at 0 (ADM ``DistanceBlock``: |x|^2 - 2 x.y + |y|^2)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = (a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]
    return np.maximum(d, 0.0)


def manifold_radii(features: np.ndarray, k: int = PR_NEIGHBOURHOOD, batch_size: int = 2048) -> np.ndarray:
    """Squared distance of each point to its k-th nearest neighbour, the point itself being the 0-th
    (ADM ``ManifoldEstimator.__init__``: ``np.partition(distances, kth=k)[:, k]``)."""
    if len(features) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} images per set, got {len(features)}")
    radii = np.empty(len(features))
    for start in range(0, len(features), batch_size):
        d = squared_distances(features[start : start + batch_size], features)
        radii[start : start + batch_size] = np.partition(d, kth=k, axis=1)[:, k]
    return radii


def inside_manifold(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    """Whether each point lies within some centre's radius (squared distances, ``<=`` as in ADM)."""
    inside = np.zeros(len(points), dtype=bool)
    for start in range(0, len(points), batch_size):
        for col in range(0, len(centres), batch_size):
            d = squared_distances(points[start : start + batch_size], centres[col : col + batch_size])
            inside[start : start + batch_size] |= (d <= radii[None, col : col + batch_size]).any(axis=1)
    return inside


def precision_recall(ref: np.ndarray, samples: np.ndarray, k: int = PR_NEIGHBOURHOOD) -> tuple[float, float]:
    """(precision, recall) of ``samples`` against ``ref`` (ADM ``compute_prec_recall``)."""
    ref_radii, sample_radii = manifold_radii(ref, k), manifold_radii(samples, k)
    precision = inside_manifold(samples, ref, ref_radii).mean()
    recall = inside_manifold(ref, samples, sample_radii).mean()
    return float(precision), float(recall)


# everything together


def compute_metrics(ref: Features, samples: Features, is_splits: int = IS_SPLITS) -> dict[str, float]:
    """FID, sFID, IS (of the samples) and precision / recall from precomputed features."""
    is_mean, is_std = inception_score(samples.logits, is_splits)
    precision, recall = precision_recall(ref.pool, samples.pool)
    return {"fid": fid_from_features(ref.pool, samples.pool), "sfid": fid_from_features(ref.spatial, samples.spatial),
            "inception_score": is_mean, "inception_score_std": is_std, "precision": precision, "recall": recall}


def evaluate_folders_or_npz(ref: str | Path, samples: str | Path, extractor: str = "shapes",
                            weights: str | Path | None = None, batch_size: int = 256,
                            device: str = "cpu") -> dict[str, float | int | str]:
    """Load both image sets, extract features with the named extractor, and compute the ADM metrics."""
    check_positive_int(batch_size, "--batch-size")
    model = get_extractor(extractor, weights=weights, device=device)  # fails fast on a bad extractor
    ref_images, sample_images = load_images(ref), load_images(samples)
    metrics = compute_metrics(extract_features(model, ref_images, batch_size),
                              extract_features(model, sample_images, batch_size))
    return {**metrics, "extractor": extractor, "extractor_weights": "shipped" if weights is None else str(weights),
            "num_ref": len(ref_images), "num_samples": len(sample_images)}


def format_metrics(metrics: dict) -> str:
    """A one-row markdown table of the metrics (ADM order)."""
    cols = ("fid", "sfid", "inception_score", "precision", "recall")
    head = "| extractor | ref | samples | FID | sFID | IS | precision | recall |"
    row = (f"| {metrics.get('extractor', '-')} | {metrics.get('num_ref', '-')} | {metrics.get('num_samples', '-')} | "
           + " | ".join(f"{metrics[c]:.4f}" for c in cols) + " |")
    return "\n".join([head, "| --- |" + " ---: |" * 7, row])
