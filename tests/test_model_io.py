"""Export/import round trips, KV-cache decoding, sharded import, and bad checkpoints."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file, save_file

from hf_fixtures import right_padded_batch, save_tiny
from rlpt_jax import parallel
from rlpt_jax.models.config import ConfigError
from rlpt_jax.models.decoder import Cache
from rlpt_jax.models.hf_io import CheckpointError, export_hf, load_hf


def _flat_params(model):
    return {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _forward(model, tokens, mask):
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    logits, _ = model(jnp.asarray(tokens), jnp.asarray(positions), attention_mask=jnp.asarray(mask))
    return np.asarray(logits)


@pytest.mark.parametrize("kind", ["qwen2", "llama_tied"])
def test_export_reload_in_transformers_and_round_trip(kind, tmp_path):
    from transformers import AutoModelForCausalLM

    model = load_hf(save_tiny(kind, tmp_path / "src"))
    # Perturb the parameters so the export is not just a copy of the source files.
    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda x: x * 1.01 + 0.001, state)
    model = nnx.merge(graphdef, state)

    out = export_hf(model, tmp_path / "export")
    ref = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    tokens, mask = right_padded_batch(model.cfg.vocab_size)
    with torch.no_grad():
        theirs = ref(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits
    ours = _forward(model, tokens, mask)
    real = mask.astype(bool)
    assert np.max(np.abs(ours[real] - theirs.numpy()[real])) <= 1e-5

    again = load_hf(out)
    a, b = _flat_params(model), _flat_params(again)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def test_export_shards_large_models_with_an_index(tmp_path):
    model = load_hf(save_tiny("qwen3", tmp_path / "src"))
    out = export_hf(model, tmp_path / "sharded", max_shard_bytes=20_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    again = load_hf(out)
    a, b = _flat_params(model), _flat_params(again)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_bfloat16_params_round_trip(tmp_path):
    model = load_hf(save_tiny("qwen3", tmp_path / "src"), param_dtype="bfloat16", dtype="bfloat16")
    assert model.embed_tokens[...].dtype == jnp.bfloat16
    out = export_hf(model, tmp_path / "bf16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    again = load_hf(out, param_dtype="bfloat16")
    a, b = _flat_params(model), _flat_params(again)
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["qwen3", "llama3"])
def test_kv_cache_decode_matches_full_forward(kind, tmp_path):
    model = load_hf(save_tiny(kind, tmp_path / kind))
    tokens, mask = right_padded_batch(model.cfg.vocab_size, lengths=(11, 7, 4))
    full = _forward(model, tokens, mask)
    b, t = tokens.shape
    cache = Cache.init(model.cfg, b, 16)
    step_logits = np.zeros_like(full)
    for i in range(t):
        real = mask[:, i].astype(bool)
        pos = np.where(real, i, -1)[:, None]
        logits, cache = model(
            jnp.asarray(tokens[:, i : i + 1]),
            jnp.asarray(pos),
            cache=cache,
            write_index=jnp.full((b,), i, jnp.int32),
        )
        step_logits[:, i] = np.asarray(logits)[:, 0]
    real = mask.astype(bool)
    assert np.max(np.abs(step_logits[real] - full[real])) <= 1e-5


def test_prefill_then_decode_matches_full_forward(tmp_path):
    """A ragged prefill (padding at position -1) followed by per-row continuation."""
    model = load_hf(save_tiny("qwen2", tmp_path / "q2"))
    tokens, mask = right_padded_batch(model.cfg.vocab_size, lengths=(9, 5, 7))
    full = _forward(model, tokens, mask)
    lengths = mask.sum(1)
    b = tokens.shape[0]
    prompt = 4
    cache = Cache.init(model.cfg, b, 12)
    pos = np.broadcast_to(np.arange(prompt), (b, prompt))
    _, cache = model(jnp.asarray(tokens[:, :prompt]), jnp.asarray(pos), cache=cache)
    for i in range(prompt, lengths.max()):
        real = i < lengths
        pos = np.where(real, i, -1)[:, None]
        logits, cache = model(
            jnp.asarray(tokens[:, i : i + 1]),
            jnp.asarray(pos),
            cache=cache,
            write_index=jnp.full((b,), i, jnp.int32),
        )
        got = np.asarray(logits)[:, 0]
        assert np.max(np.abs(got[real] - full[real, i])) <= 1e-5


def test_sharded_import_and_forward_equal_single_device(tmp_path):
    assert jax.device_count() >= 8, "conftest must simulate 8 CPU devices"
    path = save_tiny("qwen3", tmp_path / "q3")
    single = load_hf(path)
    mesh = parallel.make_mesh(parallel.MeshConfig(data=2, fsdp=2, tensor=2))
    sharded = load_hf(path, mesh=mesh)

    # Parameters really are sharded as the rules say.
    q = sharded.layers.self_attn.q_proj[...]  # [L=2, D=48, N=6, H=8]: embed->fsdp, heads->tensor
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    assert q.addressable_shards[0].data.shape == (2, 24, 3, 8)
    emb = sharded.embed_tokens[...]  # [V=97, D=48]: vocab not divisible by 2 -> replicated
    assert emb.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    gate = sharded.layers.mlp.gate_proj[...]
    assert gate.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")

    tokens, mask = right_padded_batch(single.cfg.vocab_size, lengths=(11, 7, 4, 9))
    ref = _forward(single, tokens, mask)

    @nnx.jit
    def fwd(m, tok, pos, msk):
        return m(tok, pos, attention_mask=msk)[0]

    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    batch = parallel.shard_batch({"t": tokens, "p": positions, "m": mask}, mesh)
    out = np.asarray(fwd(sharded, batch["t"], batch["p"], batch["m"]))
    real = mask.astype(bool)
    assert np.max(np.abs(out[real] - ref[real])) <= 1e-5


# -- bad input -----------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_hf(tmp_path / "nope")


def test_folder_without_weights(tmp_path):
    path = save_tiny("qwen3", tmp_path / "m")
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="neither model.safetensors"):
        load_hf(path)


def _edit_tensors(path, fn):
    f = path / "model.safetensors"
    tensors = load_file(f)
    fn(tensors)
    save_file(tensors, f, metadata={"format": "pt"})


def test_missing_tensor_is_named(tmp_path):
    path = save_tiny("qwen3", tmp_path / "m")
    _edit_tensors(path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors: model\.layers\.1\.mlp\.up_proj"):
        load_hf(path)


def test_extra_tensor_is_named(tmp_path):
    path = save_tiny("qwen3", tmp_path / "m")
    _edit_tensors(
        path, lambda t: t.__setitem__("model.layers.0.extra.weight", np.zeros(3, np.float32))
    )
    with pytest.raises(CheckpointError, match=r"unexpected tensors: model\.layers\.0\.extra"):
        load_hf(path)


def test_wrong_shape_is_named(tmp_path):
    path = save_tiny("qwen3", tmp_path / "m")

    def shrink(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][
            :8
        ]

    _edit_tensors(path, shrink)
    with pytest.raises(
        CheckpointError, match=r"wrong shapes: model\.layers\.0\.self_attn\.k_proj\.weight"
    ):
        load_hf(path)


def test_unsupported_model_type(tmp_path):
    path = save_tiny("qwen3", tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "mixtral"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="unsupported model_type 'mixtral'"):
        load_hf(path)


def test_sharded_checkpoint_with_missing_shard(tmp_path):
    model = load_hf(save_tiny("qwen3", tmp_path / "src"))
    out = export_hf(model, tmp_path / "sharded", max_shard_bytes=20_000)
    shard = sorted(out.glob("model-*.safetensors"))[-1]
    shutil.move(shard, tmp_path / "moved")
    with pytest.raises(CheckpointError, match=f"shard {shard.name} .* is missing"):
        load_hf(out)


def test_cache_write_past_the_end_never_overwrites_earlier_slots(tmp_path):
    model = load_hf(save_tiny("qwen3", tmp_path / "q3"))
    cache = Cache.init(model.cfg, 1, 4)
    tok = jnp.asarray([[5, 6, 7]])
    _, cache = model(tok, jnp.asarray([[0, 1, 2]]), cache=cache)
    before = np.stack(cache.k)[..., :3, :]  # [L, B, K, S, H]
    # 3 tokens written at slot 2 of a 4-slot cache: slot 2 and 3 are written, the rest dropped
    _, cache = model(
        tok, jnp.asarray([[2, 3, 4]]), cache=cache, write_index=jnp.asarray([2], jnp.int32)
    )
    np.testing.assert_array_equal(np.stack(cache.k)[..., :2, :], before[..., :2, :])
    np.testing.assert_array_equal(np.asarray(cache.pos), [[0, 1, 2, 3]])
