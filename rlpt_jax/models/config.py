"""Model configuration read from a Hugging Face ``config.json``.

One frozen dataclass describes every decoder family we support. The original
``config.json`` dictionary is kept verbatim so that an export writes back exactly
what was read (a trained policy must stay servable by vLLM / SGLang).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
_DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
    """A checkpoint config that this code cannot represent faithfully."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only transformer (Llama / Qwen2 / Qwen3 family).

    Attributes mirror the Hugging Face names. ``param_dtype`` is the storage dtype of the
    weights, ``dtype`` the compute dtype of matmuls; norms, RoPE and softmax always run in
    float32.

    ``batch_invariant`` (not part of ``config.json``): compute every token's activations in
    a way that does not depend on how many other tokens share the call, so that a decode
    step of a few rows and a teacher-forced training forward give bit-identical logits
    (float32 on XLA:CPU; see ``rlpt_jax.models.decoder``). It costs speed: the sampler's
    decode runs ~30% slower at batch 16 and ~45% slower at batch 1 (``bench/sampler.py``).

    ``attention`` (not part of ``config.json`` either): the attention implementation,
    ``"auto" | "xla" | "blockwise" | "cudnn" | "splash"`` (``rlpt_jax.models.attention``), with the
    blockwise query/key block size ``attention_block``.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    param_dtype: str = "float32"
    dtype: str = "float32"
    batch_invariant: bool = False
    attention: str = "xla"
    attention_block: int = 512
    hf_config: tuple[tuple[str, Any], ...] = dataclasses.field(default=(), compare=False)

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"unsupported model_type {self.model_type!r}; supported: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
        ):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ConfigError(f"{name} must be one of {_DTYPES}, got {getattr(self, name)!r}")
        from rlpt_jax.models import attention

        try:
            attention.resolve(self.attention, self.dtype, self.batch_invariant, platform="cpu")
        except ValueError as e:
            raise ConfigError(str(e)) from e
        if self.attention_block < 1:
            raise ConfigError(f"attention_block must be >= 1, got {self.attention_block}")
        scaling = self.rope_scaling_dict
        if scaling is not None:
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind not in ("default", "llama3"):
                raise ConfigError(f"unsupported rope_scaling type {kind!r} (supported: llama3)")

    @property
    def attention_impl(self) -> str:
        """The implementation ``attention`` stands for on this backend."""
        from rlpt_jax.models import attention

        return attention.resolve(self.attention, self.dtype, self.batch_invariant)

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return None if self.rope_scaling is None else dict(self.rope_scaling)

    def replace(self, **kw) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], **overrides) -> ModelConfig:
        """Build from a parsed ``config.json``; unknown architectures raise ConfigError."""
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"unsupported model_type {model_type!r} in config.json; supported: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if d.get("mlp_bias"):
            raise ConfigError("mlp_bias=True is not supported")
        if d.get("use_sliding_window"):
            raise ConfigError("use_sliding_window=True is not supported")
        hidden_act = d.get("hidden_act", "silu")
        if hidden_act != "silu":
            raise ConfigError(f"hidden_act {hidden_act!r} is not supported (only silu)")
        num_heads = int(d["num_attention_heads"])
        head_dim = d.get("head_dim") or int(d["hidden_size"]) // num_heads
        attention_bias = bool(d.get("attention_bias", False))
        if model_type == "qwen2":
            qkv_bias, o_bias = True, False
        else:
            qkv_bias, o_bias = attention_bias, attention_bias
        eos = d.get("eos_token_id")
        eos_ids = (
            () if eos is None else tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]))
        )
        # transformers >= 5 stores rope settings under rope_parameters; older under rope_scaling.
        rope_params = d.get("rope_parameters") or {}
        rope_theta = d.get("rope_theta", rope_params.get("rope_theta", 10000.0))
        scaling = d.get("rope_scaling") or None
        if scaling is None and rope_params.get("rope_type", "default") != "default":
            scaling = rope_params
        if scaling is not None:
            scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
            if scaling.get("rope_type", scaling.get("type")) == "default":
                scaling = None
        fields = dict(
            model_type=model_type,
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_layers=int(d["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(d.get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            rope_scaling=None if scaling is None else tuple(sorted(scaling.items())),
            max_position_embeddings=int(d.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            qk_norm=model_type == "qwen3",
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=eos_ids,
            pad_token_id=d.get("pad_token_id"),
            hf_config=tuple(sorted((k, _freeze(v)) for k, v in d.items())),
        )
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides) -> ModelConfig:
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"model folder {path} does not exist")
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{path} has no config.json (not a Hugging Face model folder)")
        with open(cfg_file) as f:
            return cls.from_hf_dict(json.load(f), **overrides)


def _freeze(v):
    """Make nested config values hashable so the dataclass stays frozen and hashable."""
    if isinstance(v, dict):
        return ("__dict__", tuple(sorted((k, _freeze(x)) for k, x in v.items())))
    if isinstance(v, list):
        return ("__list__", tuple(_freeze(x) for x in v))
    return v


def thaw(v):
    """Inverse of ``_freeze``: back to plain JSON values."""
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "__dict__":
        return {k: thaw(x) for k, x in v[1]}
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "__list__":
        return [thaw(x) for x in v[1]]
    return v


def hf_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """The original ``config.json`` content as plain JSON values."""
    return {k: thaw(v) for k, v in cfg.hf_config}
