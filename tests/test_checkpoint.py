"""Checkpointer: sharded round trip, RNG keys, extra dict, retention, corruption fallback."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rlpt_jax.checkpoint import (
    CORRUPT_DIR,
    MANIFEST,
    CheckpointConfig,
    Checkpointer,
    CheckpointError,
    LayoutError,
    verify_manifest,
)
from rlpt_jax.parallel import MeshConfig, make_mesh


class Tiny(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.up = nnx.Linear(8, 16, rngs=rngs)
        self.down = nnx.Linear(16, 8, rngs=rngs)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class State:
    """Shaped like the training state: params, optax state, step, two RNG key kinds."""

    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState
    rng: jax.Array  # typed key
    raw_rng: jax.Array  # uint32 key data
    graphdef: nnx.GraphDef = dataclasses.field(metadata=dict(static=True))


def _state(seed: int = 0, step: int = 0) -> State:
    graphdef, params = nnx.split(Tiny(nnx.Rngs(seed)), nnx.Param)
    tx = optax.adam(1e-3)
    return State(
        step=jnp.asarray(step, jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key(seed + 100),
        raw_rng=jax.random.key_data(jax.random.key(seed + 200)),
        graphdef=graphdef,
    )


def _shard(state: State, mesh) -> State:
    """Matrices over (fsdp, tensor), vectors over data, the rest replicated."""

    def spec(x):
        if getattr(x, "ndim", 0) == 2:
            return NamedSharding(mesh, PartitionSpec("fsdp", "tensor"))
        if getattr(x, "ndim", 0) == 1 and x.shape[0] % 2 == 0:
            return NamedSharding(mesh, PartitionSpec("data"))
        return NamedSharding(mesh, PartitionSpec())

    return jax.device_put(state, jax.tree.map(spec, state))


def _leaves_equal(a, b) -> None:
    fa, fb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(fa) == len(fb)
    for x, y in zip(fa, fb):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _bump(state: State, step: int) -> State:
    """A state whose values differ per step (so restoring the wrong step is visible)."""
    return dataclasses.replace(
        state,
        step=jnp.asarray(step, jnp.int32),
        params=jax.tree.map(lambda p: p + step, state.params),
    )


def test_sharded_round_trip_keeps_values_shardings_keys_and_extra(tmp_path):
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    state = _shard(_state(seed=1, step=7), mesh)
    extra = {"data_pos": 1234, "config": {"lr": 1e-6, "name": "rlpt"}, "reward": 0.25}
    with Checkpointer(tmp_path / "ckpt", CheckpointConfig(save_every=7)) as ckpt:
        assert ckpt.save(7, state, extra=extra)
        ckpt.wait()
        assert (ckpt.step_dir(7) / MANIFEST).is_file()

    # Abstract target: shapes, dtypes and shardings only.
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )
    with Checkpointer(tmp_path / "ckpt", CheckpointConfig(save_every=7)) as ckpt:
        restored = ckpt.restore_latest(abstract)
    assert restored is not None and restored.step == 7
    assert restored.extra == extra
    _leaves_equal(restored.state, state)
    for got, want in zip(jax.tree.leaves(restored.state), jax.tree.leaves(state)):
        assert got.sharding.is_equivalent_to(want.sharding, got.ndim), (got.sharding, want.sharding)
    assert jax.dtypes.issubdtype(restored.state.rng.dtype, jax.dtypes.prng_key)
    assert restored.state.raw_rng.dtype == jnp.uint32
    assert restored.state.params["up"]["kernel"].sharding.spec == PartitionSpec("fsdp", "tensor")
    # The restored key draws the same numbers as the saved one.
    np.testing.assert_array_equal(
        jax.random.uniform(restored.state.rng, (4,)), jax.random.uniform(state.rng, (4,))
    )


def test_concrete_target_and_fresh_start(tmp_path):
    assert Checkpointer(tmp_path / "missing").restore_latest(_state()) is None
    ckpt = Checkpointer(tmp_path / "c", CheckpointConfig(save_every=1, async_save=False))
    ckpt.save(3, _state(seed=3), extra={"pos": 3})
    restored = ckpt.restore_latest(_state(seed=9))  # concrete target with other values
    assert restored.step == 3 and restored.extra == {"pos": 3}
    _leaves_equal(restored.state, _state(seed=3))
    ckpt.close()


def test_save_every_and_keep_last_n(tmp_path):
    state = _state()
    with Checkpointer(tmp_path, CheckpointConfig(save_every=2, max_to_keep=2)) as ckpt:
        saved = [s for s in range(1, 10) if ckpt.save(s, _bump(state, s))]
        assert saved == [2, 4, 6, 8]
        assert not ckpt.should_save(9) and ckpt.should_save(10)
        assert ckpt.save(9, _bump(state, 9), force=True)
        ckpt.wait()
        assert ckpt.all_steps() == [8, 9]
        restored = ckpt.restore_latest(state)
    assert restored.step == 9 and int(restored.state.step) == 9


def test_best_metric_kept_in_addition_to_last_n(tmp_path):
    cfg = CheckpointConfig(save_every=1, max_to_keep=2, best_metric="loss", best_mode="min")
    state = _state()
    losses = {1: 5.0, 2: 0.5, 3: 3.0, 4: float("nan"), 5: 4.0, 6: 2.0}
    with Checkpointer(tmp_path, cfg) as ckpt:
        for s, loss in losses.items():
            ckpt.save(s, _bump(state, s), metrics={"loss": loss})
        ckpt.wait()
        assert ckpt.all_steps() == [2, 5, 6]
        assert ckpt.best_step() == 2
        with pytest.raises(KeyError, match="best_metric 'loss'"):
            ckpt.save(7, state, metrics={"reward": 1.0})

    cfg = CheckpointConfig(save_every=1, max_to_keep=1, best_metric="reward", best_mode="max")
    with Checkpointer(tmp_path / "max", cfg) as ckpt:
        for s, r in {1: 0.1, 2: 0.9, 3: 0.3, 4: 0.2}.items():
            ckpt.save(s, _bump(state, s), metrics={"reward": r})
        ckpt.wait()
        assert ckpt.all_steps() == [2, 4]


def _truncate_largest_file(step_dir) -> str:
    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs if f != MANIFEST]
    path = max(files, key=os.path.getsize)
    with open(path, "rb+") as f:
        f.truncate(os.path.getsize(path) // 2)
    return path


def test_truncated_latest_falls_back_to_previous_and_warns(tmp_path):
    state = _state()
    with Checkpointer(tmp_path, CheckpointConfig(save_every=2, max_to_keep=3)) as ckpt:
        for s in (2, 4, 6):
            ckpt.save(s, _bump(state, s), extra={"pos": s})
        ckpt.wait()
        _truncate_largest_file(ckpt.step_dir(6))
        assert "bytes" in verify_manifest(ckpt.step_dir(6))
        with pytest.warns(RuntimeWarning, match=r"restored checkpoint step 4 .* latest step 6"):
            restored = ckpt.restore_latest(state)
        assert restored.step == 4 and restored.extra == {"pos": 4}
        _leaves_equal(restored.state, _bump(state, 4))
        # The corrupt step is moved aside, so the resumed run can save step 6 again.
        assert ckpt.all_steps() == [2, 4]
        assert (tmp_path / CORRUPT_DIR / "6").is_dir()
        assert ckpt.save(6, _bump(state, 6))
        ckpt.wait()
        assert ckpt.restore_latest(state).step == 6


def test_unverifiable_corruption_is_caught_by_restore_errors(tmp_path):
    """Without a manifest (died before writing it), Orbax's read error triggers the fallback."""
    state = _state()
    with Checkpointer(tmp_path, CheckpointConfig(save_every=1)) as ckpt:
        for s in (1, 2):
            ckpt.save(s, _bump(state, s))
        ckpt.wait()
        (ckpt.step_dir(2) / MANIFEST).unlink()
        _truncate_largest_file(ckpt.step_dir(2))
        with pytest.warns(RuntimeWarning, match=r"step 1 instead of the latest step 2"):
            assert ckpt.restore_latest(state).step == 1


