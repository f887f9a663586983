"""Training state and optimiser: AdamW + global-norm clipping + a learning-rate schedule.

``TrainState`` is the one pytree that crosses the jitted update step (donated): step
counter, parameters (an ``nnx.State`` of Params, which carry their logical axes so they
can be sharded), optax state, an RNG key folded with the step, and a counter of skipped
(non-finite) updates. The model's graph definition is static metadata of the state.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlpt_jax.models import decoder
from rlpt_jax.parallel import TRAIN_RULES, Rules, state_shardings

SCHEDULES = ("constant", "cosine", "linear")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with global-norm gradient clipping and a learning-rate schedule.

    ``schedule``: ``"constant"``, ``"cosine"`` (to ``end_lr_ratio``·lr) or ``"linear"``
    (to ``end_lr_ratio``·lr), each after ``warmup_steps`` of linear warm-up from 0;
    decaying schedules need ``total_steps`` (warm-up included). ``grad_clip``: maximum
    global gradient norm, None for no clipping. Weight decay applies to parameters of rank
    ≥ 2 only (not norms or biases). Defaults follow the AT²PO recipe (lr 1e-6 constant,
    wd 0.01, clip 1.0).
    """

    learning_rate: float = 1e-6
    schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int | None = None
    end_lr_ratio: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"OptimConfig.schedule={self.schedule!r}; expected one of {SCHEDULES}")
        if not 0 < self.learning_rate < float("inf"):
            raise ValueError(f"OptimConfig.learning_rate must be > 0; got {self.learning_rate}")
        if self.warmup_steps < 0:
            raise ValueError(f"OptimConfig.warmup_steps must be >= 0; got {self.warmup_steps}")
        if self.schedule != "constant":
            if self.total_steps is None or self.total_steps <= self.warmup_steps:
                raise ValueError(
                    f"OptimConfig.schedule={self.schedule!r} needs total_steps > warmup_steps "
                    f"({self.warmup_steps}); got total_steps={self.total_steps}"
                )
        if not 0 <= self.end_lr_ratio <= 1:
            raise ValueError(f"OptimConfig.end_lr_ratio must be in [0, 1]; got {self.end_lr_ratio}")
        for name in ("b1", "b2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"OptimConfig.{name} must be in [0, 1); got {getattr(self, name)}")
        if not self.eps > 0:
            raise ValueError(f"OptimConfig.eps must be > 0; got {self.eps}")
        if not self.weight_decay >= 0:
            raise ValueError(f"OptimConfig.weight_decay must be >= 0; got {self.weight_decay}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"OptimConfig.grad_clip must be > 0 or None; got {self.grad_clip}")


def learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
    """Step → learning rate, as ``cfg`` describes."""
    lr = cfg.learning_rate
    if cfg.schedule == "constant":
        main = optax.constant_schedule(lr)
    else:
        decay_steps = cfg.total_steps - cfg.warmup_steps
        if cfg.schedule == "cosine":
            main = optax.cosine_decay_schedule(lr, decay_steps, alpha=cfg.end_lr_ratio)
        else:
            main = optax.linear_schedule(lr, lr * cfg.end_lr_ratio, decay_steps)
    if cfg.warmup_steps == 0:
        return main
    warmup = optax.linear_schedule(0.0, lr, cfg.warmup_steps)
    return optax.join_schedules([warmup, main], [cfg.warmup_steps])


def _decay_mask(params):
    """True for the parameters weight decay applies to: rank >= 2 per layer, so a stacked
    layer's [L, D] norm or [L, N, H] bias is not decayed (nor is it in a list of layers)."""

    def decays(x):
        if not isinstance(x, nnx.Variable):  # a plain array
            return x.ndim >= 2
        axes = x.get_metadata().get("logical_axes") or ()
        return x.replace(x.get_value().ndim - (axes[:1] == ("layers",)) >= 2)

    return jax.tree.map(decays, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """``clip_by_global_norm`` (if any) then AdamW with the schedule."""
    adamw = optax.adamw(
        learning_rate_schedule(cfg),
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mask=_decay_mask,
    )
    if cfg.grad_clip is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)


# The structure of a saved TrainState, recorded with every checkpoint: change it with the
# tree (a renamed field, another parameter layout) so that older checkpoints are refused
# with a message that says why. "stacked-layers": the decoder's layers as one Block of
# [L, ...] parameters (commit a106610); before it, one Block per layer (none recorded).
# A run that trains a list of layers (``with_layers``) saves them stacked.
STATE_LAYOUT = "stacked-layers"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything the update step reads and writes.

    step: int32 scalar, updates applied so far. params: ``nnx.State`` of the model's
    Params. opt_state: the optax state. skipped: int32 scalar, updates skipped because the
    loss or the gradient was not finite. graphdef (static): the model structure, for ``nnx.merge``.
    """

    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState
    skipped: jax.Array
    graphdef: nnx.GraphDef = dataclasses.field(metadata=dict(static=True))

    def model(self) -> nnx.Module:
        """The model with this state's parameters (inside or outside jit)."""
        return nnx.merge(self.graphdef, self.params)

    def replace(self, **kw) -> TrainState:
        return dataclasses.replace(self, **kw)


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation) -> TrainState:
    """A fresh state from a model (its current parameters) and an optimiser.

    Every piece of model state must be an ``nnx.Param``: other variables (caches, counters)
    would silently not be trained or carried, so they raise.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError(
            f"model has non-Param state that TrainState would not carry: "
            f"{jax.tree.map(jnp.shape, rest)}"
        )
    graphdef, params = nnx.split(model, nnx.Param)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        skipped=jnp.zeros((), jnp.int32),
        graphdef=graphdef,
    )


def with_layers(state: TrainState, *, stacked: bool) -> TrainState:
    """The same state with the decoder's layers stacked (one ``Block`` of [L, ...]
    parameters: what ``lax.scan`` runs, and the layout of checkpoints) or as a list of L
    blocks (what the update step runs without remat; ``Decoder.hidden``). Parameters and
    the optimiser's per-parameter buffers are restacked alike, so the update that follows
    is the same; already in that layout, ``state`` is returned as is. Re-shard the result
    (``shard_train_state``): the list drops the "layers" logical axis."""
    model = state.model()
    is_list = isinstance(model.layers, nnx.List)
    if is_list != stacked:
        return state
    n = model.cfg.num_layers
    model.layers = decoder.stacked(model.layers) if stacked else decoder.unstacked(model.layers)
    graphdef, params = nnx.split(model, nnx.Param)

    def restack(x):
        if isinstance(x, nnx.State) and "layers" in x:
            return _restack(x, n, stacked)
        return x

    opt_state = jax.tree.map(restack, state.opt_state, is_leaf=lambda x: isinstance(x, nnx.State))
    return state.replace(params=params, opt_state=opt_state, graphdef=graphdef)


def _restack(tree: nnx.State, n: int, stacked: bool) -> nnx.State:
    """A params-shaped ``nnx.State`` (an Adam moment, a mask) with its "layers" entries
    stacked from ``("layers", i, ...)`` paths, or sliced into them."""
    out, groups = [], {}
    for path, leaf in nnx.to_flat_state(tree):
        if path[0] != "layers":
            out.append((path, leaf))
        elif stacked:
            groups.setdefault(path[2:], {})[path[1]] = leaf
        else:
            out.extend((("layers", i, *path[1:]), _layer_of(leaf, i)) for i in range(n))
    for rest, by_layer in groups.items():
        out.append((("layers", *rest), _stack_leaves([by_layer[i] for i in range(n)])))
    return nnx.from_flat_state(out)


def _value(leaf):
    return leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf


def _has_array(leaf) -> bool:  # optax's MaskedNode (a masked-out moment) holds none
    return isinstance(_value(leaf), jax.Array | np.ndarray)


def _layer_of(leaf, i: int):
    """Layer ``i`` of a stacked flat-state leaf (an array or a Variable)."""
    if not _has_array(leaf):
        return leaf
    if not isinstance(leaf, nnx.Variable):
        return leaf[i]
    axes = leaf.get_metadata().get("logical_axes")
    return leaf.replace(leaf.get_value()[i], **({} if axes is None else {"logical_axes": axes[1:]}))


def _stack_leaves(leaves: list):
    """The leaves of layers 0..L-1 as one stacked leaf ("layers" first in logical axes)."""
    first = leaves[0]
    if not _has_array(first):
        return first
    value = jnp.stack([_value(x) for x in leaves])
    if not isinstance(first, nnx.Variable):
        return value
    axes = first.get_metadata().get("logical_axes")
    return first.replace(value, **({} if axes is None else {"logical_axes": ("layers", *axes)}))


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def train_state_shardings(
    state: TrainState, tx: optax.GradientTransformation, mesh: Mesh, rules: Rules = TRAIN_RULES
) -> TrainState:
    """A TrainState-shaped tree of NamedShardings.

    Params follow their logical axes under ``rules``; the optimiser's per-parameter
    buffers (Adam moments) follow their parameter; counters are replicated.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    param_sh = state_shardings(state.params, mesh, rules)
    opt_sh = optax.tree_map_params(
        tx,
        lambda _, s: s,
        state.opt_state,
        param_sh,
        transform_non_params=lambda _: replicated,
        is_leaf=_is_var,
    )
    return TrainState(
        step=replicated,
        params=param_sh,
        opt_state=opt_sh,
        skipped=replicated,
        graphdef=state.graphdef,
    )


def shard_train_state(
    state: TrainState, tx: optax.GradientTransformation, mesh: Mesh, rules: Rules = TRAIN_RULES
) -> tuple[TrainState, TrainState]:
    """(state placed on ``mesh``, its shardings tree)."""
    shardings = train_state_shardings(state, tx, mesh, rules)
    return jax.device_put(state, shardings), shardings
