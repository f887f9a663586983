"""What differs between the methods, behind one small interface (:class:`Method`).

The loop asks a method for: its data position (``stream``), the stop strings of its
rollouts, the rows of one step's batch, its objective, a training batch per step
(``next_batch``) and its held-out evaluation. RLPT and NTP share data and evaluation,
so "RLPT vs NTP on the same text" is the same command with ``--config.method=ntp``;
SFT (the cold start) trains on demonstrations of either method's format or on a chat
jsonl file. RLVR (verifiable math rewards) lives in :mod:`rlpt_jax.train.rlvr`.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from flax import nnx

from rlpt_jax import multihost
from rlpt_jax.batch import RLBatch, make_batch, pad_batch
from rlpt_jax.data import pipeline
from rlpt_jax.data import sft as sft_data
from rlpt_jax.data.tasks import END_TAG
from rlpt_jax.models import lm_eval
from rlpt_jax.models.tokenizer import Tokenizer
from rlpt_jax.rollout.policy import Policy, SampleSpec
from rlpt_jax.train.experiment import ExperimentConfig, OutageConfig
from rlpt_jax.train.steps import Objective, nll_objective, policy_objective


@dataclasses.dataclass
class Evaluation:
    """Held-out metrics, and per-example values under the same names (for confidence
    intervals over examples; ``rlpt_jax.comparison``)."""

    metrics: dict[str, float]
    per_example: dict[str, list[float]] = dataclasses.field(default_factory=dict)


class Method(Protocol):
    """One training method as the loop sees it."""

    counts: dict[str, int]  # data statistics printed at start-up
    stream: pipeline.IndexStream  # data position, saved in checkpoints
    stop_strings: tuple[str, ...]
    samples: bool  # whether batches come from the policy's own samples

    @staticmethod
    def step_shape(exp: ExperimentConfig) -> tuple[int, int]:
        """Rows of one step's batch and their longest sequence, from the config alone (the
        loop sizes the update with it, ``--dry_run`` plans memory with it)."""
        ...

    def objective(self) -> Objective: ...

    def next_batch(
        self, policy: Policy, spec: SampleSpec, seed: int, row_multiple: int
    ) -> tuple[RLBatch, dict[str, float]]: ...

    def evaluate(self, policy: Policy, params: nnx.State, graphdef) -> Evaluation: ...


class ServiceOutage(RuntimeError):
    """A step whose retriever or judge failed too often to train on (the ``outage``
    policy, :class:`rlpt_jax.train.experiment.OutageConfig`).

    Raised by a method's ``next_batch`` after the step's data was consumed; the loop skips
    the step, logs ``metrics`` (the step's counts, :func:`service_counts` among them) and
    counts it.
    """

    def __init__(self, service: str, url: str, reason: str | None, metrics: dict[str, float]):
        failures = int(metrics[f"outage/{service}_failures"])
        requests = int(metrics[f"outage/{service}_requests"])
        last = f"; last error: {reason}" if reason else ""
        super().__init__(f"{service} {url}: {failures} of {requests} requests failed{last}")
        self.service, self.url, self.reason = service, url, reason
        self.failures, self.requests = failures, requests
        self.metrics = metrics


class OutageError(RuntimeError):
    """A service stayed down: the run stops (after saving a checkpoint, if it trains)."""


def service_counts(service: str, failures: int, requests: int) -> dict[str, float]:
    """A step's ``outage/<service>_requests`` and ``outage/<service>_failures``."""
    return {
        f"outage/{service}_requests": float(requests),
        f"outage/{service}_failures": float(failures),
    }


def check_service(
    outage: OutageConfig, service: str, url: str, reason: str | None, metrics: dict[str, float]
) -> None:
    """Raise :class:`ServiceOutage` if more than ``outage.max_failure_fraction`` of the
    step's requests to ``service`` (counted in ``metrics``) failed."""
    limit = outage.max_failure_fraction
    failures = metrics[f"outage/{service}_failures"]
    requests = metrics[f"outage/{service}_requests"]
    if requests and failures > limit * requests:
        raise ServiceOutage(service, url, reason, metrics)


def eval_outage(
    ev: Evaluation, outage: OutageConfig, service: str, url: str, counts: dict[str, float]
) -> Evaluation:
    """The outage policy at evaluation: the service's ``outage/*`` counts of the
    evaluation are logged as ``eval/<service>_requests`` and ``eval/<service>_failures``,
    and beyond ``outage.max_failure_fraction`` failed requests the held-out scores are not
    measurements of the policy: they are withheld (NaN, no per-example values, so that
    neither the best checkpoint nor a comparison takes them) with a warning naming the URL.
    """
    limit = outage.max_failure_fraction
    failures = counts[f"outage/{service}_failures"]
    requests = counts[f"outage/{service}_requests"]
    metrics = {f"eval/{service}_requests": requests, f"eval/{service}_failures": failures}
    if requests and failures > limit * requests:
        warnings.warn(
            f"evaluation: {service} {url}: {failures:.0f} of {requests:.0f} requests failed; "
            "the held-out scores are withheld (NaN): they would measure the outage, not the "
            "policy",
            RuntimeWarning,
            stacklevel=2,
        )
        return Evaluation({**{k: math.nan for k in ev.metrics}, **metrics}, {})
    return Evaluation({**ev.metrics, **metrics}, ev.per_example)


def judge_url(exp: ExperimentConfig) -> str:
    """Where the judge runs, for outage messages."""
    return exp.judge.http.url if exp.judge.kind == "http" else f"({exp.judge.kind} judge)"


def retriever_url(exp: ExperimentConfig) -> str:
    """Where the retriever runs, for outage messages."""
    if exp.search.backend == "http":
        return str(exp.search.url)
    return f"(bm25 index {exp.search.index_dir or 'in memory'})"


# The service behind each tool, as the outage metrics name it.
TOOL_SERVICES = {"search": "retriever", "python": "python"}


def tool_counts(tool: str, before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """Requests to ``tool``'s service and their failures between two
    :meth:`SearchEnv.metrics` snapshots: each call sent ends as a ``tool`` outcome or a
    ``<tool>_failures`` count."""
    failures = after[f"{tool}_failures"] - before[f"{tool}_failures"]
    requests = failures + after[tool] - before[tool]
    return service_counts(TOOL_SERVICES[tool], failures, requests)


def retriever_counts(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """Retriever requests and failures between two :meth:`SearchEnv.metrics` snapshots."""
    return tool_counts("search", before, after)


def tool_url(exp: ExperimentConfig, tool: str) -> str:
    """Where a tool's service runs, for outage messages."""
    return retriever_url(exp) if tool == "search" else "(the Python tool's sandbox)"


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
        self.samples = not self.ntp
        generate, judge_renderer = None, None
        if exp.judge.kind == "generative":
            generate, judge_renderer = _generative_judge_backend(exp)
        self.judge = make_judge(exp.judge, generate=generate, renderer=judge_renderer)
        # A dead judge URL fails here, naming it, not after a rollout (process 0 asks).
        multihost.once(self.judge.probe)

    # -- training batches -----------------------------------------------------------
    @staticmethod
    def step_shape(exp: ExperimentConfig) -> tuple[int, int]:
        if exp.method == "ntp":
            return exp.train.ntp_batch_size, exp.train.ntp_seq_len
        r = exp.rollout
        return r.prompts_per_step * r.samples_per_prompt, r.max_prompt_tokens + r.max_new_tokens

    def objective(self) -> Objective:
        return nll_objective() if self.ntp else policy_objective(self.exp.loss)

    def next_batch(self, policy: Policy, spec: SampleSpec, seed: int, row_multiple: int):
        if self.ntp:
            return self.ntp_batch(row_multiple)
        return self.rollout(policy, spec, seed, row_multiple)

    def rollout(self, policy: Policy, spec: SampleSpec, seed: int, row_multiple: int):
        from rlpt_jax.rewards.judges import JudgeUnavailableError
        from rlpt_jax.rollout.rlpt import rlpt_rollout

        before = self.judge.counters.as_dict()
        try:
            out = rlpt_rollout(
                policy,
                self.next_tasks(),
                self.judge,
                spec,
                self.exp.rollout,
                self.exp.advantage,
                seed,
                row_multiple,
                dapo=self.exp.dapo,
                more_tasks=self.next_tasks,  # DAPO's refill rounds
            )
        except JudgeUnavailableError as e:  # the judge's own limit: a failed step too
            m = self._judge_metrics(before)
            raise ServiceOutage("judge", judge_url(self.exp), str(e), m) from e
        m = dict(out.metrics)
        m.update(self._judge_metrics(before))
        check_service(self.exp.outage, "judge", judge_url(self.exp), None, m)
        return out.batch, m

    def _judge_metrics(self, before: dict[str, int]) -> dict[str, float]:
        """The step's ``judge/*`` counts (not running totals, so a resumed run logs what a
        fresh one would) and the judge's outage counts."""
        m = self.judge.step_metrics(before)
        m.update(service_counts("judge", m["judge/failed_requests"], m["judge/judged"]))
        return m

    def next_tasks(self) -> list:
        """The next ``prompts_per_step`` training tasks of the data stream."""
        idx = self.stream.take(self.exp.rollout.prompts_per_step)
        return [self.data.train_tasks[i] for i in idx]

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
        batch = _nll_batch(tokens, seg, mask, self.tokenizer.pad_id, row_multiple)
        return batch, {"ntp/docs": float(docs), "ntp/tokens": float(mask.sum())}

    # -- evaluation -----------------------------------------------------------------
    def evaluate(self, policy: Policy, params: nnx.State, graphdef) -> Evaluation:
        """Held-out next-segment accuracy (greedy, same judge; withheld when the judge
        failed, :func:`eval_outage`) and next-token loss."""
        exp = self.exp
        ev = Evaluation({})
        tasks = self.data.heldout_tasks[: exp.eval.num_prompts]
        if tasks:
            ev = self._next_segments(policy, tasks)
        docs = self.data.heldout_docs[: exp.eval.ntp_docs]
        if docs:
            model = nnx.merge(graphdef, params)
            ids = [self.tokenizer.encode(d.text)[: exp.eval.ntp_max_tokens] for d in docs]
            ids = [x for x in ids if len(x) >= 2]
            nll = lm_eval.nll_per_token(model, ids, self.tokenizer.pad_id)
            ev.metrics["eval/heldout_nll"] = float(np.concatenate(nll).mean())
            ev.per_example["eval/heldout_nll"] = [float(x.mean()) for x in nll]  # per document
        return ev

    def _next_segments(self, policy: Policy, tasks: Sequence) -> Evaluation:
        from rlpt_jax.data.tasks import extract_prediction
        from rlpt_jax.rewards.judges import JudgeUnavailableError
        from rlpt_jax.rollout.rlpt import encode_prompts

        exp = self.exp
        m: dict[str, float] = {}
        per: dict[str, list[float]] = {}
        before = self.judge.counters.as_dict()
        spec = SampleSpec(
            temperature=0.0, max_new_tokens=exp.eval.max_new_tokens, stop_strings=self.stop_strings
        )
        prompts = encode_prompts(policy, tasks, exp.rollout.max_prompt_tokens)
        comps = [g[0] for g in policy.sample(prompts, n=1, spec=spec, seed=0)]
        preds = [extract_prediction(policy.tokenizer.decode(c.tokens)) for c in comps]
        try:
            res = self.judge.score([(p, t.reference_segments) for p, t in zip(preds, tasks)])
        except JudgeUnavailableError:  # counted: eval_outage withholds the scores
            res = None
        if res is not None:
            r = np.asarray([x.verdict for x in res], np.float64)
            graded = np.asarray([x.reward for x in res], np.float64)
            kinds = np.asarray([t.kind for t in tasks])
            per["eval/next_segment_acc"] = r.tolist()
            per["eval/next_segment_reward"] = graded.tolist()
            per["eval/no_prediction_frac"] = [float(p is None) for p in preds]
            m["eval/next_segment_acc"] = float(r.mean())
            m["eval/next_segment_reward"] = float(graded.mean())
            for kind in ("asr", "msr"):
                if (kinds == kind).any():
                    m[f"eval/next_segment_acc_{kind}"] = float(r[kinds == kind].mean())
                    m[f"eval/next_segment_reward_{kind}"] = float(graded[kinds == kind].mean())
            m["eval/no_prediction_frac"] = float(np.mean([p is None for p in preds]))
        counts = self._judge_metrics(before)
        return eval_outage(Evaluation(m, per), exp.outage, "judge", judge_url(exp), counts)


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
    """AT²PO on multi-turn tool use: trees, tree credit, ATPO (or a baseline loss).

    The paper's setting is search-augmented QA scored by exact match; with
    ``qa.reward="math"`` the questions are math problems (RLVR's loader) and the answers
    are checked by the math verifier, and ``env.tools`` picks the tools (search, the
    sandboxed Python tool, or both).
    """

    def __init__(self, exp: ExperimentConfig, tokenizer: Tokenizer, use_chat: bool):
        from rlpt_jax.rollout.at2po import prompt_ids

        self.exp = exp
        self.tokenizer = tokenizer
        self.math = MathAnswers(exp.qa) if exp.qa.reward == "math" else None
        if self.math is not None:
            questions, self.eval_sets, data_counts = self.math.questions()
        else:
            questions = load_questions(exp.qa.train, "train")
            self.eval_sets, data_counts = load_eval_sets(exp.qa.eval), {}
        # rollout.max_prompt_tokens bounds the prompt as the memory plan assumes: a longer
        # training question is left out (counted), never cut (that would cut its template).
        self.train_questions = [
            q
            for q in questions
            if len(prompt_ids(tokenizer, use_chat, q.question, exp.qa.system_prompt))
            <= exp.rollout.max_prompt_tokens
        ]
        if not self.train_questions:
            raise ValueError(
                f"every training question's prompt is longer than rollout.max_prompt_tokens="
                f"{exp.rollout.max_prompt_tokens}; raise it"
            )
        self.env = make_env(exp)
        self.stream = pipeline.IndexStream(len(self.train_questions), exp.seed)
        # the enabled tools' closing tags (+ </answer>: env.stop_at_answer)
        self.stop_strings = exp.env.stop_strings
        self.samples = True
        self.counts = dict(data_counts)
        self.counts.update(
            train_questions=len(self.train_questions),
            train_questions_prompt_too_long=len(questions) - len(self.train_questions),
        )
        self.counts.update({f"eval_{k}": len(v) for k, v in self.eval_sets.items()})

    @staticmethod
    def step_shape(exp: ExperimentConfig) -> tuple[int, int]:
        rows = exp.rollout.prompts_per_step * exp.tree.num_leaves
        return rows, exp.rollout.max_prompt_tokens + exp.tree.max_response_tokens

    # Set by the training loop from ``update_split``: whether the batch carries packed trees.
    pack_trees: bool = False

    @staticmethod
    def tree_packing(exp: ExperimentConfig, platform: str | None = None, shards: int = 1) -> bool:
        """Whether the update step packs the trees (``TrainConfig.tree_packing``) on
        ``platform`` (default: JAX's backend) with ``shards`` batch shards."""
        if exp.train.tree_packing is not None:
            return exp.train.tree_packing
        if exp.tree.expansion == "chains":
            return False
        mbs = exp.train.micro_batch_size
        if mbs and mbs < exp.tree.num_leaves:  # a whole tree would outgrow the micro-batch
            return False
        if exp.rollout.prompts_per_step // exp.train.mini_batches < shards:
            return False  # fewer trees than shards: whole trees would leave devices idle
        from rlpt_jax.models.attention import resolve

        m = exp.model
        return resolve(m.attention, m.dtype, m.batch_invariant, platform) != "xla"

    def objective(self) -> Objective:
        return policy_objective(self.exp.loss)

    def next_batch(self, policy: Policy, spec: SampleSpec, seed: int, row_multiple: int):
        from rlpt_jax.rollout.at2po import at2po_rollout

        before = self.env.metrics()
        hows = self.math.hows.copy() if self.math is not None else None
        out = at2po_rollout(
            policy,
            self.env,
            self.next_questions(),
            self.exp.tree,
            self.exp.credit,
            spec,
            self.exp.qa.system_prompt,
            self.exp.qa.format_penalty,
            seed,
            row_multiple,
            sampler_rows=self.exp.rollout.sampler_rows,
            advantage=self.exp.advantage,  # the leaves' group advantage of credit "vanilla"
            dapo=self.exp.dapo,
            more_questions=self.next_questions,  # DAPO's refill rounds
            check_answers=self.math,
            pack_trees=self.pack_trees,
        )
        m = dict(out.metrics)
        if self.math is not None:
            m.update(self.math.step_metrics(hows))
        after = self.env.metrics()
        for tool in self.exp.env.tools:
            m.update(tool_counts(tool, before, after))
        for tool in self.exp.env.tools:
            url, reason = tool_url(self.exp, tool), self.env.last_errors.get(tool)
            check_service(self.exp.outage, TOOL_SERVICES[tool], url, reason, m)
        return out.batch, m

    def next_questions(self) -> list:
        """The next ``prompts_per_step`` training questions of the data stream."""
        idx = self.stream.take(self.exp.rollout.prompts_per_step)
        return [self.train_questions[i] for i in idx]

    def evaluate(self, policy: Policy, params: nnx.State, graphdef) -> Evaluation:
        from rlpt_jax.rollout.at2po import evaluate_qa

        exp = self.exp
        before = self.env.metrics()
        ev = Evaluation(
            *evaluate_qa(
                policy,
                self.env,
                {k: v[: exp.eval.num_prompts] for k, v in self.eval_sets.items()},
                exp.tree,
                exp.qa.system_prompt,
                exp.qa.format_penalty,
                exp.eval.max_new_tokens,
                self.stop_strings,
                self.math,  # check_answers: None (exact match) or the math verifier
                sampler_rows=exp.rollout.sampler_rows,
            )
        )
        after = self.env.metrics()
        for tool in exp.env.tools:
            service = TOOL_SERVICES[tool]
            counts = tool_counts(tool, before, after)
            ev = eval_outage(ev, exp.outage, service, tool_url(exp, tool), counts)
        return ev


class MathAnswers:
    """The math side of ``qa.reward="math"``: problems from RLVR's loader as AT²PO
    questions, and a question's boxed answers checked by the math verifier (the
    generator's own scorer for a reasoning-gym problem), in a worker process.

    Called as ``check_answers(problem, answers)`` by the rollout; counts how each answer
    was checked (``verifier/<how>`` per step).
    """

    def __init__(self, qa):
        from rlpt_jax.rewards.math_verifier import MathVerifier

        self.qa = qa
        self.verifier = MathVerifier(qa.math.verifier)
        self.verifier.probe()  # a missing math-verify fails here, not after a rollout
        self.hows: collections.Counter[str] = collections.Counter()

    def questions(self) -> tuple[list, dict[str, list], dict[str, int]]:
        """Training problems, held-out sets by name, and the loader's counts."""
        from rlpt_jax.data.math_problems import build_math_data

        m = self.qa.math
        data = build_math_data((self.qa.train,), self.qa.eval, m.train_size, m.heldout, m.seed)
        return data.train, data.heldout, data.counts

    def __call__(self, problem, answers: Sequence[str | None]) -> list[bool]:
        from rlpt_jax.rewards.math_verifier import Check

        checks = [Check(a, problem.answer, problem.generator) for a in answers]
        verdicts = self.verifier.check(checks)
        self.hows.update(v.how for v in verdicts)
        return [v.correct for v in verdicts]

    def step_metrics(self, before: collections.Counter) -> dict[str, float]:
        """How the step's answers were checked: ``verifier/<how>``, zeros too."""
        from rlpt_jax.rewards.math_verifier import HOWS

        return {f"verifier/{h}": float(self.hows[h] - before[h]) for h in HOWS}


def _is_named_set(name: str) -> bool:
    """Whether ``name`` is a built-in QA set rather than a jsonl path."""
    return name.partition(":")[0] in _EMBEDDED_SETS or name == "fanoutqa"


_EMBEDDED_SETS = ("embedded", "embedded_pairs")


def load_questions(name: str, split: str) -> Sequence:
    """A QA dataset by name (``embedded``, ``embedded_pairs``, ``fanoutqa``) or FlashRAG
    jsonl path.

    ``embedded`` gives the embedded set's ``split``; ``embedded:<split>`` names one
    (``embedded:test``, the untouched split for final comparisons). ``embedded_pairs``
    and ``embedded_pairs:<split>`` are the same splits' questions asked two at a time
    (:func:`rlpt_jax.data.qa.embedded_pairs`: two searches per answer).
    """
    from rlpt_jax.data import qa

    base, _, named_split = name.partition(":")
    if base in _EMBEDDED_SETS:
        load = qa.embedded_qa if base == "embedded" else qa.embedded_pairs
        return load(named_split or split)
    if name == "fanoutqa":
        return qa.fanoutqa_dev()
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"QA dataset {name!r} is neither 'embedded', 'embedded_pairs', 'fanoutqa' nor an "
            "existing jsonl file"
        )
    examples, _ = qa.load_qa_jsonl(path)  # the loader warns about skipped lines itself
    return examples


def load_eval_sets(names: Sequence[str]) -> dict[str, Sequence]:
    """Eval questions keyed by the name their metrics carry (``eval/em_<name>``).

    A jsonl file is named by its dataset, as the loader names it (``/data/nq/test.jsonl``
    is ``nq``): a path makes a long, machine-specific metric name. Two files of one
    dataset are told apart by their file name (``nq_dev``, ``nq_test``). Built-in sets
    (``embedded``, ``embedded:test``, ``fanoutqa``) keep their name.
    """
    loaded = {name: load_questions(name, "dev") for name in names}
    keys = {name: name if _is_named_set(name) else qs[0].dataset for name, qs in loaded.items()}
    repeated = [k for k in keys.values() if list(keys.values()).count(k) > 1]
    keys = {name: f"{k}_{Path(name).stem}" if k in repeated else k for name, k in keys.items()}
    if len(set(keys.values())) < len(keys):
        raise ValueError(
            f"qa.eval {list(names)} would log repeated metric names {list(keys.values())}; "
            "list each dataset once, or give the files distinct names"
        )
    return {keys[name]: qs for name, qs in loaded.items()}


def make_search_backend(exp: ExperimentConfig):
    from rlpt_jax.envs import search

    if exp.search.backend == "http":
        retriever = search.HttpRetriever(
            search.HttpRetrieverConfig(
                url=exp.search.url, timeout_s=exp.search.timeout_s, retries=exp.search.retries
            )
        )
        # A dead retriever URL fails here, naming it, not as tool errors.
        multihost.once(retriever.probe)
        return retriever
    return search.BM25Search(cache_dir=exp.search.index_dir)


def make_env(exp: ExperimentConfig):
    """The multi-turn environment with the tools of ``env.tools``: the search backend
    (probed when it is a server) and the Python sandbox (which refuses to start without
    bubblewrap unless ``python_tool.allow_unisolated``)."""
    from rlpt_jax.envs.python_tool import PythonTool
    from rlpt_jax.envs.search_env import SearchEnv

    tools = exp.env.tools
    backend = make_search_backend(exp) if "search" in tools else None
    python = None
    if "python" in tools:
        python = PythonTool(exp.python_tool)
        # Limits too tight to start Python fail here, not in every call.
        multihost.once(python.probe)
    return SearchEnv(backend, exp.env, python)


def _check_demo_searches(exp: ExperimentConfig, env, split: str, counts: dict) -> None:
    """Demonstrations are built once, so a retriever outage while building them has no
    step to skip: beyond ``outage.max_failure_fraction`` of failed searches it stops the
    run (a demonstration whose search failed is otherwise dropped, and counted)."""
    try:
        reason = env.last_errors.get("search")
        check_service(exp.outage, "retriever", retriever_url(exp), reason, counts)
    except ServiceOutage as e:
        raise OutageError(
            f"building the {split} demonstrations of the cold start: {e} "
            f"(outage.max_failure_fraction={exp.outage.max_failure_fraction}); start the "
            "retriever or fix search.url, then rerun the same command"
        ) from e


class SFTMethod:
    """Supervised fine-tuning (the cold start): next-token loss on assistant tokens only.

    ``sft.data`` picks the conversations: demonstrations of the RLPT tasks (train split of
    ``config.corpus``; held out: demonstrations of the held-out documents' tasks), of the
    AT²PO tool protocol, or a chat jsonl file (held out: a seeded ``sft.heldout`` lines).
    Examples are packed into ``[sft.batch_rows, sft.seq_len]`` rows, never split.
    """

    samples = False
    stop_strings: tuple[str, ...] = ()

    def __init__(self, exp: ExperimentConfig, tokenizer: Tokenizer, use_chat: bool):
        self.exp = exp
        self.cfg = exp.sft
        self.tokenizer = tokenizer
        self.render = tokenizer.render_chat if use_chat else _plain_render
        if self.cfg.data == "at2po":
            train, heldout, self.counts = self._at2po_examples(use_chat)
        else:
            convs_train, convs_heldout, self.counts = self._conversations(use_chat)
            train, heldout = self._encode(convs_train), self._encode(convs_heldout)
        self.train, cut_train = sft_data.fits(train, self.cfg.seq_len)
        self.heldout, cut_heldout = sft_data.fits(heldout, self.cfg.seq_len)
        if not self.train:
            raise ValueError(f"no SFT example fits sft.seq_len={self.cfg.seq_len}; raise it")
        self.counts.update(
            sft_train_examples=len(self.train),
            sft_heldout_examples=len(self.heldout),
            sft_too_long=cut_train + cut_heldout,
        )
        self.stream = pipeline.IndexStream(len(self.train), exp.seed)

    def _conversations(self, use_chat: bool):
        data = self.cfg.data
        if data == "rlpt":
            d = pipeline.build_rlpt_data(
                self.exp.corpus,
                self.exp.clean,
                self.exp.segments,
                self.exp.tasks,
                self.tokenizer.encode,
                self.tokenizer.render_chat if use_chat else None,
            )
            train = sft_data.rlpt_demonstrations(_cap(d.train_tasks, self.cfg.max_examples))
            heldout = sft_data.rlpt_demonstrations(d.heldout_tasks[: self.cfg.heldout])
            return train, heldout, dict(d.counts)
        convs, report = sft_data.load_chat_jsonl(data)
        order = np.random.default_rng([self.exp.seed, 17]).permutation(len(convs))
        n_held = min(self.cfg.heldout, len(convs) // 2)
        heldout = [convs[i] for i in order[:n_held]]
        train = _cap([convs[i] for i in sorted(order[n_held:])], self.cfg.max_examples)
        return train, heldout, {"sft_lines_read": report.read, "sft_lines_skipped": report.skipped}

    def _at2po_examples(self, use_chat: bool):
        """Tool-protocol trajectories on the train questions (held out: the first eval set)."""
        from rlpt_jax.envs.search_env import SearchEnv
        from rlpt_jax.rollout.at2po import demonstration

        exp = self.exp
        if "search" not in exp.env.tools or exp.qa.reward != "em":
            raise ValueError(
                "sft.data='at2po' writes search-QA demonstrations (think, search, answer); "
                f"this run has env.tools={exp.env.tools} and qa.reward={exp.qa.reward!r}. "
                "Give the cold start a chat jsonl (sft.data=/path/to/chat.jsonl) instead"
            )
        env = SearchEnv(make_search_backend(exp), exp.env)
        splits = {
            "train": _cap(list(load_questions(exp.qa.train, "train")), self.cfg.max_examples),
            "heldout": list(load_questions(exp.qa.eval[0], "dev"))[: self.cfg.heldout],
        }
        out, counts = {}, {}
        for split, questions in splits.items():
            examples = []
            before = env.metrics()
            for q in questions:
                # A quarter of the demonstrations search twice, the first query weak.
                weak = int(hashlib.sha256(q.id.encode()).hexdigest(), 16) % 4 == 0
                demo = demonstration(
                    self.tokenizer, use_chat, env, q, exp.qa.system_prompt, weak_first=weak
                )
                if demo is not None:
                    examples.append(sft_data.Example(tuple(demo[0]), tuple(demo[1])))
            out[split] = examples
            searched = retriever_counts(before, env.metrics())
            _check_demo_searches(exp, env, split, searched)
            counts[f"sft_{split}_questions"] = len(questions)
            counts[f"sft_{split}_no_evidence"] = len(questions) - len(examples)
            counts[f"sft_{split}_failed_searches"] = int(searched["outage/retriever_failures"])
        # model turns start where the mask turns on: search, (search,) answer
        counts["sft_two_search_demos"] = sum(
            sum(1 for a, b in zip(e.mask, e.mask[1:]) if a == 0 and b == 1) == 3
            for e in out["train"]
        )
        return out["train"], out["heldout"], counts

    def _encode(self, conversations) -> list[sft_data.Example]:
        eos = self.tokenizer.eos_ids[0]
        return [
            sft_data.encode_conversation(c, self.render, self.tokenizer.encode, eos)
            for c in conversations
        ]

    @staticmethod
    def step_shape(exp: ExperimentConfig) -> tuple[int, int]:
        return exp.sft.batch_rows, exp.sft.seq_len

    def objective(self) -> Objective:
        return nll_objective()

    def next_batch(self, policy: Policy, spec: SampleSpec, seed: int, row_multiple: int):
        """The next training examples that fill ``sft.batch_rows`` packed rows."""
        picked: list[sft_data.Example] = []
        rows, fill = 1, 0
        while True:
            (i,) = self.stream.take(1)
            n = len(self.train[i].tokens)
            if fill + n > self.cfg.seq_len:
                if rows == self.cfg.batch_rows:
                    self.stream.position -= 1  # this example opens the next step's batch
                    break
                rows, fill = rows + 1, 0
            picked.append(self.train[i])
            fill += n
        pad_id = self.tokenizer.pad_id
        tokens, seg, mask = sft_data.pack_examples(picked, self.cfg.seq_len, pad_id)
        batch = _nll_batch(tokens, seg, mask, pad_id, row_multiple)
        return batch, {
            "sft/examples": float(len(picked)),
            "sft/loss_tokens": float(np.asarray(batch.loss_mask).sum()),
        }

    def evaluate(self, policy: Policy, params: nnx.State, graphdef) -> Evaluation:
        """Mean next-token loss on the assistant tokens of held-out conversations."""
        if not self.heldout:
            return Evaluation({})
        model = nnx.merge(graphdef, params)
        total, count, per = 0.0, 0, []
        for ex in self.heldout:
            nll = lm_eval.nll_per_token(model, [list(ex.tokens)], self.tokenizer.pad_id)[0]
            mask = np.asarray(ex.mask[1:], bool)  # nll[t] scores token t + 1
            total += float(nll[mask].sum())
            count += int(mask.sum())
            per.append(float(nll[mask].mean()) if mask.any() else float("nan"))
        return Evaluation(
            {"eval/assistant_nll": total / max(count, 1)}, {"eval/assistant_nll": per}
        )


def _plain_render(messages, add_generation_prompt: bool = True) -> str:
    """The "chat template" of a model without one: the turns' texts back to back."""
    return "".join(m["content"] for m in messages)


def _cap(items: list, n: int) -> list:
    return items[:n] if n else items


def _nll_batch(tokens, seg, mask, pad_id: int, row_multiple: int) -> RLBatch:
    """A next-token-loss batch of packed rows (no advantages, no old log-probs), padded to
    a multiple of ``row_multiple`` rows."""
    zeros = np.zeros(tokens.shape, np.float32)
    batch = make_batch(tokens, mask, zeros, zeros, segment_ids=seg)
    rows = -(-tokens.shape[0] // row_multiple) * row_multiple
    return pad_batch(batch, length=tokens.shape[1], rows=rows, pad_id=pad_id)


def rows_per_unit(exp: ExperimentConfig, platform: str | None = None, shards: int = 1) -> int:
    """Rows of a step's batch that mini-batches, micro-batches and devices never split: one
    tree's when the update packs AT²PO trees (``TrainConfig.tree_packing``), else 1."""
    if exp.method == "at2po" and AT2POMethod.tree_packing(exp, platform, shards):
        return exp.tree.num_leaves
    return 1


@dataclasses.dataclass(frozen=True)
class UpdateSplit:
    """How a step's batch splits for the update: ``unit`` rows that no split divides
    (:func:`rows_per_unit`), ``micro`` gradient-accumulation steps per update, each of
    ``micro_units`` units over all devices."""

    unit: int
    micro: int
    micro_units: int


def update_split(exp: ExperimentConfig, shards: int, platform: str | None = None) -> UpdateSplit:
    """The update's split for ``shards`` batch shards (data × fsdp): micro-batches of
    ``train.micro_batch_size`` rows (all devices together; 0: the whole update), rounded
    to whole units and to at least one unit per shard."""
    rows, _ = method_class(exp.method).step_shape(exp)
    unit = rows_per_unit(exp, platform, shards)
    units = -(-rows // unit)
    per_update = max(1, -(-units // exp.train.mini_batches))
    if not exp.train.micro_batch_size:
        return UpdateSplit(unit, 1, per_update)
    micro_units = max(exp.train.micro_batch_size // unit, 1)
    if unit > 1:  # a tree per shard at least: a micro-batch of fewer would pad empty trees
        micro_units = -(-micro_units // shards) * shards
    micro = -(-per_update // micro_units)
    return UpdateSplit(unit, micro, micro_units)


def method_class(name: str) -> type:
    """The :class:`Method` implementation of ``config.method``."""
    if name == "rlvr":
        from rlpt_jax.train.rlvr import RLVRMethod  # it builds on this module's Evaluation

        return RLVRMethod
    return {"at2po": AT2POMethod, "sft": SFTMethod}.get(name, RLPTMethod)


def build_data(exp: ExperimentConfig, tokenizer: Tokenizer, use_chat: bool) -> Method:
    return method_class(exp.method)(exp, tokenizer, use_chat)
