"""Fine-tuning and pretraining on accelerate (one CPU, one GPU, or many processes)."""

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "..pipelines": ("TrainTarget", "load_pipeline"),
    ".config": ("PRESETS", "TrainConfig", "preset"),
    ".data": ("ImageDataset", "batch_indices", "load_image_folder"),
    ".loop": ("TrainingDiverged", "TrainResult", "train"),
})
