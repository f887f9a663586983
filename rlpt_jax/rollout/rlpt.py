"""RLPT rollout: sample ``n`` completions per task, judge them, build the GRPO batch.

Reward (spec rlpt.md): the text between the last ``<|startofprediction|>`` and
``<|endofprediction|>`` of the completion is judged against ``s_i`` and the following
segments; no tags → ``missing_prediction_reward`` (0), counted. Advantages are group
statistics over the ``n`` samples of a prompt (GRPO: z-score). DAPO's dynamic sampling
and overlong shaping (:mod:`rlpt_jax.algos.dapo`) are options of the rollout.

:func:`group_rollout` is the same rollout with the reward as a parameter (a function of
the tasks and the decoded completions); RLVR uses it with a math verifier.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rlpt_jax.algos.advantages import AdvantageConfig, group_advantages
from rlpt_jax.algos.dapo import DAPOConfig, fill_groups, overlong_penalty
from rlpt_jax.batch import RLBatch, bucket_length, make_batch, pad_batch
from rlpt_jax.data.tasks import Task, extract_prediction
from rlpt_jax.rewards.judges import Judge
from rlpt_jax.rollout.policy import Completion, Policy, RolloutConfig, SampleSpec


@dataclasses.dataclass
class RLPTRollout:
    """A judged group of completions per task, plus the training batch."""

    batch: RLBatch
    rewards: np.ndarray  # [G, n]
    completions: list[list[Completion]]
    predictions: list[list[str | None]]
    metrics: dict[str, float]


@dataclasses.dataclass
class Scored:
    """What a reward function returns for ``G`` groups of ``n`` decoded completions:
    rewards ``[G, n]``, the extracted answers (``None``: none found, counted as
    ``rollout/no_prediction``) and its own metrics. ``failed`` ``[G, n]`` (None: none)
    marks completions whose reward could not be computed (a failed judge request): they
    are left out of their group's advantage statistics and of the loss, not rewarded 0."""

    rewards: np.ndarray
    predictions: list[list[str | None]]
    metrics: dict[str, float]
    failed: np.ndarray | None = None


# reward(tasks, texts [G][n]) -> Scored
RewardFn = Callable[[Sequence[Any], list[list[str]]], Scored]


def encode_prompts(
    policy: Policy, tasks: Sequence[Task], max_prompt_tokens: int
) -> list[list[int]]:
    """Token ids of each task prompt, keeping the last ``max_prompt_tokens`` (the most
    recent context; the instruction sits at the end, after the context)."""
    out = []
    for t in tasks:
        ids = policy.tokenizer.encode(t.prompt)
        out.append(ids[-max_prompt_tokens:])
    return out


