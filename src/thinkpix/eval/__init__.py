"""Evaluation in the protocols users know: GenEval and DPG layouts scored with the Shapes world's scorers,
and the ADM evaluator's FID / sFID / IS / precision / recall with pluggable feature extractors."""

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".dpg": ("dpg_prompts", "format_dpg_scores", "generate_dpg", "score_dpg_folder"),
    ".extractors": ("extract_features", "get_extractor", "register_extractor"),
    ".fid": ("compute_metrics", "evaluate_folders_or_npz", "load_images", "save_npz"),
    ".geneval": ("format_scores", "generate_geneval", "score_geneval_folder"),
})
