"""Hugging Face checkpoint import and export.

Import reads ``config.json`` and ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``), checks the tensor set *before* loading anything — a missing,
unexpected or mis-shaped tensor is an error that names it — and places each tensor straight
onto its target sharding: with a mesh, every device receives only its own slice
(``jax.make_array_from_callback``); no device ever holds a full copy of a sharded weight.
A file that cannot be read (an invalid ``config.json``, a truncated safetensors file, a
broken index) is an error naming that file.

Export writes the same format back (config, safetensors, tokenizer files) so that
``transformers``, vLLM and SGLang load it. Layout conversions are pure transposes and
reshapes, so ``import(export(params))`` is bit-identical.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from rlpt_jax import parallel
from rlpt_jax.models.config import ConfigError, ModelConfig, hf_config_dict
from rlpt_jax.models.decoder import Decoder, abstract_model

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
)
_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


class CheckpointError(ValueError):
    """A checkpoint folder whose tensors do not match the model config."""


@dataclasses.dataclass(frozen=True)
class _Mapping:
    path: tuple  # path of the nnx Param inside the Decoder
    hf_shape: tuple[int, ...]
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    layer: int | None = None  # index along the stacked [L] axis of ``Decoder.layers``


def _ident(x):
    return x


def tensor_mappings(cfg: ModelConfig) -> dict[str, _Mapping]:
    """HF tensor name → where it lives in our model and how its layout differs."""
    d, f, n, k, h, v = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.vocab_size,
    )
    m: dict[str, _Mapping] = {}

    def proj_in(heads):  # HF [heads*H, D]  ↔  ours [D, heads, H]
        return (lambda w: w.T.reshape(d, heads, h), lambda w: w.reshape(d, heads * h).T)

    def linear():  # HF [out, in]  ↔  ours [in, out]
        return (lambda w: w.T, lambda w: w.T)

    m["model.embed_tokens.weight"] = _Mapping(("embed_tokens",), (v, d), _ident, _ident)
    m["model.norm.weight"] = _Mapping(("norm", "weight"), (d,), _ident, _ident)
    if not cfg.tie_word_embeddings:
        m["lm_head.weight"] = _Mapping(("lm_head",), (v, d), *linear())
    layer: dict[str, _Mapping] = {}
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        at = ("layers", "self_attn")
        layer[p + "self_attn.q_proj.weight"] = _Mapping((*at, "q_proj"), (n * h, d), *proj_in(n))
        layer[p + "self_attn.k_proj.weight"] = _Mapping((*at, "k_proj"), (k * h, d), *proj_in(k))
        layer[p + "self_attn.v_proj.weight"] = _Mapping((*at, "v_proj"), (k * h, d), *proj_in(k))
        layer[p + "self_attn.o_proj.weight"] = _Mapping(
            (*at, "o_proj"),
            (d, n * h),
            lambda w: w.T.reshape(n, h, d),
            lambda w: w.reshape(n * h, d).T,
        )
        if cfg.qkv_bias:
            for name, heads in (("q", n), ("k", k), ("v", k)):
                layer[p + f"self_attn.{name}_proj.bias"] = _Mapping(
                    (*at, f"{name}_bias"),
                    (heads * h,),
                    lambda b, heads=heads: b.reshape(heads, h),
                    lambda b: b.reshape(-1),
                )
        if cfg.o_bias:
            layer[p + "self_attn.o_proj.bias"] = _Mapping((*at, "o_bias"), (d,), _ident, _ident)
        if cfg.qk_norm:
            layer[p + "self_attn.q_norm.weight"] = _Mapping(
                (*at, "q_norm", "weight"), (h,), _ident, _ident
            )
            layer[p + "self_attn.k_norm.weight"] = _Mapping(
                (*at, "k_norm", "weight"), (h,), _ident, _ident
            )
        ml = ("layers", "mlp")
        layer[p + "mlp.gate_proj.weight"] = _Mapping((*ml, "gate_proj"), (f, d), *linear())
        layer[p + "mlp.up_proj.weight"] = _Mapping((*ml, "up_proj"), (f, d), *linear())
        layer[p + "mlp.down_proj.weight"] = _Mapping((*ml, "down_proj"), (d, f), *linear())
        layer[p + "input_layernorm.weight"] = _Mapping(
            ("layers", "input_layernorm", "weight"), (d,), _ident, _ident
        )
        layer[p + "post_attention_layernorm.weight"] = _Mapping(
            ("layers", "post_attention_layernorm", "weight"), (d,), _ident, _ident
        )
        m.update({name: dataclasses.replace(mp, layer=i) for name, mp in layer.items()})
        layer.clear()
    return m


_REPAIR = "re-download the model folder or export it again"


def read_model_config(path: Path, **overrides) -> ModelConfig:
    """``ModelConfig.from_pretrained`` whose errors name ``config.json`` (a bare JSON
    or ``KeyError`` message leaves a user guessing which file of which folder broke)."""
    cfg_file = path / "config.json"
    try:
        return ModelConfig.from_pretrained(path, **overrides)
    except ConfigError as e:
        raise ConfigError(f"{cfg_file}: {e}") from e
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        # ValueError covers invalid JSON and bytes that are not UTF-8.
        raise CheckpointError(
            f"{cfg_file} is not a usable Hugging Face model config "
            f"({type(e).__name__}: {e}); {_REPAIR}"
        ) from e


def _open_safetensors(f: Path):
    """``safe_open`` whose errors name the file (the library's do not)."""
    try:
        return safe_open(f, "np")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(
            f"{f} is not a readable safetensors file ({e}); it may be truncated or "
            f"corrupt: {_REPAIR}"
        ) from e


def _weight_map(index: Path) -> dict[str, str]:
    """Tensor name → shard file name, from a ``model.safetensors.index.json``."""
    try:
        weight_map = json.loads(index.read_bytes())["weight_map"]
        if not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("a shard name is not a string")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"{index} is not a usable safetensors index, which needs a 'weight_map' of "
            f"tensor name -> shard file ({type(e).__name__}: {e}); {_REPAIR}"
        ) from e
    return weight_map


