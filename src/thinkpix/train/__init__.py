"""Fine-tuning and pretraining on accelerate (one CPU, one GPU, or many processes)."""

from ..pipelines import TrainTarget, load_pipeline
from .config import PRESETS, TrainConfig, preset
from .data import ImageDataset, batch_indices, load_image_folder
from .loop import TrainingDiverged, TrainResult, train

__all__ = [
    "PRESETS",
    "ImageDataset",
    "TrainConfig",
    "TrainResult",
    "TrainTarget",
    "TrainingDiverged",
    "batch_indices",
    "load_image_folder",
    "load_pipeline",
    "preset",
    "train",
]