def rows_batch(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Completion],
    advantages: Sequence[float],
    pad_id: int,
    row_multiple: int = 1,
    trained: Sequence[bool] | None = None,
) -> RLBatch:
    """One row per completion: prompt (no loss) + completion tokens (loss, old log-probs).
    ``trained[i]`` False: row i gets no loss tokens (its reward is unknown)."""
    lengths = [len(p) + len(c.tokens) for p, c in zip(prompts, completions)]
    t = bucket_length(max(lengths))
    b = len(completions)
    tokens = np.full((b, t), pad_id, np.int32)
    seg = np.zeros((b, t), np.int32)
    mask = np.zeros((b, t), np.float32)
    old = np.zeros((b, t), np.float32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        n = len(p)
        m = len(c.tokens)
        tokens[i, :n] = p
        tokens[i, n : n + m] = c.tokens
        seg[i, : n + m] = 1
        mask[i, n : n + m] = 1.0 if trained is None or trained[i] else 0.0
        old[i, n : n + m] = c.logps
    batch = make_batch(tokens, mask, np.asarray(advantages, np.float32), old, segment_ids=seg)
    rows = -(-b // row_multiple) * row_multiple
    return pad_batch(batch, length=t, rows=rows, pad_id=pad_id)


def sample_groups(
    policy: Policy,
    prompts: Sequence[Sequence[int]],
    n: int,
    spec: SampleSpec,
    seed: int,
    sampler_rows: int = 0,
) -> list[list[Completion]]:
    """``n`` completions per prompt, in waves of at most ``sampler_rows`` sequences (0:
    one wave), which bounds the KV cache; each wave's seed is distinct so waves never
    repeat each other's samples."""
    per_wave = len(prompts) if sampler_rows <= 0 else max(1, sampler_rows // n)
    groups = []
    for w, i in enumerate(range(0, len(prompts), per_wave)):
        groups += policy.sample(prompts[i : i + per_wave], n=n, spec=spec, seed=seed + 7919 * w)
    return groups


@dataclasses.dataclass
class _Group:
    """One task's ``n`` scored completions; ``rewards`` include ``penalty`` (overlong)."""

    task: Any
    prompt: list[int]
    completions: list[Completion]
    predictions: list[str | None]
    rewards: np.ndarray  # [n]
    penalty: np.ndarray  # [n]
    failed: np.ndarray  # [n] bool: no reward (Scored.failed)


def _score_round(
    policy: Policy,
    tasks: Sequence[Any],
    reward: RewardFn,
    spec: SampleSpec,
    cfg: RolloutConfig,
    seed: int,
    dapo: DAPOConfig,
) -> tuple[list[_Group], dict[str, float]]:
    """Sample ``cfg.samples_per_prompt`` completions per task, score them, shape rewards
    by length (DAPO)."""
    prompts = encode_prompts(policy, tasks, cfg.max_prompt_tokens)
    groups = sample_groups(policy, prompts, cfg.samples_per_prompt, spec, seed, cfg.sampler_rows)
    texts = [[policy.tokenizer.decode(c.tokens) for c in g] for g in groups]
    scored = reward(tasks, texts)
    lengths = [[len(c.tokens) for c in g] for g in groups]
    penalty = overlong_penalty(
        lengths, spec.max_new_tokens, dapo.overlong_buffer, dapo.overlong_penalty
    )
    rewards = np.asarray(scored.rewards, np.float64) + penalty
    failed = np.zeros(rewards.shape, bool) if scored.failed is None else scored.failed
    out = [
        _Group(task, prompt, list(g), list(p), rewards[i], penalty[i], failed[i])
        for i, (task, prompt, g, p) in enumerate(zip(tasks, prompts, groups, scored.predictions))
    ]
    return out, scored.metrics


def group_rollout(
    policy: Policy,
    tasks: Sequence[Any],
    reward: RewardFn,
    spec: SampleSpec,
    cfg: RolloutConfig,
    advantage: AdvantageConfig,
    seed: int,
    row_multiple: int = 1,
    dapo: DAPOConfig | None = None,
    more_tasks: Callable[[], Sequence[Any]] | None = None,
) -> RLPTRollout:
    """Sample ``cfg.samples_per_prompt`` completions of each task's ``prompt`` (prompts cut
    to ``cfg.max_prompt_tokens``, at most ``cfg.sampler_rows`` sequences at once), score
    them with ``reward`` and build the batch with group advantages.

    With ``dapo.dynamic_sampling`` the groups whose rewards are all equal are dropped and
    ``more_tasks()`` supplies the prompts of each refill round
    (:func:`rlpt_jax.algos.dapo.fill_groups`); the batch then holds ``len(tasks)``
    informative groups unless ``dapo.max_rounds`` ran out. Reward and rollout metrics
    cover every group sampled (the reward function's own metrics are summed over rounds,
    as counts); the batch, ``rewards`` and ``completions`` cover the kept groups.
    """
    dapo = dapo if dapo is not None else DAPOConfig()
    sampled: list[_Group] = []
    reward_metrics: dict[str, float] = {}

    def sample_round(r: int) -> list[_Group]:
        round_tasks = tasks if r == 0 else more_tasks()
        round_seed = seed + 104729 * r  # round 0 samples exactly as without DAPO
        out, m = _score_round(policy, round_tasks, reward, spec, cfg, round_seed, dapo)
        sampled.extend(out)
        for k, v in m.items():
            reward_metrics[k] = reward_metrics.get(k, 0.0) + float(v)
        return out

    if dapo.dynamic_sampling:
        if more_tasks is None:
            raise ValueError("dynamic sampling needs more_tasks to refill the batch")
        kept, ds_metrics = fill_groups(
            sample_round, lambda g: g.rewards, len(tasks), dapo.max_rounds
        )
    else:
        kept, ds_metrics = sample_round(0), {}

    rewards = np.stack([g.rewards for g in kept])
    failed = np.stack([g.failed for g in kept])
    adv = _advantages(rewards, failed, advantage)
    flat_prompts = [g.prompt for g in kept for _ in range(cfg.samples_per_prompt)]
    flat_comps = [c for g in kept for c in g.completions]
    batch = rows_batch(
        flat_prompts, flat_comps, adv.reshape(-1), policy.pad_id, row_multiple,
        trained=~failed.reshape(-1),
    )  # fmt: skip

    m = _metrics(sampled)
    m["rollout/unscored_masked"] = float(failed.sum())
    m.update(reward_metrics)
    m.update(ds_metrics)
    if dapo.overlong_buffer:
        m["reward/overlong_penalty"] = float(np.mean([g.penalty for g in sampled]))
    completions = [g.completions for g in kept]
    predictions = [g.predictions for g in kept]
    return RLPTRollout(batch, rewards, completions, predictions, m)


def _advantages(rewards: np.ndarray, failed: np.ndarray, cfg: AdvantageConfig) -> np.ndarray:
    """Group advantages [G, n] over each group's scored completions only; an unscored one
    (``failed``) gets 0, as does every member of a group with fewer than 2 scored."""
    if not failed.any():
        return np.asarray(group_advantages(rewards, cfg), np.float64)
    adv = np.zeros(rewards.shape, np.float64)
    for i, ok in enumerate(~failed):
        if ok.sum() >= 2:
            adv[i, ok] = np.asarray(group_advantages(rewards[i : i + 1, ok], cfg), np.float64)[0]
    return adv


def judge_reward(judge: Judge, tasks: Sequence[Task], texts: list[list[str]]) -> Scored:
    """RLPT's reward: the judge's verdict on the tagged prediction of each completion."""
    preds = [[extract_prediction(t) for t in g] for g in texts]
    items = [(p, task.reference_segments) for task, g in zip(tasks, preds) for p in g]
    results = judge.score(items)
    n = len(texts[0]) if texts else 0
    rewards = np.asarray([r.reward for r in results], np.float64).reshape(len(tasks), n)
    failed = np.asarray([r.failed for r in results], bool).reshape(len(tasks), n)
    return Scored(rewards, preds, {}, failed)


def rlpt_rollout(
    policy: Policy,
    tasks: Sequence[Task],
    judge: Judge,
    spec: SampleSpec,
    cfg: RolloutConfig,
    advantage: AdvantageConfig,
    seed: int,
    row_multiple: int = 1,
    dapo: DAPOConfig | None = None,
    more_tasks: Callable[[], Sequence[Task]] | None = None,
) -> RLPTRollout:
    """:func:`group_rollout` with the judge's reward (:func:`judge_reward`)."""
    reward = functools.partial(judge_reward, judge)
    return group_rollout(
        policy, tasks, reward, spec, cfg, advantage, seed, row_multiple, dapo, more_tasks
    )


def _metrics(groups: Sequence[_Group]) -> dict[str, float]:
    """Reward and rollout metrics over every sampled group (of every round)."""
    rewards = np.stack([g.rewards for g in groups])
    comps = [c for g in groups for c in g.completions]
    lens = np.asarray([len(c.tokens) for c in comps], np.float64)
    finish = [c.finish for c in comps]
    missing = sum(p is None for g in groups for p in g.predictions)
    m = {
        "reward/mean": float(rewards.mean()),
        "reward/std_in_group": float(rewards.std(axis=1).mean()),
        "rollout/response_len_mean": float(lens.mean()),
        "rollout/response_len_max": float(lens.max()),
        "rollout/entropy_mean": float(
            np.concatenate([np.asarray(c.entropies) for c in comps]).mean()
        ),
        "rollout/no_prediction": float(missing),
        "rollout/no_prediction_frac": missing / rewards.size,
        "rollout/finish_stop_frac": finish.count("stop") / len(finish),
        "rollout/finish_length_frac": finish.count("length") / len(finish),
        "rollout/groups_all_equal": float(np.sum(rewards.std(axis=1) == 0)),
        # groups whose rewards are all equal have zero advantages: no learning signal
        "rollout/zero_std_frac": float(np.mean(rewards.std(axis=1) == 0)),
    }
    kinds = np.asarray([getattr(g.task, "kind", "") for g in groups])  # RLPT: asr / msr
    for kind in ("asr", "msr"):
        sel = kinds == kind
        if sel.any():
            m[f"reward/{kind}"] = float(rewards[sel].mean())
    return m
