"""Multi-host runs: every process runs the same host loop; process 0 alone talks to the
outside world.

The sampler, the scoring forward and the update step are SPMD programs over the global
mesh, so every process must issue the same jitted calls, in the same order, with the same
shapes. The host loop decides those calls (which rows continue, how many turns a tree
grows, whether a step is skipped), so its state must be identical on every process.

Two ways to get there were possible: every process works on its own shard of the prompts,
or every process holds the whole host state. We take the second. A shard per process
would give each process its own number of turns, tool calls and refill rounds, hence its
own sequence of jitted calls, and the hosts would hang or silently diverge; keeping the
shards in step would need a barrier and a shape agreement at every turn. Holding the whole
state costs each host the (cheap) bookkeeping of all rows, and keeps one code path for one
process and for many.

The state is then identical by construction wherever it is computed from the config, the
seed and device outputs (which every process reads whole, :func:`to_host`). What is not
deterministic is the outside world: a judge or search server's reply, a retry that
succeeds on one host and not another, a sandboxed program or a verifier that meets its
deadline on one host only. Those calls go through :func:`once`: process 0 makes the call,
and its result, or the exception it raised, is broadcast, so a failure is decided once
and every process takes the same branch.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def is_multiprocess() -> bool:
    """Whether ``jax.distributed`` joined this process to others. Host-only code (the
    environments, the judges, the verifier) imports this module without JAX, and a
    process that never imported JAX is on its own."""
    jax = sys.modules.get("jax")
    return jax is not None and jax.distributed.is_initialized() and jax.process_count() > 1


def to_host(x) -> np.ndarray:
    """A device array as a host numpy array, whole, on every process.

    On one process this is ``np.asarray``. In a multi-process run an array sharded over
    devices of other processes is all-gathered (a collective: every process must call
    this for the same array, which the shared host loop guarantees)."""
    import jax

    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def broadcast_bytes(data: bytes | None) -> bytes:
    """Process 0's ``data`` on every process (the others pass anything, e.g. ``None``).

    Two collectives: the length, then the bytes padded to a power of two, so that the
    broadcast compiles once per size class rather than once per length."""
    import jax
    from jax.experimental import multihost_utils

    first = jax.process_index() == 0
    n = int(multihost_utils.broadcast_one_to_all(np.int32(len(data) if first else 0)))
    size = 1 << max(n - 1, 0).bit_length()
    buf = np.zeros(size, np.uint8)
    if first:
        buf[:n] = np.frombuffer(data, np.uint8)
    return np.asarray(multihost_utils.broadcast_one_to_all(buf))[:n].tobytes()


def _portable(e: BaseException) -> Exception:
    """``e`` itself when it survives pickling, else a RuntimeError that names it."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


def once(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` computed by process 0 alone, its result on every process.

    For calls to the outside world (judge, search, sandboxed tools, verifiers). If ``fn``
    raises on process 0, every process raises the same exception, so error handling
    around the call takes the same branch everywhere. The result must pickle. The other
    processes never call ``fn``. Every process must reach the call (the shared host loop
    does)."""
    if not is_multiprocess():
        return fn(*args, **kwargs)
    payload = None
    if sys.modules["jax"].process_index() == 0:
        try:
            outcome = (True, fn(*args, **kwargs))
        except Exception as e:  # decided here, raised on every process below
            outcome = (False, _portable(e))
        payload = pickle.dumps(outcome)
    # The payload comes from our own process 0, not from outside: unpickling it is safe.
    ok, value = pickle.loads(broadcast_bytes(payload))
    if not ok:
        raise value
    return value
