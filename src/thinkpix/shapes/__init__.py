"""Shapes world: procedural scenes that mirror GenEval and DPG-Bench so they can be scored offline.

* :mod:`~thinkpix.shapes.scene` / :mod:`~thinkpix.shapes.render`: scenes of 1-4 flat shapes and
  their RGB renders;
* :mod:`~thinkpix.shapes.prompts` / :mod:`~thinkpix.shapes.metadata`: GenEval-format prompts, the
  compositional train/held-out split, jsonl I/O;
* :mod:`~thinkpix.shapes.detect` / :mod:`~thinkpix.shapes.score`: classical detector and GenEval
  scorer (djghosh13/geneval rules);
* :mod:`~thinkpix.shapes.dpg` / :mod:`~thinkpix.shapes.dpg_score`: dense prompts with DPG-Bench
  question graphs and scoring (ELLA, TencentQQGYLab);
* :mod:`~thinkpix.shapes.text`: vocabulary, word-level tokenizer, tiny CLIP text encoder;
* :mod:`~thinkpix.shapes.dataset` / :mod:`~thinkpix.shapes.accuracy`: dataset export and the
  scorer-accuracy measurement; :mod:`~thinkpix.shapes.perturb`: the detector's robustness and strictness bench;
* :mod:`~thinkpix.shapes.protocol`: the Shapes-GenEval evaluation protocols ``v1`` and ``v2`` (balanced, noise
  fixed per image);
* :mod:`~thinkpix.shapes.models`: ``SHAPES_MODELS``, the pixel-space MMDiT and DiT presets;
* :mod:`~thinkpix.shapes.pipeline_t2i` / :mod:`~thinkpix.shapes.pipeline_class`: the text-to-image
  and class-conditional diffusers pipelines.

Every name loads on first use (the command line's ``--help`` reads only the modules it needs).
"""

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".dataset": ("make_dataset",),
    ".detect": ("Detection", "DetectionResult", "detect_shapes"),
    ".dpg": ("DpgGroup", "DpgItem", "DpgQuestion", "build_item", "dpg_items", "scene_for_item"),
    ".dpg_score": ("DpgImageResult", "score_dpg_image", "summarize_dpg"),
    ".geometry": ("relative_position",),
    ".metadata": ("TAGS", "read_metadata_jsonl", "validate_metadata", "write_metadata_jsonl"),
    ".prompts": ("Sample", "all_metadata", "bindings", "evaluation_metadata", "scene_for_metadata", "training_metadata",
        "training_samples"),
    ".render": ("render_scene", "shape_mask"),
    ".scene": ("COLORS", "SHAPES", "SIZES", "ObjectSpec", "Scene", "ShapeObject", "place_objects"),
    ".score": ("GenEvalResult", "evaluate", "score_image", "summarize"),
    ".text": ("VOCABULARY", "build_tokenizer", "encode_prompts", "tiny_text_config", "tiny_text_encoder",
        "validate_prompt"),
    ".models": ("CLASS_NAMES", "SHAPES_MODELS", "build_model", "middle_layer", "three_layers"),
    ".pipeline_t2i": ("ShapesTextToImagePipeline", "encode_text"),
    ".pipeline_class": ("ShapesClassPipeline",),
})
