"""Plan a run without its weights: mesh, sharding plan, per-device memory, compiled step.

``launch/train.py --config=... --dry_run`` runs this on whatever devices exist — on a laptop
CPU with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` it checks an 8-GPU or
pod-slice config before the hardware is rented. The architecture comes from
``config.model.path``'s ``config.json`` or, when no checkpoint is at hand, from
``config.model.arch`` (a preset in :mod:`rlpt_jax.models.presets`).

Memory per device (bytes), with P the parameter shard, Tk the tokens a device holds in one
micro-batch, L layers, D width, F MLP width, N query heads, V vocab, T sequence length, each
divided by the mesh axes that shard it:

* parameters P·b_param, gradients P·4, AdamW moments 2·P·4;
* activations, with per-layer remat: L·Tk·D·b_compute (saved layer inputs) plus one
  layer's working set; without remat: L working sets. A layer's working set is
  Tk·(6D + 3F)·b_compute plus attention's, and the vocabulary chunk adds
  3·rows·chunk·V·4. Attention (``model.attention``, ``planned_attention``): with ``xla``
  2·Tk·T·N·4 (the T×T scores and probabilities, float32: long sequences are dominated by
  them); with ``blockwise``/``cudnn`` two float32 tiles per head, 2·rows·N·B²·4 (B =
  ``model.attention_block``), plus 4·Tk·N·H·4 of per-token accumulators;
* the sampler's KV cache, 2·L·rows·T·K·H·b_cache, rows = one wave
  (``rollout.sampler_rows``) over (data, fsdp), kv heads over tensor;
* the sampler's copy of the weights, P_sample·b_param, P_sample the parameter shard under
  the sampling layout (tensor-parallel only, ``parallel.SAMPLE_RULES``; unstacked layers,
  see ``rlpt_jax.models.decoder``);
* with ``train.kl_to_init`` (RL methods), the frozen initial weights, P·b_param;
* with ``model.batch_invariant``, the update step's transposed copy of the weights,
  P·b_compute (an upper bound: XLA may keep only some layers' copies live at once).

With ``compile=True`` the planned update step (the plan's micro-batch, the planned
attention) is also lowered and compiled for abstract inputs, and XLA's memory analysis is
printed next to the plan's figures for the same memory: state (parameters + optimizer, exact)
and working memory (gradients + activations vs XLA's temporaries). The activation formula
is a conservative estimate: on XLA:CPU with the launchers' memory-ordered scheduling the plan
lies between 0.9x and 1.6x XLA's temporaries for SmolLM2 with and without remat, xla and
blockwise attention, 268 to 956 tokens per row (``tests/test_dry_run.py`` holds it to that
band). Slow for multi-billion-parameter models on a CPU.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from rlpt_jax import parallel
from rlpt_jax.models.config import ModelConfig
from rlpt_jax.models.decoder import abstract_model
from rlpt_jax.models.presets import preset
from rlpt_jax.train.experiment import EMBEDDED, ExperimentConfig, from_config_dict
from rlpt_jax.train.methods import method_class, update_split

_BYTES = {"float32": 4, "bfloat16": 2}
GiB = 2**30


class DoesNotFitError(RuntimeError):
    """The planned run needs more memory per device than available."""


@dataclasses.dataclass
class Plan:
    mesh_shape: dict[str, int]
    params: list[tuple[str, tuple[int, ...], str, tuple[int, ...]]]
    bytes: dict[str, float]
    micro_rows: int = 0  # rows of one micro-batch, all devices together
    seq: int = 0  # tokens per row

    @property
    def total(self) -> float:
        return float(sum(self.bytes.values()))


def planned_attention(exp: ExperimentConfig) -> str:
    """The attention implementation the planned run will use. A dry run on a CPU plans an
    accelerator run, so ``auto`` is resolved as on a GPU/TPU there."""
    from rlpt_jax.models import attention

    m = exp.model
    return attention.resolve(m.attention, m.dtype, m.batch_invariant, _planned_platform())


def _planned_platform() -> str:
    backend = jax.default_backend()
    return "gpu" if backend == "cpu" else backend


def model_config(exp: ExperimentConfig, arch: str | None) -> ModelConfig:
    path = exp.model.path
    dtypes = exp.model.model_config_fields()
    if path and path != EMBEDDED and (Path(path) / "config.json").is_file():
        return ModelConfig.from_pretrained(path, **dtypes)
    if path == EMBEDDED:
        return ModelConfig.from_hf_dict(preset("smollm2-135m"), **dtypes)
    if arch is None:
        raise ValueError(
            "dry run needs the architecture: set --config.model.path to a folder with "
            "config.json, or --config.model.arch to a preset (e.g. qwen3-8b)"
        )
    return ModelConfig.from_hf_dict(preset(arch), **dtypes)


def _shard_shape(shape, spec, mesh) -> tuple[int, ...]:
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        out.append(dim // math.prod(mesh.shape[a] for a in axes))
    return tuple(out)


def plan(exp: ExperimentConfig, cfg: ModelConfig, mesh) -> Plan:
    _, abstract = nnx.split(abstract_model(cfg))
    shardings = parallel.state_shardings(abstract, mesh, parallel.TRAIN_RULES)
    rows_spec = []
    param_elems = 0
    for (path, var), (_, sh) in zip(nnx.to_flat_state(abstract), nnx.to_flat_state(shardings)):
        shape = tuple(var.get_value().shape)
        spec = sh.get_value().spec
        local = _shard_shape(shape, spec, mesh)
        param_elems += math.prod(local)
        rows_spec.append((".".join(map(str, path)), shape, str(spec), local))

    pb, cb = _BYTES[cfg.param_dtype], _BYTES[cfg.dtype]
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    tp = mesh.shape["tensor"]
    tr = exp.train
    rows, seq = method_class(exp.method).step_shape(exp)
    # Micro-batches of whole units: rows, or packed trees (their unique tokens, at most
    # their flat rows' tokens: the plan is the flat-equivalent upper bound).
    split = update_split(exp, batch_shards, _planned_platform())
    rows_dev = max(1, math.ceil(split.micro_units / batch_shards)) * split.unit
    tk = rows_dev * seq
    d, f = cfg.hidden_size, cfg.intermediate_size
    n_local = max(1, cfg.num_heads // tp)
    impl = planned_attention(exp)
    if impl == "xla":  # scores and probabilities, float32, [T, T] per head
        attn = 2 * tk * seq * n_local * 4
    else:  # two float32 tiles per head, plus float32 accumulators and output per token
        bq = bk = min(exp.model.attention_block, seq)
        attn = 2 * rows_dev * n_local * bq * bk * 4 + 4 * tk * n_local * cfg.head_dim * 4
    layer = tk * (6 * d + 3 * f / tp) * cb + attn
    chunk = min(tr.logprob_chunk, seq)
    vocab = 3 * rows_dev * chunk * cfg.vocab_size / tp * 4
    if exp.model.remat:
        acts = cfg.num_layers * tk * d * cb + layer + vocab
    else:
        acts = cfg.num_layers * layer + vocab
    cache_b = _BYTES[exp.rollout.cache_dtype]
    wave = exp.rollout.sampler_rows or rows
    sample_rows = max(1, math.ceil(min(rows, wave) / batch_shards))
    kv_local = max(1, cfg.num_kv_heads // tp)
    kv = 2 * cfg.num_layers * sample_rows * seq * kv_local * cfg.head_dim * cache_b
    sizes = {
        "parameters": param_elems * pb,
        "gradients": param_elems * 4,
        "optimizer (AdamW)": 2 * param_elems * 4,
        "activations (one micro-batch)": acts,
        "sampler KV cache": kv,
    }
    sample_sh = parallel.state_shardings(abstract, mesh, parallel.SAMPLE_RULES)
    sampler_elems = sum(
        math.prod(_shard_shape(var.get_value().shape, sh.get_value().spec, mesh))
        for (_, var), (_, sh) in zip(nnx.to_flat_state(abstract), nnx.to_flat_state(sample_sh))
    )
    sizes["sampler's copy of the weights"] = sampler_elems * pb
    if exp.train.kl_to_init and exp.method not in ("ntp", "sft"):
        sizes["initial weights (KL to init)"] = param_elems * pb
    if cfg.batch_invariant:
        sizes["transposed weights (batch-invariant)"] = param_elems * cb
    return Plan(
        mesh_shape=dict(mesh.shape),
        params=rows_spec,
        bytes=sizes,
        micro_rows=rows_dev * batch_shards,
        seq=seq,
    )


def run(
    config, device_memory_gb: float | None = None, compile: bool = False, arch: str | None = None
) -> Plan:
    """Print the plan; raise :class:`DoesNotFitError` if it exceeds ``device_memory_gb``."""
    exp = config if isinstance(config, ExperimentConfig) else from_config_dict(config)
    arch = arch or exp.model.arch
    cfg = model_config(exp, arch)
    mesh = parallel.make_mesh(exp.mesh)
    p = plan(exp, cfg, mesh)
    n = sum(math.prod(s) for _, s, _, _ in p.params)
    print(
        f"dry run: {exp.method}, {cfg.model_type} {n / 1e9:.2f}B parameters, "
        f"{jax.device_count()} {jax.devices()[0].platform} devices, mesh {p.mesh_shape}"
    )
    print(f"\n{'parameter':48s} {'shape':>22s}  {'sharding':28s} {'per device':>20s}")
    for name, shape, spec, local in p.params:  # layer parameters stacked: [L, ...]
        print(f"{name[:48]:48s} {str(shape):>22s}  {spec[:28]:28s} {str(local):>20s}")
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    packed = update_split(exp, shards, _planned_platform()).unit > 1
    trees = ", trees packed: one micro-batch of whole trees" if packed else ""
    print(f"\nper-device memory estimate (attention: {planned_attention(exp)}{trees}):")
    for k, v in p.bytes.items():
        print(f"  {k:32s} {v / GiB:9.2f} GiB")
    print(f"  {'total':32s} {p.total / GiB:9.2f} GiB")
    if compile:
        _compile_report(exp, cfg, mesh, p)
    if device_memory_gb is not None and p.total > device_memory_gb * GiB:
        raise DoesNotFitError(
            f"the plan needs {p.total / GiB:.1f} GiB per device but only {device_memory_gb:g} "
            f"GiB are available (largest: "
            f"{max(p.bytes, key=p.bytes.get)} {max(p.bytes.values()) / GiB:.1f} GiB). Shard "
            f"more (--config.mesh.fsdp), turn on --config.model.remat, lower "
            f"--config.train.micro_batch_size or the sequence lengths, or use bfloat16 params"
        )
    return p


def _compile_report(exp: ExperimentConfig, cfg: ModelConfig, mesh, p: Plan) -> dict[str, float]:
    """Lower and compile the planned update step (one micro-batch of the plan's rows and
    sequence length, the planned attention) on abstract inputs; print XLA's memory analysis
    next to the plan's figures for the same memory, and return both (bytes per device):

    * state: the plan's parameters + optimizer vs XLA's arguments less the batch;
    * working memory: the plan's gradients + activations (+ transposed weights) vs XLA's
      temporaries.
    """
    from rlpt_jax.batch import RLBatch
    from rlpt_jax.train.state import (
        create_train_state,
        make_optimizer,
        train_state_shardings,
        with_layers,
    )
    from rlpt_jax.train.steps import StepConfig, make_update_step, policy_objective

    cfg = cfg.replace(attention=planned_attention(exp))  # the step the planned run compiles
    tx = make_optimizer(exp.optim)
    state = jax.eval_shape(  # the layer layout the run trains (train.loop)
        lambda: with_layers(create_train_state(_materialise(cfg), tx), stacked=exp.model.remat)
    )
    shardings = train_state_shardings(state, tx, mesh)
    rows, seq = p.micro_rows, p.seq
    spec = jax.ShapeDtypeStruct((rows, seq), np.int32)
    fspec = jax.ShapeDtypeStruct((rows, seq), np.float32)
    batch = RLBatch(spec, spec, spec, fspec, spec, fspec, fspec)
    step = make_update_step(
        tx,
        policy_objective(exp.loss),
        StepConfig.for_experiment(exp),
        mesh=mesh,
        state_shardings=shardings,
    )
    mem = step.lower(state, batch).compile().memory_analysis()
    print(
        f"\ncompiled update step (one micro-batch of {rows}x{seq} tokens, attention "
        f"{cfg.attention}), XLA memory analysis per device:"
    )
    for field in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes"):
        print(f"  {field:32s} {getattr(mem, field) / GiB:9.2f} GiB")
    batch_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(batch))
    batch_bytes /= mesh.shape["data"] * mesh.shape["fsdp"]
    b = p.bytes
    out = {
        "plan_state": b["parameters"] + b["optimizer (AdamW)"],
        "xla_state": mem.argument_size_in_bytes - batch_bytes,
        "plan_working": b["gradients"]
        + b["activations (one micro-batch)"]
        + b.get("transposed weights (batch-invariant)", 0.0),
        "xla_working": float(mem.temp_size_in_bytes),
    }
    print("plan vs XLA, per device:")
    for name in ("state", "working"):
        plan_b, xla_b = out[f"plan_{name}"], out[f"xla_{name}"]
        print(
            f"  {name:8s} plan {plan_b / GiB:7.3f} GiB, XLA {xla_b / GiB:7.3f} GiB, "
            f"plan/XLA {plan_b / xla_b:.3f}"
        )
    return out


def _materialise(cfg: ModelConfig):
    from rlpt_jax.models.decoder import init_model

    return init_model(cfg)
