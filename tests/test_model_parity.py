"""Our decoder against transformers (torch, float32) on tiny random checkpoints."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hf_fixtures import right_padded_batch, save_tiny, tiny_hf_model
from rlpt_jax.models.hf_io import load_hf

KINDS = ["qwen3", "qwen2", "llama3", "llama_tied"]


def _torch_logits(model, tokens, mask):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask))
    return out.logits.float().numpy()


def _our_logits(model, tokens, mask):
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    logits, _ = model(jnp.asarray(tokens), jnp.asarray(positions), attention_mask=jnp.asarray(mask))
    return np.asarray(logits)


@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_transformers(kind, tmp_path):
    path = save_tiny(kind, tmp_path / kind)
    ref_model = tiny_hf_model(kind)
    tokens, mask = right_padded_batch(ref_model.config.vocab_size)
    ref = _torch_logits(ref_model, tokens, mask)
    ours = _our_logits(load_hf(path), tokens, mask)
    real = mask.astype(bool)
    assert np.max(np.abs(ours[real] - ref[real])) <= 1e-4


def test_family_features_are_present(tmp_path):
    """The parity above would be vacuous if the features were not exercised."""
    q3 = load_hf(save_tiny("qwen3", tmp_path / "q3"))
    assert q3.cfg.qk_norm and not q3.cfg.qkv_bias
    q2 = load_hf(save_tiny("qwen2", tmp_path / "q2"))
    assert q2.cfg.qkv_bias and np.abs(np.asarray(q2.layers.self_attn.q_bias[...][0])).sum() > 0
    l3 = load_hf(save_tiny("llama3", tmp_path / "l3"))
    assert l3.cfg.rope_scaling_dict["rope_type"] == "llama3"
    tied = load_hf(save_tiny("llama_tied", tmp_path / "lt"))
    assert tied.cfg.tie_word_embeddings and tied.cfg.head_dim == 12
    assert tied.cfg.head_dim * tied.cfg.num_heads != tied.cfg.hidden_size
