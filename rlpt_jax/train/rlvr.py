"""RLVR: reinforcement learning with verifiable rewards, the stage after RLPT.

The RLPT paper follows RLPT with RLVR on math "with the same hyper-parameters": the
policy writes a solution, its last ``\\boxed{}`` is checked (math-verify, or a
reasoning-gym generator's scorer), reward 1/0, group advantages and the configured loss,
through the RLPT rollout (:func:`rlpt_jax.rollout.rlpt.group_rollout`) with a verifier
in place of the judge. Held-out evaluation samples ``rlvr.pass_samples`` solutions per
problem and reports the unbiased Pass@k (:mod:`rlpt_jax.rewards.pass_at_k`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from flax import nnx

from rlpt_jax.data import pipeline
from rlpt_jax.data.math_problems import MathProblem, build_math_data
from rlpt_jax.models.tokenizer import Tokenizer
from rlpt_jax.rewards.math_verifier import HOWS, Check, MathVerifier, boxed_answer, math_reward
from rlpt_jax.rewards.pass_at_k import pass_at_ks, powers_of_two
from rlpt_jax.rollout.policy import Policy, SampleSpec
from rlpt_jax.rollout.rlpt import Scored, encode_prompts, group_rollout, sample_groups
from rlpt_jax.train.experiment import ExperimentConfig
from rlpt_jax.train.methods import Evaluation, RLPTMethod
from rlpt_jax.train.steps import Objective, policy_objective


@dataclasses.dataclass(frozen=True)
class MathTask:
    """A problem with its prompt rendered for the policy (chat template or plain)."""

    prompt: str
    problem: MathProblem


def render_tasks(
    problems: Sequence[MathProblem],
    instruction: str,
    tokenizer: Tokenizer,
    use_chat: bool,
    response_prefix: str = "",
) -> list[MathTask]:
    """The problem, a blank line and the instruction as one user turn, then the start
    of the response (``response_prefix``)."""
    out = []
    for p in problems:
        text = f"{p.problem}\n\n{instruction}" if instruction else p.problem
        prompt = tokenizer.render_chat([{"role": "user", "content": text}]) if use_chat else text
        out.append(MathTask(prompt + response_prefix, p))
    return out


def verdict_counts(verdicts) -> dict[str, float]:
    """How each answer was checked (``verifier/string`` counts string-match fallbacks)."""
    hows = [v.how for v in verdicts]
    return {f"verifier/{h}": float(hows.count(h)) for h in HOWS if h != "no_answer"}


class RLVRMethod:
    """RLVR on math problems (``config.rlvr``), the configured loss on a 1/0 reward."""

    samples = True
    stop_strings: tuple[str, ...] = ()  # a solution ends with the model's EOS

    def __init__(self, exp: ExperimentConfig, tokenizer: Tokenizer, use_chat: bool):
        cfg = exp.rlvr
        self.exp, self.cfg = exp, cfg
        data = build_math_data(cfg.train, cfg.eval, cfg.train_size, cfg.heldout, cfg.seed)
        render = dict(
            instruction=cfg.instruction,
            tokenizer=tokenizer,
            use_chat=use_chat,
            response_prefix=cfg.response_prefix,
        )
        self.train = render_tasks(data.train, **render)
        self.heldout = {name: render_tasks(ps, **render) for name, ps in data.heldout.items()}
        self.counts = dict(data.counts)
        self.stream = pipeline.IndexStream(len(self.train), exp.seed)
        self.verifier = MathVerifier(cfg.verifier)
        self.verifier.probe()  # a missing math-verify fails here, not after a rollout

    step_shape = staticmethod(RLPTMethod.step_shape)  # its rollout is RLPT's group rollout

    def objective(self) -> Objective:
        return policy_objective(self.exp.loss)

    def reward(self, tasks: Sequence[MathTask], texts: list[list[str]]) -> Scored:
        """1/0 per completion (``format_penalty`` without a box), and verifier counts."""
        answers = [[self._answer(x) for x in g] for g in texts]
        verdicts = self._check(tasks, answers)
        r = [[math_reward(v, self.cfg.format_penalty) for v in g] for g in verdicts]
        flat = [v for g in verdicts for v in g]
        m = verdict_counts(flat)  # counts: DAPO's refill rounds add them up
        m["verifier/correct"] = float(sum(v.correct for v in flat))
        return Scored(np.asarray(r, np.float64), answers, m)

    def _answer(self, completion: str) -> str | None:
        """The boxed answer of the whole response: the prefix the prompt ended with, then
        the completion."""
        return boxed_answer(self.cfg.response_prefix + completion)

    def _check(self, tasks: Sequence[MathTask], answers: list[list[str | None]]):
        """Verdicts ``[G][n]`` of each group's answers against its problem."""
        checks = [
            Check(a, t.problem.answer, t.problem.generator)
            for t, g in zip(tasks, answers)
            for a in g
        ]
        flat = self.verifier.check(checks)
        n = len(answers[0]) if answers else 0
        return [flat[i * n : (i + 1) * n] for i in range(len(answers))]

    def next_tasks(self) -> list[MathTask]:
        """The next ``prompts_per_step`` training problems of the data stream."""
        return [self.train[i] for i in self.stream.take(self.exp.rollout.prompts_per_step)]

    def next_batch(self, policy: Policy, spec: SampleSpec, seed: int, row_multiple: int):
        out = group_rollout(
            policy,
            self.next_tasks(),
            self.reward,
            spec,
            self.exp.rollout,
            self.exp.advantage,
            seed,
            row_multiple,
            dapo=self.exp.dapo,
            more_tasks=self.next_tasks,  # DAPO's refill rounds
        )
        return out.batch, out.metrics

    def evaluate(self, policy: Policy, params: nnx.State, graphdef) -> Evaluation:
        """Pass@k on each held-out set (first ``eval.num_prompts`` problems), and averaged
        over all their problems; per problem values for confidence intervals."""
        exp, n = self.exp, self.cfg.pass_samples
        spec = SampleSpec(
            temperature=self.cfg.eval_temperature,
            top_p=self.cfg.eval_top_p,
            max_new_tokens=exp.eval.max_new_tokens,
            stop_strings=self.stop_strings,
        )
        ks = powers_of_two(n)
        m: dict[str, float] = {}
        per: dict[str, list[float]] = {f"eval/pass@{k}": [] for k in ks}
        for name, tasks in self.heldout.items():
            tasks = tasks[: exp.eval.num_prompts]
            if not tasks:
                continue
            correct = self._correct(policy, tasks, n, spec)
            for k, values in pass_at_ks(correct, ks).items():
                m[f"eval/pass@{k}_{name}"] = float(values.mean())
                per[f"eval/pass@{k}"] += values.tolist()
        for key, values in per.items():
            if values:
                m[key] = float(np.mean(values))
        return Evaluation(m, {k: v for k, v in per.items() if v})

    def _correct(self, policy: Policy, tasks: list[MathTask], n: int, spec: SampleSpec):
        """``[P, n]`` verdicts of ``n`` samples per problem (seed 0: every eval alike)."""
        prompts = encode_prompts(policy, tasks, self.exp.rollout.max_prompt_tokens)
        groups = sample_groups(policy, prompts, n, spec, 0, self.exp.rollout.sampler_rows)
        answers = [[self._answer(policy.tokenizer.decode(c.tokens)) for c in g] for g in groups]
        verdicts = self._check(tasks, answers)
        return np.asarray([[v.correct for v in g] for g in verdicts], bool)
