"""The jitted device steps: per-token log-probs and the policy update.

Shape legend: B sequences, T tokens, D model width, V vocab, M micro-batches,
C chunks of ``chunk`` tokens along T (C·chunk ≥ T).

Log-prob alignment (see ``rlpt_jax.batch``): ``logp[b, t] = log π(tokens[b, t] |
tokens[b, <t])`` within the token's segment; 0 where the token has no prediction (the
first token of a segment, padding). The model's hidden state at t − 1 scores token t:
position t of ``h`` is projected against ``tokens[:, t + 1]`` and the result shifted
right by one.

The vocabulary projection is the largest activation (``[B, T, V]``, 400 MB for 8×256
tokens of a 49k vocabulary). A ``lax.map`` over C chunks of T computes ``[B, chunk, V]``
logits at a time, gathers the target's log-softmax (and the entropy) and returns only
``[B, chunk]``. With ``logits_remat`` the backward pass recomputes each chunk's logits,
so nothing of size V·T outlives a chunk (one more ``B·T·D·V`` matmul); without it the
scan keeps each chunk's residuals for the backward pass (``[B, T, V]`` in all, but no
recomputation), the faster choice when memory allows.

The update step averages micro-batch gradients with weights equal to each micro-batch's
share of the loss normaliser (tokens for token-mean losses, sequences for sequence-mean
losses, rows for a constant normaliser), which makes it equal to the full-batch step.
A non-finite loss or gradient leaves the state unchanged except for ``skipped += 1``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlpt_jax import multihost, parallel
from rlpt_jax.batch import PackedBatch, RLBatch
from rlpt_jax.models.numerics import logits_transposed
from rlpt_jax.train.state import TrainState

Array = jax.Array
Metrics = dict[str, Array]


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Options of the jitted steps.

    ``micro_batches``: M, gradient accumulation steps per update (B must divide by M, and
    B/M by the mesh's batch shards). ``remat``: recompute each decoder layer in the
    backward pass (less memory, ~1/3 more compute; see ``Decoder.hidden``). Without it,
    give the step a state whose layers are a list (``state.with_layers``, as the training
    loop does): stacked ones cost a copy of every layer's weights and of their gradients
    (SmolLM2-135M on XLA:CPU: +441 MB of temporaries; docs/results.md).
    ``chunk``: tokens along T per chunk of the vocabulary projection. ``logits_remat``:
    recompute chunk logits in the backward pass rather than store them; None (default)
    follows ``remat``, so ``remat=True`` is the memory-lean setting throughout.
    """

    micro_batches: int = 1
    remat: bool = False
    chunk: int = 128
    logits_remat: bool | None = None

    @classmethod
    def for_experiment(cls, exp, micro_batches: int = 1) -> StepConfig:
        """The options an ``ExperimentConfig`` asks for: the run and the dry run's compiled
        step both take them from here, so the memory plan sees the step that runs."""
        return cls(
            micro_batches=micro_batches, remat=exp.model.remat, chunk=exp.train.logprob_chunk
        )

    @property
    def recompute_logits(self) -> bool:
        return self.remat if self.logits_remat is None else self.logits_remat

    def __post_init__(self) -> None:
        if self.micro_batches < 1:
            raise ValueError(f"StepConfig.micro_batches must be >= 1; got {self.micro_batches}")
        if self.chunk < 1:
            raise ValueError(f"StepConfig.chunk must be >= 1; got {self.chunk}")


# ---------------------------------------------------------------------------------------
# Log-probs


def _target_valid(segment_ids: Array) -> Array:
    """[B, T] bool: token t has a prediction (same non-zero segment as token t − 1)."""
    prev = jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)))
    return (segment_ids != 0) & (segment_ids == prev)


def _chunk_logprobs(
    model: nnx.Module, h: Array, targets: Array, with_entropy: bool, head_t: Array | None = None
):
    """h [B, c, D], targets [B, c] → (log-prob [B, c], entropy [B, c] or None), through the
    model's head and the scoring function the sampler uses too. ``head_t``: the untied
    output head already transposed to [V, D] (batch-invariant models; see token_logprobs)."""
    logits = model.logits(h) if head_t is None else logits_transposed(h, head_t)
    logp, entropy = model.numerics.logprob_entropy(logits, targets)
    return logp, entropy if with_entropy else None


