"""Checkpoints of a training run: asynchronous Orbax saves, retention, verified restore.

A checkpoint is one step directory under ``directory`` holding three Orbax items:

* ``state``: any JAX pytree (``TrainState``, a dict of ``nnx.State`` params, optax state,
  step counter, RNG key). Typed keys (``jax.random.key``) are stored as their raw
  ``uint32`` key data and wrapped back on restore; raw key data round-trips unchanged.
* ``extra``: a JSON-serialisable dict chosen by the caller — data position, a config
  snapshot, metric values — everything a resumed run needs to continue identically.
* ``meta``: what this module needs to undo its own encoding (which leaves were typed keys).

Saves are asynchronous: ``save`` returns once the arrays are copied off the device (so the
caller may donate the state to the next step), and the files are written in the background.
A manifest (``rlpt_manifest.json``: every file's size, and its SHA-256 if ``checksum``) is
written into the step's temporary directory after its files and before Orbax's atomic
rename commits the step, so a committed step always has its manifest: a crash leaves either
a complete step with its manifest or only a temporary directory, which Orbax ignores (and
replaces when that step is saved again). ``restore_latest`` checks the manifest and then
restores; a step that fails either check is skipped with a warning naming it and the step
used instead, and moved to ``directory/corrupt/`` so the resumed run can save that step
number again. A step without a manifest (written before manifests were committed with the
step) is trusted as far as Orbax can read it.

The manifest also records the caller's ``layout``: a name for the structure of the saved
state (``rlpt_jax.train.state.STATE_LAYOUT``). A step of another layout is not corrupt but
written by another version of the code: restoring it raises :class:`LayoutError`, which
says so and leaves the step where it is.

A save that fails raises :class:`CheckpointError` naming the step directory: at the failing
``save`` when its directory cannot be created (a read-only or missing folder), else at the
first ``save`` or :meth:`Checkpointer.check` after the background write failed (a full
disk). The training loop calls ``save`` every step, so a run stops at the first step that
ends after the failure instead of training on without checkpoints; ``close`` never hangs on
a failed save.

Retention: the last ``max_to_keep`` checkpoints, plus — if ``best_metric`` is set — the
``keep_best`` best by that metric (``best_mode`` ``"min"`` or ``"max"``), kept in addition.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as ocm
from orbax.checkpoint.path import atomicity

MANIFEST = "rlpt_manifest.json"
CORRUPT_DIR = "corrupt"
_ITEMS = ("state", "extra", "meta")
_FORMAT = 1


_LAYOUT_ADVICE = (
    "Resume it with the rlpt_jax version that wrote it (its export, hf_export/, loads "
    "in any version), or start this run in a new --workdir."
)

# Orbax's own commit records at the top of a step directory, rewritten by the rename that
# commits the step, after the manifest is written: not covered by the manifest.
_COMMIT_FILES = frozenset({"_CHECKPOINT_METADATA", atomicity.COMMIT_SUCCESS_FILE})


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used (corrupt, or not matching the target) or written."""


