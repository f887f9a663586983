"""The host/device boundary: one dataclass of ``[B, T]`` arrays per training batch.

Shape legend: B sequences, T tokens per sequence (padded to a bucket length).

Alignment convention (used by the rollouts and the training steps): every array describes the
token *at* position t. ``old_logp[b, t]`` / ``ref_logp[b, t]`` / the step's ``logp[b, t]``
are ``log π(tokens[b, t] | tokens[b, <t] of the same segment)``; ``loss_mask[b, t] = 1``
marks tokens the policy generated (and is trained on), ``advantages[b, t]`` is that
token's advantage and ``turn_ids[b, t]`` its turn. The first token of a segment has no
prediction (its log-prob is defined as 0) and must not be in the loss. This is the
sampler's convention too: it records a token's log-prob where it writes the token.

Packing: ``segment_ids`` numbers the sequences packed into a row (1, 2, …; 0 = padding);
attention never crosses segments. An ordinary padded batch has ``segment_ids =
attention_mask``.

Shapes are bucketed (:func:`bucket_length`, :func:`pad_batch`) so that the jitted steps
compile once per bucket rather than once per batch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import numpy as np

INT_FIELDS = ("tokens", "positions", "segment_ids", "turn_ids")
FLOAT_FIELDS = ("loss_mask", "advantages", "old_logp", "ref_logp")


class BatchError(ValueError):
    """A batch that the training steps cannot use (with what is wrong and where)."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedBatch:
    """The unique tokens of a batch of turn trees, for a training forward that computes
    every shared prefix once (``rlpt_jax.rollout.tree.pack``,
    ``rlpt_jax.train.steps.packed_token_logprobs``).

    Every array has one row per tree (P rows), so that any split of the trees (mini- and
    micro-batches, devices) splits all of them alike. ``[P, S]`` int32: each node's tokens
    (tool, then model) once. ``positions``: a token's position along its root-to-leaf path
    (its position in every flat row that holds it); ``segment_ids`` 1 on tokens, 0 on
    padding; ``node`` the pre-order index of the token's node and ``end`` the last
    pre-order index in that node's subtree (``attention.Mask.within_tree``); ``pred`` the
    column of the token whose hidden state scores this one (the previous token on its
    path: the one before it in its node, or the parent node's last token; −1 for the first
    prompt token and padding). ``gather`` ``[P, G, T]``: for the tree's G flat rows (its
    root-to-leaf paths, then empty rows), the column of each of their T tokens in the
    tree's packed row (−1 on padding).

    The flat rows of an :class:`RLBatch` that carries a PackedBatch are laid out by tree:
    rows ``p·G … p·G + G − 1`` are tree p's (``RLBatch.rows_per_tree``).
    """

    tokens: jax.Array
    positions: jax.Array
    segment_ids: jax.Array
    node: jax.Array
    end: jax.Array
    pred: jax.Array
    gather: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RLBatch:
    """One training batch; every field ``[B, T]`` (see the module docstring).

    tokens, positions, segment_ids, turn_ids: int32. loss_mask (0/1), advantages,
    old_logp, ref_logp: float32. ``ref_logp`` is None when no reference policy is used.
    ``turn_ids`` counts turns 0, 1, … within a row on loss tokens (−1 elsewhere).
    ``tree``: the same rows' turn trees packed (:class:`PackedBatch`), for the update
    step's packed forward; the rows are then grouped by tree (``rows_per_tree``).
    """

    tokens: jax.Array
    positions: jax.Array
    segment_ids: jax.Array
    loss_mask: jax.Array
    turn_ids: jax.Array
    advantages: jax.Array
    old_logp: jax.Array
    ref_logp: jax.Array | None = None
    tree: PackedBatch | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.tokens.shape)

    @property
    def rows_per_tree(self) -> int:
        """G: flat rows per packed tree (1 without a tree: every row is its own unit)."""
        return 1 if self.tree is None else int(self.tree.gather.shape[1])

    def replace(self, **kw) -> RLBatch:
        return dataclasses.replace(self, **kw)

    def fields(self) -> dict[str, jax.Array | None]:
        """The ``[B, T]`` fields (every field but ``tree``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "tree"}


def turn_ids_from_mask(loss_mask: np.ndarray) -> np.ndarray:
    """Maximal runs of mask 1 numbered 0, 1, … per row, −1 off the mask (numpy, int32)."""
    m = np.asarray(loss_mask) > 0
    prev = np.pad(m[:, :-1], ((0, 0), (1, 0)))
    ids = np.cumsum(m & ~prev, axis=1) - 1
    return np.where(m, ids, -1).astype(np.int32)


def positions_from_segments(segment_ids: np.ndarray) -> np.ndarray:
    """Position of each token within its segment (0, 1, …), 0 on padding. ``[B, T]``."""
    seg = np.asarray(segment_ids)
    b, t = seg.shape
    idx = np.broadcast_to(np.arange(t), (b, t))
    start = np.pad(seg[:, 1:] != seg[:, :-1], ((0, 0), (1, 0)), constant_values=True)
    first = np.maximum.accumulate(np.where(start, idx, 0), axis=1)
    return np.where(seg > 0, idx - first, 0).astype(np.int32)


def make_batch(
    tokens,
    loss_mask,
    advantages,
    old_logp,
    *,
    attention_mask=None,
    segment_ids=None,
    positions=None,
    turn_ids=None,
    ref_logp=None,
) -> RLBatch:
    """Build an :class:`RLBatch` of numpy arrays from host data, filling defaults.

    ``advantages`` may be ``[B]`` (one per sequence, broadcast over its tokens) or ``[B, T]``.
    Give ``attention_mask`` (1 = real token) or ``segment_ids``, not both; neither means
    no padding. Positions default to the index within each segment, turn ids to runs of
    the loss mask. The result is validated (:func:`validate`).
    """
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2:
        raise BatchError(f"tokens must be [B, T]; got shape {tokens.shape}")
    if attention_mask is not None and segment_ids is not None:
        raise BatchError("give either attention_mask or segment_ids, not both")
    if segment_ids is None:
        segment_ids = np.ones_like(tokens) if attention_mask is None else attention_mask
    segment_ids = np.asarray(segment_ids, np.int32)
    loss_mask = np.asarray(loss_mask, np.float32)
    if positions is None:
        positions = positions_from_segments(segment_ids)
    if turn_ids is None:
        turn_ids = turn_ids_from_mask(loss_mask)
    advantages = np.asarray(advantages, np.float32)
    if advantages.ndim == 1 and advantages.shape[0] == tokens.shape[0]:
        advantages = np.broadcast_to(advantages[:, None], tokens.shape).copy()
    batch = RLBatch(
        tokens=tokens,
        positions=np.asarray(positions, np.int32),
        segment_ids=segment_ids,
        loss_mask=loss_mask,
        turn_ids=np.asarray(turn_ids, np.int32),
        advantages=advantages,
        old_logp=np.asarray(old_logp, np.float32),
        ref_logp=None if ref_logp is None else np.asarray(ref_logp, np.float32),
    )
    validate(batch)
    return batch


def nonfinite_counts(batch: RLBatch) -> dict[str, int]:
    """Number of NaN/inf entries per float field (on loss tokens or not)."""
    out = {}
    for name in FLOAT_FIELDS:
        x = getattr(batch, name)
        if x is not None:
            out[name] = int(np.size(x) - np.count_nonzero(np.isfinite(np.asarray(x))))
    return out


def validate(
    batch: RLBatch, *, vocab_size: int | None = None, allow_nonfinite: bool = False
) -> dict[str, int]:
    """Check a host batch; raise :class:`BatchError` naming the first problem found.

    Checks: every field ``[B, T]`` with the right dtype kind; loss_mask in {0, 1}; no loss
    on a token without a prediction (first token of a row or segment, or padding); tokens
    in ``[0, vocab_size)`` if given; no NaN/inf in float fields unless ``allow_nonfinite``
    (the update step still skips non-finite updates as a last line of defence). Returns
    the per-field non-finite counts.
    """
    shape = np.shape(batch.tokens)
    if len(shape) != 2:
        raise BatchError(f"tokens must be [B, T]; got shape {shape}")
    for name, x in batch.fields().items():
        if x is None:
            if name != "ref_logp":
                raise BatchError(f"RLBatch.{name} is required")
            continue
        if np.shape(x) != shape:
            raise BatchError(f"RLBatch.{name} has shape {np.shape(x)}; expected {shape} [B, T]")
        kind = np.dtype(x.dtype).kind
        if name in INT_FIELDS and kind not in "iu":
            raise BatchError(f"RLBatch.{name} must be an integer array; got {x.dtype}")
        if name in FLOAT_FIELDS and kind != "f":
            raise BatchError(f"RLBatch.{name} must be a float array; got {x.dtype}")
    mask = np.asarray(batch.loss_mask)
    if not np.isin(mask, (0.0, 1.0)).all():
        bad = mask[~np.isin(mask, (0.0, 1.0))]
        raise BatchError(f"loss_mask must be 0 or 1; found {bad.size} other values, e.g. {bad[0]}")
    seg = np.asarray(batch.segment_ids)
    prev = np.pad(seg[:, :-1], ((0, 0), (1, 0)))
    predicted = (seg != 0) & (seg == prev)
    orphan = (mask > 0) & ~predicted
    if orphan.any():
        b, t = np.argwhere(orphan)[0]
        raise BatchError(
            f"loss_mask is 1 at [{b}, {t}], a token with no prediction (first token of its "
            f"row/segment, or padding); {int(orphan.sum())} such tokens. Log-probs are "
            f"aligned to the token they score, so the loss never covers a segment's first token"
        )
    if vocab_size is not None:
        tok = np.asarray(batch.tokens)
        if tok.min(initial=0) < 0 or tok.max(initial=0) >= vocab_size:
            raise BatchError(
                f"tokens must be in [0, {vocab_size}); got range [{tok.min()}, {tok.max()}]"
            )
    if batch.tree is not None:
        gather = np.shape(batch.tree.gather)
        if len(gather) != 3 or gather[0] * gather[1] != shape[0] or gather[2] != shape[1]:
            raise BatchError(
                f"RLBatch.tree.gather has shape {gather}; expected [P, G, T] with P·G = "
                f"{shape[0]} rows and T = {shape[1]}"
            )
    counts = nonfinite_counts(batch)
    if not allow_nonfinite and any(counts.values()):
        raise BatchError(f"non-finite values in the batch: {counts}")
    return counts


def bucket_length(t: int, buckets: Sequence[int] | None = None, *, min_length: int = 16) -> int:
    """The padded length for a batch of true length ``t``.

    With ``buckets`` (increasing), the smallest bucket ≥ t (error if none is); otherwise
    the next power of two, at least ``min_length``. A handful of buckets bounds the
    number of compilations of each jitted step.
    """
    if t < 1:
        raise BatchError(f"length must be positive; got {t}")
    if buckets is not None:
        ordered = sorted(buckets)
        for b in ordered:
            if b >= t:
                return int(b)
        raise BatchError(f"length {t} exceeds the largest bucket {ordered[-1]}")
    return max(min_length, 1 << math.ceil(math.log2(t)))


def pad_batch(
    batch: RLBatch,
    length: int | None = None,
    rows: int | None = None,
    *,
    pad_id: int = 0,
    at: np.ndarray | None = None,
) -> RLBatch:
    """Pad a host batch to ``[rows, length]`` with dead tokens (segment 0, loss mask 0).

    ``length`` defaults to :func:`bucket_length` of the current T; ``rows`` to B. Padding
    rows have no loss token, so they change no loss aggregation (see algos.losses).
    ``at`` [B]: the row each of the batch's rows goes to (default: the first B, in order),
    e.g. to lay rows out by tree (:class:`PackedBatch`). A batch with a ``tree`` is
    already laid out and is not padded again.
    """
    if batch.tree is not None:
        raise BatchError("pad_batch of a batch with a packed tree: pad before packing")
    b, t = batch.shape
    length = bucket_length(t) if length is None else length
    rows = b if rows is None else rows
    if length < t or rows < b:
        raise BatchError(f"cannot pad a [{b}, {t}] batch down to [{rows}, {length}]")
    at = np.arange(b) if at is None else np.asarray(at)
    if (
        at.shape != (b,)
        or len(set(at.tolist())) != b
        or (b and not 0 <= at.min() <= at.max() < rows)
    ):
        raise BatchError(f"pad_batch: `at` must give {b} distinct rows in [0, {rows})")
    fill = {"tokens": pad_id, "turn_ids": -1}

    def pad(name, x):
        if x is None:
            return None
        x = np.asarray(x)
        out = np.full((rows, length), fill.get(name, 0), x.dtype)
        out[at, :t] = x
        return out

    return RLBatch(**{name: pad(name, x) for name, x in batch.fields().items()})