def token_logprobs(
    model: nnx.Module,
    tokens: Array,
    positions: Array,
    segment_ids: Array,
    *,
    chunk: int = 128,
    remat: bool = False,
    logits_remat: bool = True,
    with_entropy: bool = False,
) -> tuple[Array, Array | None]:
    """Per-token log-probs ``[B, T]`` (and entropies ``[B, T]``) of ``tokens`` under ``model``.

    Differentiable; aligned to the scored token (module docstring). The entropy at t is
    that of the distribution that token t was drawn from.
    """
    h, _ = model.hidden(tokens, positions, segment_ids=segment_ids, remat=remat)
    # Position t of h scores token t + 1; the last position scores nothing.
    targets = jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))
    logp_next, ent_next = _scored(model, h, targets, chunk, logits_remat, with_entropy)
    valid = _target_valid(segment_ids)

    def align(x):  # [B, T] scored-next → [B, T] aligned to the scored token
        return jnp.where(valid, jnp.pad(x[:, :-1], ((0, 0), (1, 0))), 0.0)

    return align(logp_next), None if ent_next is None else align(ent_next)


def packed_token_logprobs(
    model: nnx.Module,
    packed: PackedBatch,
    *,
    chunk: int = 128,
    remat: bool = False,
    logits_remat: bool = True,
    with_entropy: bool = False,
) -> tuple[Array, Array | None]:
    """:func:`token_logprobs` of the flat rows ``[P·G, T]`` that ``packed.gather`` maps
    onto packed trees (``rlpt_jax.rollout.tree.pack``), computed on the packed rows: one
    forward over each tree's unique tokens under the tree mask, each token scored from the
    hidden state of its predecessor on its path (``packed.pred``), then gathered into the
    flat layout (tree p's rows are p·G … p·G + G − 1). A token shared by several flat rows
    is computed once; its gradient is the sum over the rows that hold it, as in the flat
    step. The gather stays within a tree's row, so it is local to whichever device holds
    the tree."""
    tree = (packed.node, packed.end)
    h, _ = model.hidden(
        packed.tokens, packed.positions, segment_ids=packed.segment_ids, remat=remat, tree=tree
    )
    pred = packed.pred
    h_pred = jnp.take_along_axis(h, jnp.maximum(pred, 0)[..., None], axis=1)
    logp, ent = _scored(model, h_pred, packed.tokens, chunk, logits_remat, with_entropy)
    p, g, t = packed.gather.shape
    cols = packed.gather.reshape(p, g * t)

    def to_flat(x):  # [P, S] → [P·G, T]
        x = jnp.where(pred >= 0, x, 0.0)
        flat = jnp.take_along_axis(x, jnp.maximum(cols, 0), axis=1)
        return jnp.where(cols >= 0, flat, 0.0).reshape(p * g, t)

    return to_flat(logp), None if ent is None else to_flat(ent)