def _tensor_files(path: Path) -> dict[str, Path]:
    """Tensor name → safetensors file that holds it."""
    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index.is_file():
        files = {name: path / fname for name, fname in _weight_map(index).items()}
        for f in set(files.values()):
            if not f.is_file():
                raise CheckpointError(f"shard {f.name} listed in {index.name} is missing")
        return files
    if single.is_file():
        with _open_safetensors(single) as fh:
            return {name: single for name in fh.keys()}
    raise CheckpointError(f"{path} has neither model.safetensors nor model.safetensors.index.json")


def _shapes(files: dict[str, Path]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for f in sorted(set(files.values())):
        with _open_safetensors(f) as fh:
            for name in fh.keys():
                if files.get(name) == f:
                    shapes[name] = tuple(fh.get_slice(name).get_shape())
    return shapes


def check_tensors(cfg: ModelConfig, found: dict[str, tuple[int, ...]]) -> None:
    """Raise CheckpointError naming every missing, unexpected or mis-shaped tensor."""
    expected = tensor_mappings(cfg)
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if cfg.tie_word_embeddings and "lm_head.weight" in extra:
        extra.remove("lm_head.weight")  # some tied checkpoints store the copy; checked on load
    bad = [
        f"{name}: checkpoint {found[name]} vs config {expected[name].hf_shape}"
        for name in sorted(set(expected) & set(found))
        if tuple(found[name]) != expected[name].hf_shape
    ]
    problems = []
    if missing:
        problems.append(
            f"missing tensors: {', '.join(missing[:10])}"
            + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else "")
        )
    if extra:
        problems.append(
            f"unexpected tensors: {', '.join(extra[:10])}"
            + (f" (+{len(extra) - 10} more)" if len(extra) > 10 else "")
        )
    if bad:
        problems.append("wrong shapes: " + "; ".join(bad[:10]))
    if problems:
        raise CheckpointError(
            f"checkpoint does not match its config ({cfg.model_type}): " + " | ".join(problems)
        )


