"""Evaluation in the protocols users know (GenEval layout), scored with the Shapes world's scorers."""

from .geneval import format_scores, generate_geneval, score_geneval_folder

__all__ = ["format_scores", "generate_geneval", "score_geneval_folder"]
