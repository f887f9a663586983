"""DAPO as published (Yu et al. 2025, arXiv 2503.14476): overlong reward shaping (eq. 13)
against hand-computed values, dynamic sampling (sec. 3.2) dropping and refilling groups in
both rollouts, and the AT²PO ``dapo`` baseline's settings."""

import types

import numpy as np
import pytest
from scripted_engine import ScriptedTurnEngine

from rlpt_jax.algos.advantages import AdvantageConfig
from rlpt_jax.algos.dapo import DAPOConfig, fill_groups, informative, overlong_penalty
from rlpt_jax.rollout.policy import Completion, RolloutConfig, SampleSpec
from rlpt_jax.rollout.rlpt import Scored, group_rollout
from rlpt_jax.rollout.tree import TurnSample

# -- overlong reward shaping ------------------------------------------------------------


def test_overlong_penalty_values():
    """L_max = 20, L_cache = 8: no penalty up to 12 tokens, then (12 − |y|)/8 down to −1
    at 20 tokens, −1 beyond."""
    lengths = [0, 12, 13, 16, 19, 20, 25]
    want = [0.0, 0.0, -1 / 8, -4 / 8, -7 / 8, -1.0, -1.0]
    np.testing.assert_allclose(overlong_penalty(lengths, 20, 8), want, rtol=0, atol=0)
    np.testing.assert_allclose(overlong_penalty(lengths, 20, 8, factor=0.5), np.multiply(want, 0.5))
    # DAPO's own setting: 16384 expected tokens + a 4096-token cache = 20480.
    np.testing.assert_allclose(
        overlong_penalty([16384, 18432, 20480], 20480, 4096), [0.0, -0.5, -1.0]
    )
    assert overlong_penalty([[5, 30]], 20, 0).tolist() == [[0.0, 0.0]]  # off


def test_overlong_penalty_errors():
    with pytest.raises(ValueError, match="must be in"):
        overlong_penalty([1], 10, 11)
    with pytest.raises(ValueError, match="overlong_buffer"):
        DAPOConfig(overlong_buffer=-1)
    with pytest.raises(ValueError, match="max_rounds"):
        DAPOConfig(max_rounds=0)


# -- dynamic sampling -----------------------------------------------------------------


def test_informative_groups():
    r = np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.2, 0.2, 0.2], [-1.0, 0.0, 0.0]])
    assert informative(r).tolist() == [False, True, False, True]


def test_fill_groups_drops_refills_and_counts():
    """Round 0 yields one informative group of three, round 1 two more: two rounds, three
    dropped, the surplus of the last round discarded."""
    rounds = [
        [("a", [1, 1]), ("b", [0, 1]), ("c", [0, 0])],
        [("d", [1, 1]), ("e", [1, 0]), ("f", [0, 1])],
        [("never", [0, 1])] * 3,
    ]
    seen = []

    def sample(r):
        seen.append(r)
        return rounds[r]

    kept, m = fill_groups(sample, lambda g: g[1], want=2, max_rounds=5)
    assert [g[0] for g in kept] == ["b", "e"] and seen == [0, 1]
    assert m == {
        "dapo/rounds": 2.0,
        "dapo/refills": 1.0,
        "dapo/dropped_groups": 3.0,
        "dapo/kept_groups": 2.0,
        "dapo/missing_groups": 0.0,
    }


def test_fill_groups_stops_at_the_round_cap():
    kept, m = fill_groups(lambda r: [(r, [0, 1]), (r, [1, 1])], lambda g: g[1], 4, 2)
    assert [g[0] for g in kept] == [0, 1]  # one informative group per round
    assert m["dapo/rounds"] == 2 and m["dapo/missing_groups"] == 2
    # Nothing informative at all: the first round's groups (zero advantages), counted.
    kept, m = fill_groups(lambda r: [(r, [1, 1])] * 3, lambda g: g[1], 2, 3)
    assert [g[0] for g in kept] == [0, 0]
    assert m["dapo/kept_groups"] == 0 and m["dapo/missing_groups"] == 2


# -- in the RLPT rollout (any reward function) -----------------------------------------


class _Tok:
    def encode(self, text):
        return [3, 4, 5]

    def decode(self, ids):
        return " ".join(str(i) for i in ids)


