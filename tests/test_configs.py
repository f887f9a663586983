"""Every variant of every experiment config builds and validates."""

import importlib.util
from pathlib import Path

import pytest

from rlpt_jax.train.experiment import from_config_dict

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "rlpt_qwen": ["qwen3_8b", "qwen3_8b_tpu", "qwen3_4b", "cpu", "tiny", None],
    "at2po_qwen": [
        "qwen3_4b",
        "qwen3_8b",
        "grpo",
        "dapo",
        "gspo",
        "random_tree",
        "cpu",
        "tiny",
        None,
    ],
}


def _module(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name,variant", [(n, v) for n, vs in VARIANTS.items() for v in vs])
def test_variant_builds(name, variant):
    exp = from_config_dict(_module(name).get_config(variant))
    assert exp.method in ("rlpt", "at2po")


def test_at2po_baselines_by_hand():
    mod = _module("at2po_qwen")
    grpo = from_config_dict(mod.get_config("grpo"))
    assert (grpo.tree.expansion, grpo.tree.num_leaves) == ("chains", 16)
    assert (grpo.loss.kind, grpo.loss.clip_high, grpo.loss.kl_coef) == ("ppo", 0.2, 0.001)
    dapo = from_config_dict(mod.get_config("dapo"))
    assert (dapo.loss.clip_low, dapo.loss.clip_high, dapo.loss.kl_coef) == (0.2, 0.28, 0.0)
    gspo = from_config_dict(mod.get_config("gspo"))
    assert (gspo.loss.kind, gspo.loss.clip_low, gspo.loss.clip_high) == ("gspo", 3e-4, 4e-4)
    paper = from_config_dict(mod.get_config(None))
    assert (paper.loss.kind, paper.tree.num_leaves, paper.model.arch) == ("atpo", 22, "qwen3-4b")


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_unknown_variant_is_a_clear_error(name):
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        _module(name).get_config("nope")
