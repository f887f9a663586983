"""The policy as rollouts see it: the sampler plus the current weights.

The training loop owns the weights (``TrainState.params``, training layout); before each
rollout it hands them to :meth:`Policy.set_params`, which moves them into the sampler's
layout (tensor-parallel only) without recompiling anything: the jitted sampler functions
take the weights as an argument. :meth:`Policy.sample` serves RLPT (n samples per prompt);
:meth:`Policy.engine` serves AT²PO trees (rows that are continued, forked and released).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rlpt_jax.models.tokenizer import Tokenizer
from rlpt_jax.rollout.tree import TurnSample
from rlpt_jax.sampling.sample import SamplingParams
from rlpt_jax.sampling.sampler import Sampler, SamplerConfig, Session


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Sampling of completions.

    ``prompts_per_step`` prompts × ``samples_per_prompt`` completions per step (RLPT
    paper: 512 × 8). ``max_prompt_tokens`` truncates prompts from the left (the most
    recent text is kept); ``cache_dtype`` is the KV-cache dtype. ``sampler_rows``: most
    sequences in the sampler at once (0 = all); larger batches are generated in waves, so
    the KV cache is bounded (the paper's 512 × 8 × 10k tokens would need ~6 TB at once).
    """

    prompts_per_step: int = 512
    samples_per_prompt: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 8192
    max_prompt_tokens: int = 2048
    cache_dtype: str = "bfloat16"
    sampler_rows: int = 0

    def __post_init__(self):
        if self.prompts_per_step < 1 or self.samples_per_prompt < 1:
            raise ValueError("prompts_per_step and samples_per_prompt must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.sampler_rows < 0:
            raise ValueError(f"sampler_rows must be >= 0, got {self.sampler_rows}")
        if self.max_new_tokens < 1 or self.max_prompt_tokens < 1:
            raise ValueError("max_new_tokens and max_prompt_tokens must be >= 1")
        if self.cache_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"cache_dtype must be float32 or bfloat16, got {self.cache_dtype!r}")


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    """Sampling settings of a rollout (temperature 0 = greedy)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    stop_strings: tuple[str, ...] = ()

    def params(self, n: int = 1, seed: int = 0, max_new_tokens: int | None = None):
        return SamplingParams(
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            n=n,
            stop=tuple(self.stop_strings),
            seed=seed,
        )


@dataclasses.dataclass
class Completion:
    """One sampled continuation: exact token ids, their log-probs and entropies."""

    tokens: list[int]
    logps: np.ndarray
    entropies: np.ndarray
    finish: str


class Policy:
    def __init__(
        self,
        graphdef: nnx.GraphDef,
        tokenizer: Tokenizer,
        *,
        mesh: Mesh | None = None,
        cache_dtype: str = "float32",
        use_chat_template: bool = True,
        max_cache_length: int | None = None,
    ):
        self.graphdef = graphdef
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_id
        self.mesh = mesh
        self.use_chat_template = use_chat_template and tokenizer.has_chat_template
        self.config = SamplerConfig(cache_dtype=cache_dtype, max_cache_length=max_cache_length)
        self.sampler: Sampler | None = None
        self.prefilled_tokens = 0
        self.decoded_tokens = 0

    def set_params(self, params: nnx.State) -> None:
        """Use these weights (any layout) for the next rollouts."""
        model = nnx.merge(self.graphdef, params)
        if self.sampler is None:
            self.sampler = Sampler(model, self.tokenizer, self.config, mesh=self.mesh)
            return
        self.sampler.set_model(model)

    def _require(self) -> Sampler:
        if self.sampler is None:
            raise RuntimeError("Policy.set_params must be called before sampling")
        return self.sampler

    def sample(
        self, prompts: Sequence[Sequence[int]], n: int, spec: SampleSpec, seed: int
    ) -> list[list[Completion]]:
        """``n`` completions per prompt (prompt prefilled once, forked n ways)."""
        sampler = self._require()
        groups = sampler.generate(prompts, spec.params(n=n, seed=seed))
        sess = sampler.last_session
        self.prefilled_tokens += sess.prefilled_tokens
        self.decoded_tokens += sess.decoded_tokens
        return [
            [Completion(s.tokens.tolist(), s.logprobs, s.entropies, s.finish_reason) for s in g]
            for g in groups
        ]

    def engine(self, spec: SampleSpec, seed: int) -> SessionEngine:
        """A turn engine for tree rollouts; ``spec.max_new_tokens`` bounds a trajectory."""
        return SessionEngine(self, self._require(), spec, seed)


class SessionEngine:
    """:class:`rlpt_jax.rollout.tree.TurnEngine` over one sampler session."""

    def __init__(self, policy: Policy, sampler: Sampler, spec: SampleSpec, seed: int):
        self.policy = policy
        self.sampler = sampler
        self.spec = spec
        self.seed = seed
        self.session: Session | None = None

    def start(self, prompts: Sequence[Sequence[int]]) -> list[int]:
        if self.session is None:
            longest = max(len(p) for p in prompts)
            length = self.sampler.length_bucket(longest + self.spec.max_new_tokens + 8)
            self.session = self.sampler.session(len(prompts), length)
        return self.session.add(prompts)

    def fork(self, requests: Sequence[tuple[int, int, int]]) -> list[list[int]]:
        """All of a round's forks in one cache gather (one per fork was a copy of the whole
        cache each: an evaluation wave of 32 questions copied it 32 times)."""
        if not requests:
            return []
        return self.session.fork_many(
            [(row, m) for row, _, m in requests], length=[n for _, n, _ in requests]
        )

    def extend(self, rows: Sequence[int], tokens: Sequence[Sequence[int]]) -> None:
        self.session.append(rows, tokens)

    def generate(self, rows: Sequence[int], max_new_tokens: Sequence[int]) -> list[TurnSample]:
        """One turn for every row; rows with the same budget share a decode call."""
        out: dict[int, TurnSample] = {}
        for budget in sorted(set(int(b) for b in max_new_tokens)):
            group = [r for r, b in zip(rows, max_new_tokens) if int(b) == budget]
            params = self.spec.params(seed=self.seed, max_new_tokens=budget)
            for r, s in zip(group, self.session.generate(group, params)):
                out[r] = TurnSample(
                    s.tokens.tolist(), s.logprobs.tolist(), s.entropies.tolist(), s.finish_reason
                )
        return [out[r] for r in rows]

    def release(self, rows: Sequence[int]) -> None:
        if self.session is not None and rows:
            self.session.release(rows)

    def counters(self) -> dict[str, int]:
        if self.session is None:
            return {"prefilled_tokens": 0, "decoded_tokens": 0}
        return {
            "prefilled_tokens": self.session.prefilled_tokens,
            "decoded_tokens": self.session.decoded_tokens,
        }