def _scored(model, h, targets, chunk: int, logits_remat: bool, with_entropy: bool):
    """Log-prob (and entropy) of ``targets`` [B, T] under the logits of ``h`` [B, T, D],
    position by position, through the vocabulary in chunks of ``chunk`` tokens (module
    docstring) → [B, T] each."""
    b, t = targets.shape
    chunk = min(chunk, t)
    n_chunks = -(-t // chunk)
    pad = n_chunks * chunk - t
    if pad:
        h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    hc = h.reshape(b, n_chunks, chunk, h.shape[-1]).swapaxes(0, 1)  # [C, B, c, D]
    tc = targets.reshape(b, n_chunks, chunk).swapaxes(0, 1)  # [C, B, c]

    head_t = None
    if model.cfg.batch_invariant and not model.cfg.tie_word_embeddings:
        # Transposed once here, not in every chunk (Decoder.logits would, inside the loop).
        head_t = jax.lax.optimization_barrier(model.lm_head[...].T)

    def one(args):
        return _chunk_logprobs(model, *args, with_entropy, head_t)

    if logits_remat:
        one = jax.checkpoint(one)
    logp, ent = jax.lax.map(one, (hc, tc))

    def unchunk(x):  # [C, B, c] → [B, T]
        return x.swapaxes(0, 1).reshape(b, n_chunks * chunk)[:, :t]

    return unchunk(logp), None if ent is None else unchunk(ent)


@dataclasses.dataclass(frozen=True)
class LogProbs:
    """Output of the log-prob step: ``logp`` [B, T], ``entropy`` [B, T] or None."""

    logp: Array
    entropy: Array | None


jax.tree_util.register_dataclass(LogProbs, data_fields=["logp", "entropy"], meta_fields=[])


def make_logprob_step(
    graphdef: nnx.GraphDef,
    cfg: StepConfig = StepConfig(),
    *,
    with_entropy: bool = False,
    mesh: Mesh | None = None,
    param_shardings: Any = None,
) -> Callable[[nnx.State, Array, Array, Array], LogProbs]:
    """Jitted ``(params, tokens, positions, segment_ids) → LogProbs`` for old/ref policies.

    ``params``: an ``nnx.State`` of Params for ``graphdef`` (e.g. ``state.params`` or a
    frozen reference copy). With a ``mesh``, inputs are ``[B, T]`` arrays sharded over
    the batch axes and params as ``param_shardings``; outputs are batch-sharded.
    """

    def step(params, tokens, positions, segment_ids):
        model = nnx.merge(graphdef, params)
        logp, ent = token_logprobs(
            model,
            tokens,
            positions,
            segment_ids,
            chunk=cfg.chunk,
            remat=False,
            logits_remat=False,
            with_entropy=with_entropy,
        )
        return LogProbs(logp=logp, entropy=ent)

    if mesh is None:
        return jax.jit(step)
    if param_shardings is None:
        raise ValueError("make_logprob_step with a mesh needs param_shardings")
    row = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None))
    out = LogProbs(logp=row, entropy=row if with_entropy else None)
    return jax.jit(step, in_shardings=(param_shardings, row, row, row), out_shardings=out)


def score_batch(
    logprob: Callable[[nnx.State, Array, Array, Array], LogProbs],
    params: nnx.State,
    batch: RLBatch,
    mesh: Mesh | None = None,
    rows: int | None = None,
) -> np.ndarray:
    """Host ``[B, T]`` log-probs of a host batch's tokens under ``params``, through the
    jitted ``logprob`` step (sharded over ``mesh`` when given), ``rows`` rows per call
    (None: all at once). Scoring a large batch in slices as small as the update's
    micro-batches bounds the forward's activations by theirs (verl scores in micro-batches
    too); every slice has one shape, so the step compiles once."""
    b = batch.shape[0]
    rows = b if rows is None else rows
    if rows < 1 or b % rows:
        raise ValueError(f"{b} rows do not split into slices of {rows}")
    out = []
    for i in range(0, b, rows):
        fields = tuple(
            np.asarray(x)[i : i + rows] for x in (batch.tokens, batch.positions, batch.segment_ids)
        )
        if mesh is not None:
            fields = parallel.shard_batch(fields, mesh)
        out.append(multihost.to_host(logprob(params, *fields).logp))
    return np.concatenate(out)


def recompute_old_logp(
    logprob: Callable[[nnx.State, Array, Array, Array], LogProbs],
    params: nnx.State,
    batch: RLBatch,
    mesh: Mesh | None = None,
    rows: int | None = None,
) -> tuple[RLBatch, dict[str, float]]:
    """The batch with π_old scored by the training forward (``loss.old_logprobs=
    "recompute"``, verl's choice), and how far the sampler's log-probs were from it.

    With ``params`` the weights the rollout sampled with, the update step's first
    mini-batch then sees ratio 1 wherever its forward reproduces this one (exactly, for a
    batch-invariant model), so the clip acts on the policy's change, not on the
    difference between sampling and training numerics. Metrics, over loss tokens:
    ``train/old_logp_diff_max`` and ``train/old_logp_diff_mean`` of
    ``|sampler − recomputed|``. ``rows``: rows per scoring call (:func:`score_batch`).
    """
    old = score_batch(logprob, params, batch, mesh, rows)
    mask = np.asarray(batch.loss_mask) > 0
    diff = np.abs(old - np.asarray(batch.old_logp))[mask]
    metrics = {
        "train/old_logp_diff_max": float(diff.max(initial=0.0)),
        "train/old_logp_diff_mean": float(diff.mean()) if diff.size else 0.0,
    }
    return batch.replace(old_logp=np.where(mask, old, 0.0).astype(np.float32)), metrics


