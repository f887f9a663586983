"""rollout.sampler_rows bounds the sequences in the sampler at once, from the config down."""

import numpy as np

from rlpt_jax.algos.advantages import AdvantageConfig
from rlpt_jax.data.segments import Sample
from rlpt_jax.data.tasks import TaskConfig, make_task
from rlpt_jax.rewards.judges import make_judge
from rlpt_jax.rollout.policy import Completion, RolloutConfig, SampleSpec
from rlpt_jax.rollout.rlpt import rlpt_rollout


class _Tok:
    def encode(self, text):
        return [3, 4, 5]

    def decode(self, ids):
        return "<|startofprediction|>Second one.<|endofprediction|>"


class RecordingPolicy:
    """Answers every prompt with the same completion; records the rows per call."""

    tokenizer = _Tok()
    pad_id = 0

    def __init__(self):
        self.rows = []

    def sample(self, prompts, n, spec, seed):
        self.rows.append(len(prompts) * n)
        done = Completion([7, 8], np.zeros(2, np.float32), np.zeros(2, np.float32), "stop")
        return [[done] * n for _ in prompts]


def _tasks(k):
    return [
        make_task(Sample(f"d{i}", 2, "First.", "Second one.", ("Third.",)), TaskConfig())
        for i in range(k)
    ]


def test_rlpt_rollout_samples_in_waves_of_sampler_rows():
    policy = RecordingPolicy()
    out = rlpt_rollout(
        policy,
        _tasks(5),
        make_judge({"kind": "lexical"}),
        SampleSpec(max_new_tokens=4),
        RolloutConfig(samples_per_prompt=4, max_prompt_tokens=64, sampler_rows=8),
        AdvantageConfig(),
        seed=0,
    )
    assert policy.rows == [8, 8, 4] and max(policy.rows) <= 8
    assert out.rewards.shape == (5, 4)


def test_method_passes_sampler_rows_to_the_rollout(monkeypatch):
    """The config value reaches the rollout (it used to be validated, planned, and dropped)."""
    from rlpt_jax.rollout import rlpt as rollout_rlpt
    from rlpt_jax.train import methods
    from rlpt_jax.train.experiment import from_config_dict

    seen = {}

    def fake_rollout(policy, tasks, judge, spec, cfg, *args, **kwargs):
        seen["sampler_rows"] = cfg.sampler_rows
        raise StopIteration

    monkeypatch.setattr(rollout_rlpt, "rlpt_rollout", fake_rollout)
    exp = from_config_dict({"rollout": {"sampler_rows": 24, "prompts_per_step": 2}})
    method = methods.RLPTMethod.__new__(methods.RLPTMethod)
    method.exp, method.judge = exp, make_judge({"kind": "lexical"})
    method.data = type("D", (), {"train_tasks": _tasks(3)})()
    method.stream = methods.pipeline.IndexStream(3, 0)
    try:
        method.rollout(RecordingPolicy(), SampleSpec(), 0, 1)
    except StopIteration:
        pass
    assert seen["sampler_rows"] == 24


def test_at2po_engine_cache_is_bounded_by_the_tree_budget():
    """The tree's engine is sized by the trajectory budget (tree.max_response_tokens),
    not by rollout.max_new_tokens. Before: the AT²PO cpu variant (384-token trees, the
    base config's 6192 new tokens) held 8192-slot caches, 6 GB at 16 rows, and its run
    was killed for memory on a 23 GB machine."""
    from scripted_engine import ScriptedTurnEngine, TextTokenizer

    from rlpt_jax.algos.tree_credit import CreditConfig
    from rlpt_jax.data.qa import QAExample
    from rlpt_jax.envs.search_env import SearchEnv
    from rlpt_jax.rollout.at2po import at2po_rollout
    from rlpt_jax.rollout.tree import TreeConfig, TurnSample

    class Policy:
        tokenizer = TextTokenizer()
        use_chat_template = False
        pad_id = 0
        budgets: list[int] = []

        def engine(self, spec, seed):
            self.budgets.append(spec.max_new_tokens)
            eos = TurnSample([10], [-0.5], [1.0], "eos")
            return ScriptedTurnEngine(lambda r: eos)

    policy = Policy()
    at2po_rollout(
        policy,
        SearchEnv(object()),  # no turn searches
        [QAExample("q", "Capital?", ("Paris",), "toy")],
        TreeConfig(num_chains=2, rounds=0, picks=0, expansion="chains", max_response_tokens=64),
        CreditConfig(),
        SampleSpec(max_new_tokens=6192),
        None,
        -1.0,
        seed=0,
    )
    assert policy.budgets == [64]


def test_at2po_evaluation_answers_in_waves_of_sampler_rows():
    """Before: every question of a dataset shared one engine session; the cpu variant's
    evaluation of 194 questions was killed for memory (22.8 GB) on a 23 GB machine."""
    from scripted_engine import ScriptedTurnEngine, TextTokenizer

    from rlpt_jax.data.qa import QAExample
    from rlpt_jax.envs.search_env import SearchEnv
    from rlpt_jax.rollout.at2po import evaluate_qa
    from rlpt_jax.rollout.tree import TreeConfig, TurnSample

    class Engine(ScriptedTurnEngine):
        def start(self, prompts):
            starts.append(len(prompts))
            return super().start(prompts)

    class Policy:
        tokenizer = TextTokenizer()
        use_chat_template = False
        pad_id = 0

        def engine(self, spec, seed):
            return Engine(lambda r: TurnSample([10], [-0.5], [1.0], "eos"))

    starts: list[int] = []
    questions = [QAExample(f"q{i}", "Capital?", ("Paris",), "toy") for i in range(5)]
    metrics, per = evaluate_qa(
        Policy(), SearchEnv(object()), {"toy": questions}, TreeConfig(), None, -1.0, 8, (),
        sampler_rows=2,
    )  # fmt: skip
    assert starts == [2, 2, 1] and len(per["eval/em_toy"]) == 5
