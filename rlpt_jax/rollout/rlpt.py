"""RLPT rollout: sample ``n`` completions per task, judge them, build the GRPO batch.

Reward (spec rlpt.md): the text between the last ``<|startofprediction|>`` and
``<|endofprediction|>`` of the completion is judged against ``s_i`` and the following
segments; no tags → ``missing_prediction_reward`` (0), counted. Advantages are group
statistics over the ``n`` samples of a prompt (GRPO: z-score).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from rlpt_jax.algos.advantages import AdvantageConfig, group_advantages
from rlpt_jax.batch import RLBatch, bucket_length, make_batch, pad_batch
from rlpt_jax.data.tasks import Task, extract_prediction
from rlpt_jax.rewards.judges import Judge
from rlpt_jax.rollout.policy import Completion, Policy, SampleSpec


@dataclasses.dataclass
class RLPTRollout:
    """A judged group of completions per task, plus the training batch."""

    batch: RLBatch
    rewards: np.ndarray  # [G, n]
    completions: list[list[Completion]]
    predictions: list[list[str | None]]
    metrics: dict[str, float]


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
) -> RLBatch:
    """One row per completion: prompt (no loss) + completion tokens (loss, old log-probs)."""
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
        mask[i, n : n + m] = 1.0
        old[i, n : n + m] = c.logps
    batch = make_batch(tokens, mask, np.asarray(advantages, np.float32), old, segment_ids=seg)
    rows = -(-b // row_multiple) * row_multiple
    return pad_batch(batch, length=t, rows=rows, pad_id=pad_id)


def rlpt_rollout(
    policy: Policy,
    tasks: Sequence[Task],
    judge: Judge,
    spec: SampleSpec,
    n: int,
    advantage: AdvantageConfig,
    max_prompt_tokens: int,
    seed: int,
    row_multiple: int = 1,
    sampler_rows: int = 0,
) -> RLPTRollout:
    prompts = encode_prompts(policy, tasks, max_prompt_tokens)
    # Waves of at most ``sampler_rows`` sequences bound the KV cache; each wave's seed is
    # distinct so waves never repeat each other's samples.
    per_wave = len(prompts) if sampler_rows <= 0 else max(1, sampler_rows // n)
    groups = []
    for w, i in enumerate(range(0, len(prompts), per_wave)):
        groups += policy.sample(prompts[i : i + per_wave], n=n, spec=spec, seed=seed + 7919 * w)
    texts = [[policy.tokenizer.decode(c.tokens) for c in g] for g in groups]
    preds = [[extract_prediction(t) for t in g] for g in texts]
    items = [(p, task.reference_segments) for task, g in zip(tasks, preds) for p in g]
    results = judge.score(items)
    rewards = np.asarray([r.reward for r in results], np.float64).reshape(len(tasks), n)
    adv = np.asarray(group_advantages(rewards, advantage), np.float64)

    flat_prompts = [p for p in prompts for _ in range(n)]
    flat_comps = [c for g in groups for c in g]
    batch = rows_batch(flat_prompts, flat_comps, adv.reshape(-1), policy.pad_id, row_multiple)

    kinds = np.asarray([t.kind for t in tasks])
    lens = np.asarray([len(c.tokens) for c in flat_comps], np.float64)
    finish = [c.finish for c in flat_comps]
    missing = sum(p is None for g in preds for p in g)
    m = {
        "reward/mean": float(rewards.mean()),
        "reward/std_in_group": float(rewards.std(axis=1).mean()),
        "rollout/response_len_mean": float(lens.mean()),
        "rollout/response_len_max": float(lens.max()),
        "rollout/entropy_mean": float(
            np.concatenate([np.asarray(c.entropies) for c in flat_comps]).mean()
        ),
        "rollout/no_prediction": float(missing),
        "rollout/no_prediction_frac": missing / rewards.size,
        "rollout/finish_stop_frac": finish.count("stop") / len(finish),
        "rollout/finish_length_frac": finish.count("length") / len(finish),
        "rollout/groups_all_equal": float(np.sum(rewards.std(axis=1) == 0)),
        # groups whose rewards are all equal have zero advantages: no learning signal
        "rollout/zero_std_frac": float(np.mean(rewards.std(axis=1) == 0)),
    }
    for kind in ("asr", "msr"):
        sel = kinds == kind
        if sel.any():
            m[f"reward/{kind}"] = float(rewards[sel].mean())
    return RLPTRollout(batch, rewards, groups, preds, m)