# ---------------------------------------------------------------------------------------
# Objectives


@dataclasses.dataclass(frozen=True)
class Objective:
    """What the update step minimises.

    ``loss(logp, batch, entropy) → (scalar, metrics)`` on one (micro-)batch; ``weight(batch)
    → scalar``: the batch's share of the loss normaliser, so that the full-batch loss is
    ``Σ_m weight_m · loss_m / Σ_m weight_m`` over any split into micro-batches.
    ``needs_entropy``: whether ``loss`` reads the per-token entropy.
    """

    loss: Callable[[Array, RLBatch, Array | None], tuple[Array, Metrics]]
    weight: Callable[[RLBatch], Array]
    needs_entropy: bool = False


def token_weight(batch: RLBatch) -> Array:
    """Normaliser share of a token-mean loss: the number of loss tokens."""
    return jnp.sum(batch.loss_mask)


def sequence_weight(batch: RLBatch) -> Array:
    """Normaliser share of a sequence-mean loss: rows with at least one loss token."""
    return jnp.sum(jnp.any(batch.loss_mask > 0, axis=1)).astype(jnp.float32)


def row_weight(batch: RLBatch) -> Array:
    """Normaliser share of a constant-normalised loss: all rows."""
    return jnp.asarray(batch.loss_mask.shape[0], jnp.float32)


AGG_WEIGHTS: dict[str, Callable[[RLBatch], Array]] = {
    "token_mean": token_weight,
    "seq_mean_token_mean": sequence_weight,
    "seq_mean_token_sum": sequence_weight,
    "constant": row_weight,
}


def nll_objective() -> Objective:
    """Next-token cross-entropy, mean over loss tokens (NTP and SFT)."""

    def loss(logp: Array, batch: RLBatch, entropy: Array | None):
        n = jnp.maximum(batch.loss_mask.sum(), 1.0)
        nll = -(logp * batch.loss_mask).sum() / n
        return nll, {"nll": nll}

    return Objective(loss=loss, weight=token_weight)


def policy_objective(cfg) -> Objective:
    """The clipped policy loss of ``rlpt_jax.algos.losses`` for a ``LossConfig``."""
    from rlpt_jax.algos import losses

    if cfg.agg not in AGG_WEIGHTS:
        raise ValueError(f"no micro-batch weighting for aggregation {cfg.agg!r}")

    def loss(logp: Array, batch: RLBatch, entropy: Array | None):
        return losses.policy_loss(
            cfg,
            logp,
            batch.old_logp,
            batch.advantages,
            batch.loss_mask,
            ref_logp=batch.ref_logp,
            turn_ids=batch.turn_ids,
            entropy=entropy,
        )

    return Objective(loss=loss, weight=AGG_WEIGHTS[cfg.agg], needs_entropy=cfg.entropy_coef > 0)


# ---------------------------------------------------------------------------------------
# Update


