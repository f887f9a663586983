"""The embedded SmolLM2: conversion from GGUF and logits against transformers."""

import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors import safe_open

from rlpt_jax import assets
from rlpt_jax.models.hf_io import load_hf

SENTENCE = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, "
    "France. It is named after the engineer Gustave Eiffel, whose company designed "
    "and built the tower from 1887 to 1889."
)


@pytest.fixture(scope="module")
def hf_from_gguf():
    from transformers import AutoModelForCausalLM

    p = assets.smollm2_gguf_path()
    return AutoModelForCausalLM.from_pretrained(
        str(p.parent), gguf_file=p.name, torch_dtype=torch.float32
    ).eval()


def test_conversion_equals_transformers_gguf_reader(embedded_model_dir, hf_from_gguf):
    ref = {k: v.detach().float().numpy() for k, v in hf_from_gguf.state_dict().items()}
    with safe_open(embedded_model_dir / "model.safetensors", "np") as f:
        ours = {k: f.get_tensor(k) for k in f.keys()}
    ref.pop("lm_head.weight")  # tied: transformers exposes the embedding twice
    assert set(ours) == set(ref)
    for name in ours:
        assert ours[name].shape == ref[name].shape, name
        assert np.max(np.abs(ours[name] - ref[name])) <= 1e-6, name


def test_unpermute_is_inverse_of_llama_cpp_permute():
    from rlpt_jax.models.embedded import unpermute_rows

    heads, hd, d = 3, 8, 5
    w = np.arange(heads * hd * d, dtype=np.float32).reshape(heads * hd, d)
    # llama.cpp's converter: per head, [2, H/2] rows -> [H/2, 2]
    permuted = w.reshape(heads, 2, hd // 2, d).swapaxes(1, 2).reshape(w.shape)
    assert not np.array_equal(permuted, w)
    np.testing.assert_array_equal(unpermute_rows(permuted, heads), w)


def test_logits_match_transformers_on_converted_folder(embedded_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    ids = tok(SENTENCE)["input_ids"]
    assert len(ids) >= 32
    ids = np.asarray(ids[:32])[None]
    ref_model = AutoModelForCausalLM.from_pretrained(
        embedded_model_dir, torch_dtype=torch.float32
    ).eval()
    with torch.no_grad():
        ref = ref_model(input_ids=torch.tensor(ids)).logits.numpy()[0]
    model = load_hf(embedded_model_dir)
    ours, _ = model(jnp.asarray(ids), jnp.arange(32)[None])
    ours = np.asarray(ours)[0]
    assert np.max(np.abs(ours - ref)) <= 1e-3
    np.testing.assert_array_equal(ours.argmax(-1), ref.argmax(-1))


def test_second_call_reuses_cache(embedded_model_dir):
    from rlpt_jax.models import embedded

    stamp = (embedded_model_dir / "model.safetensors").stat().st_mtime_ns
    again = embedded.smollm2_dir(verbose=False)
    assert again == embedded_model_dir
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp


def test_conversion_imports_neither_torch_nor_transformers(embedded_model_dir, tmp_path):
    """The conversion is ``gguf`` + ``tokenizers`` + ``safetensors`` only, and deterministic."""
    out = tmp_path / "converted"
    code = (
        "import sys\n"
        "from rlpt_jax import assets\n"
        "from rlpt_jax.models import embedded\n"
        f"embedded.convert(assets.smollm2_gguf_path(), {str(out)!r})\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "[]"
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (out / name).read_bytes() == (embedded_model_dir / name).read_bytes(), name


@pytest.mark.parametrize("other_first", [True, False])
def test_concurrent_conversions_keep_one_complete_folder(tmp_path, monkeypatch, other_first):
    """Two processes converting into one cache (parallel tests, compare.py's runs): the one
    that finishes second keeps the first one's complete folder, whether it sees it before
    moving its own (other_first) or only when the move fails, and never raises."""
    from rlpt_jax.models import embedded

    final = tmp_path / f"{embedded.NAME}-v{embedded._FORMAT_VERSION}"

    def other_process_finishes():
        final.mkdir()
        (final / "theirs").write_text("x")
        (final / ".complete").write_text("ok\n")

    def fake_convert(_gguf, out):
        (Path(out) / "ours").write_text("y")
        if other_first:
            other_process_finishes()

    real_replace = os.replace

    def replace_after_the_other(src, dst):
        if not other_first and Path(dst) == final:
            other_process_finishes()
        return real_replace(src, dst)

    monkeypatch.setattr(embedded, "convert", fake_convert)
    monkeypatch.setattr(embedded.os, "replace", replace_after_the_other)
    assert embedded.smollm2_dir(tmp_path, verbose=False) == final
    assert sorted(p.name for p in final.iterdir()) == [".complete", "theirs"]
    assert [p.name for p in tmp_path.iterdir()] == [final.name]  # no temporary folder left