def load_hf(
    path: str | Path,
    *,
    mesh: Mesh | None = None,
    rules: parallel.Rules = parallel.TRAIN_RULES,
    param_dtype: str | None = None,
    dtype: str | None = None,
    batch_invariant: bool = False,
    attention: str | None = None,
    attention_block: int | None = None,
) -> Decoder:
    """Load a Hugging Face model folder into a ``Decoder``.

    With ``mesh``, every parameter is created directly with the sharding the logical-axis
    ``rules`` give it. ``param_dtype`` / ``dtype`` override storage and compute dtypes;
    ``batch_invariant``, ``attention`` and ``attention_block`` set those ``ModelConfig``
    fields (None: the default).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist")
    given = dict(
        param_dtype=param_dtype, dtype=dtype, attention=attention, attention_block=attention_block
    )
    overrides = {k: v for k, v in given.items() if v is not None}
    overrides["batch_invariant"] = bool(batch_invariant)
    cfg = read_model_config(path, **overrides)
    files = _tensor_files(path)
    check_tensors(cfg, _shapes(files))

    graphdef, abstract = nnx.split(abstract_model(cfg))
    shardings = None if mesh is None else parallel.state_shardings(abstract, mesh, rules)
    flat = dict(nnx.to_flat_state(abstract))
    flat_sh = None if shardings is None else dict(nnx.to_flat_state(shardings))
    np_dtype = _NP_DTYPES[cfg.param_dtype]

    handles = {f: _open_safetensors(f) for f in set(files.values())}
    by_param: dict[tuple, list[tuple[str, _Mapping]]] = {}
    for name, mp in tensor_mappings(cfg).items():
        by_param.setdefault(mp.path, []).append((name, mp))
    for path, parts in by_param.items():
        # A stacked layer parameter gathers its L tensors, one at a time per parameter.
        pieces = [mp.to_ours(handles[files[name]].get_tensor(name)) for name, mp in parts]
        host = pieces[0] if parts[0][1].layer is None else np.stack(pieces)
        host = np.ascontiguousarray(host.astype(np_dtype))
        del pieces
        var = flat[path]
        if flat_sh is None:
            arr = jnp.asarray(host)
        else:
            sharding = flat_sh[path].get_value()
            arr = jax.make_array_from_callback(host.shape, sharding, lambda idx, a=host: a[idx])
        var.set_value(arr)
    if cfg.tie_word_embeddings and "lm_head.weight" in files:
        head = handles[files["lm_head.weight"]].get_tensor("lm_head.weight")
        embed = handles[files["model.embed_tokens.weight"]].get_tensor("model.embed_tokens.weight")
        if not np.array_equal(head, embed):
            raise CheckpointError(
                "tie_word_embeddings=True but lm_head.weight differs from the embedding"
            )
    state = nnx.from_flat_state(flat)
    return nnx.merge(graphdef, state)


def _to_host(x: jax.Array) -> np.ndarray:
    if jax.process_count() > 1 and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def export_hf(
    model: Decoder,
    out_dir: str | Path,
    *,
    tokenizer_dir: str | Path | None = None,
    max_shard_bytes: int = 5 * 1024**3,
) -> Path:
    """Write ``model`` as a Hugging Face folder (config, safetensors, tokenizer files).

    Weights keep the model's parameter dtype. Files larger than ``max_shard_bytes`` are split
    into shards with a ``model.safetensors.index.json``, as ``transformers`` does. The
    layers may be stacked or a list (``decoder.unstacked``).
    """
    cfg = model.cfg
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    tensors = {}
    mappings = tensor_mappings(cfg)
    for path, var in flat.items():  # one parameter on the host at a time
        value = _to_host(var.get_value())
        layer = None  # the index of a layer held in a list (``decoder.unstacked``)
        if path[0] == "layers" and isinstance(path[1], int):
            layer, path = path[1], ("layers", *path[2:])
        for name, mp in mappings.items():
            if mp.path != path or layer not in (None, mp.layer):
                continue
            part = value if mp.layer is None or layer is not None else value[mp.layer]
            tensors[name] = np.ascontiguousarray(mp.to_hf(part))
    tensors = {name: tensors[name] for name in mappings}  # Hugging Face's order

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, t in tensors.items():
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.nbytes
    meta = {"format": "pt"}
    for stale in out.glob("model*.safetensors*"):
        stale.unlink()
    if len(shards) == 1:
        save_file(shards[0], out / "model.safetensors", metadata=meta)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, out / fname, metadata=meta)
            weight_map.update({name: fname for name in shard})
        index = {
            "metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
            "weight_map": weight_map,
        }
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    hf = hf_config_dict(cfg) if cfg.hf_config else {}
    hf.update(_structural_hf_config(cfg, hf))
    hf["torch_dtype"] = cfg.param_dtype
    hf.pop("dtype", None)
    (out / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True))

    if tokenizer_dir is not None:
        export_tokenizer(tokenizer_dir, out)
    return out


def export_tokenizer(tokenizer_dir: str | Path, out_dir: str | Path) -> list[str]:
    """Copy the tokenizer files of ``tokenizer_dir`` into ``out_dir``; the names copied.

    ``tokenizer_config.json`` is rewritten so that transformers 4.x loads it as well as 5.x:
    transformers 5 saves ``"tokenizer_class": "TokenizersBackend"``, a class 4.x does not
    have ("Tokenizer class TokenizersBackend does not exist"), and its special tokens as a
    list under ``extra_special_tokens``, where 4.x expects a dict. Both describe a plain
    ``tokenizer.json`` tokenizer, which every release loads as ``PreTrainedTokenizerFast``
    with ``additional_special_tokens``. A chat template kept only in ``chat_template.jinja``
    (which older releases do not read) is also written into the config.
    """
    src_dir, out = Path(tokenizer_dir), Path(out_dir)
    copied = []
    for fname in TOKENIZER_FILES:
        src = src_dir / fname
        if not src.is_file():
            continue
        if fname == "tokenizer_config.json":
            config = portable_tokenizer_config(json.loads(src.read_text(encoding="utf-8")), src_dir)
            (out / fname).write_text(
                json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
            )
        else:
            shutil.copy(src, out / fname)
        copied.append(fname)
    if not copied:
        raise FileNotFoundError(f"no tokenizer files found in {tokenizer_dir}")
    return copied


def portable_tokenizer_config(config: dict, tokenizer_dir: str | Path) -> dict:
    """``config`` (a ``tokenizer_config.json``) in the form transformers 4.x and 5.x both load."""
    config = dict(config)
    has_json = (Path(tokenizer_dir) / "tokenizer.json").is_file()
    if config.get("tokenizer_class") == "TokenizersBackend" and has_json:
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):
        del config["extra_special_tokens"]
        if extra and "additional_special_tokens" not in config:
            config["additional_special_tokens"] = extra
    jinja = Path(tokenizer_dir) / "chat_template.jinja"
    if "chat_template" not in config and jinja.is_file():
        config["chat_template"] = jinja.read_text(encoding="utf-8")
    return config


def _structural_hf_config(cfg: ModelConfig, base: dict) -> dict:
    """The config.json fields that define the architecture, from our config."""
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[
        cfg.model_type
    ]
    d = {
        "architectures": [arch],
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "hidden_act": "silu",
    }
    if "rope_parameters" not in base:
        d["rope_theta"] = cfg.rope_theta
        if cfg.rope_scaling is not None:
            d["rope_scaling"] = cfg.rope_scaling_dict
    if cfg.model_type != "qwen2":
        d["attention_bias"] = cfg.qkv_bias
    if cfg.bos_token_id is not None:
        d["bos_token_id"] = cfg.bos_token_id
    if cfg.eos_token_ids:
        d["eos_token_id"] = (
            cfg.eos_token_ids[0] if len(cfg.eos_token_ids) == 1 else list(cfg.eos_token_ids)
        )
    return d
