"""Tokenizer wrapper on the embedded SmolLM2 tokenizer and the offline Qwen3 tokenizer."""

import pytest

from rlpt_jax.models.tokenizer import Tokenizer, qwen3_tokenizer_dir


def test_smollm2_tokenizer(embedded_model_dir):
    tok = Tokenizer(embedded_model_dir)
    assert tok.vocab_size == 49152
    assert tok.eos_ids == (2,)  # <|im_end|>
    assert tok.decode(tok.eos_ids) == "<|im_end|>"
    text = "Paris is the capital of France."
    assert tok.decode(tok.encode(text)) == text
    rendered = tok.render_chat([{"role": "user", "content": "hi"}])
    assert rendered.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.encode_chat([{"role": "user", "content": "hi"}])[-1] == tok.encode("\n")[-1]
    assert tok.token_id("<|im_start|>") == 1


def test_qwen3_tokenizer_specials():
    tok = Tokenizer(qwen3_tokenizer_dir())
    assert tok.token_id("<|im_end|>") in tok.eos_ids
    assert tok.pad_id == tok.token_id("<|endoftext|>")
    assert tok.render_chat([{"role": "user", "content": "x"}]).startswith("<|im_start|>user\nx")


def test_unknown_token_and_missing_folder(embedded_model_dir, tmp_path):
    tok = Tokenizer(embedded_model_dir)
    with pytest.raises(KeyError, match="not a token"):
        tok.token_id("<|no_such_token|>")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer(tmp_path / "missing")
