"""Checkpoint → Hugging Face folder, for any step of a run."""

from __future__ import annotations

import json
from pathlib import Path

from flax import nnx

from rlpt_jax import checkpoint as ckpt_lib
from rlpt_jax.models.hf_io import export_hf, load_hf
from rlpt_jax.train.experiment import from_config_dict
from rlpt_jax.train.state import create_train_state, make_optimizer


def export_checkpoint(workdir: str | Path, step: int | None = None, out: str | Path | None = None):
    """Export checkpoint ``step`` (default: the latest good one) of the run in ``workdir``."""
    workdir = Path(workdir)
    cfg_file = workdir / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{workdir} has no config.json; is it a launch/train.py run?")
    exp = from_config_dict(json.loads(cfg_file.read_text()))
    model_dir = exp.model.resolve()
    model = load_hf(model_dir, param_dtype=exp.model.param_dtype, dtype=exp.model.dtype)
    tx = make_optimizer(exp.optim)
    target = create_train_state(model, tx)
    ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", exp.checkpoint)
    try:
        restored = ckpt.restore_latest(target) if step is None else ckpt.restore(step, target)
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}")
    out = Path(out) if out else workdir / f"hf_export_{restored.step}"
    state = restored.state
    return export_hf(
        nnx.merge(state.graphdef, state.params), out, tokenizer_dir=exp.model.resolve_tokenizer()
    )
