"""Text side: vocabulary coverage, prompt validation, tokenizer save/load, tiny CLIP text encoder."""

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from thinkpix.shapes import all_metadata, dpg_items
from thinkpix.shapes.text import (
    MAX_LENGTH,
    VOCABULARY,
    build_tokenizer,
    encode_prompts,
    tiny_text_config,
    tiny_text_encoder,
    validate_prompt,
)


def test_vocabulary_covers_every_prompt():
    prompts = [m["prompt"] for m in all_metadata()] + [item.prompt for item in dpg_items(300, seed=0)]
    used = {word for prompt in prompts for word in validate_prompt(prompt)}
    assert used == set(VOCABULARY)


def test_unknown_words_and_empty_prompts_raise():
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['hexagon', 'pink'\]; vocabulary: \[.*'circle'"):
        validate_prompt("a photo of a pink hexagon")
    for empty in ("", "   "):
        with pytest.raises(ValueError, match="prompt must be a non-empty string"):
            validate_prompt(empty)
    with pytest.raises(ValueError, match="unknown word"):
        encode_prompts(build_tokenizer(), ["a photo of a circle", "a photo of a dog"])


def test_tokenizer_save_load_round_trip(tmp_path):
    tokenizer = build_tokenizer()
    prompts = ["a photo of a red circle left of a blue square, and two green triangles", "A photo of a circle"]
    ids = encode_prompts(tokenizer, prompts)["input_ids"]
    assert ids.shape == (2, MAX_LENGTH)
    assert ids[0, 0] == tokenizer.bos_token_id and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids[1], skip_special_tokens=True) == "a photo of a circle"
    tokenizer.save_pretrained(tmp_path)
    loaded = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert torch.equal(encode_prompts(loaded, prompts)["input_ids"], ids)
    assert loaded.get_vocab() == tokenizer.get_vocab() and loaded.model_max_length == MAX_LENGTH


def test_tiny_text_encoder_pools_at_the_end_token():
    config = tiny_text_config()
    assert config.eos_token_id != 2 and config.vocab_size == len(build_tokenizer())
    model = tiny_text_encoder(seed=0).eval()
    batch = encode_prompts(build_tokenizer(), ["a photo of a circle", "a photo of three squares"])
    with torch.no_grad():
        out = model(**batch)
    assert out.text_embeds.shape == (2, config.projection_dim)
    assert out.last_hidden_state.shape == (2, MAX_LENGTH, config.hidden_size)
    eos = (batch["input_ids"] == config.eos_token_id).int().argmax(-1)
    pooled = out.last_hidden_state[torch.arange(2), eos]
    torch.testing.assert_close(model.text_projection(pooled), out.text_embeds)
    same = tiny_text_encoder(seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values(), strict=True))


def test_a_pipeline_saved_after_sampling_writes_the_tokenizer_it_loaded(tmp_path):
    """transformers' fast tokenizers keep the padding a call sets; ``tokenize`` restores it."""
    from thinkpix.pipelines import SHIPPED
    from thinkpix.train import load_pipeline

    pipe = load_pipeline("shapes-t2i")
    pipe(["a photo of a red circle"], num_inference_steps=1, output_type="np")  # the CFG batch has "" too
    assert pipe.tokenizer.backend_tokenizer.padding is None
    pipe.tokenizer.save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_text() == (SHIPPED["shapes-t2i"] / "tokenizer" / name).read_text(), name
