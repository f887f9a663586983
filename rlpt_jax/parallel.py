"""Device mesh and logical-axis sharding.

The mesh has three named axes ``(data, fsdp, tensor)``. Parameters and activations carry
*logical* axis names (``vocab``, ``embed``, ``mlp``, ``q_heads``, ``kv_heads``, ``head_dim``,
``norm``, ``batch``, ``length``); a rules table maps each logical name to mesh axes. Training
and sampling use different tables: training shards weights over ``fsdp`` and ``tensor``,
sampling keeps weights whole along ``embed`` (tensor-parallel only) so that decoding does not
all-gather weights every token.

A mesh axis is used for a dimension only if it divides the dimension and was not already used
by another dimension of the same array; otherwise that dimension stays replicated. This keeps
tiny test models and odd head counts working on any mesh.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlpt_jax import multihost

MESH_AXES = ("data", "fsdp", "tensor")

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

TRAIN_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
)

SAMPLE_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", None),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape. One axis may be -1: it takes all devices the others leave."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        dims = [self.data, self.fsdp, self.tensor]
        if sum(d == -1 for d in dims) > 1:
            raise ValueError(f"at most one mesh axis may be -1, got {dims}")
        if any(d == 0 or d < -1 for d in dims):
            raise ValueError(f"mesh axis sizes must be positive or -1, got {dims}")
        known = math.prod(d for d in dims if d != -1)
        if -1 in dims:
            if num_devices % known:
                raise ValueError(
                    f"{num_devices} devices cannot be split into a mesh with fixed axes "
                    f"{dict(zip(MESH_AXES, dims))}"
                )
            dims[dims.index(-1)] = num_devices // known
        if math.prod(dims) != num_devices:
            raise ValueError(
                f"mesh {dict(zip(MESH_AXES, dims))} needs {math.prod(dims)} devices, "
                f"but {num_devices} are available"
            )
        return tuple(dims)


def make_mesh(cfg: MeshConfig | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    shape = (cfg or MeshConfig()).shape(len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_to_spec(
    logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules
) -> PartitionSpec:
    """PartitionSpec for an array whose dimensions carry ``logical_axes``."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, dim in zip(logical_axes, shape, strict=True):
        target = table.get(name) if name is not None else None
        if name is not None and name not in table:
            raise KeyError(f"logical axis {name!r} has no sharding rule; rules: {sorted(table)}")
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        chosen = []
        for ax in axes:
            size = mesh.shape[ax]
            if size == 1 or ax in used:
                continue
            if dim % (math.prod(mesh.shape[a] for a in chosen) * size) == 0:
                chosen.append(ax)
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*spec)


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def state_shardings(state, mesh: Mesh, rules: Rules = TRAIN_RULES):
    """A tree like ``state`` (an ``nnx.State`` of Variables) holding NamedShardings.

    Every Variable must carry ``logical_axes`` metadata; non-Variable leaves and Variables of
    rank 0 are replicated.
    """

    def one(v):
        if not _is_var(v):
            return NamedSharding(mesh, PartitionSpec())
        value = v.get_value() if hasattr(v, "get_value") else v.value
        axes = v.get_metadata().get("logical_axes")
        if axes is None:
            if getattr(value, "ndim", 0) == 0:
                return v.replace(NamedSharding(mesh, PartitionSpec()))
            raise ValueError(f"variable of shape {value.shape} has no logical_axes metadata")
        return v.replace(NamedSharding(mesh, logical_to_spec(axes, value.shape, mesh, rules)))

    return jax.tree.map(one, state, is_leaf=_is_var)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Batch dimension over (data, fsdp); the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def shard_batch(batch, mesh: Mesh):
    """Place every array of a host batch pytree with its leading dim over (data, fsdp)."""
    n = mesh.shape["data"] * mesh.shape["fsdp"]

    def put(x):
        x = np.asarray(x)
        if x.ndim == 0:
            return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))
        if x.shape[0] % n:
            raise ValueError(
                f"batch dimension {x.shape[0]} is not divisible by data*fsdp={n}; "
                f"pad the batch or change the mesh"
            )
        return jax.device_put(x, batch_sharding(mesh, x.ndim))

    return jax.tree.map(put, batch)


def _identity(x):
    """Module level, so that resharding the same state again reuses its compiled program
    (a lambda made per call would compile at every policy update)."""
    return x


def reshard_model(model: nnx.Module, mesh: Mesh, rules: Rules) -> nnx.Module:
    """The same model with its parameters moved to the layout given by ``rules``.

    Used to move training parameters (FSDP + tensor) into the sampler's layout
    (tensor-parallel only) and back. The input model is not modified.
    """
    graphdef, state = nnx.split(model)
    shardings = state_shardings(state, mesh, rules)
    if multihost.is_multiprocess():
        # One program for the whole state: a transfer per leaf is a collective program
        # per leaf across processes, and hundreds of those hung on CPU (gloo) with the
        # processes a few leaves apart.
        state = jax.jit(_identity, out_shardings=shardings)(state)
    else:  # no copy of a leaf that is already in place
        state = jax.device_put(state, shardings)
    return nnx.merge(graphdef, state)
