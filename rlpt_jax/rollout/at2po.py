"""AT²PO rollout: turn trees per question → leaf rewards → turn-wise credit → batch.

Leaf reward (spec at2po.md): exact match of the ``\\boxed{}`` answer against the gold
answers (SQuAD normalisation), or ``format_penalty`` (−1) when the response breaks the
protocol; F1 is reported as a metric. A math agent passes ``check_answers`` (the math
verifier), whose verdict replaces exact match. Only the model's own tokens are parsed:
every tool insertion is opaque (:func:`rlpt_jax.envs.tags.model_view`), so a retrieved
passage that contains ``</result>`` cannot make a correct answer malformed. The
environment's format rules apply (``env.tools``, ``env.require_think``,
``env.over_limit_invalid``). Advantages come from
:func:`rlpt_jax.algos.tree_credit.tree_credit` per tree, and every model token of a turn
carries its node's advantage (in the ``vanilla`` ablation: its row's leaf's). A
trajectory that ran out of budget is a counted leaf that gets the format penalty. One
whose tool failed (``tool_error``: the retriever, or the Python sandbox itself) is scored
the same for the metrics but not trained on: its row is masked and its tree's credit
computed as if it had not been sampled (``outage/masked_leaves``; the step-level outage
policy is ``ExperimentConfig.outage``). DAPO's dynamic sampling and overlong shaping
(:mod:`rlpt_jax.algos.dapo`) are options.

Every step logs every turn outcome (``env/<outcome>``) and the step's counts of the
enabled tools (``env/backend_calls`` for search requests, ``env/python_<kind>`` for failed
programs, ...), zeros included: a run whose policy never searched, or whose retriever was
never reached, shows it in the metrics instead of leaving the key out.

A question is anything with ``question`` and ``golden_answers``: a
:class:`rlpt_jax.data.qa.QAExample`, or a :class:`rlpt_jax.data.math_problems.MathProblem`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from rlpt_jax.algos.advantages import AdvantageConfig
from rlpt_jax.algos.dapo import DAPOConfig, fill_groups, overlong_penalty
from rlpt_jax.algos.tree_credit import CreditConfig, TreeCredit, tree_credit
from rlpt_jax.batch import RLBatch, bucket_length, make_batch, pad_batch
from rlpt_jax.envs.search_env import OUTCOMES, SearchEnvConfig
from rlpt_jax.envs.tags import extract_final_answer, model_view
from rlpt_jax.rewards.qa import at2po_reward
from rlpt_jax.rollout.policy import Policy, SampleSpec
from rlpt_jax.rollout.tree import (
    Tree,
    TreeConfig,
    TreeRollout,
    flatten,
    pack,
    release_rows,
    slots,
)

# Turn outcomes counted every step, zero or not ("truncated": out of token budget).
STEP_OUTCOMES = (*OUTCOMES, "truncated")
# The leaves' boxed answers (None: no answer) of one question -> whether each is right.
AnswerCheck = Callable[[object, Sequence[str | None]], list[bool]]


def _tool_counts(env) -> dict[str, int]:
    """The environment's counters other than turn outcomes (requests, failures, ...)."""
    return {k: v for k, v in env.metrics().items() if k not in OUTCOMES}


QUESTION_FIELD = "{question}"


def as_question(question: str) -> str:
    """The question as the paper's prompt shows it: stripped, ending in ``?``."""
    question = question.strip()
    return question if question.endswith("?") else question + "?"


def question_prompt(policy: Policy, question: str, system_prompt: str | None) -> list[int]:
    """Prompt ids for a question: the chat template when the tokenizer has one."""
    return prompt_ids(policy.tokenizer, policy.use_chat_template, question, system_prompt)


def prompt_ids(tok, use_chat: bool, question: str, system_prompt: str | None) -> list[int]:
    """Prompt ids for a question with tokenizer ``tok`` (see :func:`question_prompt`).

    Two layouts, chosen by the system prompt:

    * With a ``{question}`` field: the paper's (Fig. 6, and the reference code's data
      preparation) — one system message holding the instructions and the question,
      stripped and ending in ``?`` (:func:`as_question`). The field is substituted
      literally, so the prompt's other braces (``\\boxed{}``) need no escaping.
    * Without it: the system prompt (if any) as a system message and the question as a
      user message, unchanged (the CPU variants' compact layout).

    The chat template is applied with the generation prompt; without one the message
    text is used as is.
    """
    if system_prompt and QUESTION_FIELD in system_prompt:
        content = system_prompt.replace(QUESTION_FIELD, as_question(question))
        if use_chat:
            return tok.encode(tok.render_chat([{"role": "system", "content": content}]))
        return tok.encode(content + "\n")
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