class _Policy:
    """Completion j of a prompt has j + 1 tokens (so lengths differ within a group)."""

    tokenizer = _Tok()
    pad_id = 0

    def __init__(self):
        self.calls = 0

    def sample(self, prompts, n, spec, seed):
        self.calls += 1
        return [
            [
                Completion([7] * (j + 1), np.full(j + 1, -1.0, np.float32), np.ones(j + 1), "stop")
                for j in range(n)
            ]
            for _ in prompts
        ]


def _task(name, rewards):
    return types.SimpleNamespace(prompt=name, name=name, rewards=rewards)


def _reward(tasks, texts):
    return Scored(
        np.array([t.rewards for t in tasks], float),
        [[None] * len(texts[0])] * len(tasks),
        {"calls": 1.0},
    )


def _rollout(tasks, refills, dapo, n=2):
    queue = list(refills)
    policy = _Policy()
    out = group_rollout(
        policy,
        tasks,
        _reward,
        SampleSpec(max_new_tokens=4),
        RolloutConfig(samples_per_prompt=n, max_prompt_tokens=16),
        AdvantageConfig(),
        seed=0,
        dapo=dapo,
        more_tasks=lambda: queue.pop(0),
    )
    return out, policy


def test_group_rollout_dynamic_sampling_drops_and_refills():
    first = [_task("solved", [1, 1]), _task("mixed", [1, 0])]
    refill = [_task("failed", [0, 0]), _task("mixed2", [0, 1])]
    out, policy = _rollout(first, [refill], DAPOConfig(dynamic_sampling=True, max_rounds=3))
    assert policy.calls == 2
    np.testing.assert_array_equal(out.rewards, [[1, 0], [0, 1]])  # the kept groups
    assert out.batch.shape[0] == 4  # 2 groups x 2 samples
    np.testing.assert_allclose(np.asarray(out.batch.advantages)[:, 3], [1, -1, -1, 1], atol=1e-5)
    m = out.metrics
    assert (m["dapo/refills"], m["dapo/dropped_groups"], m["dapo/missing_groups"]) == (1, 2, 0)
    assert m["calls"] == 2.0  # the reward's own metrics, summed over the rounds
    assert m["reward/mean"] == 0.5  # over every sampled group: (2 + 1 + 0 + 1) / 8


def test_group_rollout_without_dynamic_sampling_keeps_every_group():
    tasks = [_task("solved", [1, 1]), _task("mixed", [1, 0])]
    out, policy = _rollout(tasks, [], DAPOConfig())
    assert policy.calls == 1 and out.rewards.shape == (2, 2)
    assert not any(k.startswith("dapo/") for k in out.metrics)


def test_group_rollout_overlong_shaping_enters_reward_and_advantage():
    """max_new_tokens 4, L_cache 2: the 1-token completion is unpunished, the 4-token one
    gets −1, the 3-token one −1/2 (n = 4: lengths 1, 2, 3, 4)."""
    tasks = [_task("t", [1, 1, 1, 1])]
    out, _ = _rollout(tasks, [], DAPOConfig(overlong_buffer=2), n=4)
    np.testing.assert_allclose(out.rewards, [[1.0, 1.0, 0.5, 0.0]])
    assert out.metrics["reward/overlong_penalty"] == pytest.approx(-1.5 / 4)
    adv = np.asarray(out.batch.advantages)[:4, 3]
    assert adv[0] == adv[1] > 0 > adv[3]  # equal correctness, length decides


def test_rlpt_method_refills_from_its_stream():
    """RLPTMethod passes the config's DAPO settings and its data stream: with no
    prediction ever made every group scores 0, each round takes the next prompts, and
    the shortfall is counted once the rounds run out."""
    from rlpt_jax.data.segments import Sample
    from rlpt_jax.data.tasks import TaskConfig, make_task
    from rlpt_jax.rewards.judges import make_judge
    from rlpt_jax.train import methods
    from rlpt_jax.train.experiment import from_config_dict

    tasks = [
        make_task(Sample(f"d{i}", 2, "First.", "Second.", ("Third.",)), TaskConfig())
        for i in range(8)
    ]
    exp = from_config_dict(
        {
            "rollout": {"prompts_per_step": 2, "samples_per_prompt": 2},
            "dapo": {"dynamic_sampling": True, "max_rounds": 3},
        }
    )
    method = methods.RLPTMethod.__new__(methods.RLPTMethod)
    method.exp, method.judge = exp, make_judge({"kind": "lexical"})
    method.data = types.SimpleNamespace(train_tasks=tasks)
    method.stream = methods.pipeline.IndexStream(len(tasks), 0)
    _, m = method.rollout(_Policy(), SampleSpec(max_new_tokens=4), 0, 1)
    assert method.stream.position == 6  # three rounds of two prompts
    assert (m["dapo/rounds"], m["dapo/dropped_groups"], m["dapo/missing_groups"]) == (3, 6, 2)


