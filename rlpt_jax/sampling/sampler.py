"""Batched generation with a persistent KV cache: prefix continuation, forking, stop strings.

Shape legend: B cache rows (bucketed), S cache slots (bucketed), V vocab, C decode steps per
chunk, R rows of one prefill call, T prefill tokens per row (bucketed).

Two entry points:
* ``Sampler.generate(prompts, params)``: n samples per prompt. Each prompt is prefilled once
  and forked into its n rows.
* ``Sampler.session(rows, length)``: a ``Session`` holding a cache of B rows × S slots that
  host code grows turn by turn (AT²PO trees): ``add`` prompts, ``generate`` on some rows,
  ``append`` tool results (only the appended tokens are prefilled), ``fork`` a row (or a
  prefix of it) into branches that share the cached prefix, ``release`` rows for reuse. The
  counters ``prefilled_tokens`` / ``decoded_tokens`` count real tokens computed, so tree
  rollouts can show what forking saved.

Host/device split: prefill and decode are jitted (``engine``); the decode loop runs C steps on
device (``lax.while_loop``, EOS and stop ids handled there, early exit when every row is
done), then returns to the host, which detects stop *strings* on the decoded text, cuts each
row after the token that completed one, and continues only while rows remain. Tokens sampled
past a cut stay in the cache as stale slots that are never attended to (see ``engine``); the
cut row's next-token logits are recomputed by re-feeding its last token when it is continued.

Shapes are bucketed to powers of two (rows, slots, prefill length) so that repeated calls
reuse compiled code; ``engine.TRACE_COUNTS`` counts compilations.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from rlpt_jax import parallel
from rlpt_jax.models.decoder import Cache, Decoder
from rlpt_jax.multihost import to_host
from rlpt_jax.sampling import engine
from rlpt_jax.sampling.sample import SamplingParams

FINISH_REASONS = ("eos", "stop", "length")
_CACHE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class SamplerError(ValueError):
    """A request the sampler refuses before touching the device (bad input, does not fit)."""


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Sampler resources and bucketing.

    cache_dtype: KV cache storage ("bfloat16" halves it). max_cache_length: most slots a row may
    have (default: the model's max positions; never more). memory_budget_bytes: refuse caches
    (KV + next-token logits) larger than this. decode_chunk: decode steps per device call
    (host checks stop strings between chunks). prefill_chunk: most tokens per row per prefill
    call (longer inputs are prefilled in several calls). min_length_bucket / min_rows: the
    smallest prefill-length bucket. min_cache_length / min_rows: the smallest slot and row
    buckets of ``Sampler.generate`` (fewer distinct shapes, fewer compilations).
    """

    cache_dtype: str = "float32"
    max_cache_length: int | None = None
    memory_budget_bytes: int | None = None
    decode_chunk: int = 32
    prefill_chunk: int = 512
    min_length_bucket: int = 8
    min_cache_length: int = 16
    min_rows: int = 1

    def __post_init__(self):
        if self.cache_dtype not in _CACHE_DTYPES:
            raise ValueError(
                f"cache_dtype must be one of {sorted(_CACHE_DTYPES)}, got {self.cache_dtype!r}"
            )
        if self.max_cache_length is not None and self.max_cache_length < 1:
            raise ValueError(f"max_cache_length must be >= 1, got {self.max_cache_length}")
        if self.memory_budget_bytes is not None and self.memory_budget_bytes <= 0:
            raise ValueError(f"memory_budget_bytes must be > 0, got {self.memory_budget_bytes}")
        if self.decode_chunk < 1:
            raise ValueError(f"decode_chunk must be >= 1, got {self.decode_chunk}")
        for name in ("prefill_chunk", "min_length_bucket", "min_cache_length", "min_rows"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two >= 1, got {v}")
        if self.min_length_bucket > self.prefill_chunk:
            raise ValueError(
                f"min_length_bucket ({self.min_length_bucket}) must not exceed "
                f"prefill_chunk ({self.prefill_chunk})"
            )


@dataclasses.dataclass(frozen=True)
class Sample:
    """One generated continuation (host numpy).

    tokens [T] int32 as sampled (a stop string's tokens included); logprobs [T] float32:
    log softmax of the raw float32 logits at the sampled token; entropies [T] float32 of that
    raw distribution; finish_reason in ("eos", "stop", "length"); row: the session row.
    """

    tokens: np.ndarray
    logprobs: np.ndarray
    entropies: np.ndarray
    finish_reason: str
    row: int


def to_sampler_layout(model: Decoder, mesh: Mesh | None) -> Decoder:
    """The model with parameters moved from the training layout to the sampling one: a
    batch-invariant model's projections transposed (``engine.sampler_weights``), and with a
    mesh, everything resharded tensor-parallel only (whole along ``embed``). The input model
    is unchanged."""
    model = engine.sampler_weights(model)
    if mesh is None:
        return model
    return parallel.reshard_model(model, mesh, parallel.SAMPLE_RULES)


def _pow2(n: int, minimum: int = 1) -> int:
    n = max(int(n), int(minimum), 1)
    return 1 << (n - 1).bit_length()


class Sampler:
    """Jitted sampling for one model. ``tokenizer`` is needed only for stop strings.

    With ``mesh``, parameters are moved to the sampling layout (``to_sampler_layout``) and
    cache rows are sharded over (data, fsdp).
    """

    def __init__(
        self,
        model: Decoder,
        tokenizer=None,
        config: SamplerConfig = SamplerConfig(),
        mesh: Mesh | None = None,
    ):
        cfg = model.cfg
        if config.max_cache_length is not None and (
            config.max_cache_length > cfg.max_position_embeddings
        ):
            raise ValueError(
                f"max_cache_length={config.max_cache_length} exceeds the model's "
                f"max_position_embeddings={cfg.max_position_embeddings}"
            )
        model = to_sampler_layout(model, mesh)
        self.model_cfg = cfg
        self.config = config
        self.mesh = mesh
        self.tokenizer = tokenizer
        self.cache_dtype = _CACHE_DTYPES[config.cache_dtype]
        if cfg.batch_invariant and jnp.finfo(self.cache_dtype).bits < jnp.finfo(cfg.dtype).bits:
            raise ValueError(
                f"a batch-invariant model computing in {cfg.dtype} needs a KV cache of the same "
                f"precision (cache_dtype={cfg.dtype!r}, not {config.cache_dtype!r}): a narrower "
                f"cache rounds the keys and values that the training forward uses unrounded"
            )
        self.max_length = config.max_cache_length or cfg.max_position_embeddings
        eos = tuple(tokenizer.eos_ids) if tokenizer is not None else tuple(cfg.eos_token_ids)
        self.eos_ids = tuple(int(e) for e in eos)
        self.row_multiple = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
        self.last_session: Session | None = None
        self.graphdef, self.state = nnx.split(model)
        gd, con = self.graphdef, self._constrain
        self._prefill = jax.jit(functools.partial(engine.prefill, gd, con), donate_argnums=(1, 2))
        self._decode = jax.jit(
            functools.partial(engine.decode_chunk, gd, con),
            static_argnums=0,
            donate_argnums=(2, 3),
        )
        self._take = jax.jit(functools.partial(engine.take_rows, con))
        self._put = jax.jit(functools.partial(engine.put_rows, con), donate_argnums=(0, 1))

    # -- layout -------------------------------------------------------------------------
    def _spec(self, axes, shape):
        return parallel.logical_to_spec(axes, shape, self.mesh, parallel.SAMPLE_RULES)

    def _constrain(self, cache: Cache, logits: jax.Array):
        """Pin the persistent arrays to their sharding (no-op without a mesh)."""
        if self.mesh is None:
            return cache, logits

        def put(x, axes):
            sh = NamedSharding(self.mesh, self._spec(axes, x.shape))
            return jax.lax.with_sharding_constraint(x, sh)

        kv = ("batch", "kv_heads", "length", "head_dim")
        cache = Cache(
            k=tuple(put(x, kv) for x in cache.k),
            v=tuple(put(x, kv) for x in cache.v),
            pos=put(cache.pos, ("batch", "length")),
        )
        return cache, put(logits, ("batch", "vocab"))

    def allocate(self, rows: int, length: int) -> tuple[Cache, jax.Array]:
        """An empty cache and next-token logits, created directly in their sharding."""
        cfg, dtype = self.model_cfg, self.cache_dtype

        def make():
            cache = Cache.init(cfg, rows, length, dtype)
            return self._constrain(cache, jnp.zeros((rows, cfg.vocab_size), jnp.float32))

        return jax.jit(make)()

    # -- sizing -------------------------------------------------------------------------
    def set_model(self, model: Decoder) -> None:
        """Sample from these weights from now on (training layout; moved here with
        ``to_sampler_layout``). Same architecture, so nothing recompiles."""
        if model.cfg != self.model_cfg:
            raise ValueError("set_model needs a model of the sampler's architecture")
        self.state = nnx.split(to_sampler_layout(model, self.mesh))[1]

    def rows_bucket(self, rows: int) -> int:
        # A batch-invariant model never runs a 1-row matmul: XLA:CPU's matrix-vector kernel
        # sums in another order than its matrix kernel (decoder module docstring).
        least = 2 if self.model_cfg.batch_invariant else 1
        b = _pow2(rows, max(self.config.min_rows, least))
        m = self.row_multiple
        return -(-b // m) * m

    def length_bucket(self, needed: int) -> int:
        """Cache slots for rows of up to ``needed`` tokens: a power of two, capped at the max."""
        if needed > self.max_length:
            raise SamplerError(
                f"a cache of {needed} slots is needed, but the limit is {self.max_length} "
                f"(model max positions {self.model_cfg.max_position_embeddings}); shorten the "
                f"prompt or max_new_tokens"
            )
        return min(_pow2(needed, self.config.min_cache_length), self.max_length)

    def cache_nbytes(self, rows: int, length: int) -> int:
        """Device bytes of a session cache: KV + positions + next-token logits."""
        kv = Cache.nbytes(self.model_cfg, rows, length, self.cache_dtype)
        return kv + rows * self.model_cfg.vocab_size * 4

    def check_fits(self, rows: int, length: int) -> int:
        """The cache size in bytes, or SamplerError if the request cannot be served."""
        if length > self.max_length:
            raise SamplerError(
                f"cache length {length} exceeds the limit {self.max_length} (model max "
                f"positions {self.model_cfg.max_position_embeddings})"
            )
        nbytes = self.cache_nbytes(rows, length)
        budget = self.config.memory_budget_bytes
        if budget is not None and nbytes > budget:
            raise SamplerError(
                f"cache of {rows} rows x {length} slots ({self.config.cache_dtype}) needs "
                f"{nbytes / 2**20:.1f} MiB, over the memory budget of {budget / 2**20:.1f} MiB"
            )
        return nbytes

    def stop_ids(self, params: SamplingParams) -> set[int]:
        """EOS ids and the request's stop ids, after checking the request's stops."""
        vocab = self.model_cfg.vocab_size
        for t in params.stop_token_ids:
            if not 0 <= int(t) < vocab:
                raise SamplerError(f"stop token id {t} is not in the vocabulary (size {vocab})")
        if params.stop and self.tokenizer is None:
            raise SamplerError("stop strings need a tokenizer; pass one to the Sampler")
        eos = set() if params.ignore_eos else set(self.eos_ids)
        return eos | {int(t) for t in params.stop_token_ids}

    # -- entry points ---------------------------------------------------------------------
    def session(self, rows: int, length: int) -> Session:
        """An empty session with room for ``rows`` rows (it grows) of ``length`` slots."""
        return Session(self, rows, length)

    def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams
    ) -> list[list[Sample]]:
        """n samples for each prompt (token ids). Returns [prompt][sample].

        The session used stays readable as ``last_session`` (counters, cache size) until the
        next call.
        """
        prompts = _check_prompts(prompts, self.model_cfg.vocab_size)
        self.stop_ids(params)
        self.last_session = None  # free the previous call's cache before allocating
        needed = max(len(p) for p in prompts) + params.max_new_tokens
        length = self.length_bucket(needed)
        sess = self.session(len(prompts) * params.n, length)
        rows = sess.add(prompts)
        groups = [[r] for r in rows]
        if params.n > 1:
            sess.prefill(rows)
            branches = sess.fork_many([(r, params.n - 1) for r in rows])
            groups = [[r, *b] for r, b in zip(rows, branches, strict=True)]
        flat = [r for g in groups for r in g]
        samples = dict(zip(flat, sess.generate(flat, params), strict=True))
        self.last_session = sess
        return [[samples[r] for r in g] for g in groups]


def _check_prompts(prompts, vocab: int) -> list[list[int]]:
    if isinstance(prompts, (str, bytes)) or not len(prompts):
        raise SamplerError("prompts must be a non-empty list of token-id lists")
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            raise SamplerError(f"prompt {i} is a string; encode it to token ids first")
        p = [int(t) for t in p]
        if not p:
            raise SamplerError(f"prompt {i} is empty; every prompt needs at least one token")
        bad = [t for t in p if not 0 <= t < vocab]
        if bad:
            raise SamplerError(
                f"prompt {i} has token ids outside the vocab [0, {vocab}): {bad[:5]}"
            )
        out.append(p)
    return out


class Session:
    """A KV cache of B rows × S slots and the host record of every row.

    Row state: ``tokens`` (everything the row holds: prompt, sampled, appended) and
    ``cached``: how many leading tokens are written to the cache with the next-token logits
    computed after the last of them. Tokens beyond ``cached`` are pending and are prefilled
    (batched across rows) before the row generates or forks.
    """

    def __init__(self, sampler: Sampler, rows: int, length: int):
        self.sampler = sampler
        if rows < 1:
            raise SamplerError(f"a session needs at least one row, got {rows}")
        self.length = int(length)
        self.num_rows = sampler.rows_bucket(rows)
        self.nbytes = sampler.check_fits(self.num_rows, self.length)
        self.cache, self.logits = sampler.allocate(self.num_rows, self.length)
        self._tokens: list[list[int] | None] = [None] * self.num_rows
        self._cached = np.zeros(self.num_rows, np.int64)
        self._uid = np.zeros(self.num_rows, np.int64)
        self._next_uid = 0
        self.prefilled_tokens = 0
        self.decoded_tokens = 0

    # -- rows ---------------------------------------------------------------------------
    def tokens(self, row: int) -> list[int]:
        self._check_rows([row])
        return list(self._tokens[row])

    def _check_rows(self, rows: Sequence[int]) -> None:
        if len(set(rows)) != len(rows):
            raise SamplerError(f"rows must be distinct, got {list(rows)}")
        for r in rows:
            if not 0 <= r < self.num_rows or self._tokens[r] is None:
                raise SamplerError(f"row {r} is not a live row of this session")

    def _allocate(self, k: int) -> list[int]:
        free = [r for r, t in enumerate(self._tokens) if t is None]
        if len(free) < k:
            self._grow(self.num_rows - len(free) + k)
            free = [r for r, t in enumerate(self._tokens) if t is None]
        out = free[:k]
        for r in out:
            self._uid[r] = self._next_uid
            self._next_uid += 1
        return out

    def _grow(self, rows: int) -> None:
        new = self.sampler.rows_bucket(rows)
        self.nbytes = self.sampler.check_fits(new, self.length)
        perm = np.concatenate([np.arange(self.num_rows), np.zeros(new - self.num_rows, int)])
        self.cache, self.logits = self.sampler._take(self.cache, self.logits, perm.astype(np.int32))
        self._tokens += [None] * (new - self.num_rows)
        self._cached = np.concatenate([self._cached, np.zeros(new - self.num_rows, np.int64)])
        self._uid = np.concatenate([self._uid, np.zeros(new - self.num_rows, np.int64)])
        self.num_rows = new

    def add(self, token_lists: Sequence[Sequence[int]]) -> list[int]:
        """New rows holding these prompts (prefilled lazily, batched). Returns their rows."""
        lists = _check_prompts(token_lists, self.sampler.model_cfg.vocab_size)
        for i, p in enumerate(lists):
            if len(p) > self.length:
                raise SamplerError(
                    f"prompt {i} has {len(p)} tokens, longer than the cache of {self.length} slots"
                )
        rows = self._allocate(len(lists))
        for r, p in zip(rows, lists, strict=True):
            self._tokens[r] = p
            self._cached[r] = 0
        return rows

    def append(self, rows: Sequence[int], token_lists: Sequence[Sequence[int]]) -> None:
        """Append tokens (e.g. a tool result) to rows; only these tokens will be prefilled."""
        rows = list(rows)
        self._check_rows(rows)
        if len(rows) != len(token_lists):
            raise SamplerError(f"{len(rows)} rows but {len(token_lists)} token lists")
        vocab = self.sampler.model_cfg.vocab_size
        for r, toks in zip(rows, token_lists, strict=True):
            toks = [int(t) for t in toks]
            if any(not 0 <= t < vocab for t in toks):
                raise SamplerError(
                    f"appended tokens for row {r} are outside the vocab [0, {vocab})"
                )
            if len(self._tokens[r]) + len(toks) > self.length:
                raise SamplerError(
                    f"row {r} would hold {len(self._tokens[r]) + len(toks)} tokens, more than "
                    f"the cache of {self.length} slots"
                )
        for r, toks in zip(rows, token_lists, strict=True):
            self._tokens[r] = self._tokens[r] + [int(t) for t in toks]

    def release(self, rows: Sequence[int]) -> None:
        """Free rows for reuse (their stale slots are never read by a later occupant)."""
        rows = list(rows)
        self._check_rows(rows)
        for r in rows:
            self._tokens[r] = None

    def fork(self, row: int, m: int, length: int | None = None) -> list[int]:
        """m new rows sharing row's first ``length`` tokens (default all) without recomputing
        them: the cache rows are copied. The source row is unchanged."""
        return self.fork_many([(row, m)], length=None if length is None else [length])[0]

    def fork_many(
        self, requests: Sequence[tuple[int, int]], length: Sequence[int] | None = None
    ) -> list[list[int]]:
        """Several forks in one cache gather. requests: (row, m) pairs."""
        srcs = [r for r, _ in requests]
        self._check_rows(sorted(set(srcs)))
        lengths = list(length) if length is not None else [len(self._tokens[r]) for r in srcs]
        for (r, m), n in zip(requests, lengths, strict=True):
            if m < 0:
                raise SamplerError(f"cannot fork row {r} into {m} branches")
            if not 1 <= n <= len(self._tokens[r]):
                raise SamplerError(
                    f"fork length {n} outside [1, {len(self._tokens[r])}] for row {r}"
                )
        self.prefill(sorted(set(srcs)))
        total = sum(m for _, m in requests)
        dst = self._allocate(total)
        perm = np.arange(self.num_rows)
        out, i = [], 0
        for (r, m), n in zip(requests, lengths, strict=True):
            new = dst[i : i + m]
            i += m
            for d in new:
                perm[d] = r
                self._tokens[d] = self._tokens[r][:n]
                # A shorter prefix re-feeds its last token to get the logits after it.
                self._cached[d] = n if n == len(self._tokens[r]) else n - 1
            out.append(new)
        if total:
            self.cache, self.logits = self.sampler._take(
                self.cache, self.logits, perm.astype(np.int32)
            )
        return out

    # -- prefill --------------------------------------------------------------------------
    def prefill(self, rows: Sequence[int]) -> None:
        """Write every pending token of ``rows`` to the cache (batched, chunked)."""
        self._check_rows(list(rows))
        cfg = self.sampler.config
        while True:
            todo = [r for r in rows if self._cached[r] < len(self._tokens[r])]
            if not todo:
                return
            longest = max(len(self._tokens[r]) - self._cached[r] for r in todo)
            t = min(_pow2(longest, cfg.min_length_bucket), cfg.prefill_chunk)
            n = self.sampler.rows_bucket(len(todo))
            toks = np.zeros((n, t), np.int32)
            pos = np.full((n, t), -1, np.int32)
            write = np.zeros(n, np.int32)
            last = np.zeros(n, np.int32)
            rows_arr = np.zeros(n, np.int32)
            for i, r in enumerate(todo):
                start = int(self._cached[r])
                chunk = self._tokens[r][start : start + t]
                toks[i, : len(chunk)] = chunk
                pos[i, : len(chunk)] = np.arange(start, start + len(chunk))
                write[i], last[i], rows_arr[i] = start, len(chunk) - 1, r
                self._cached[r] += len(chunk)
                self.prefilled_tokens += len(chunk)
            for a in (toks, pos, write, last, rows_arr):  # padding rows repeat the first
                a[len(todo) :] = a[0]
            self.cache, self.logits = self.sampler._prefill(
                self.sampler.state, self.cache, self.logits, rows_arr, toks, pos, write, last
            )

    # -- decode ---------------------------------------------------------------------------
    def generate(self, rows: Sequence[int], params: SamplingParams) -> list[Sample]:
        """Continue each row in ``rows`` with new tokens; one Sample per row, in order."""
        rows = list(rows)
        self._check_rows(rows)
        sampler = self.sampler
        stop_ids = sampler.stop_ids(params)
        if not rows:
            return []
        self.prefill(rows)

        # Decode on a compact copy of just these rows when that is a smaller bucket (e.g. a
        # few forks in a large tree session); local index i is session row idx[i].
        b = sampler.rows_bucket(len(rows))
        compact = b < self.num_rows
        if compact:
            idx = rows + [rows[0]] * (b - len(rows))
            cache, logits = sampler._take(self.cache, self.logits, np.asarray(idx, np.int32))
        else:
            idx, b = list(range(self.num_rows)), self.num_rows
            cache, logits = self.cache, self.logits
        local = {r: i for i, r in enumerate(idx[: len(rows)] if compact else idx) if r in rows}
        length = np.array([len(self._tokens[r] or ()) for r in idx], np.int32)
        active = np.zeros(b, bool)
        budget = np.zeros(b, np.int32)
        for r in rows:
            i = local[r]
            budget[i] = min(params.max_new_tokens, self.length - length[i])
            active[i] = budget[i] > 0
        gen = {r: ([], [], []) for r in rows}
        finish: dict[int, str] = {r: "length" for r in rows if not active[local[r]]}
        static = engine.DecodeStatic(
            steps=sampler.config.decode_chunk,
            greedy=params.greedy,
            top_k=min(params.top_k, sampler.model_cfg.vocab_size) if not params.greedy else 0,
            use_top_p=params.top_p < 1.0 and not params.greedy,
        )
        stop_arr = np.full(_pow2(len(stop_ids)), -1, np.int32)
        stop_arr[: len(stop_ids)] = sorted(stop_ids)
        temperature = np.float32(params.temperature if not params.greedy else 1.0)
        top_p = np.float32(params.top_p)
        seed = np.uint32(params.seed % 2**32)
        uid = self._uid[idx].astype(np.uint32)

        while active.any():
            reach = int(np.max(length + np.minimum(budget, static.steps), where=active, initial=0))
            window = engine.decode_window(reach, self.length)
            (cache, logits, _, dev_active, tok, lp, ent, _) = sampler._decode(
                dataclasses.replace(static, window=window),
                sampler.state,
                cache,
                logits,
                length,
                active,
                budget,
                uid,
                stop_arr,
                seed,
                temperature,
                top_p,
            )
            tok, lp, ent, dev_active = (to_host(x) for x in (tok, lp, ent, dev_active))
            for r in rows:
                if r in finish:
                    continue
                i = local[r]
                got = int(np.sum(tok[i] >= 0))
                g_tok, g_lp, g_ent = gen[r]
                before = len(g_tok)
                g_tok.extend(tok[i, :got].tolist())
                g_lp.extend(lp[i, :got].tolist())
                g_ent.extend(ent[i, :got].tolist())
                self._tokens[r].extend(tok[i, :got].tolist())
                self._cached[r] += got
                self.decoded_tokens += got
                length[i] += got
                budget[i] -= got
                cut = self._find_stop(g_tok, before, params.stop) if params.stop else None
                if cut is not None:
                    self._cut(r, gen[r], cut)
                    finish[r] = "stop"
                elif not dev_active[i]:
                    last = g_tok[-1]
                    if last not in stop_ids:
                        finish[r] = "length"
                    elif last in sampler.eos_ids and not params.ignore_eos:
                        finish[r] = "eos"
                    else:
                        finish[r] = "stop"
                if r in finish:
                    active[i] = False
        if compact:
            # Padding entries point past the last row: their scatter is dropped.
            dest = np.asarray(rows + [self.num_rows] * (b - len(rows)), np.int32)
            self.cache, self.logits = sampler._put(self.cache, self.logits, dest, cache, logits)
        else:
            self.cache, self.logits = cache, logits
        out = []
        for r in rows:
            g_tok, g_lp, g_ent = gen[r]
            out.append(
                Sample(
                    tokens=np.asarray(g_tok, np.int32),
                    logprobs=np.asarray(g_lp, np.float32),
                    entropies=np.asarray(g_ent, np.float32),
                    finish_reason=finish[r],
                    row=r,
                )
            )
        return out

    def _find_stop(self, gen: list[int], new_from: int, stops: Sequence[str]) -> int | None:
        """Index of the generated token that completes the first stop string, if any."""
        decode = self.sampler.tokenizer.decode
        # Look back far enough for a stop string that straddles the previous chunk boundary.
        start = max(0, new_from - max(len(s) for s in stops) - 4)
        if not any(s in decode(gen[start:]) for s in stops):
            return None
        for j in range(start, len(gen)):
            text = decode(gen[start : j + 1])
            if any(s in text for s in stops):
                return j
        return len(gen) - 1

    def _cut(self, row: int, gen, cut: int) -> None:
        """Keep generated tokens up to and including index ``cut``."""
        extra = len(gen[0]) - (cut + 1)
        if extra <= 0:
            return
        for lst in gen:
            del lst[cut + 1 :]
        del self._tokens[row][len(self._tokens[row]) - extra :]
        # The cache holds the stale extra tokens and logits after the last one: re-feed the
        # row's last token when it is continued.
        self._cached[row] = len(self._tokens[row]) - 1
