"""AT²PO tree rollouts vs independent chains: tokens prefilled and generated per second.

    python bench/rollout.py [--prompts=2] [--turn_tokens=32]

Same model (the embedded SmolLM2-135M, float32), same prompts, same sampler, in one run:
one AT²PO tree per prompt (M=10 chains, L=2 rounds, K=6 picks → 22 leaves) against 22
independent chains per prompt. A 135M model does not follow the search protocol, so the
environment here *forces* the trajectory shape of real agent rollouts: every turn is sent
to BM25 search as a query (its top passage, cut to 300 characters, is appended) until the
third turn, which ends the trajectory. Forks then happen mid-trajectory, as in the paper.

A third arm runs the same 22 chains the way a stateless generation server without prefix
caching does (verl-style rollouts against such a server): every turn sends the whole
trajectory so far, which is prefilled from scratch (``ReprefillEngine``).

Prints a table and, as the last line, a JSON object with ``tree_prefill_ratio`` (tree
prefill / prompt-sharing chains' prefill), ``tree_tok_s_ratio`` (tree generated tokens/s /
those chains'), and the same two against the re-prefilling chains (``*_vs_reprefill``).
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from absl import app, flags  # noqa: E402

_PROMPTS = flags.DEFINE_integer("prompts", 2, "questions (one tree each)")
_TURN = flags.DEFINE_integer("turn_tokens", 32, "max tokens per turn")


class ForcedSearchEnv:
    """Two search turns, then the trajectory ends (see the module docstring)."""

    def __init__(self, backend):
        from rlpt_jax.envs.search import format_results

        self.backend = backend
        self.format = format_results

    def step_batch(self, turns):
        from rlpt_jax.envs.search_env import StepResult

        queries = [t[:200] or "wikipedia" for t, c in turns if c < 2]
        hits = iter(self.backend.search(queries, 1) if queries else [])
        out = []
        for _text, calls in turns:
            if calls < 2:
                res = self.format(next(hits), topk=1, max_chars=300)
                out.append(StepResult("search", False, res, calls + 1, "q", ""))
            else:
                out.append(StepResult("answer", True, "", calls, None, ""))
        return out


class ReprefillEngine:
    """A turn engine that keeps each trajectory on the host and prefills all of it again
    for every turn (a stateless server without prefix caching), over a real engine."""

    def __init__(self, engine):
        self.engine = engine
        self.history: dict[int, list[int]] = {}
        self.next = 0

    def _new(self, tokens) -> int:
        self.history[self.next] = list(tokens)
        self.next += 1
        return self.next - 1

    def start(self, prompts):
        return [self._new(p) for p in prompts]

    def fork(self, requests):
        return [[self._new(self.history[r][:n]) for _ in range(m)] for r, n, m in requests]

    def extend(self, rows, tokens):
        for r, t in zip(rows, tokens):
            self.history[r] += list(t)

    def generate(self, rows, max_new_tokens):
        live = self.engine.start([self.history[r] for r in rows])
        samples = self.engine.generate(live, max_new_tokens)
        self.engine.release(live)
        for r, s in zip(rows, samples):
            self.history[r] += list(s.tokens)
        return samples

    def release(self, rows):
        for r in rows:
            self.history.pop(r, None)

    def counters(self):
        return self.engine.counters()


def run_trees(policy, env, prompts, cfg, seed, reprefill=False):
    from rlpt_jax.rollout.policy import SampleSpec
    from rlpt_jax.rollout.tree import TreeRollout, release_rows

    spec = SampleSpec(temperature=1.0, max_new_tokens=cfg.max_response_tokens)
    engine = policy.engine(spec, seed=seed)
    if reprefill:
        engine = ReprefillEngine(engine)
    ro = TreeRollout(engine, env, policy.tokenizer.decode, policy.tokenizer.encode, cfg)
    t0 = time.perf_counter()
    trees = ro.run(prompts)
    dt = time.perf_counter() - t0
    release_rows(engine, trees)
    return trees, engine.counters(), dt


def main(argv):
    del argv
    from rlpt_jax import launch_utils

    launch_utils.set_cpu_xla_defaults()
    from absl import logging
    from flax import nnx

    logging.set_verbosity(logging.WARNING)
    from rlpt_jax.data.qa import embedded_qa
    from rlpt_jax.envs.search import BM25Search
    from rlpt_jax.models.embedded import smollm2_dir
    from rlpt_jax.models.hf_io import load_hf
    from rlpt_jax.models.tokenizer import Tokenizer
    from rlpt_jax.rollout.at2po import question_prompt
    from rlpt_jax.rollout.policy import Policy
    from rlpt_jax.rollout.tree import TreeConfig

    path = smollm2_dir()
    tok = Tokenizer(path)
    graphdef, params = nnx.split(load_hf(path), nnx.Param)
    policy = Policy(graphdef, tok)
    policy.set_params(params)
    env = ForcedSearchEnv(BM25Search())
    qs = embedded_qa("dev")[: _PROMPTS.value]
    prompts = [
        question_prompt(policy, q.question, "Answer the question; search if needed.") for q in qs
    ]
    budget = 4 * _TURN.value + 3 * 120
    tree_cfg = TreeConfig(
        num_chains=10,
        rounds=2,
        picks=6,
        alpha=0.05,
        max_response_tokens=budget,
        max_turn_tokens=_TURN.value,
    )
    chain_cfg = TreeConfig(
        num_chains=22,
        rounds=0,
        picks=0,
        expansion="chains",
        max_response_tokens=budget,
        max_turn_tokens=_TURN.value,
    )
    arms = (
        ("AT2PO tree (10+2x6)", tree_cfg, False),
        ("22 chains, shared prompt", chain_cfg, False),
        ("22 chains, re-prefilled", chain_cfg, True),
    )
    # Warm-up compiles every bucket the arms use.
    for _, cfg, reprefill in arms:
        run_trees(policy, env, prompts, cfg, seed=100, reprefill=reprefill)

    rows = []
    for name, cfg, reprefill in arms:
        trees, c, dt = run_trees(policy, env, prompts, cfg, seed=0, reprefill=reprefill)
        leaves = sum(len(t.leaves()) for t in trees)
        rows.append(
            (
                name,
                leaves,
                c["prefilled_tokens"],
                c["decoded_tokens"],
                dt,
                c["decoded_tokens"] / dt,
                sum(t.leaf_tokens() for t in trees),
            )
        )
    print(
        f"\n{'rollout':24s} {'leaves':>6s} {'prefilled':>10s} {'generated':>10s} "
        f"{'seconds':>8s} {'gen tok/s':>10s} {'tokens in leaves':>17s}"
    )
    for r in rows:
        print(f"{r[0]:24s} {r[1]:6d} {r[2]:10d} {r[3]:10d} {r[4]:8.1f} {r[5]:10.1f} {r[6]:17d}")
    tree, chains, reprefilled = rows
    from rlpt_jax.comparison import machine_info

    print(
        json.dumps(
            {
                "tree_prefill_ratio": round(tree[2] / chains[2], 4),
                "tree_tok_s_ratio": round(tree[5] / chains[5], 4),
                "tree_prefill_ratio_vs_reprefill": round(tree[2] / reprefilled[2], 4),
                "tree_tok_s_ratio_vs_reprefill": round(tree[5] / reprefilled[5], 4),
                "prompts": _PROMPTS.value,
                "turn_tokens": _TURN.value,
                "arms": [
                    dict(zip(("arm", "leaves", "prefilled", "generated", "s", "gen_tok_s"), r))
                    for r in rows
                ],
                "machine": machine_info(),
            }
        )
    )


if __name__ == "__main__":
    app.run(main)
