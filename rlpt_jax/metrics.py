"""Run metrics: TensorBoard event files + a crash-safe JSONL log, throughput, plots.

``MetricsWriter(workdir)`` writes each step's scalars twice: to TensorBoard event files under
``workdir/tensorboard`` (tensorboardX) and as one JSON line appended to
``workdir/metrics.jsonl``::

    {"step": 12, "time": 1764090000.1, "reward/mean": 0.41, "kl": null, ...}

Each line is flushed as it is written, so a killed process loses at most the line being
written; ``read_jsonl`` drops such a truncated last line (with a warning), and a writer
reopening the file cuts it off before appending. Non-finite values are written as ``null``
and counted per key (``MetricsWriter.nonfinite``) — recorded, never silently dropped.

Throughput follows the usual dense-transformer estimate (Kaplan et al. 2020; PaLM appendix
B): a forward pass costs ``2·N`` FLOPs per token for ``N`` parameters (one multiply-add per
weight), a training step ``6·N`` (forward ``2·N`` + backward ``4·N``: gradients with
respect to activations and to weights). Attention's ``O(T)`` per-token term is left out,
so model-FLOP utilisation is underestimated for long contexts. Pass as ``n_params`` the
parameters that take part in matrix products (tied input embeddings count once, as the
output projection).

``plot_run`` turns a run's ``metrics.jsonl`` into one PNG per metric family (reward, KL,
entropy, response length, ``H_turn`` and any requested keys); ``plot_tree`` draws an AT²PO
turn tree. Both use matplotlib's object API with the Agg canvas, so they never touch the
global pyplot backend (safe inside Colab).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_RESERVED = ("step", "time")

# Metric family → substrings (lower-case) a key must contain to be drawn in that family.
FAMILIES: dict[str, tuple[str, ...]] = {
    "reward": ("reward",),
    "kl": ("kl",),
    "entropy": ("entropy",),
    "response_length": ("response_len",),
    "h_turn": ("h_turn",),
}


def _as_float(key: str, value: Any) -> float:
    arr = np.asarray(jax.device_get(value))
    if arr.size != 1:
        raise TypeError(f"metric {key!r} must be a scalar; got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"metric {key!r} must be a number; got {arr.dtype}")
    return float(arr.reshape(()))


def _cut_partial_line(path: Path) -> None:
    """Remove an unterminated last line (left by a killed writer) before appending."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        size = f.seek(0, os.SEEK_END)
        pos = size
        block = 4096
        while pos > 0:  # search backwards for the last complete line's newline
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        else:
            keep = 0
        f.truncate(keep)
    warnings.warn(
        f"{path}: dropped an unterminated last line ({size - keep} bytes) left by an "
        f"interrupted writer",
        RuntimeWarning,
        stacklevel=3,
    )