def _split_micro(batch: RLBatch, m: int, mesh: Mesh | None) -> RLBatch:
    """[B, T] fields → [M, B/M, T]; micro-batch i takes units i, i + M, … (rows, or whole
    trees' rows with a packed ``tree``: ``RLBatch.rows_per_tree``) so that every device's
    contiguous block of rows contributes to every micro-batch."""
    units = batch.tokens.shape[0] // batch.rows_per_tree
    if units % m:
        what = "rows" if batch.tree is None else "packed trees"
        raise ValueError(f"batch of {units} {what} does not split into {m} micro-batches")

    def split(x):
        per_unit, rest = x.shape[0] // units, x.shape[1:]
        x = x.reshape(units // m, m, per_unit, *rest).swapaxes(0, 1)
        x = x.reshape(m, units // m * per_unit, *rest)
        if mesh is not None:
            spec = PartitionSpec(None, ("data", "fsdp"), *([None] * (x.ndim - 2)))
            x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
        return x

    return jax.tree.map(split, batch)


def _combine_metrics(stacked: Metrics, weights: Array) -> Metrics:
    """Per-micro-batch metrics [M] → weighted means (min/max for *_min/*_max keys)."""
    total = jnp.maximum(weights.sum(), 1e-30)
    out = {}
    for k, v in stacked.items():
        if k.endswith("_min"):
            out[k] = v.min()
        elif k.endswith("_max"):
            out[k] = v.max()
        else:
            out[k] = jnp.sum(v * weights) / total
    return out


def make_update_step(
    tx: optax.GradientTransformation,
    objective: Objective,
    cfg: StepConfig = StepConfig(),
    *,
    mesh: Mesh | None = None,
    state_shardings: TrainState | None = None,
) -> Callable[[TrainState, RLBatch], tuple[TrainState, Metrics]]:
    """Jitted ``(state, batch) → (new_state, metrics)``; the input state is donated.

    With a ``mesh``, ``state_shardings`` (from ``train_state_shardings``) fixes the
    layout of the state in and out, and every batch field is sharded over the batch
    axes. Metrics: ``loss``, ``grad_norm`` (before clipping), ``tokens``, ``skipped``
    (1 if this update was skipped), ``skipped_total``, plus the objective's own.
    """
    m = cfg.micro_batches

    def micro_loss(params, graphdef, mb: RLBatch):
        model = nnx.merge(graphdef, params)
        opts = dict(
            chunk=cfg.chunk,
            remat=cfg.remat,
            logits_remat=cfg.recompute_logits,
            with_entropy=objective.needs_entropy,
        )
        if mb.tree is not None:  # the same flat log-probs, each shared prefix computed once
            logp, ent = packed_token_logprobs(model, mb.tree, **opts)
        else:
            logp, ent = token_logprobs(model, mb.tokens, mb.positions, mb.segment_ids, **opts)
        loss, metrics = objective.loss(logp, mb, ent)
        w = objective.weight(mb)
        return w * loss, (loss, w, metrics)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def step(state: TrainState, batch: RLBatch):
        params = state.params
        if m == 1:
            _, grads, loss, w, metrics = _one(params, state.graphdef, batch)
            total_w = jnp.maximum(w, 1e-30)
            grads = jax.tree.map(lambda g: g / total_w, grads)
        else:
            micro = _split_micro(batch, m, mesh)

            def body(acc, mb):
                _, g, loss, w, metrics = _one(params, state.graphdef, mb)
                acc = jax.tree.map(jnp.add, acc, g)
                return acc, (loss, w, metrics)

            zeros = jax.tree.map(jnp.zeros_like, params)
            grads, (losses_, ws, ms) = jax.lax.scan(body, zeros, micro)
            total_w = jnp.maximum(ws.sum(), 1e-30)
            grads = jax.tree.map(lambda g: g / total_w, grads)
            loss = jnp.sum(losses_ * ws) / total_w
            metrics = _combine_metrics(ms, ws)
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        # A conditional, not ``where(ok, new, old)`` per leaf: with the select, XLA fuses
        # the moment updates into both the moment outputs and the parameter update, so it
        # must copy the old moments before overwriting them in place (2 × the parameter
        # bytes: 1.1 GB of the SmolLM2-135M step's temporaries). A skipped step also
        # skips the optimizer's arithmetic.
        def apply(params, opt_state):
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        def keep(params, opt_state):
            return params, opt_state

        new_params, new_opt_state = jax.lax.cond(ok, apply, keep, params, state.opt_state)
        new_state = state.replace(
            step=state.step + ok.astype(jnp.int32),
            params=new_params,
            opt_state=new_opt_state,
            skipped=state.skipped + (~ok).astype(jnp.int32),
        )
        out = dict(metrics)
        out.update(
            loss=loss,
            grad_norm=grad_norm,
            tokens=jnp.sum(batch.loss_mask),
            skipped=(~ok).astype(jnp.int32),
            skipped_total=new_state.skipped,
        )
        return new_state, out

    def _one(params, graphdef, mb):
        (wl, (loss, w, metrics)), g = grad_fn(params, graphdef, mb)
        return wl, g, loss, w, metrics

    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    if state_shardings is None:
        raise ValueError("make_update_step with a mesh needs state_shardings")
    replicated = NamedSharding(mesh, PartitionSpec())
    row = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None))  # every batch field
    return jax.jit(
        step,
        donate_argnums=0,
        in_shardings=(state_shardings, row),
        out_shardings=(state_shardings, replicated),
    )