def leaf_parts(policy: Policy, tree: Tree, leaf: int) -> list[tuple[str, str]]:
    """A leaf's trajectory as ``("tool" | "model", text)`` pieces, each decoded on its
    own: the tree keeps the model's sampled tokens apart from inserted tool tokens."""
    decode = policy.tokenizer.decode
    parts = []
    for nid in tree.path(leaf)[1:]:
        n = tree.nodes[nid]
        parts += [("tool", decode(n.tool_tokens)), ("model", decode(n.model_tokens))]
    return parts


def _past_limit(tree: Tree, leaf: int) -> bool:
    """Whether the trajectory tried a tool call beyond the limit (a ``limit`` turn)."""
    return any(tree.nodes[nid].outcome == "limit" for nid in tree.path(leaf))


def score_tree(
    policy: Policy,
    tree: Tree,
    golds: Sequence[str],
    format_penalty: float,
    rules: SearchEnvConfig | None = None,
    check: Callable[[Sequence[str | None]], list[bool]] | None = None,
) -> tuple[dict[int, float], list[dict]]:
    """Leaf rewards of a tree, and per-leaf details, under the format ``rules`` (the
    environment's ``tools``, ``require_think`` and ``over_limit_invalid``; default: the
    reference code's, as :class:`SearchEnvConfig` sets them). ``check`` judges the leaves'
    boxed answers at once (the math verifier) instead of exact match against ``golds``."""
    rules = rules if rules is not None else SearchEnvConfig()
    leaves = tree.leaves()
    texts = [model_view(leaf_parts(policy, tree, leaf)) for leaf in leaves]
    verdicts: list[bool | None] = [None] * len(leaves)
    if check is not None:
        verdicts = check([extract_final_answer(t) for t in texts])
    rewards, details = {}, []
    for leaf, text, correct in zip(leaves, texts, verdicts):
        node = tree.nodes[leaf]
        r, d = at2po_reward(
            text, golds, format_penalty, rules.require_think, rules.tools, correct=correct
        )
        if node.outcome in ("tool_error", "truncated"):
            r = float(format_penalty)
            d = dict(d, format_ok=False, reason=node.outcome)
        elif rules.over_limit_invalid and _past_limit(tree, leaf):
            r = float(format_penalty)
            d = dict(d, format_ok=False, reason="tool call past the tool-call limit")
        node.reward = r
        rewards[leaf] = r
        details.append(d)
    return rewards, details


