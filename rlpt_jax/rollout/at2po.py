"""AT²PO rollout: turn trees per question → leaf rewards → turn-wise credit → batch.

Leaf reward (spec at2po.md): exact match of the ``\\boxed{}`` answer against the gold
answers (SQuAD normalisation), or ``format_penalty`` (−1) when the response breaks the
protocol; F1 is reported as a metric. Advantages come from
:func:`rlpt_jax.algos.tree_credit.tree_credit` per tree, and every model token of a turn
carries its node's advantage. A trajectory whose search failed (``tool_error``) or ran out
of budget is a counted leaf that gets the format penalty.

Every step logs every turn outcome (``env/<outcome>``) and the retriever requests made
(``env/backend_calls``), zeros included: a run whose policy never searched, or whose
retriever was never reached, shows it in the metrics instead of leaving the key out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from rlpt_jax.algos.tree_credit import CreditConfig, tree_credit
from rlpt_jax.batch import RLBatch, bucket_length, make_batch, pad_batch
from rlpt_jax.envs.search_env import OUTCOMES
from rlpt_jax.rewards.qa import at2po_reward
from rlpt_jax.rollout.policy import Policy, SampleSpec
from rlpt_jax.rollout.tree import Tree, TreeConfig, TreeRollout, flatten, release_rows

# Turn outcomes counted every step, zero or not ("truncated": out of token budget).
STEP_OUTCOMES = (*OUTCOMES, "truncated")


def _backend_calls(env) -> int:
    """Requests the environment has sent to its search backend so far."""
    return int(env.metrics().get("backend_calls", 0))


def question_prompt(policy: Policy, question: str, system_prompt: str | None) -> list[int]:
    """Prompt ids for a question: the chat template when the tokenizer has one."""
    return prompt_ids(policy.tokenizer, policy.use_chat_template, question, system_prompt)


def prompt_ids(tok, use_chat: bool, question: str, system_prompt: str | None) -> list[int]:
    """Prompt ids for a question with tokenizer ``tok`` (see :func:`question_prompt`)."""
    if use_chat:
        messages = []
        if system_prompt:
            messages.append({"role": "system", "content": system_prompt})
        messages.append({"role": "user", "content": question})
        return tok.encode(tok.render_chat(messages))
    text = (system_prompt + "\n\n" if system_prompt else "") + f"Question: {question}\n"
    return tok.encode(text)


@dataclasses.dataclass
class TreeBatch:
    batch: RLBatch
    trees: list[Tree]
    leaf_rewards: list[dict[int, float]]
    metrics: dict[str, float]


def leaf_response(policy: Policy, tree: Tree, leaf: int) -> str:
    """Decoded text of a leaf's trajectory after the prompt (model and tool tokens)."""
    ids: list[int] = []
    for nid in tree.path(leaf)[1:]:
        n = tree.nodes[nid]
        ids += n.tool_tokens + n.model_tokens
    return policy.tokenizer.decode(ids)


def score_tree(
    policy: Policy, tree: Tree, golds: Sequence[str], format_penalty: float
) -> tuple[dict[int, float], list[dict]]:
    rewards, details = {}, []
    for leaf in tree.leaves():
        node = tree.nodes[leaf]
        r, d = at2po_reward(leaf_response(policy, tree, leaf), golds, format_penalty)
        if node.outcome in ("tool_error", "truncated"):
            r = float(format_penalty)
            d = dict(d, format_ok=False, reason=node.outcome)
        node.reward = r
        rewards[leaf] = r
        details.append(d)
    return rewards, details