class MetricsWriter:
    """Per-step scalars to TensorBoard and ``metrics.jsonl`` under ``workdir``.

    ``enabled`` defaults to ``jax.process_index() == 0`` so that a multi-host run logs once;
    a disabled writer accepts and validates every call but writes nothing. ``flush_secs``:
    how often TensorBoard's event file is flushed (the JSONL is flushed every line).
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        enabled: bool | None = None,
        tensorboard: bool = True,
        flush_secs: float = 10.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.jsonl_path = self.workdir / JSONL_NAME
        self.nonfinite: dict[str, int] = {}
        self._file = None
        self._tb = None
        self._closed = False
        if not self.enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        _cut_partial_line(self.jsonl_path)
        self._file = open(self.jsonl_path, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(
                logdir=str(self.workdir / TENSORBOARD_DIR), flush_secs=flush_secs
            )

    @property
    def nonfinite_total(self) -> int:
        """Non-finite values seen so far, over all keys."""
        return sum(self.nonfinite.values())

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Record ``scalars`` (numbers, numpy or JAX scalars) for ``step``.

        Raises ``TypeError`` for non-scalar values and ``ValueError`` for keys named
        ``step`` or ``time`` (the JSONL line's own fields).
        """
        if self._closed:
            raise RuntimeError(f"MetricsWriter({self.workdir}) is closed")
        if isinstance(step, bool) or int(step) != step:
            raise TypeError(f"step must be an integer; got {step!r}")
        step = int(step)
        values = {}
        for key, value in scalars.items():
            if not isinstance(key, str) or key in _RESERVED:
                raise ValueError(f"metric key {key!r} must be a string other than {_RESERVED}")
            values[key] = _as_float(key, value)
        wall = time.time()
        line: dict[str, Any] = {"step": step, "time": wall}
        for key, v in values.items():
            if math.isfinite(v):
                line[key] = v
            else:
                line[key] = None
                self.nonfinite[key] = self.nonfinite.get(key, 0) + 1
        if self._file is None:
            return
        self._file.write(json.dumps(line, allow_nan=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, v in values.items():
                self._tb.add_scalar(key, v, global_step=step, walltime=wall)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flush and close both outputs; later ``write`` calls are errors."""
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        self._file = self._tb = None
        self._closed = True

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics JSONL file, in file order (``null`` values as None).

    A truncated or unparsable *last* line (a writer killed mid-line) is dropped with a
    warning; an unparsable line anywhere else raises ``ValueError`` naming the line.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
        except ValueError as e:
            if i == len(lines) - 1:
                warnings.warn(f"{path}: ignoring truncated last line {i + 1}: {e}", stacklevel=2)
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON object line: {e}") from e
        records.append(rec)
    return records


# ----------------------------------------------------------------------------- throughput


def _check_positive(**kw: float) -> None:
    for name, v in kw.items():
        if not v > 0:
            raise ValueError(f"{name} must be > 0; got {v}")


def model_flops(n_params: int, tokens: int, *, training: bool = True) -> float:
    """Model FLOPs for ``tokens`` tokens: ``6·N·tokens`` (training) or ``2·N·tokens``."""
    _check_positive(n_params=n_params)
    if tokens < 0:
        raise ValueError(f"tokens must be >= 0; got {tokens}")
    return (6.0 if training else 2.0) * n_params * tokens


def model_flops_per_token(cfg, length: int) -> float:
    """Model FLOPs per trained token of a ``ModelConfig`` at sequence ``length`` (PaLM
    appendix B, no causal halving): 6·N for the N parameters used in matmuls (a tied
    embedding counted once, as the output head) plus 12·L·T·N_heads·H for attention."""
    d, f, n_layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    attn = d * (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
    attn += cfg.num_heads * cfg.head_dim * d
    n_params = n_layers * (attn + 3 * d * f) + d * cfg.vocab_size
    return 6 * n_params + 12 * n_layers * length * cfg.num_heads * cfg.head_dim


def tokens_per_second(tokens: int, seconds: float) -> float:
    """Tokens processed per wall-clock second."""
    _check_positive(seconds=seconds)
    if tokens < 0:
        raise ValueError(f"tokens must be >= 0; got {tokens}")
    return tokens / seconds


def mfu(
    n_params: int, tokens: int, seconds: float, peak_flops: float, *, training: bool = True
) -> float:
    """Model-FLOP utilisation: achieved model FLOP/s over the hardware's ``peak_flops``.

    ``peak_flops`` is the peak of all devices doing the work, in FLOP/s (e.g. 8 × 989e12
    for eight H100s in bf16 dense).
    """
    _check_positive(seconds=seconds, peak_flops=peak_flops)
    return model_flops(n_params, tokens, training=training) / seconds / peak_flops


def throughput(
    n_params: int,
    tokens: int,
    seconds: float,
    peak_flops: float | None = None,
    *,
    training: bool = True,
    prefix: str = "perf/",
) -> dict[str, float]:
    """Scalars for one step: tokens/s, and model FLOP/s and MFU when ``peak_flops`` is set."""
    out = {
        f"{prefix}tokens_per_s": tokens_per_second(tokens, seconds),
        f"{prefix}model_tflops": model_flops(n_params, tokens, training=training) / seconds / 1e12,
    }
    if peak_flops is not None:
        out[f"{prefix}mfu"] = mfu(n_params, tokens, seconds, peak_flops, training=training)
    return out


def param_count(params: Any) -> int:
    """Number of scalars in a pytree of arrays (e.g. an ``nnx.State`` of Params)."""
    return int(sum(np.size(x) for x in jax.tree.leaves(params)))


# ----------------------------------------------------------------------------- plots


def _figure(width: float, height: float):
    """A pyplot-free Figure on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _series(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of ``key``, sorted by step; a step logged twice (a resumed run)
    keeps its last value; null → NaN (a gap in the line)."""
    by_step: dict[int, float] = {}
    for rec in records:
        if key in rec:
            v = rec[key]
            by_step[int(rec["step"])] = math.nan if v is None else float(v)
    steps = np.array(sorted(by_step), dtype=np.int64)
    return steps, np.array([by_step[s] for s in steps], dtype=np.float64)


def _match(keys: Sequence[str], pattern: str) -> list[str]:
    pattern = pattern.lower()
    return [k for k in keys if pattern in k.lower()]


def plot_run(
    workdir_or_jsonl: str | os.PathLike,
    out_dir: str | os.PathLike,
    extra_keys: Sequence[str] = (),
) -> list[Path]:
    """Write one PNG per metric family present in a run's metrics, return their paths.

    Families (``FAMILIES``) match keys by case-insensitive substring: ``reward``, ``kl``,
    ``entropy``, ``response_len``, ``h_turn``; a family with no matching key is skipped.
    Each of ``extra_keys`` adds a plot of the keys containing it, and must match at least
    one key. Files are named ``<family>.png`` in ``out_dir`` (created if needed).
    """
    src = Path(workdir_or_jsonl)
    path = src / JSONL_NAME if src.is_dir() else src
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path}")
    records = read_jsonl(path)
    keys = sorted({k for rec in records for k in rec if k not in _RESERVED})
    groups: dict[str, list[str]] = {}
    for family, patterns in FAMILIES.items():
        matched = sorted({k for p in patterns for k in _match(keys, p)})
        if matched:
            groups[family] = matched
    for pattern in extra_keys:
        matched = _match(keys, pattern)
        if not matched:
            raise KeyError(f"no metric key contains {pattern!r}; keys in {path}: {keys}")
        groups[pattern] = matched
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, group in groups.items():
        fig = _figure(7.0, 4.0)
        ax = fig.add_subplot()
        for key in group:
            steps, values = _series(records, key)
            ax.plot(steps, values, label=key, marker="." if len(steps) < 50 else None)
        ax.set_title(f"{name} — {path.parent.name}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small" if len(group) < 8 else "x-small")
        out = out_dir / f"{_safe_name(name)}.png"
        fig.savefig(out, dpi=100)
        written.append(out)
    return written


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _tree_layout(parents: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(x, depth) per node: leaves at consecutive x in depth-first order, each inner node
    centred over its children, depth = distance from its root. Validates ``parents``."""
    n = len(parents)
    children: list[list[int]] = [[] for _ in range(n)]
    roots = []
    for i, p in enumerate(parents):
        if p == -1:
            roots.append(i)
        elif 0 <= p < n and p != i:
            children[p].append(i)
        else:
            raise ValueError(f"parents[{i}] = {p} is not -1 or another node's index (0..{n - 1})")
    if not roots:
        raise ValueError("parents has no root (no entry is -1)")
    x = np.zeros(n)
    depth = np.full(n, -1)
    next_leaf = 0.0
    for root in roots:
        depth[root] = 0
        stack = [(root, False)]
        while stack:  # iterative post-order: children placed before their parent
            node, done = stack.pop()
            if done:
                if children[node]:
                    x[node] = np.mean(x[children[node]])
                else:
                    x[node] = next_leaf
                    next_leaf += 1.0
                continue
            stack.append((node, True))
            for c in reversed(children[node]):
                if depth[c] != -1:
                    raise ValueError(f"parents has a cycle through node {c}")
                depth[c] = depth[node] + 1
                stack.append((c, False))
    if (depth == -1).any():
        raise ValueError(f"nodes {np.flatnonzero(depth == -1).tolist()} are on a parent cycle")
    return x, depth


def plot_tree(
    parents: Sequence[int],
    labels: Sequence[str] | None,
    values: Mapping[str, Sequence[float]] | None,
    out_png: str | os.PathLike,
    *,
    color_by: str | None = None,
    title: str | None = None,
) -> Path:
    """Draw an AT²PO turn tree (node = turn) as a layered diagram and save it as a PNG.

    parents[N]: parent index per node, -1 for a root (the prompt). labels[N]: a short
    text per node (e.g. ``"search"``, ``"answer ✓"``), or None for node ids. values: per-node
    numbers printed under the label, e.g. ``{"H": entropy, "V": value, "A": advantage}``;
    NaN prints as ``–``. color_by: a key of ``values`` that colours the nodes (diverging
    around 0, e.g. the advantage).
    """
    n = len(parents)
    values = dict(values or {})
    labels = [str(i) for i in range(n)] if labels is None else [str(s) for s in labels]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} nodes")
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
    for k, v in arrays.items():
        if v.shape != (n,):
            raise ValueError(f"values[{k!r}] has shape {v.shape}; expected ({n},)")
    if color_by is not None and color_by not in arrays:
        raise KeyError(f"color_by={color_by!r} is not a key of values {sorted(arrays)}")
    x, depth = _tree_layout(parents)
    n_leaves = max(1.0, x.max() + 1)
    width = min(40.0, max(4.0, 1.5 * n_leaves))
    height = min(30.0, max(3.0, 1.2 * (depth.max() + 1) + 0.25 * len(arrays)))
    fig = _figure(width, height)
    ax = fig.add_subplot()
    for i, p in enumerate(parents):
        if p != -1:
            ax.plot([x[p], x[i]], [-depth[p], -depth[i]], color="0.6", lw=1, zorder=1)
    colors = ["white"] * n
    if color_by is not None:
        from matplotlib import colormaps
        from matplotlib.colors import TwoSlopeNorm

        c = arrays[color_by]
        bound = float(np.nanmax(np.abs(c))) if np.isfinite(c).any() else 1.0
        norm = TwoSlopeNorm(0.0, -bound or -1.0, bound or 1.0)
        cmap = colormaps["coolwarm"]
        colors = ["white" if not np.isfinite(v) else cmap(norm(v)) for v in c]
    for i in range(n):
        lines = [labels[i]]
        for k, v in arrays.items():
            lines.append(f"{k}={v[i]:.3g}" if np.isfinite(v[i]) else f"{k}=–")
        ax.text(
            x[i],
            -depth[i],
            "\n".join(lines),
            ha="center",
            va="center",
            fontsize=8,
            zorder=2,
            bbox=dict(boxstyle="round,pad=0.3", fc=colors[i], ec="0.3"),
        )
    ax.set_xlim(-0.7, n_leaves - 0.3)
    ax.set_ylim(-depth.max() - 0.6, 0.6)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    return out