# -- in the AT²PO rollout (a tree is a group) ------------------------------------------

ANSWERS = {
    101: "<think> a </think> <answer> \\boxed{Paris} </answer>",
    102: "<think> b </think> <answer> \\boxed{Berlin} </answer>",
}


class _TreeTok:
    def encode(self, text):
        return [3, 4]

    def decode(self, ids):
        return "".join(ANSWERS.get(i, "") for i in ids)


def _AlternatingEngine() -> ScriptedTurnEngine:
    """Every turn answers at once: even rows say Paris, odd rows Berlin."""
    return ScriptedTurnEngine(lambda r: TurnSample([101 + r % 2], [-0.5], [1.0], "eos"))


class _TreePolicy:
    tokenizer = _TreeTok()
    use_chat_template = False
    pad_id = 0

    def engine(self, spec, seed):
        return _AlternatingEngine()


class _NoSearch:
    def search(self, queries, topk):
        raise AssertionError("no search expected")


def test_at2po_dynamic_sampling_drops_trees_whose_leaves_agree():
    """Two chains per tree, one says Paris and one Berlin: a tree for a Paris (or Berlin)
    question has leaves 1 and 0, a Rome question's leaves both score 0 and is dropped."""
    from rlpt_jax.algos.tree_credit import CreditConfig
    from rlpt_jax.data.qa import QAExample
    from rlpt_jax.envs.search_env import SearchEnv
    from rlpt_jax.rollout.at2po import at2po_rollout
    from rlpt_jax.rollout.tree import TreeConfig

    def q(i, gold):
        return QAExample(f"q{i}", f"Question {i}?", (gold,), "toy")

    refills = [[q(2, "Rome"), q(3, "Berlin")]]
    out = at2po_rollout(
        _TreePolicy(),
        SearchEnv(_NoSearch()),
        [q(0, "Rome"), q(1, "Paris")],
        TreeConfig(num_chains=2, rounds=0, picks=0, expansion="chains"),
        CreditConfig(advantage="vanilla"),
        SampleSpec(max_new_tokens=4),
        None,
        -1.0,
        seed=0,
        dapo=DAPOConfig(dynamic_sampling=True, max_rounds=4),
        more_questions=lambda: refills.pop(0),
    )
    m = out.metrics
    assert (m["dapo/rounds"], m["dapo/dropped_groups"], m["dapo/kept_groups"]) == (2, 2, 2)
    assert m["rollout/leaves"] == 8.0  # every tree grown is in the reward metrics
    assert len(out.trees) == 2 and out.batch.shape[0] == 4
    assert [sorted(r.values()) for r in out.leaf_rewards] == [[0.0, 1.0], [0.0, 1.0]]
    adv = np.asarray(out.batch.advantages)
    # GRPO over two leaves 1/0 (population std 0.5): ±0.5 / (0.5 + 1e-6) on the answer token
    np.testing.assert_allclose(sorted(adv.max(axis=1)[:4]), [0, 0, 1, 1], atol=1e-5)
    np.testing.assert_allclose(sorted(adv.min(axis=1)[:4]), [-1, -1, 0, 0], atol=1e-5)


def test_at2po_overlong_shaping_uses_the_response_budget():
    """A one-token answer under max_response_tokens=2 with L_cache=2 sits one token into
    the buffer: penalty −1/2 on each leaf's reward."""
    from rlpt_jax.algos.tree_credit import CreditConfig
    from rlpt_jax.data.qa import QAExample
    from rlpt_jax.envs.search_env import SearchEnv
    from rlpt_jax.rollout.at2po import at2po_rollout
    from rlpt_jax.rollout.tree import TreeConfig

    out = at2po_rollout(
        _TreePolicy(),
        SearchEnv(_NoSearch()),
        [QAExample("q", "Capital?", ("Paris",), "toy")],
        TreeConfig(num_chains=2, rounds=0, picks=0, expansion="chains", max_response_tokens=2),
        CreditConfig(),
        SampleSpec(max_new_tokens=2),
        None,
        -1.0,
        seed=0,
        dapo=DAPOConfig(overlong_buffer=2),
    )
    assert sorted(out.leaf_rewards[0].values()) == [-0.5, 0.5]
    assert out.metrics["reward/overlong_penalty"] == -0.5