def test_deleted_file_and_no_good_checkpoint_raise_clear_error(tmp_path):
    state = _state()
    with Checkpointer(tmp_path, CheckpointConfig(save_every=1)) as ckpt:
        ckpt.save(1, state)
        ckpt.wait()
        (ckpt.step_dir(1) / "extra" / "metadata").unlink()
        assert "missing" in verify_manifest(ckpt.step_dir(1))
        with pytest.raises(
            CheckpointError,
            match=r"(?s)none of the checkpoints.*step 1: .*extra/metadata is missing",
        ):
            ckpt.restore_latest(state)


def test_extra_must_be_json_and_config_is_validated(tmp_path):
    with Checkpointer(tmp_path, CheckpointConfig(save_every=1)) as ckpt:
        with pytest.raises(TypeError, match="JSON-serialisable"):
            ckpt.save(1, _state(), extra={"array": np.zeros(2)})
    with pytest.raises(ValueError, match="best_mode"):
        CheckpointConfig(best_mode="best")
    with pytest.raises(ValueError, match="save_every"):
        CheckpointConfig(save_every=0)


def test_checksum_detects_same_size_corruption(tmp_path):
    cfg = CheckpointConfig(save_every=1, checksum=True)
    with Checkpointer(tmp_path, cfg) as ckpt:
        ckpt.save(1, _state())
        ckpt.wait()
        manifest = json.loads((ckpt.step_dir(1) / MANIFEST).read_text())
        rel = max(manifest["files"], key=lambda k: manifest["files"][k]["size"])
        path = ckpt.step_dir(1) / rel
        data = bytearray(path.read_bytes())
        data[0] ^= 0xFF
        path.write_bytes(bytes(data))
        assert "SHA-256" in verify_manifest(ckpt.step_dir(1))


