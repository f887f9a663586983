"""Every variant of every experiment config builds and validates."""

import importlib.util
from pathlib import Path

import pytest

from rlpt_jax.train.experiment import from_config_dict

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "rlpt_qwen": ["qwen3_8b", "qwen3_8b_tpu", "qwen3_4b", "llama3_2_3b", "cpu", "tiny", None],
    "at2po_qwen": [
        "qwen3_4b",
        "qwen3_8b",
        "qwen2_5_7b",
        "grpo",
        "dapo",
        "gspo",
        "random_tree",
        "random_tree_atpo",
        "tree_vanilla",
        "cpu",
        "cpu_pairs",
        "tiny",
        "math_python",
        "math_python_tiny",
        None,
    ],
    "rlvr_qwen": ["qwen3_4b", "qwen3_8b", "cpu", "tiny", None],
}


def _module(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name,variant", [(n, v) for n, vs in VARIANTS.items() for v in vs])
def test_variant_builds(name, variant):
    exp = from_config_dict(_module(name).get_config(variant))
    assert exp.method in ("rlpt", "at2po", "rlvr")


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


def test_at2po_baselines_read_the_advantage_config():
    """The chain baselines and the Tree-GRPO / ablation variants train on each leaf's
    group advantage (the reference's node_adv_mode=vanilla), computed as
    ``config.advantage`` says (verl's GRPO: sample std); ATPO's own credit does not."""
    mod = _module("at2po_qwen")
    for variant in ("grpo", "dapo", "gspo", "random_tree", "random_tree_atpo", "tree_vanilla"):
        exp = from_config_dict(mod.get_config(variant))
        assert exp.credit.advantage == "vanilla", variant
        assert (exp.advantage.kind, exp.advantage.std_ddof) == ("grpo", 1), variant
    for variant in ("qwen3_4b", "qwen3_8b", "qwen2_5_7b", "cpu", "tiny"):
        assert from_config_dict(mod.get_config(variant)).credit.advantage == "value", variant


def test_at2po_table2_ablation_rows():
    """Random tree + GRPO loss → + ATPO loss → + entropy expansion → + credit assignment."""
    mod = _module("at2po_qwen")
    rows = [mod.get_config(v) for v in ("random_tree", "random_tree_atpo", "tree_vanilla", None)]
    rows = [from_config_dict(c) for c in rows]
    got = [(e.tree.expansion, e.loss.kind, e.credit.advantage) for e in rows]
    assert got == [
        ("random", "ppo", "vanilla"),
        ("random", "atpo", "vanilla"),
        ("entropy", "atpo", "vanilla"),
        ("entropy", "atpo", "value"),
    ]
    # Tree-GRPO is the GRPO baseline's loss on the paper's tree budget (22 leaves).
    tree_grpo = rows[0]
    assert (tree_grpo.loss.clip_low, tree_grpo.loss.clip_high, tree_grpo.loss.kl_coef) == (
        0.2,
        0.2,
        0.001,
    )
    assert {e.tree.num_leaves for e in rows} == {22}
    assert {e.model.arch for e in rows} == {"qwen3-4b"}


def test_qwen2_5_7b_variant_plans_without_the_checkpoint():
    from rlpt_jax.train.dry_run import model_config

    exp = from_config_dict(_module("at2po_qwen").get_config("qwen2_5_7b"))
    assert exp.model.arch == "qwen2.5-7b" and exp.loss.kind == "atpo"
    cfg = model_config(exp, exp.model.arch)
    assert cfg.qkv_bias and not cfg.tie_word_embeddings  # Qwen2's q/k/v biases, own head
    d, f, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_kv_heads * cfg.head_dim
    per_layer = 2 * d * d + 2 * d * kv + (d + 2 * kv) + 3 * d * f + 2 * d
    params = cfg.num_layers * per_layer + 2 * cfg.vocab_size * d + d
    assert 7.6e9 < params < 7.7e9  # the model card's 7.61B


def test_at2po_evaluates_full_test_sets():
    """The paper variants evaluate every question (no cap); the CPU ones stay capped."""
    mod = _module("at2po_qwen")
    for variant in ("qwen3_4b", "qwen3_8b", "qwen2_5_7b", "grpo", "random_tree"):
        assert from_config_dict(mod.get_config(variant)).eval.num_prompts is None, variant
    assert from_config_dict(mod.get_config("cpu")).eval.num_prompts == 32


class _Tok:
    def encode(self, text):
        return [3, 4]

    def decode(self, ids):
        return (
            {5: "<think> t </think> <answer> \\boxed{Paris} </answer>"}.get(ids[0], "")
            if ids
            else ""
        )


class _Engine:
    """Every row answers Paris at once."""

    def __init__(self):
        self.rows = 0

    def start(self, prompts):
        self.rows += len(prompts)
        return list(range(self.rows - len(prompts), self.rows))

    def fork(self, requests):
        return [self.fork_one(*r) for r in requests]

    def fork_one(self, row, length, m):
        self.rows += m
        return list(range(self.rows - m, self.rows))

    def extend(self, rows, tokens):
        pass

    def release(self, rows):
        pass

    def generate(self, rows, max_new_tokens):
        from rlpt_jax.rollout.tree import TurnSample

        return [TurnSample([5], [-0.1], [0.1], "eos") for _ in rows]

    def counters(self):
        return {}


class _NoSearch:
    def search(self, queries, topk):
        raise AssertionError("every row answers at once: nothing searches")


class _Policy:
    tokenizer = _Tok()
    use_chat_template = False
    pad_id = 0

    def engine(self, spec, seed):
        return _Engine()


def test_eval_average_weights_datasets_by_their_questions(tmp_path, monkeypatch):
    """Full sets through AT2POMethod.evaluate: 3 questions of which 3 right, 1 of which 0
    right. Weighted by questions (the paper's averages): 3/4, not the mean of 1 and 0."""
    from rlpt_jax.data.qa import QAExample
    from rlpt_jax.envs.search_env import SearchEnv
    from rlpt_jax.train import methods

    exp = from_config_dict(_module("at2po_qwen").get_config("qwen3_4b"))
    method = methods.AT2POMethod.__new__(methods.AT2POMethod)
    method.exp, method.math = exp, None  # exact match
    method.env = SearchEnv(_NoSearch())
    method.stop_strings = ("</search>",)
    method.eval_sets = {
        "big": [QAExample(f"b{i}", "Capital?", ("Paris",), "big") for i in range(3)],
        "small": [QAExample("s", "Capital?", ("Rome",), "small")],
    }
    metrics = method.evaluate(_Policy(), None, None).metrics
    assert (metrics["eval/em_big"], metrics["eval/em_small"]) == (1.0, 0.0)
    assert metrics["eval/em_avg"] == 0.75
