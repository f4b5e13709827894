"""Shapes world: procedural scenes that mirror GenEval and DPG-Bench so they can be scored offline.

* :mod:`~thinkpix.shapes.scene` / :mod:`~thinkpix.shapes.render`: scenes of 1-4 flat shapes and
  their RGB renders;
* :mod:`~thinkpix.shapes.prompts` / :mod:`~thinkpix.shapes.metadata`: GenEval-format prompts, the
  compositional train/held-out split, jsonl I/O;
* :mod:`~thinkpix.shapes.detect` / :mod:`~thinkpix.shapes.score`: classical detector and GenEval
  scorer (djghosh13/geneval rules);
* :mod:`~thinkpix.shapes.dpg` / :mod:`~thinkpix.shapes.dpg_score`: dense prompts with DPG-Bench
  question graphs and scoring (ELLA, TencentQQGYLab);
* :mod:`~thinkpix.shapes.text`: vocabulary, word-level tokenizer, tiny CLIP text encoder (imported
  lazily here, since it loads torch and transformers);
* :mod:`~thinkpix.shapes.dataset` / :mod:`~thinkpix.shapes.accuracy`: dataset export and the
  scorer-accuracy measurement; :mod:`~thinkpix.shapes.perturb`: the detector's robustness and strictness bench;
* :mod:`~thinkpix.shapes.protocol`: the Shapes-GenEval evaluation protocols ``v1`` and ``v2`` (balanced, noise
  fixed per image);
* :mod:`~thinkpix.shapes.models`: ``SHAPES_MODELS``, the pixel-space MMDiT and DiT presets;
* :mod:`~thinkpix.shapes.pipeline_t2i` / :mod:`~thinkpix.shapes.pipeline_class`: the text-to-image
  and class-conditional diffusers pipelines (these three are imported lazily too).
"""

from importlib import import_module

from thinkpix.shapes.dataset import make_dataset
from thinkpix.shapes.detect import Detection, DetectionResult, detect_shapes
from thinkpix.shapes.dpg import DpgGroup, DpgItem, DpgQuestion, build_item, dpg_items, scene_for_item
from thinkpix.shapes.dpg_score import DpgImageResult, score_dpg_image, summarize_dpg
from thinkpix.shapes.geometry import relative_position
from thinkpix.shapes.metadata import TAGS, read_metadata_jsonl, validate_metadata, write_metadata_jsonl
from thinkpix.shapes.prompts import (
    Sample,
    all_metadata,
    bindings,
    evaluation_metadata,
    scene_for_metadata,
    training_metadata,
    training_samples,
)
from thinkpix.shapes.render import render_scene, shape_mask
from thinkpix.shapes.scene import COLORS, SHAPES, SIZES, ObjectSpec, Scene, ShapeObject, place_objects
from thinkpix.shapes.score import GenEvalResult, evaluate, score_image, summarize

_TEXT_API = (
    "VOCABULARY",
    "build_tokenizer",
    "encode_prompts",
    "tiny_text_config",
    "tiny_text_encoder",
    "validate_prompt",
)
_MODEL_API = ("CLASS_NAMES", "SHAPES_MODELS", "build_model", "middle_layer", "three_layers")
_LAZY = {
    **dict.fromkeys(_TEXT_API, "thinkpix.shapes.text"),
    **dict.fromkeys(_MODEL_API, "thinkpix.shapes.models"),
    "ShapesTextToImagePipeline": "thinkpix.shapes.pipeline_t2i",
    "encode_text": "thinkpix.shapes.pipeline_t2i",
    "ShapesClassPipeline": "thinkpix.shapes.pipeline_class",
}

__all__ = [
    "COLORS",
    "SHAPES",
    "SIZES",
    "TAGS",
    "Detection",
    "DetectionResult",
    "DpgGroup",
    "DpgImageResult",
    "DpgItem",
    "DpgQuestion",
    "GenEvalResult",
    "ObjectSpec",
    "Sample",
    "Scene",
    "ShapeObject",
    "all_metadata",
    "bindings",
    "build_item",
    "detect_shapes",
    "dpg_items",
    "evaluate",
    "evaluation_metadata",
    "make_dataset",
    "place_objects",
    "read_metadata_jsonl",
    "relative_position",
    "render_scene",
    "scene_for_item",
    "scene_for_metadata",
    "score_dpg_image",
    "score_image",
    "shape_mask",
    "summarize",
    "summarize_dpg",
    "training_metadata",
    "training_samples",
    "validate_metadata",
    "write_metadata_jsonl",
    *_LAZY,
]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'thinkpix.shapes' has no attribute {name!r}")