def test_train_state_round_trip_onto_fresh_sharded_state(tmp_path):
    """The resume path of the training loop: restore onto a freshly built, sharded state."""
    from rlpt_jax.models.config import ModelConfig
    from rlpt_jax.models.decoder import init_model
    from rlpt_jax.train import state as S

    cfg = ModelConfig(
        model_type="llama",
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_layers=1,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        tie_word_embeddings=True,
    )
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    tx = S.make_optimizer(S.OptimConfig(learning_rate=1e-3))
    saved, _ = S.shard_train_state(S.create_train_state(init_model(cfg, 0), tx), tx, mesh)
    saved = saved.replace(step=saved.step + 5)
    with Checkpointer(tmp_path, CheckpointConfig(save_every=5)) as ckpt:
        assert ckpt.save(5, saved, extra={"data_pos": 40})
        fresh, _ = S.shard_train_state(S.create_train_state(init_model(cfg, 9), tx), tx, mesh)
        restored = ckpt.restore_latest(fresh)
    assert restored.step == 5 and restored.extra == {"data_pos": 40}
    assert int(restored.state.step) == 5
    _leaves_equal(restored.state, saved)
    for got, want in zip(jax.tree.leaves(restored.state), jax.tree.leaves(saved)):
        assert got.sharding.is_equivalent_to(want.sharding, got.ndim)


def test_state_may_be_donated_right_after_an_async_save(tmp_path):
    """save() returns after the device→host copy, so the next donated step cannot race it."""
    state = {"w": jnp.arange(4096.0).reshape(64, 64)}
    step = jax.jit(lambda s: {"w": s["w"] * 0 - 1}, donate_argnums=0)
    with Checkpointer(tmp_path, CheckpointConfig(save_every=1)) as ckpt:
        ckpt.save(1, state)
        expected = np.asarray(state["w"]).copy()
        state = step(state)
        restored = ckpt.restore_latest(state)
    np.testing.assert_array_equal(np.asarray(restored.state["w"]), expected)


# -- issue 21: a manifest per committed step, failed saves that stop the run ----------------


def test_a_step_directory_appears_with_its_manifest(tmp_path):
    """The manifest is written before the rename that commits the step, so a process that
    dies right after the commit leaves it. Before, it was written at the next save() or
    wait(): a crash in between left a committed step without one."""
    ckpt = Checkpointer(tmp_path, CheckpointConfig(save_every=1))
    for step in (1, 2):
        ckpt.save(step, _bump(_state(), step), extra={"step": step})
        while not ckpt.step_dir(step).is_dir():  # committed; this process calls nothing else
            time.sleep(0.005)
        assert (ckpt.step_dir(step) / MANIFEST).is_file()
        assert verify_manifest(ckpt.step_dir(step)) is None
    ckpt.close()
    names = json.loads((ckpt.step_dir(2) / MANIFEST).read_text())["files"]
    assert "extra/metadata" in names and any(n.startswith("state/") for n in names)


# A training loop in miniature: one save per step, the folder read-only after step 1.
_READ_ONLY_RUN = """
import os, sys
import jax.numpy as jnp
from rlpt_jax.checkpoint import CheckpointConfig, Checkpointer

directory = sys.argv[1]
ckpt = Checkpointer(directory, CheckpointConfig(save_every=1))
state = {"w": jnp.ones((64, 64))}
for step in range(1, 5):
    ckpt.save(step, state, extra={"step": step})
    print("saved", step, flush=True)
    if step == 1:
        ckpt.wait()
        os.chmod(directory, 0o555)
ckpt.close()
"""