def _grow_trees(
    policy: Policy,
    env,
    questions: Sequence,
    tree_cfg: TreeConfig,
    spec: SampleSpec,
    system_prompt: str | None,
    seed: int,
    sampler_rows: int,
    outcomes: dict[str, int],
    counters: dict[str, int],
) -> list[Tree]:
    """One tree per question; turn outcomes and sampler counters are added to the dicts."""
    prompts = [question_prompt(policy, q.question, system_prompt) for q in questions]
    # Trees are grown in waves of questions so that at most ``sampler_rows`` leaves share
    # the sampler at once (0 = all trees in one batch).
    per_wave = len(prompts) if sampler_rows <= 0 else max(1, sampler_rows // tree_cfg.num_leaves)
    # A trajectory is bounded by the tree's budget (model and tool tokens), and so is the
    # engine's cache: sized by rollout.max_new_tokens (6192 in the base config) the cpu
    # variant's 384-token trees held an 8192-slot cache, 6 GB at 16 rows.
    spec = dataclasses.replace(spec, max_new_tokens=tree_cfg.max_response_tokens)
    trees: list[Tree] = []
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
    return trees


@dataclasses.dataclass
class _ScoredTree:
    """A grown tree, its leaf rewards (overlong penalty included) and per-leaf details."""

    tree: Tree
    rewards: dict[int, float]
    details: list[dict]
    penalty: list[float]


def _response_tokens(tree: Tree, leaf: int) -> int:
    """Tokens after the prompt on a leaf's trajectory (model and tool), as budgeted."""
    return sum(tree.nodes[i].num_tokens for i in tree.path(leaf)[1:])


def _bind(check_answers: AnswerCheck | None, question):
    """``check_answers`` for one question's leaves (``None`` stays ``None``: exact match)."""
    if check_answers is None:
        return None
    return lambda answers: check_answers(question, answers)


def _score(
    policy: Policy,
    env,
    tree: Tree,
    q,
    format_penalty: float,
    max_len: int,
    dapo: DAPOConfig,
    check_answers: AnswerCheck | None,
) -> _ScoredTree:
    check = _bind(check_answers, q)
    rewards, d = score_tree(policy, tree, q.golden_answers, format_penalty, env.config, check)
    lengths = [_response_tokens(tree, leaf) for leaf in rewards]
    penalty = overlong_penalty(lengths, max_len, dapo.overlong_buffer, dapo.overlong_penalty)
    for leaf, pen in zip(list(rewards), penalty):
        rewards[leaf] += float(pen)
        tree.nodes[leaf].reward = rewards[leaf]
    return _ScoredTree(tree, rewards, d, [float(x) for x in penalty])


def _vanilla_rows(rows, credits: Sequence[TreeCredit]) -> np.ndarray:
    """``vanilla`` credit: every model token of a row carries its leaf's advantage."""
    per_row = [
        credits[t].leaf_advantages[np.searchsorted(credits[t].leaves, leaf)]
        for t, leaf in rows.leaf
    ]
    return (rows.loss_mask * np.asarray(per_row, np.float32)[:, None]).astype(np.float32)


def failed_leaves(tree: Tree) -> set[int]:
    """Leaves whose trajectory ended because the retriever failed (``tool_error``)."""
    return {leaf for leaf in tree.leaves() if tree.nodes[leaf].outcome == "tool_error"}


def _credit_without_failures(
    scored: _ScoredTree, credit: CreditConfig, advantage: AdvantageConfig | None
) -> TreeCredit:
    """Tree credit as if the leaves cut short by a retriever failure had not been sampled.

    An outage is not the policy's doing, so a failed leaf's format penalty must not pull
    its tree's normalised rewards or its ancestors' values down. The failed leaves are
    pruned with every turn that leads only to them, the credit is computed on the rest,
    and mapped back onto the whole tree with 0 on the pruned turns.
    """
    tree, rewards = scored.tree, scored.rewards
    failed = failed_leaves(tree)
    if not failed:
        return tree_credit(tree.parents, tree.entropies, rewards, credit, advantage)
    n = len(tree.nodes)
    leaves = np.asarray(sorted(rewards), np.int64)
    out = TreeCredit(
        np.zeros(n),
        np.zeros(n),
        leaves,
        np.zeros(len(leaves)) if credit.advantage == "vanilla" else None,
    )
    # ids ascending, so the root stays first and every parent precedes its children
    kept = sorted({node for leaf in set(rewards) - failed for node in tree.path(leaf)})
    if not kept:  # every leaf failed: nothing to train on
        return out
    new_id = {old: new for new, old in enumerate(kept)}
    sub = tree_credit(
        [-1] + [new_id[tree.nodes[old].parent] for old in kept[1:]],
        [tree.entropies[old] for old in kept],
        {new_id[leaf]: r for leaf, r in rewards.items() if leaf not in failed},
        credit,
        advantage,
    )
    out.values[kept] = sub.values
    out.advantages[kept] = sub.advantages
    if sub.leaf_advantages is not None:
        by_leaf = dict(zip((kept[i] for i in sub.leaves), sub.leaf_advantages))
        out.leaf_advantages[:] = [by_leaf.get(int(leaf), 0.0) for leaf in leaves]
    return out


def _mask_failed_rows(rows, trees: Sequence[Tree]) -> int:
    """Zero the loss mask and advantages of the rows of failed leaves; returns how many."""
    failed = [failed_leaves(tree) for tree in trees]
    masked = 0
    for r, (t, leaf) in enumerate(rows.leaf):
        if leaf in failed[t]:
            rows.loss_mask[r] = 0
            rows.advantages[r] = 0
            masked += 1
    return masked


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
    advantage: AdvantageConfig | None = None,
    dapo: DAPOConfig | None = None,
    more_questions: Callable[[], Sequence] | None = None,
    check_answers: AnswerCheck | None = None,
    pack_trees: bool = False,
) -> TreeBatch:
    """Trees for ``questions``, their leaf rewards, turn credit and the training batch.

    ``pack_trees``: the batch also carries the trees packed (``RLBatch.tree``), its rows
    laid out by tree, ``tree_cfg.num_leaves`` rows per tree (or more, if a tree has more
    leaves), and ``row_multiple`` then counts trees: the update step computes each shared
    prefix once.

    ``advantage`` is the leaves' group advantage of ``credit.advantage="vanilla"``.
    ``dapo``: overlong shaping of leaf rewards (``L_max`` = ``tree_cfg.max_response_tokens``,
    the length being every token after the prompt) and dynamic sampling with a tree as the
    group: trees whose leaves all scored the same are dropped and ``more_questions()``
    supplies each refill round. ``check_answers(question, boxed answers)``: the verdicts
    that replace exact match (the math verifier). Reward, env and rollout metrics cover
    every tree grown; the batch, ``trees`` and ``leaf_rewards`` the kept ones.
    """
    dapo = dapo if dapo is not None else DAPOConfig()
    outcomes = dict.fromkeys(STEP_OUTCOMES, 0)
    tools_before = _tool_counts(env)
    counters = {"prefilled_tokens": 0, "decoded_tokens": 0}
    sampled: list[_ScoredTree] = []

    def sample_round(r: int) -> list[_ScoredTree]:
        qs = questions if r == 0 else more_questions()
        round_seed = seed + 104729 * r  # round 0 grows exactly as without DAPO
        trees = _grow_trees(
            policy, env, qs, tree_cfg, spec, system_prompt, round_seed, sampler_rows,
            outcomes, counters,
        )  # fmt: skip
        max_len = tree_cfg.max_response_tokens
        out = [
            _score(policy, env, t, q, format_penalty, max_len, dapo, check_answers)
            for t, q in zip(trees, qs)
        ]
        sampled.extend(out)
        return out

    if dapo.dynamic_sampling:
        if more_questions is None:
            raise ValueError("dynamic sampling needs more_questions to refill the batch")
        kept, ds_metrics = fill_groups(
            sample_round, lambda s: np.asarray(list(s.rewards.values())), len(questions),
            dapo.max_rounds,
        )  # fmt: skip
    else:
        kept, ds_metrics = sample_round(0), {}

    credits = [_credit_without_failures(s, credit, advantage) for s in kept]
    rows = flatten([s.tree for s in kept], [c.advantages for c in credits], pad_id=policy.pad_id)
    if credit.advantage == "vanilla":
        rows.advantages = _vanilla_rows(rows, credits)
    masked = _mask_failed_rows(rows, [s.tree for s in kept])
    b, t = rows.tokens.shape
    kept_trees = [s.tree for s in kept]
    batch = make_batch(
        rows.tokens,
        rows.loss_mask,
        rows.advantages,
        rows.old_logp,
        segment_ids=rows.segment_ids,
        positions=rows.positions,
        turn_ids=rows.turn_ids,
    )
    if pack_trees:
        g = max([tree_cfg.num_leaves] + [len(tr.leaves()) for tr in kept_trees])
        p = -(-len(kept_trees) // row_multiple) * row_multiple
        length = bucket_length(t)
        batch = pad_batch(
            batch, length=length, rows=p * g, pad_id=policy.pad_id, at=slots(rows.leaf, g)
        )
        unique = max(tr.unique_tokens() for tr in kept_trees)
        packed = pack(kept_trees, policy.pad_id, bucket_length(unique), length, g, p)
        batch = batch.replace(tree=packed)
    else:
        batch = pad_batch(
            batch,
            length=bucket_length(t),
            rows=-(-b // row_multiple) * row_multiple,
            pad_id=policy.pad_id,
        )

    trees = [s.tree for s in sampled]
    leaf_rewards = [s.rewards for s in sampled]
    details = [d for s in sampled for d in s.details]
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
    if dapo.overlong_buffer:
        m["reward/overlong_penalty"] = float(np.mean([x for s in sampled for x in s.penalty]))
    m.update(ds_metrics)
    for k, v in outcomes.items():
        m[f"env/{k}"] = float(v)
    for k, v in _tool_counts(env).items():
        m[f"env/{k}"] = float(v - tools_before.get(k, 0))
    m["outage/masked_leaves"] = float(masked)
    m.update({f"sampler/{k}": float(v) for k, v in counters.items()})
    return TreeBatch(batch, [s.tree for s in kept], [s.rewards for s in kept], m)


def evaluate_qa(
    policy: Policy,
    env,
    datasets: dict[str, Sequence],
    tree_cfg: TreeConfig,
    system_prompt: str | None,
    format_penalty: float,
    max_new_tokens: int,
    stop_strings: Sequence[str],
    check_answers: AnswerCheck | None = None,
    sampler_rows: int = 0,
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Greedy single-chain EM / F1 per dataset and the size-weighted average (the paper's
    validation protocol: no tree, temperature 0), with the format-valid share and the tool
    calls each answer took (``eval/tool_calls_<name>``). ``check_answers``: as in
    :func:`at2po_rollout` (EM is then its verdict). Questions are answered in waves of at
    most ``sampler_rows`` (0: a dataset at once): the KV cache of 194 questions at once
    took 12 GB and more in the cpu variant.

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
        wave = sampler_rows if sampler_rows > 0 else len(prompts)
        trees = []
        for i in range(0, len(prompts), wave):
            engine = policy.engine(spec, seed=0)
            grown = TreeRollout(
                engine, env, policy.tokenizer.decode, policy.tokenizer.encode, chain
            ).run(prompts[i : i + wave])
            release_rows(engine, grown)
            trees += grown
        ems, f1s, fmt, calls = [], [], [], []
        for tree, q in zip(trees, questions):
            (leaf,) = tree.leaves()
            calls.append(float(tree.nodes[leaf].tool_calls))
            _, details = score_tree(
                policy,
                tree,
                q.golden_answers,
                format_penalty,
                env.config,
                _bind(check_answers, q),
            )
            ems.append(details[0]["em"])
            f1s.append(details[0]["f1"])
            fmt.append(float(details[0]["format_ok"]))
        for key, values in (("em", ems), ("f1", f1s), ("format_ok", fmt), ("tool_calls", calls)):
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
    the question's quoted sentence, then ``<answer>`` with ``\\boxed{}`` and the EOS
    token, which a rollout samples and trains after the answer too); every tool
    result is the real environment's reply, tokenised on its own like in a rollout and
    masked out of the loss. With ``weak_first`` the first query is only the sentence's
    last three words, which often misses, and a second search follows. A search hits when
    a page titled with the gold answer comes back; ``None`` when none did (no
    demonstration teaches answering without evidence).

    A question made of ``parts`` (the embedded pairs) searches each part's sentence in
    turn (``weak_first`` weakens the first part's first query only) and answers their
    titles joined by " and ", as the pair's golden answer is written.
    """
    parts = question.parts or (question,)
    ids = prompt_ids(tok, use_chat, question.question, system_prompt)
    mask = [0] * len(ids)
    think = "<think> I should look up the sentence. </think>\n"
    if len(parts) > 1:
        think = "<think> I should look up the first sentence. </think>\n"
    calls, found = 0, []
    for k, part in enumerate(parts):
        sentence = _quoted(part.question)
        gold = part.golden_answers[0]
        weak = weak_first and k == 0
        queries = [" ".join(sentence.split()[-3:]), sentence] if weak else [sentence]
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
                found.append(gold)
                if k + 1 < len(parts):  # pairs only: the next part's search follows
                    think = (
                        f"<think> The first article is {gold}. Now I look up the second "
                        "sentence. </think>\n"
                    )
                break
            think = "<think> That search missed; I will search the whole sentence. </think>\n"
        else:
            return None
    if len(parts) == 1:
        reason = f"The page that begins this way is {found[0]}."
    else:
        reason = "The pages that begin this way are " + " and ".join(found) + "."
    answer = f"<think> {reason} </think>\n<answer> \\boxed{{{' and '.join(found)}}} </answer>"
    model = tok.encode(answer) + [tok.eos_ids[0]]
    return ids + model, mask + [1] * len(model)


def _quoted(question: str) -> str:
    """The sentence a question quotes (the embedded QA set's), or the question itself."""
    start, end = question.find('"'), question.rfind('"')
    text = question[start + 1 : end] if 0 <= start < end else question
    return " ".join(text.replace("___", " ").split())
