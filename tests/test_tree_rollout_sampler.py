"""AT²PO trees on the real sampler: forks reuse the cached prefix (prefill counters)."""

import numpy as np
import pytest
from flax import nnx

from hf_fixtures import tiny_llama_config
from rlpt_jax.envs.search_env import StepResult
from rlpt_jax.models.decoder import init_model
from rlpt_jax.models.tokenizer import Tokenizer
from rlpt_jax.rollout.policy import Policy, SampleSpec
from rlpt_jax.rollout.tree import TreeConfig, TreeRollout, flatten, release_rows


class TwoTurnEnv:
    """Turn 1 always searches (a fixed 5-token result), turn 2 always answers."""

    def __init__(self):
        self.calls = 0

    def step_batch(self, turns):
        out = []
        for _, calls in turns:
            if calls == 0:
                out.append(StepResult("search", False, " result one two", 1, "q", ""))
            else:
                out.append(StepResult("answer", True, "", calls, None, ""))
        return out


@pytest.fixture(scope="module")
def policy(embedded_model_dir):
    tok = Tokenizer(embedded_model_dir)
    cfg = tiny_llama_config(tok.vocab_size, max_position_embeddings=512)
    graphdef, params = nnx.split(init_model(cfg, seed=3), nnx.Param)
    p = Policy(graphdef, tok)
    p.set_params(params)
    return p


def test_tree_prefill_counts_unique_tokens_not_leaves(policy):
    tok = policy.tokenizer
    cfg = TreeConfig(
        num_chains=4, rounds=2, picks=3, alpha=0.05, max_response_tokens=40, max_turn_tokens=6
    )
    engine = policy.engine(SampleSpec(temperature=1.0, max_new_tokens=40), seed=1)
    ro = TreeRollout(engine, TwoTurnEnv(), tok.decode, tok.encode, cfg)
    prompts = [tok.encode("Question: where is the tower?"), tok.encode("Question: who?")]
    trees = ro.run(prompts)
    release_rows(engine, trees)
    assert [len(t.leaves()) for t in trees] == [cfg.num_leaves] * 2

    c = engine.counters()
    unique = sum(t.unique_tokens() for t in trees)
    model_tokens = sum(len(n.model_tokens) for t in trees for n in t.nodes)
    forks = cfg.rounds * cfg.picks * len(trees)
    # Every model token is decoded once; prompts and tool results are prefilled once; a
    # fork at a turn boundary re-feeds one token to recover the logits after the prefix.
    assert c["decoded_tokens"] == model_tokens
    assert c["prefilled_tokens"] == unique - model_tokens + forks
    # Independent chains would prefill every leaf's prompt and tool results separately.
    chains = sum(
        len(t.nodes[i].tool_tokens) for t in trees for leaf in t.leaves() for i in t.path(leaf)
    )
    assert c["prefilled_tokens"] < 0.5 * chains
    assert c["prefilled_tokens"] + c["decoded_tokens"] < sum(t.leaf_tokens() for t in trees)


def test_tree_logps_match_teacher_forcing(policy):
    """Token-in/token-out: rows built from the tree give the sampler's log-probs back."""
    import jax.numpy as jnp

    from rlpt_jax.train.steps import token_logprobs

    tok = policy.tokenizer
    cfg = TreeConfig(num_chains=2, rounds=1, picks=1, max_response_tokens=30, max_turn_tokens=5)
    engine = policy.engine(SampleSpec(temperature=1.0, max_new_tokens=30), seed=2)
    trees = TreeRollout(engine, TwoTurnEnv(), tok.decode, tok.encode, cfg).run(
        [tok.encode("Question: what?")]
    )
    release_rows(engine, trees)
    rows = flatten(trees, [np.zeros(len(trees[0].nodes))], pad_id=tok.pad_id)
    model = nnx.merge(policy.sampler.graphdef, policy.sampler.state)  # the sampled weights
    logp, _ = token_logprobs(
        model, jnp.asarray(rows.tokens), jnp.asarray(rows.positions), jnp.asarray(rows.segment_ids)
    )
    m = rows.loss_mask > 0
    np.testing.assert_allclose(np.asarray(logp)[m], rows.old_logp[m], atol=1e-5)