def at2po_rollout(
    policy: Policy,
    env,
    questions: Sequence,
    tree_cfg: TreeConfig,
    credit: CreditConfig,
    spec: SampleSpec,
    system_prompt: str | None,
    format_penalty: float,
    seed: int,
    row_multiple: int = 1,
    sampler_rows: int = 0,
) -> TreeBatch:
    prompts = [question_prompt(policy, q.question, system_prompt) for q in questions]
    # Trees are grown in waves of questions so that at most ``sampler_rows`` leaves share
    # the sampler at once (0 = all trees in one batch).
    per_wave = len(prompts) if sampler_rows <= 0 else max(1, sampler_rows // tree_cfg.num_leaves)
    trees: list[Tree] = []
    outcomes = dict.fromkeys(STEP_OUTCOMES, 0)
    calls_before = _backend_calls(env)
    counters = {"prefilled_tokens": 0, "decoded_tokens": 0}
    for w, i in enumerate(range(0, len(prompts), per_wave)):
        engine = policy.engine(spec, seed=seed + 7919 * w)
        rollout = TreeRollout(
            engine, env, policy.tokenizer.decode, policy.tokenizer.encode, tree_cfg
        )
        wave = rollout.run(prompts[i : i + per_wave])
        release_rows(engine, wave)
        trees += wave
        for k, v in rollout.stats.outcomes.items():
            outcomes[k] = outcomes.get(k, 0) + v
        for k, v in engine.counters().items():
            counters[k] += v

    leaf_rewards, details, advantages = [], [], []
    for tree, q in zip(trees, questions):
        rewards, d = score_tree(policy, tree, q.golden_answers, format_penalty)
        leaf_rewards.append(rewards)
        details += d
        advantages.append(tree_credit(tree.parents, tree.entropies, rewards, credit).advantages)

    rows = flatten(trees, advantages, pad_id=policy.pad_id)
    b, t = rows.tokens.shape
    batch = make_batch(
        rows.tokens,
        rows.loss_mask,
        rows.advantages,
        rows.old_logp,
        segment_ids=rows.segment_ids,
        positions=rows.positions,
        turn_ids=rows.turn_ids,
    )
    batch = pad_batch(
        batch,
        length=bucket_length(t),
        rows=-(-b // row_multiple) * row_multiple,
        pad_id=policy.pad_id,
    )

    all_r = np.asarray([r for lr in leaf_rewards for r in lr.values()], np.float64)
    unique = sum(tr.unique_tokens() for tr in trees)
    per_leaf = sum(tr.leaf_tokens() for tr in trees)
    m = {
        "reward/mean": float(all_r.mean()),
        "reward/em": float(np.mean([d["em"] for d in details])),
        "reward/f1": float(np.mean([d["f1"] for d in details])),
        "reward/format_ok": float(np.mean([d["format_ok"] for d in details])),
        "rollout/leaves": float(len(all_r)),
        # trees whose leaves all scored the same: no signal from their outcomes
        "rollout/zero_std_frac": float(
            np.mean([np.std(list(lr.values())) == 0 for lr in leaf_rewards])
        ),
        "rollout/turns_per_leaf": float(
            np.mean([len(tr.path(leaf)) - 1 for tr in trees for leaf in tr.leaves()])
        ),
        "rollout/response_len_mean": float(np.mean(rows.loss_mask.sum(1))),
        "rollout/tree_token_ratio": unique / max(per_leaf, 1),
        "rollout/turn_entropy_mean": float(
            np.mean([n.turn_entropy for tr in trees for n in tr.nodes[1:]])
        ),
    }
    for k, v in outcomes.items():
        m[f"env/{k}"] = float(v)
    m["env/backend_calls"] = float(_backend_calls(env) - calls_before)
    m.update({f"sampler/{k}": float(v) for k, v in counters.items()})
    return TreeBatch(batch, trees, leaf_rewards, m)


def evaluate_qa(
    policy: Policy,
    env,
    datasets: dict[str, Sequence],
    tree_cfg: TreeConfig,
    system_prompt: str | None,
    format_penalty: float,
    max_new_tokens: int,
    stop_strings: Sequence[str],
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Greedy single-chain EM / F1 per dataset and the size-weighted average (the paper's
    validation protocol: no tree, temperature 0).

    Returns the metrics and, under the same names, their per-question values.
    """
    chain = dataclasses.replace(
        tree_cfg,
        num_chains=1,
        rounds=0,
        picks=0,
        expansion="chains",
        max_response_tokens=max_new_tokens,
    )
    spec = SampleSpec(
        temperature=0.0, max_new_tokens=max_new_tokens, stop_strings=tuple(stop_strings)
    )
    out: dict[str, float] = {}
    per_example: dict[str, list[float]] = {}
    total_n, total_em = 0, 0.0
    for name, questions in datasets.items():
        if not questions:
            continue
        prompts = [question_prompt(policy, q.question, system_prompt) for q in questions]
        engine = policy.engine(spec, seed=0)
        trees = TreeRollout(
            engine, env, policy.tokenizer.decode, policy.tokenizer.encode, chain
        ).run(prompts)
        release_rows(engine, trees)
        ems, f1s, fmt = [], [], []
        for tree, q in zip(trees, questions):
            _, details = score_tree(policy, tree, q.golden_answers, format_penalty)
            ems.append(details[0]["em"])
            f1s.append(details[0]["f1"])
            fmt.append(float(details[0]["format_ok"]))
        for key, values in (("em", ems), ("f1", f1s), ("format_ok", fmt)):
            out[f"eval/{key}_{name}"] = float(np.mean(values))
            per_example[f"eval/{key}_{name}"] = [float(v) for v in values]
        total_n += len(ems)
        total_em += float(np.sum(ems))
    if total_n:
        out["eval/em_avg"] = total_em / total_n
    return out, per_example


def demonstration(
    tok, use_chat: bool, env, question, system_prompt: str | None, weak_first: bool
) -> tuple[list[int], list[int]] | None:
    """A cold-start trajectory in the exact protocol, as ``(token ids, loss mask)``.

    The model turns are written here (a short ``<think>``, a ``<search>`` whose query is
    the question's quoted sentence, then ``<answer>`` with ``\\boxed{}``); every tool
    result is the real environment's reply, tokenised on its own like in a rollout and
    masked out of the loss. With ``weak_first`` the first query is only the sentence's
    last three words, which often misses, and a second search follows. A search hits when
    a page titled with the gold answer comes back; ``None`` when none did (no
    demonstration teaches answering without evidence).
    """
    sentence = _quoted(question.question)
    gold = question.golden_answers[0]
    queries = [" ".join(sentence.split()[-3:]), sentence] if weak_first else [sentence]
    ids = prompt_ids(tok, use_chat, question.question, system_prompt)
    mask = [0] * len(ids)
    think = "<think> I should look up the sentence. </think>\n"
    calls = 0
    for query in queries:
        turn = f"{think}<search> {query} </search>"
        step = env.step(turn, calls)
        if step.outcome != "search":
            return None
        calls = step.tool_calls
        model = tok.encode(turn)
        result = tok.encode(step.append_text)
        ids += model + result
        mask += [1] * len(model) + [0] * len(result)
        if f": {gold}\n" in step.append_text:  # a page titled with the answer came back
            answer = (
                f"<think> The page that begins this way is {gold}. </think>\n"
                f"<answer> \\boxed{{{gold}}} </answer>"
            )
            model = tok.encode(answer)
            return ids + model, mask + [1] * len(model)
        think = "<think> That search missed; I will search the whole sentence. </think>\n"
    return None


def _quoted(question: str) -> str:
    """The sentence a question quotes (the embedded QA set's), or the question itself."""
    start, end = question.find('"'), question.rfind('"')
    text = question[start + 1 : end] if 0 <= start < end else question
    return " ".join(text.replace("___", " ").split())