def _without_root_override() -> list[str]:
    """A command prefix under which permission bits bind (root ignores them otherwise)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be made")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}"]


def test_read_only_checkpoint_folder_stops_at_the_failing_save_and_the_process_exits(tmp_path):
    """Before: save 2 "succeeded", save 3 raised a bare PermissionError, and the process
    then hung at exit in Orbax's threads (waiting for a directory that never came)."""
    directory = tmp_path / "checkpoints"
    cmd = [*_without_root_override(), sys.executable, "-c", _READ_ONLY_RUN, str(directory)]
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    root = Path(__file__).resolve().parents[1]
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit after a failed checkpoint save")
    finally:
        if directory.exists():
            directory.chmod(0o755)
    assert proc.returncode != 0
    assert proc.stdout.split("\n")[:-1] == ["saved 1"], proc.stdout
    assert "CheckpointError: saving checkpoint step 2 to " + str(directory / "2") in proc.stderr
    assert "Permission denied" in proc.stderr


def test_a_failed_background_write_stops_the_next_step(tmp_path, monkeypatch):
    """A write that fails in the background (a full disk) raises at the next save, naming
    the step, and again at close, which still releases Orbax's threads."""
    from rlpt_jax import checkpoint as ckpt_lib

    def full_disk(step_dir, checksum=False, layout=None):
        raise OSError(28, "No space left on device")

    ckpt = Checkpointer(tmp_path, CheckpointConfig(save_every=2))
    monkeypatch.setattr(ckpt_lib, "write_manifest", full_disk)
    ckpt.save(2, _state())
    deadline = time.monotonic() + 60
    with pytest.raises(CheckpointError, match=f"step 2 to {tmp_path / '2'} failed.*No space"):
        while time.monotonic() < deadline:  # step 3 saves nothing: only the check runs
            ckpt.save(3, _state())
            time.sleep(0.01)
    with pytest.raises(CheckpointError, match="step 2"):
        ckpt.close()
    assert [t.name for t in threading.enumerate() if not t.daemon] == ["MainThread"]
    assert not ckpt.step_dir(2).exists()  # never committed


def test_the_manifest_records_the_layout_and_another_layout_is_refused(tmp_path):
    """A step saved under one state layout is refused by a checkpointer of another, with a
    message that says so, and stays where it is (it is not corrupt)."""
    state = _state()
    with Checkpointer(tmp_path, CheckpointConfig(save_every=1), layout="old-tree") as ckpt:
        ckpt.save(1, state)
        ckpt.wait()
    assert json.loads((tmp_path / "1" / MANIFEST).read_text())["layout"] == "old-tree"
    with Checkpointer(tmp_path, CheckpointConfig(save_every=1), layout="new-tree") as ckpt:
        with pytest.raises(LayoutError, match=r"layout 'old-tree', this version .* 'new-tree'"):
            ckpt.restore_latest(state)
        assert ckpt.all_steps() == [1] and not (tmp_path / CORRUPT_DIR).exists()
    with Checkpointer(tmp_path, CheckpointConfig(save_every=1), layout="old-tree") as ckpt:
        _leaves_equal(ckpt.restore_latest(state).state, state)


def test_a_step_from_before_layouts_that_does_not_fit_says_so(tmp_path):
    """A manifest without a layout (written before layouts were recorded) whose tree does
    not fit: the error says an older version wrote it; nothing is moved to corrupt/."""
    with Checkpointer(tmp_path, CheckpointConfig(save_every=1)) as ckpt:
        ckpt.save(1, _state())
        ckpt.wait()
    manifest = json.loads((tmp_path / "1" / MANIFEST).read_text())
    del manifest["layout"]
    (tmp_path / "1" / MANIFEST).write_text(json.dumps(manifest))
    other = {"w": jnp.zeros((3, 5))}  # another tree, as the stacked layers were
    with Checkpointer(tmp_path, CheckpointConfig(save_every=1), layout="stacked") as ckpt:
        with pytest.raises(LayoutError, match=r"records no state layout .* older rlpt_jax"):
            ckpt.restore_latest(other)
        assert ckpt.all_steps() == [1] and not (tmp_path / CORRUPT_DIR).exists()
