"""Tiny random Hugging Face checkpoints, created and saved by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_llama_config(vocab_size: int = 32, **overrides):
    """A 2-layer, 32-wide Llama ``ModelConfig`` (GQA, tied embeddings) for JAX-only tests."""
    from rlpt_jax.models.config import ModelConfig

    fields = dict(
        model_type="llama",
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        tie_word_embeddings=True,
    )
    return ModelConfig(**{**fields, **overrides})


def tiny_smollm2_config(**overrides):
    """``tiny_llama_config`` with the embedded SmolLM2 tokenizer's vocabulary and special
    tokens, for a random model that runs with that tokenizer (exported next to it)."""
    fields = dict(
        vocab_size=49152,
        bos_token_id=1,
        eos_token_ids=(2,),
        pad_token_id=2,
        max_position_embeddings=2048,
    )
    return tiny_llama_config(**{**fields, **overrides})


def hf_greedy(hf, prompt: list[int], max_new_tokens: int) -> np.ndarray:
    """transformers' greedy ``generate`` continuation of one prompt (new token ids only)."""
    import torch

    with torch.no_grad():
        out = hf.generate(
            torch.tensor([prompt]),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        )
    return out[0, len(prompt) :].numpy()


def tiny_hf_model(kind: str, seed: int = 0):
    """A small random transformers model of the given family (float32, eval mode)."""
    import torch
    import transformers as tf

    common = dict(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if kind == "qwen3":
        cfg = tf.Qwen3Config(**common, head_dim=8, rope_theta=10000.0, tie_word_embeddings=False)
        cls = tf.Qwen3ForCausalLM
    elif kind == "qwen2":
        cfg = tf.Qwen2Config(**common, rope_theta=10000.0, tie_word_embeddings=False)
        cls = tf.Qwen2ForCausalLM
    elif kind == "llama3":
        cfg = tf.LlamaConfig(
            **common,
            tie_word_embeddings=False,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
            rope_theta=500000.0,
        )
        cls = tf.LlamaForCausalLM
    elif kind == "llama_tied":
        # head_dim (12) != hidden / heads (48 / 6 = 8), tied embeddings (SmolLM2-like)
        cfg = tf.LlamaConfig(**common, head_dim=12, tie_word_embeddings=True, rope_theta=10000.0)
        cls = tf.LlamaForCausalLM
    else:
        raise ValueError(kind)
    torch.manual_seed(seed)
    model = cls(cfg).float().eval()
    # Random (not zero) biases and norm weights so that their import is actually tested.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "norm" in name else 0.0))
    return model


def save_tiny(kind: str, path: Path, seed: int = 0) -> Path:
    model = tiny_hf_model(kind, seed)
    model.save_pretrained(path, safe_serialization=True)
    return Path(path)


def right_padded_batch(vocab: int, lengths=(11, 7, 4), seed: int = 0):
    """Token ids [3, T] with right padding (pad id 0) and the 0/1 attention mask."""
    rng = np.random.default_rng(seed)
    t = max(lengths)
    tokens = np.zeros((len(lengths), t), np.int64)
    mask = np.zeros((len(lengths), t), np.int64)
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.integers(3, vocab, n)
        mask[i, :n] = 1
    return tokens, mask