class LayoutError(CheckpointError):
    """A checkpoint written with another state layout than the one restoring it."""


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When to save and what to keep.

    save_every: save when ``step % save_every == 0`` (``force=True`` saves any step).
    max_to_keep: the most recent checkpoints kept.
    best_metric: a key of the ``metrics`` given to ``save``; if set, the ``keep_best`` best
      checkpoints by it are kept in addition to the last ``max_to_keep``.
    best_mode: ``"max"`` (higher is better) or ``"min"``.
    keep_best: how many best checkpoints to keep (with ``best_metric``).
    async_save: write files in a background thread.
    checksum: also record each file's SHA-256 in the manifest (reads every file once per
      save; sizes alone already catch truncated and missing files).
    """

    save_every: int = 100
    max_to_keep: int = 3
    best_metric: str | None = None
    best_mode: str = "max"
    keep_best: int = 1
    async_save: bool = True
    checksum: bool = False

    def __post_init__(self) -> None:
        if self.save_every < 1:
            raise ValueError(f"CheckpointConfig.save_every must be >= 1; got {self.save_every}")
        if self.max_to_keep < 1:
            raise ValueError(f"CheckpointConfig.max_to_keep must be >= 1; got {self.max_to_keep}")
        if self.best_mode not in ("min", "max"):
            raise ValueError(
                f"CheckpointConfig.best_mode must be 'min' or 'max'; got {self.best_mode!r}"
            )
        if self.keep_best < 1:
            raise ValueError(f"CheckpointConfig.keep_best must be >= 1; got {self.keep_best}")
        if self.best_metric is not None and not self.best_metric:
            raise ValueError("CheckpointConfig.best_metric must be a metric name or None")


@dataclasses.dataclass(frozen=True)
class Restored:
    """A restored checkpoint: its step, the state (structured like the target) and extra."""

    step: int
    state: Any
    extra: dict[str, Any]


def _is_typed_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _encode_keys(state: Any) -> tuple[Any, dict[str, str]]:
    """(state with typed keys replaced by their key data, {leaf path: key impl name})."""
    impls: dict[str, str] = {}

    def enc(path, x):
        if _is_typed_key(x):
            impls[jax.tree_util.keystr(path)] = str(jax.random.key_impl(x))
            return jax.random.key_data(x)
        return x

    return jax.tree_util.tree_map_with_path(enc, state), impls


def _abstract_leaf(x: Any) -> Any:
    """What Orbax restores a target leaf into: arrays keep their sharding."""
    if _is_typed_key(x):
        data = jax.eval_shape(jax.random.key_data, x)
        return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=getattr(x, "sharding", None))
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x


def _decode_keys(restored: Any, target: Any, impls: Mapping[str, str]) -> Any:
    """Wrap restored key data back into typed keys where the target has typed keys."""

    def dec(path, r, t):
        if not _is_typed_key(t):
            return r
        name = jax.tree_util.keystr(path)
        if name in impls:
            impl = impls[name]
        elif isinstance(t, jax.Array):
            impl = str(jax.random.key_impl(t))
        else:
            raise CheckpointError(
                f"target leaf {name} is a typed PRNG key but the checkpoint holds raw key data "
                f"and the target is abstract, so the key implementation is unknown; pass a "
                f"concrete key as the target"
            )
        key = jax.random.wrap_key_data(r, impl=impl)
        if key.dtype != t.dtype:
            raise CheckpointError(
                f"checkpoint key {name} has dtype {key.dtype}, target expects {t.dtype}"
            )
        return key

    return jax.tree_util.tree_map_with_path(dec, restored, target)


def _check_json(extra: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(extra, Mapping):
        raise TypeError(f"extra must be a dict; got {type(extra).__name__}")
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as e:
        raise TypeError(f"extra must be JSON-serialisable: {e}") from e
    return dict(extra)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _list_files(step_dir: Path) -> list[Path]:
    return sorted(
        p
        for p in step_dir.rglob("*")
        if p.is_file()
        and p.name != MANIFEST
        and not (p.parent == step_dir and p.name in _COMMIT_FILES)
    )


def write_manifest(
    step_dir: str | os.PathLike, checksum: bool = False, layout: str | None = None
) -> None:
    """Record the size (and SHA-256 if ``checksum``) of every file under ``step_dir``, and
    the state's ``layout``."""
    step_dir = Path(step_dir)
    files = {}
    for p in _list_files(step_dir):
        entry: dict[str, Any] = {"size": p.stat().st_size}
        if checksum:
            entry["sha256"] = _file_digest(p)
        files[p.relative_to(step_dir).as_posix()] = entry
    tmp = step_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"format": _FORMAT, "layout": layout, "files": files}, indent=1))
    os.replace(tmp, step_dir / MANIFEST)


