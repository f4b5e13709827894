"""The Shapes world's text side: vocabulary, a word-level tokenizer and a tiny CLIP text encoder.

The tokenizer is a ``tokenizers`` WordLevel model over a fixed vocabulary, wrapped in a
``transformers.PreTrainedTokenizerFast`` so it saves and loads with ``save_pretrained`` /
``from_pretrained``; nothing is downloaded. Special tokens are ``<pad>`` (0), ``<unk>`` (1),
``<bos>`` (2) and ``<eos>`` (3): the end token is deliberately not id 2, because
``CLIPTextTransformer`` treats ``eos_token_id == 2`` as a legacy config and pools at the largest
token id instead of at the end token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BatchEncoding, CLIPTextConfig, CLIPTextModelWithProjection, PreTrainedTokenizerFast

from thinkpix.shapes.geometry import RELATIONS
from thinkpix.shapes.prompts import NUMBER_WORDS
from thinkpix.shapes.scene import COLORS, PLURALS, SHAPES, SIZES

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
MAX_LENGTH = 32
"""Tokens per prompt including ``<bos>``/``<eos>``; the longest dense prompt needs 26."""

VOCABULARY: tuple[str, ...] = tuple(
    sorted(
        {"a", "photo", "of", "and", ","}
        | set(COLORS)
        | set(SIZES)
        | set(SHAPES)
        | set(PLURALS.values())
        | set(NUMBER_WORDS.values())
        | {word for rel in RELATIONS for word in rel.split()}
    )
)
"""Every word any Shapes-world prompt can contain (GenEval-style and dense prompts)."""

_PRE_TOKENIZER = pre_tokenizers.Whitespace()


def prompt_words(prompt: str) -> list[str]:
    """The words of ``prompt`` as the tokenizer splits them (lower-cased, punctuation apart)."""
    return [word for word, _ in _PRE_TOKENIZER.pre_tokenize_str(prompt.lower())]


def validate_prompt(prompt: str) -> list[str]:
    """Return the prompt's words; raise ``ValueError`` for an empty prompt or unknown words."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    words = prompt_words(prompt)
    unknown = sorted({word for word in words if word not in VOCABULARY})
    if unknown:
        raise ValueError(f"prompt {prompt!r} has unknown word(s) {unknown}; vocabulary: {list(VOCABULARY)}")
    if len(words) + 2 > MAX_LENGTH:
        raise ValueError(f"prompt {prompt!r} has {len(words)} words; at most {MAX_LENGTH - 2} fit")
    return words


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The word-level tokenizer: ``<bos> words <eos>``, padded on the right to :data:`MAX_LENGTH`."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + VOCABULARY)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = _PRE_TOKENIZER
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=MAX_LENGTH,
        padding_side="right",
    )


def encode_prompts(tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str]) -> BatchEncoding:
    """Validate ``prompts`` (see :func:`validate_prompt`) and tokenize them to ``(B, MAX_LENGTH)``
    tensors ``input_ids`` and ``attention_mask``."""
    if isinstance(prompts, str):
        prompts = [prompts]
    for prompt in prompts:
        validate_prompt(prompt)
    return tokenize(tokenizer, list(prompts))


def tokenize(tokenizer: PreTrainedTokenizerFast, prompts: list[str]) -> BatchEncoding:
    """Pad ``prompts`` to ``MAX_LENGTH`` without leaving that setting behind: transformers' fast tokenizers
    keep the padding a call sets, so a pipeline saved after sampling would write a different tokenizer."""
    backend = tokenizer.backend_tokenizer
    padding = backend.padding
    try:
        return tokenizer(prompts, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt")
    finally:
        if padding is None:
            backend.no_padding()
        else:
            backend.enable_padding(**padding)


def tiny_text_config(
    hidden_size: int = 64, num_hidden_layers: int = 2, num_attention_heads: int = 2, projection_dim: int = 64
) -> CLIPTextConfig:
    """A ``CLIPTextConfig`` sized for this vocabulary and :data:`MAX_LENGTH`."""
    return CLIPTextConfig(
        vocab_size=len(SPECIAL_TOKENS) + len(VOCABULARY),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        projection_dim=projection_dim,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        max_position_embeddings=MAX_LENGTH,
        pad_token_id=SPECIAL_TOKENS.index("<pad>"),
        bos_token_id=SPECIAL_TOKENS.index("<bos>"),
        eos_token_id=SPECIAL_TOKENS.index("<eos>"),
    )


def tiny_text_encoder(seed: int = 0, **config_kwargs) -> CLIPTextModelWithProjection:
    """A randomly initialised tiny CLIP text encoder (``seed`` fixes the weights; torch's global
    RNG state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModelWithProjection(tiny_text_config(**config_kwargs))