def test_at2po_dapo_variant_is_dapo_as_published():
    """The AT²PO paper's DAPO baseline: clip-higher, token-level loss, dynamic sampling,
    overlong shaping; the other variants keep the rollout plain."""
    from test_configs import _module

    from rlpt_jax.train.experiment import from_config_dict

    mod = _module("at2po_qwen")
    dapo = from_config_dict(mod.get_config("dapo"))
    assert (dapo.loss.kind, dapo.loss.clip_low, dapo.loss.clip_high) == ("ppo", 0.2, 0.28)
    assert dapo.loss.agg == "token_mean" and dapo.loss.kl_coef == 0.0
    assert dapo.dapo.dynamic_sampling and dapo.dapo.overlong_buffer == 2000
    assert 0 < dapo.dapo.overlong_buffer <= dapo.tree.max_response_tokens
    for variant in ("qwen3_4b", "grpo", "gspo", "random_tree", "cpu"):
        plain = from_config_dict(mod.get_config(variant)).dapo
        assert not plain.dynamic_sampling and plain.overlong_buffer == 0, variant
    rlpt = from_config_dict(_module("rlpt_qwen").get_config("qwen3_8b")).dapo
    assert not rlpt.dynamic_sampling and rlpt.overlong_buffer == 0


@pytest.mark.parametrize(
    ("group", "want"),
    [
        (AdvantageConfig(), 0.5 / (0.5 + 1e-6)),  # population std 0.5
        (AdvantageConfig(std_ddof=1), 0.5 / (np.sqrt(0.5) + 1e-6)),  # verl: sample std √½
        (AdvantageConfig(scale_by_std=False), 0.5),  # Dr. GRPO: mean-centred only
    ],
)
def test_at2po_vanilla_credit_reads_the_advantage_config(group, want):
    """``config.advantage`` reaches the AT²PO chain baselines (it used to be dead there):
    leaves 1 and 0 get ±``want`` on their answer tokens."""
    from rlpt_jax.algos.tree_credit import CreditConfig
    from rlpt_jax.data.qa import QAExample
    from rlpt_jax.envs.search_env import SearchEnv
    from rlpt_jax.rollout.at2po import at2po_rollout
    from rlpt_jax.rollout.tree import TreeConfig

    out = at2po_rollout(
        _TreePolicy(),
        SearchEnv(_NoSearch()),
        [QAExample("q", "Capital?", ("Paris",), "toy")],
        TreeConfig(num_chains=2, rounds=0, picks=0, expansion="chains"),
        CreditConfig(advantage="vanilla"),
        SampleSpec(max_new_tokens=4),
        None,
        -1.0,
        seed=0,
        advantage=group,
    )
    adv = np.asarray(out.batch.advantages)[:2]
    np.testing.assert_allclose(sorted(adv.sum(axis=1)), [-want, want], rtol=1e-6)


def test_unscored_completions_leave_the_loss_and_the_group_statistics():
    """A completion whose judge request failed (Scored.failed) is not rewarded 0: it gets
    no loss tokens and no say in its group's mean and std (issue 21: a reply that cannot
    be parsed as the protocol is a failure, not a zero reward)."""

    def reward(tasks, texts):
        failed = np.array([[False, False, True]])
        return Scored(np.array([[1.0, 0.0, 0.0]]), [[None] * 3], {}, failed)

    rollout = RolloutConfig(samples_per_prompt=3, max_prompt_tokens=16)
    out = group_rollout(
        _Policy(), [_task("t", None)], reward, SampleSpec(max_new_tokens=4), rollout,
        AdvantageConfig(), seed=0,
    )  # fmt: skip
    mask, adv = np.asarray(out.batch.loss_mask), np.asarray(out.batch.advantages)
    assert mask[0].sum() > 0 and mask[1].sum() > 0 and mask[2].sum() == 0
    # the scored pair [1, 0] alone: +1 and -1 (with the failed 0 counted: +1.41, -0.71)
    np.testing.assert_allclose([adv[0][mask[0] > 0][0], adv[1][mask[1] > 0][0]], [1, -1], atol=1e-5)
    assert out.metrics["rollout/unscored_masked"] == 1.0