def read_manifest(step_dir: str | os.PathLike) -> dict | None:
    """A step's manifest, None if it has none or it cannot be read."""
    try:
        manifest = json.loads((Path(step_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def verify_manifest(step_dir: str | os.PathLike) -> str | None:
    """None if ``step_dir`` matches its manifest (or has none), else what is wrong."""
    step_dir = Path(step_dir)
    path = step_dir / MANIFEST
    if not path.exists():
        return None
    try:
        files = json.loads(path.read_text())["files"]
    except (ValueError, KeyError) as e:
        return f"unreadable manifest {path}: {e}"
    for rel, entry in files.items():
        p = step_dir / rel
        if not p.is_file():
            return f"file {rel} is missing"
        size = p.stat().st_size
        if size != entry["size"]:
            return f"file {rel} has {size} bytes, the manifest recorded {entry['size']}"
        if "sha256" in entry and _file_digest(p) != entry["sha256"]:
            return f"file {rel} does not match its recorded SHA-256"
    return None


class _StepWithManifest(atomicity.AtomicRenameTemporaryPath):
    """Orbax's atomic-rename step directory, with the manifest written into it just before
    the rename, so that the manifest commits with its step: a manifest written after the
    commit is missing whenever the process dies in between.

    Orbax uses this class for the item directories inside a step too; only the step
    directory itself (a child of ``root``) gets a manifest. Subclassed per
    :class:`Checkpointer` to set ``root``, ``checksum`` and ``layout``.
    """

    root: Path
    checksum: bool = False
    layout: str | None = None

    async def finalize(self) -> None:
        if Path(self.get_final()).parent == self.root:
            await asyncio.to_thread(write_manifest, Path(self.get()), self.checksum, self.layout)
        await super().finalize()


def _step_path_class(root: Path, checksum: bool, layout: str | None) -> type:
    fields = {"root": root, "checksum": checksum, "layout": layout}
    return type("StepWithManifest", (_StepWithManifest,), fields)


class Checkpointer:
    """Saves and restores a training run's state under ``directory``.

    Usage::

        ckpt = Checkpointer(workdir / "checkpoints", CheckpointConfig(save_every=50))
        restored = ckpt.restore_latest(state)          # None on a fresh start
        if restored is not None:
            state, data_pos = restored.state, restored.extra["data_pos"]
        for step in ...:
            ...
            ckpt.save(step, state, extra={"data_pos": pos}, metrics={"reward": r})
        ckpt.close()

    Every process of a multi-host run must make the same calls; files are written to a
    file system all processes share, and process 0 writes manifests.

    ``layout`` names the structure of the state (see the module docstring): it is recorded
    with every step, and a step recorded with another one is refused on restore.
    ``prepare``: applied to the state of every save that happens (not of the steps that
    are not saved), to bring it to that structure; ``restore`` returns it as saved.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        config: CheckpointConfig | None = None,
        layout: str | None = None,
        prepare: Callable[[Any], Any] | None = None,
    ) -> None:
        self.directory = Path(directory).absolute()
        self.layout = layout
        self.prepare = prepare
        self.config = config or CheckpointConfig()
        cfg = self.config
        preserve: list[ocm.PreservationPolicy] = [ocm.LatestN(n=cfg.max_to_keep)]
        if cfg.best_metric is not None:
            preserve.append(
                ocm.BestN(
                    get_metric_fn=self._metric_value,
                    reverse=cfg.best_mode == "min",
                    n=cfg.keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=ocm.AnySavePolicy(
                [ocm.FixedIntervalPolicy(cfg.save_every), ocm.PreemptionCheckpointingPolicy()]
            ),
            preservation_policy=ocm.AnyPreservationPolicy(preserve),
            # Only with a best_fn does Orbax persist metrics; retention uses the policy above.
            best_fn=self._metric_value if cfg.best_metric is not None else None,
            best_mode=cfg.best_mode,
            enable_async_checkpointing=cfg.async_save,
            # Directories are made in save() itself: a folder that cannot be written fails
            # that save, and no background thread is left waiting for a directory that
            # will never exist (with asynchronous creation the process hung at exit).
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
            temporary_path_class=_step_path_class(self.directory, cfg.checksum, layout),
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)
        self._saving: int | None = None  # the step of the last save started
        self._failure: CheckpointError | None = None

    def _metric_value(self, metrics: Mapping[str, Any]) -> float:
        """Ranking value for BestN (ascending = better last); NaN ranks worst."""
        value = float(metrics[self.config.best_metric])
        if math.isnan(value):
            return math.inf if self.config.best_mode == "min" else -math.inf
        return value

    def step_dir(self, step: int) -> Path:
        """The directory of checkpoint ``step``."""
        return self.directory / str(step)

    def should_save(self, step: int) -> bool:
        """Whether ``save(step, ...)`` would save (without ``force``)."""
        return self._manager.should_save(step)

    def save(
        self,
        step: int,
        state: Any,
        *,
        extra: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        force: bool = False,
    ) -> bool:
        """Start saving ``state`` at ``step`` if it is a save step (or ``force``).

        Returns whether a save was started. ``metrics`` rank checkpoints for ``best_metric``
        (a checkpoint saved without it is never kept as a best one). Raises if ``extra`` is
        not JSON-serialisable or ``metrics`` lack the configured ``best_metric``.
        """
        self.check()
        if not (force or self._manager.should_save(step)):
            return False
        extra = _check_json(extra or {})
        if metrics is not None:
            metrics = {k: float(v) for k, v in metrics.items()}
            if self.config.best_metric is not None and self.config.best_metric not in metrics:
                raise KeyError(
                    f"metrics given to save() lack best_metric {self.config.best_metric!r}; "
                    f"got {sorted(metrics)}"
                )
        encoded, impls = _encode_keys(state if self.prepare is None else self.prepare(state))
        meta = {"format": _FORMAT, "key_impls": impls}
        # Orbax waits for the previous save before starting one; waiting here names that
        # save if it failed.
        self._finished_or_raise()
        self._saving = step
        try:
            return self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(encoded),
                    extra=ocp.args.JsonSave(extra),
                    meta=ocp.args.JsonSave(meta),
                ),
                metrics=metrics,
                force=force,
            )
        except Exception as e:  # Orbax raises OSError, ValueError or bare Exceptions
            raise self._failed(step, e) from e

    def check(self) -> None:
        """Raise :class:`CheckpointError` if a background save has failed; never blocks.

        ``save`` calls it on every step, saving or not, so a failed write stops the run at
        the next step instead of at the end.
        """
        if self._failure is not None:
            raise self._failure
        if not self._manager.is_saving_in_progress():
            self._finished_or_raise()

    def _finished_or_raise(self) -> None:
        """Wait for the save in progress; a failed one becomes a :class:`CheckpointError`."""
        if self._failure is not None:
            raise self._failure
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise self._failed(self._saving, e) from e

    def _failed(self, step: int | None, error: Exception) -> CheckpointError:
        """The error of a failed save, remembered: later calls raise it again."""
        where = self.step_dir(step) if step is not None else self.directory
        self._failure = CheckpointError(
            f"saving checkpoint step {step} to {where} failed: {type(error).__name__}: "
            f"{str(error)[:500]}. The run stops rather than train on without checkpoints: "
            f"make sure {self.directory} is writable and has free space, then rerun the "
            f"same command to resume from the last good checkpoint"
        )
        return self._failure

    def all_steps(self) -> list[int]:
        """Steps with a completed checkpoint, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The kept step best by ``best_metric`` (None without a metric or ranked steps)."""
        if self.config.best_metric is None:
            return None
        ranked = []
        for step in self.all_steps():
            metrics = self._manager.metrics(step)
            if metrics and self.config.best_metric in metrics:
                ranked.append((self._metric_value(metrics), step))
        if not ranked:
            return None
        best = min if self.config.best_mode == "min" else max
        return best(ranked)[1]

    def restore(self, step: int, target_like: Any) -> Restored:
        """Restore checkpoint ``step`` onto the structure, dtypes and shardings of a target.

        ``target_like`` may be concrete (arrays) or abstract (``jax.ShapeDtypeStruct`` with
        ``sharding``); the restored arrays take the target's shardings. Raises
        ``CheckpointError`` if the step fails its manifest check or cannot be read.
        """
        self.wait()
        self._check_layout(step)
        problem = verify_manifest(self.step_dir(step))
        if problem is not None:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} is corrupt: {problem}"
            )
        abstract = jax.tree.map(_abstract_leaf, target_like)
        try:
            out = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract),
                    extra=ocp.args.JsonRestore(),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:  # Orbax and TensorStore raise bare Exceptions on bad data.
            problem = f"{type(e).__name__}: {str(e)[:500]}"
            manifest = read_manifest(self.step_dir(step))
            if self.layout and manifest is not None and not manifest.get("layout"):
                raise LayoutError(  # most likely written before layouts were recorded
                    f"checkpoint step {step} in {self.directory} records no state layout "
                    f"and does not fit this version's ({self.layout}): it was probably "
                    f"written by an older rlpt_jax. {_LAYOUT_ADVICE} ({problem})"
                ) from e
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} cannot be restored: {problem}"
            ) from e
        state = _decode_keys(out.state, target_like, out.meta.get("key_impls", {}))
        return Restored(step=step, state=state, extra=dict(out.extra))

    def _check_layout(self, step: int) -> None:
        found = (read_manifest(self.step_dir(step)) or {}).get("layout")
        if self.layout and found and found != self.layout:
            raise LayoutError(
                f"checkpoint step {step} in {self.directory} has state layout {found!r}, "
                f"this version of rlpt_jax writes {self.layout!r}. {_LAYOUT_ADVICE}"
            )

    def restore_latest(self, target_like: Any) -> Restored | None:
        """Restore the newest usable checkpoint, or None if there is none (fresh start).

        Corrupt newer steps are skipped with a warning naming them and the step restored,
        and moved to ``directory/corrupt/``. If checkpoints exist but none can be restored,
        raises ``CheckpointError`` listing each step's failure. A step of another layout
        raises :class:`LayoutError` at once, and nothing is moved.
        """
        if not self.directory.is_dir():
            return None
        self.wait()
        self._manager.reload()
        steps = self.all_steps()
        if not steps:
            return None
        failures: list[tuple[int, CheckpointError]] = []
        for step in reversed(steps):
            try:
                restored = self.restore(step, target_like)
            except LayoutError:
                raise
            except CheckpointError as e:
                failures.append((step, e))
                continue
            if failures:
                self._report_fallback(step, failures)
            return restored
        detail = "\n".join(f"  step {s}: {e}" for s, e in failures)
        raise CheckpointError(
            f"none of the checkpoints in {self.directory} can be restored:\n{detail}"
        )

    def _report_fallback(self, step: int, failures: list[tuple[int, CheckpointError]]) -> None:
        bad = [s for s, _ in failures]
        reasons = "; ".join(f"step {s}: {e}" for s, e in failures)
        warnings.warn(
            f"restored checkpoint step {step} instead of the latest step {bad[0]}: "
            f"skipped corrupt step(s) {bad} ({reasons}); moved them to "
            f"{self.directory / CORRUPT_DIR}",
            RuntimeWarning,
            stacklevel=3,
        )
        if jax.process_index() == 0:
            for s in bad:
                self._quarantine(s)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("rlpt_checkpoint_quarantine")
        self._manager.reload()

    def _quarantine(self, step: int) -> None:
        """Move a corrupt step aside so the resumed run can save that step again."""
        dest_root = self.directory / CORRUPT_DIR
        dest_root.mkdir(exist_ok=True)
        dest = dest_root / str(step)
        n = 1
        while dest.exists():
            dest = dest_root / f"{step}.{n}"
            n += 1
        shutil.move(str(self.step_dir(step)), str(dest))

    def wait(self) -> None:
        """Block until pending saves are committed; raises :class:`CheckpointError` if one
        failed."""
        self._finished_or_raise()

    def close(self) -> None:
        """Finish pending saves and release Orbax's resources.

        After a failed save, raises its :class:`CheckpointError` once Orbax's threads are
        stopped, so that the process can exit.
        """
        try:
            self._finished_or_raise()
        except CheckpointError:
            with contextlib.suppress(Exception):  # Orbax raises the same failure again
                self._manager.close()
            raise
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
