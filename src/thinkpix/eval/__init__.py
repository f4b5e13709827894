"""Evaluation in the protocols users know: GenEval and DPG layouts scored with the Shapes world's scorers,
and the ADM evaluator's FID / sFID / IS / precision / recall with pluggable feature extractors."""

from .dpg import dpg_prompts, format_dpg_scores, generate_dpg, score_dpg_folder
from .extractors import extract_features, get_extractor, register_extractor
from .fid import compute_metrics, evaluate_folders_or_npz, load_images, save_npz
from .geneval import format_scores, generate_geneval, score_geneval_folder

__all__ = ["compute_metrics", "dpg_prompts", "evaluate_folders_or_npz", "extract_features", "format_dpg_scores",
           "format_scores", "generate_dpg", "generate_geneval", "get_extractor", "load_images", "register_extractor",
           "save_npz", "score_dpg_folder", "score_geneval_folder"]
