"""The AT²PO math agent (``configs/at2po_qwen.py:math_python``): RLVR's problems as
questions, ``<python>`` calls run in the sandbox, the boxed answer checked by the math
verifier (a reasoning-gym generator's own scorer for its problems).

The method-level tests drive the real method (data, sandbox, verifier, rollout, credit)
with a scripted policy that runs the problem's expression in Python and answers what it
printed; the end-to-end test runs the tiny variant through ``launch/train.py``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scripted_engine import TextTokenizer
from test_python_tool import make_tool
from test_train_e2e import _check_run

from rlpt_jax.data.math_problems import MathProblem
from rlpt_jax.envs.python_tool import PythonResult
from rlpt_jax.metrics import read_jsonl
from rlpt_jax.rewards.qa import at2po_reward
from rlpt_jax.rollout.policy import SampleSpec
from rlpt_jax.rollout.tree import TurnSample
from rlpt_jax.train import methods
from rlpt_jax.train.experiment import ExperimentConfigError, from_config_dict

ROOT = Path(__file__).resolve().parents[1]
CHAIN_SUM = "rg:chain_sum:min_terms=2,max_terms=2,max_digits=1"


# -- the reward ------------------------------------------------------------------------------


def test_the_verifier_verdict_replaces_exact_match():
    ok = "<think>t</think><python>print(1/2)</python> <result></result>"
    ok += "<answer>\\boxed{\\frac{1}{2}}</answer>"
    assert at2po_reward(ok, "0.5", -1.0, True, ("python",))[0] == 0.0  # EM: strings differ
    r, d = at2po_reward(ok, "0.5", -1.0, True, ("python",), correct=True)
    assert (r, d["em"], d["format_ok"], d["answer"]) == (1.0, 1.0, True, "\\frac{1}{2}")
    assert at2po_reward(ok, "0.5", -1.0, True, ("python",), correct=False)[0] == 0.0
    # An invalid format costs the penalty whatever the verdict: here the call is unpaired.
    bad = "<think>t</think><python>print(1/2)</python><answer>\\boxed{0.5}</answer>"
    r, d = at2po_reward(bad, "0.5", -1.0, True, ("python",), correct=True)
    assert (r, d["em"], d["format_ok"]) == (-1.0, 1.0, False)


@pytest.fixture(scope="module")
def math_answers():
    from rlpt_jax.train.experiment import QAConfig

    checker = methods.MathAnswers(QAConfig(reward="math", train=CHAIN_SUM, eval=()))
    yield checker
    checker.verifier.close()


def test_math_answers_on_crafted_answers(math_answers):
    """A jsonl problem is checked by math-verify, a generated one by its generator."""
    jsonl = MathProblem("f/1", "Half of one?", "\\frac{1}{2}", "f")
    answers = ["0.5", "1/2", "\\dfrac{2}{4}", "0.49", "1/3", None]
    assert math_answers(jsonl, answers) == [True, True, True, False, False, False]
    train, heldout, counts = math_answers.questions()
    assert counts["train_problems"] == len(train) and list(heldout) == ["chain_sum"]
    problem = train[0]
    assert problem.generator is not None and problem.golden_answers == (problem.answer,)
    truth = int(problem.answer)
    before = math_answers.hows.copy()
    assert math_answers(problem, [str(truth), f" {truth} ", str(truth + 1)]) == [
        True,
        True,
        False,
    ]
    m = math_answers.step_metrics(before)
    assert (m["verifier/generator"], m["verifier/math_verify"]) == (3.0, 0.0)


def test_math_reward_is_a_config_choice():
    with pytest.raises(ExperimentConfigError, match="qa.reward must be one of"):
        from_config_dict({"method": "at2po", "qa": {"reward": "f1"}})


# -- the method, with a scripted policy ------------------------------------------------------


class _MathEngine:
    """A row's first turn runs the problem's sum (read from its prompt) in Python; after a
    result, it answers the number the result shows: right on even rows, one too many on
    odd rows. Rows are numbered as made: the root 0, the chains 1 and 2, the expansion 3."""

    def __init__(self, tok):
        self.tok = tok
        self.tokens: list[list[int]] = []

    def _new(self, ids):
        self.tokens.append(list(ids))
        return len(self.tokens) - 1

    def start(self, prompts):
        return [self._new(p) for p in prompts]

    def fork(self, requests):
        return [self.fork_one(*r) for r in requests]

    def fork_one(self, row, length, m):
        return [self._new(self.tokens[row][:length]) for _ in range(m)]

    def extend(self, rows, tokens):
        for row, ids in zip(rows, tokens):
            self.tokens[row] += ids

    def release(self, rows):
        pass

    def generate(self, rows, max_new_tokens):
        out = []
        for row in rows:
            seen = self.tok.decode(self.tokens[row])
            shown = re.findall(r"<result>\n(.*?)\n</result>", seen)
            if not shown:
                code = f"print({_expression(seen)})"
                text, finish = f"<think> compute it </think>\n<python>{code}</python>", "stop"
            else:
                value = int(shown[-1]) + row % 2
                text = f"<think> it is {shown[-1]} </think>\n<answer> \\boxed{{{value}}} </answer>"
                finish = "eos"
            ids = self.tok.encode(text)
            self.tokens[row] += ids
            out.append(TurnSample(ids, [-1.0 - 0.1 * row], [1.0], finish))
        return out

    def counters(self):
        return {"prefilled_tokens": 0, "decoded_tokens": 0}


def _expression(prompt: str) -> str:
    """``4 - 1`` of "...arithmetic problem: 4 - 1 =" (reasoning-gym's chain_sum)."""
    return re.search(r"problem: ([-+ 0-9]+?) =", prompt).group(1)


class _Policy:
    use_chat_template = False
    pad_id = 0

    def __init__(self):
        self.tokenizer = TextTokenizer()

    def engine(self, spec, seed):
        return _MathEngine(self.tokenizer)


def _math_exp(**python_tool):
    return from_config_dict(
        {
            "method": "at2po",
            "env": {"tools": ("python",)},
            "qa": {
                "reward": "math",
                "train": CHAIN_SUM,
                "eval": (),
                "math": {"train_size": 8, "heldout": 2},
            },
            "tree": {"num_chains": 2, "rounds": 1, "picks": 1, "max_response_tokens": 64},
            "rollout": {"prompts_per_step": 1},
            "python_tool": {"timeout_s": 10.0, **python_tool},
        }
    )


@pytest.fixture(scope="module")
def method():
    make_tool()  # skip (non-root) or fail (root) clearly when bubblewrap cannot run
    m = methods.AT2POMethod(_math_exp(), TextTokenizer(), use_chat=False)
    yield m
    m.math.verifier.close()


def test_a_math_agent_step_runs_python_and_verifies_the_answers(method):
    """Each leaf computed the sum in the sandbox and answered what it printed; the
    generator's scorer finds rows 2 right and rows 1 and 3 one off: rewards 0, 1, 0."""
    assert method.stop_strings == ("</python>",)
    policy = _Policy()
    batch, m = method.next_batch(policy, SampleSpec(), 0, 1)
    assert m["env/python"] == 3.0 and m["env/answer"] == 3.0  # 2 chains + 1 expansion
    assert m["env/invalid"] == m["env/tool_error"] == m["env/python_exit_code"] == 0.0
    assert (m["outage/python_requests"], m["outage/python_failures"]) == (3.0, 0.0)
    assert m["verifier/generator"] == 3.0 and "env/backend_calls" not in m
    assert m["reward/format_ok"] == 1.0
    assert m["reward/mean"] == m["reward/em"] == pytest.approx(1 / 3)
    # What the model read is what the sandbox printed: the problem's true sum.
    prompt = policy.tokenizer.texts[0]
    (problem,) = [q for q in method.train_questions if q.problem in prompt]
    assert f" <result>\n{int(problem.answer)}\n</result>" in policy.tokenizer.texts
    mask, adv = np.asarray(batch.loss_mask), np.asarray(batch.advantages)
    assert mask.sum() > 0 and np.abs(adv[mask > 0]).min() > 0


def test_a_math_agent_is_evaluated_by_the_verifier(method):
    """Greedy single chain on the 2 held-out problems: the evaluation engine's roots are
    rows 0 and 1 and their chains rows 2 (right) and 3 (one off)."""
    ev = method.evaluate(_Policy(), None, None)
    assert sorted(method.eval_sets) == ["chain_sum"]
    assert ev.per_example["eval/em_chain_sum"] == [1.0, 0.0]
    assert (ev.metrics["eval/em_avg"], ev.metrics["eval/format_ok_chain_sum"]) == (0.5, 1.0)
    assert ev.per_example["eval/tool_calls_chain_sum"] == [1.0, 1.0]  # one program each


def test_a_broken_sandbox_is_an_outage_not_a_reward(method, monkeypatch):
    """A sandbox that fails (not the code in it) skips the step, like a dead retriever."""
    broken = PythonResult(False, "", "", "internal", None, "OSError: bwrap gone", 0.0)
    monkeypatch.setattr(method.env.python, "run", lambda code: broken)
    with pytest.raises(methods.ServiceOutage) as err:
        method.next_batch(_Policy(), SampleSpec(), 0, 1)
    outage = err.value
    assert (outage.service, outage.failures, outage.requests) == ("python", 3, 3)
    assert "bwrap gone" in str(outage) and "sandbox" in outage.url


def test_limits_too_tight_for_python_fail_at_start_up():
    from rlpt_jax.envs.python_tool import SandboxUnavailable

    make_tool()
    exp = _math_exp(timeout_s=0.001)
    with pytest.raises(SandboxUnavailable, match="raise python_tool.timeout_s"):
        methods.make_env(exp)


def test_search_demonstrations_refuse_a_python_run():
    exp = from_config_dict(
        {"method": "sft", "sft": {"data": "at2po"}, "env": {"tools": ("python",)}}
    )
    with pytest.raises(ValueError, match="search-QA demonstrations"):
        methods.SFTMethod(exp, TextTokenizer(), use_chat=False)


# -- end to end ------------------------------------------------------------------------------


@pytest.mark.slow
def test_math_python_tiny_through_launch_train(tmp_path):
    """One step of the tiny math agent through launch/train.py: the sandbox (probed at
    start-up) and the verifier start, the step logs the Python tool's and the verifier's
    counters (zeros included: the 135M model does not follow the protocol), and the run
    leaves its checkpoint and export. Kept cheap for CI (≈70 s of CPU): one step, no
    KL-to-init forward, no evaluation (the method-level tests above evaluate)."""
    make_tool()
    env = dict(os.environ, XLA_FLAGS="")  # one CPU device, like a user's laptop
    workdir = tmp_path / "run"
    cmd = [
        sys.executable,
        str(ROOT / "launch" / "train.py"),
        "--config=configs/at2po_qwen.py:math_python_tiny",
        "--config.train.steps=1",
        "--config.train.kl_to_init=False",
        "--config.eval.num_prompts=0",
        f"--workdir={workdir}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    keys = ("reward/mean", "train/loss", "rollout/leaves", "env/python", "env/python_timeout")
    keys += ("outage/python_requests", "outage/python_failures", "verifier/generator")
    _check_run(workdir, 1, keys)
    (record,) = read_jsonl(workdir / "metrics.jsonl")
    assert record["rollout/leaves"] == 3  # M=2 chains + L=1 x K=1
    assert "env/search" in record and "env/backend_calls" not in record  # search is off
    assert "data train_problems: 50" in proc.stdout
