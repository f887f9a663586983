"""What differs between RLPT, the NTP baseline and AT²PO, behind one small interface.

The loop asks a method for: its data position (``stream``), the stop strings of its
rollouts, a training batch per step (``rollout`` or ``ntp_batch``) and its held-out
evaluation. RLPT and NTP share data and evaluation, so "RLPT vs NTP on the same text" is
the same command with ``--config.method=ntp``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from flax import nnx

from rlpt_jax.data import pipeline
from rlpt_jax.data.tasks import END_TAG
from rlpt_jax.models import lm_eval
from rlpt_jax.models.tokenizer import Tokenizer
from rlpt_jax.rollout.policy import Policy, SampleSpec
from rlpt_jax.train.batch import RLBatch, make_batch, pad_batch
from rlpt_jax.train.experiment import ExperimentConfig


class RLPTMethod:
    """RLPT (and, with ``ntp=True``, next-token continual pre-training on the same text)."""

    def __init__(self, exp: ExperimentConfig, tokenizer: Tokenizer, use_chat: bool):
        from rlpt_jax.rewards.judges import make_judge

        self.exp = exp
        self.tokenizer = tokenizer
        renderer = tokenizer.render_chat if use_chat else None
        self.data = pipeline.build_rlpt_data(
            exp.corpus, exp.clean, exp.segments, exp.tasks, tokenizer.encode, renderer
        )
        self.counts = dict(self.data.counts)
        self.counts["train_tasks"] = len(self.data.train_tasks)
        self.counts["heldout_tasks"] = len(self.data.heldout_tasks)
        self.ntp = exp.method == "ntp"
        n = len(self.data.train_docs) if self.ntp else len(self.data.train_tasks)
        self.stream = pipeline.IndexStream(n, exp.seed)
        self.stop_strings = (END_TAG,)
        generate, judge_renderer = None, None
        if exp.judge.kind == "generative":
            generate, judge_renderer = _generative_judge_backend(exp)
        self.judge = make_judge(exp.judge, generate=generate, renderer=judge_renderer)

    # -- training batches -----------------------------------------------------------
    def rollout(self, policy: Policy, spec: SampleSpec, seed: int, row_multiple: int):
        from rlpt_jax.rollout.rlpt import rlpt_rollout

        idx = self.stream.take(self.exp.rollout.prompts_per_step)
        tasks = [self.data.train_tasks[i] for i in idx]
        before = self.judge.counters.as_dict()
        out = rlpt_rollout(
            policy,
            tasks,
            self.judge,
            spec,
            self.exp.rollout.samples_per_prompt,
            self.exp.advantage,
            self.exp.rollout.max_prompt_tokens,
            seed,
            row_multiple,
        )
        m = dict(out.metrics)
        # Per-step counts (not running totals), so a resumed run logs what a fresh one would.
        after = self.judge.counters.as_dict()
        m.update({f"judge/{k}": float(after[k] - before.get(k, 0)) for k in after})
        return out.batch, m

    def ntp_batch(self, row_multiple: int) -> tuple[RLBatch, dict[str, float]]:
        """Packed ``[ntp_batch_size, ntp_seq_len]`` rows of the next training documents."""
        tr = self.exp.train
        rows_tok, rows_seg = [], []
        docs = 0
        while sum(len(r) for r in rows_tok) < tr.ntp_batch_size:
            (i,) = self.stream.take(1)
            ids = self.tokenizer.encode(self.data.train_docs[i].text)
            t, s = pipeline.pack_documents([ids], tr.ntp_seq_len, self.tokenizer.eos_ids[0])
            rows_tok.append(t)
            rows_seg.append(s)
            docs += 1
        tokens = np.concatenate(rows_tok)[: tr.ntp_batch_size]
        seg = np.concatenate(rows_seg)[: tr.ntp_batch_size]
        prev = np.pad(seg[:, :-1], ((0, 0), (1, 0)))
        mask = ((seg > 0) & (seg == prev)).astype(np.float32)
        zeros = np.zeros(tokens.shape, np.float32)
        batch = make_batch(tokens, mask, zeros, zeros, segment_ids=seg)
        b = tokens.shape[0]
        batch = pad_batch(
            batch,
            length=tokens.shape[1],
            rows=-(-b // row_multiple) * row_multiple,
            pad_id=self.tokenizer.pad_id,
        )
        return batch, {"ntp/docs": float(docs), "ntp/tokens": float(mask.sum())}

    # -- evaluation -----------------------------------------------------------------
    def evaluate(self, policy: Policy, state, graphdef, exp: ExperimentConfig) -> dict:
        """Held-out next-segment accuracy (greedy, same judge) and next-token loss."""
        from rlpt_jax.data.tasks import extract_prediction
        from rlpt_jax.rollout.rlpt import encode_prompts

        m: dict[str, float] = {}
        tasks = self.data.heldout_tasks[: exp.eval.num_prompts]
        if tasks:
            spec = SampleSpec(
                temperature=0.0,
                max_new_tokens=exp.eval.max_new_tokens,
                stop_strings=self.stop_strings,
            )
            prompts = encode_prompts(policy, tasks, exp.rollout.max_prompt_tokens)
            comps = [g[0] for g in policy.sample(prompts, n=1, spec=spec, seed=0)]
            preds = [extract_prediction(policy.tokenizer.decode(c.tokens)) for c in comps]
            res = self.judge.score([(p, t.reference_segments) for p, t in zip(preds, tasks)])
            r = np.asarray([x.reward for x in res])
            kinds = np.asarray([t.kind for t in tasks])
            m["eval/next_segment_acc"] = float(r.mean())
            for kind in ("asr", "msr"):
                if (kinds == kind).any():
                    m[f"eval/next_segment_acc_{kind}"] = float(r[kinds == kind].mean())
            m["eval/no_prediction_frac"] = float(np.mean([p is None for p in preds]))
        docs = self.data.heldout_docs[: exp.eval.ntp_docs]
        if docs:
            model = nnx.merge(graphdef, state.params)
            ids = [self.tokenizer.encode(d.text)[: exp.eval.ntp_max_tokens] for d in docs]
            ids = [x for x in ids if len(x) >= 2]
            nll = lm_eval.nll_per_token(model, ids, self.tokenizer.pad_id)
            m["eval/heldout_nll"] = float(np.concatenate(nll).mean())
        return m


def _generative_judge_backend(exp: ExperimentConfig):
    """A frozen judge model run by our own sampler (greedy), and its chat renderer."""
    from rlpt_jax.models.hf_io import load_hf

    path = Path(exp.judge_model_path) if exp.judge_model_path else exp.model.resolve()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"judge model folder {path} has no config.json")
    model = load_hf(path, dtype=exp.model.dtype)
    tok = Tokenizer(path)
    graphdef, params = nnx.split(model, nnx.Param)
    judge_policy = Policy(
        graphdef, tok, cache_dtype=exp.rollout.cache_dtype, use_chat_template=tok.has_chat_template
    )
    judge_policy.set_params(params)
    spec = SampleSpec(temperature=0.0, max_new_tokens=exp.judge_max_new_tokens)

    def generate(prompts: list[str]) -> list[str]:
        ids = [tok.encode(p) for p in prompts]
        groups = judge_policy.sample(ids, n=1, spec=spec, seed=0)
        return [tok.decode(g[0].tokens, skip_special=True) for g in groups]

    return generate, (tok.render_chat if tok.has_chat_template else None)


class AT2POMethod:
    """AT²PO on search-augmented QA: trees, tree credit, ATPO (or a baseline loss)."""

    def __init__(self, exp: ExperimentConfig, tokenizer: Tokenizer, use_chat: bool):
        from rlpt_jax.envs.search_env import SearchEnv

        self.exp = exp
        self.tokenizer = tokenizer
        self.train_questions = load_questions(exp.qa.train, "train")
        self.eval_sets = {name: load_questions(name, "dev") for name in exp.qa.eval}
        self.env = SearchEnv(make_search_backend(exp), exp.env)
        self.stream = pipeline.IndexStream(len(self.train_questions), exp.seed)
        self.stop_strings = ("</search>", "</answer>")
        self.counts = {"train_questions": len(self.train_questions)}
        self.counts.update({f"eval_{k}": len(v) for k, v in self.eval_sets.items()})

    def rollout(self, policy: Policy, spec: SampleSpec, seed: int, row_multiple: int):
        from rlpt_jax.rollout.at2po import at2po_rollout

        idx = self.stream.take(self.exp.rollout.prompts_per_step)
        qs = [self.train_questions[i] for i in idx]
        out = at2po_rollout(
            policy,
            self.env,
            qs,
            self.exp.tree,
            self.exp.credit,
            spec,
            self.exp.qa.system_prompt,
            self.exp.qa.format_penalty,
            seed,
            row_multiple,
        )
        return out.batch, out.metrics

    def ntp_batch(self, row_multiple: int):
        raise ValueError("method 'at2po' has no NTP batches")

    def evaluate(self, policy: Policy, state, graphdef, exp: ExperimentConfig) -> dict:
        from rlpt_jax.rollout.at2po import evaluate_qa

        return evaluate_qa(
            policy,
            self.env,
            {k: v[: exp.eval.num_prompts] for k, v in self.eval_sets.items()},
            exp.tree,
            exp.qa.system_prompt,
            exp.qa.format_penalty,
            exp.eval.max_new_tokens,
            self.stop_strings,
        )


def load_questions(name: str, split: str) -> Sequence:
    """A QA dataset by name (``embedded``, ``fanoutqa``) or FlashRAG jsonl path."""
    from rlpt_jax.data import qa

    if name == "embedded":
        return qa.embedded_qa(split)
    if name == "fanoutqa":
        return qa.fanoutqa_dev()
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"QA dataset {name!r} is neither 'embedded', 'fanoutqa' nor an existing jsonl file"
        )
    examples, report = qa.load_qa_jsonl(path)
    return examples


def make_search_backend(exp: ExperimentConfig):
    from rlpt_jax.envs import search

    if exp.search.backend == "http":
        return search.HttpRetriever(
            search.HttpRetrieverConfig(
                url=exp.search.url, timeout_s=exp.search.timeout_s, retries=exp.search.retries
            )
        )
    return search.BM25Search(cache_dir=exp.search.index_dir)


def build_data(exp: ExperimentConfig, tokenizer: Tokenizer, use_chat: bool):
    if exp.method == "at2po":
        return AT2POMethod(exp, tokenizer, use_chat)
    return RLPTMethod(exp, tokenizer, use_chat)
