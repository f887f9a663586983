"""The training loop: ``run(config, workdir)`` for RLPT, the NTP baseline, AT²PO and SFT.

Phases, in order:

1. **Config** — the ``ConfigDict`` becomes validated dataclasses; the snapshot is saved.
   A ``cold_start`` experiment (SFT) is run first, or taken from the cache, and its
   export becomes the model this run starts from.
2. **Model** — the checkpoint is loaded straight onto the training mesh; the tokenizer,
   the sampler-side policy and a frozen copy of the initial weights (for the KL-to-init
   metric) are set up.
3. **Data** — RLPT / NTP: corpus → cleaned documents → next-segment tasks (train and
   held-out split by document). AT²PO: QA questions, the search tool and environment.
4. **State** — optimiser, ``TrainState`` sharded on the mesh (layers stacked, as
   checkpoints hold them).
5. **Resume** — the latest good checkpoint in ``workdir`` (state, step, data position);
   then, without remat, the layers become a list (``state.with_layers``), and the jitted
   update and log-prob steps are built for that state.
6. **Loop** — per step: rollout (sample → reward → advantages) or an NTP batch, π_old
   rescored by the training forward (``loss.old_logprobs``), the update(s), metrics;
   evaluation and checkpoints on schedule. A step whose retriever or judge failed too
   often is skipped and counted; too many in a row save a checkpoint and stop the run
   (``config.outage``). A failed checkpoint save stops the run at the next step.
7. **Finish** — a final checkpoint, a Hugging Face export, a summary.

Every step's randomness is a function of ``(seed, step)`` and the data streams are a
function of ``(seed, position)``, so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from rlpt_jax import assets, comparison, multihost, parallel
from rlpt_jax import batch as batch_lib
from rlpt_jax import checkpoint as ckpt_lib
from rlpt_jax import metrics as metrics_lib
from rlpt_jax.models.hf_io import export_hf, load_hf
from rlpt_jax.models.tokenizer import Tokenizer
from rlpt_jax.rollout.policy import Policy, SampleSpec
from rlpt_jax.train import methods
from rlpt_jax.train.experiment import ExperimentConfig, OutageConfig, from_config_dict
from rlpt_jax.train.state import (
    STATE_LAYOUT,
    OptimConfig,
    create_train_state,
    make_optimizer,
    shard_train_state,
    with_layers,
)
from rlpt_jax.train.steps import (
    StepConfig,
    make_logprob_step,
    make_update_step,
    recompute_old_logp,
    score_batch,
)

# Part of the cold-start cache key: bump when SFT data building changes what a config means.
COLD_START_VERSION = 1
# Written in every run folder: {"model_path": the weights the run starts from}.
START_MODEL_NAME = "start_model.json"


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.default_rng([seed, step, 7919]).integers(0, 2**31 - 1))


def _split_rows(batch: batch_lib.RLBatch, parts: int) -> list[batch_lib.RLBatch]:
    """Consecutive mini-batches of rows (the update order of PPO-style epochs); with a
    packed ``tree``, of whole trees with their rows."""
    units = batch.shape[0] // batch.rows_per_tree
    if units % parts:
        what = "rows" if batch.tree is None else "packed trees"
        raise ValueError(f"{units} {what} do not split into {parts} mini-batches")

    def part(x, i):
        k = x.shape[0] // parts
        return x[i * k : (i + 1) * k]

    return [jax.tree.map(lambda x, i=i: part(x, i), batch) for i in range(parts)]


def _kl_k3(logp: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """k3 estimate of KL(π‖π_init) over loss tokens: E[exp(r) − 1 − r], r = ref − logp."""
    r = np.clip(ref - logp, -20, 20)
    k3 = np.exp(r) - 1 - r
    return float((k3 * mask).sum() / max(mask.sum(), 1.0))


def run(config: Any, workdir: str | Path) -> dict[str, float]:
    """Train as ``config`` says, in ``workdir`` (resuming if it holds checkpoints).

    Returns the last step's metrics (and the final evaluation's).
    """
    # 1. Config ----------------------------------------------------------------------
    exp: ExperimentConfig = (
        config if isinstance(config, ExperimentConfig) else from_config_dict(config)
    )
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if hasattr(config, "to_json_best_effort"):
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    main = jax.process_index() == 0
    log = print if main else (lambda *a, **k: None)
    exp = with_cold_start(exp, log)

    # 2. Model -------------------------------------------------------------------------
    model_dir = exp.model.resolve()
    if main:  # the model this run starts from, after its cold start (launch/pipeline.py)
        start = {"model_path": str(model_dir)}
        (workdir / START_MODEL_NAME).write_text(json.dumps(start, indent=2) + "\n")
    mesh = parallel.make_mesh(exp.mesh)
    log(
        f"[rlpt_jax] {exp.method} | model {model_dir} | mesh {dict(mesh.shape)} | workdir {workdir}"
    )
    model = load_hf(
        model_dir,
        mesh=mesh,
        **exp.model.model_config_fields(),
    )
    tokenizer = Tokenizer(exp.model.resolve_tokenizer())
    if tokenizer.vocab_size > model.cfg.vocab_size:
        raise ValueError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{model.cfg.vocab_size}; check config.model.tokenizer_path"
        )
    use_chat = exp.chat_template and tokenizer.has_chat_template
    n_params = metrics_lib.param_count(nnx.state(model, nnx.Param))

    # 3. Data --------------------------------------------------------------------------
    data = methods.build_data(exp, tokenizer, use_chat)
    for k, v in sorted(data.counts.items()):
        log(f"  data {k}: {v}")

    # 4. State -------------------------------------------------------------------------
    total = exp.train.steps * exp.train.mini_batches
    optim = exp.optim
    if optim.schedule != "constant" and optim.total_steps is None:
        optim = dataclasses.replace(optim, total_steps=total)
    tx = make_optimizer(optim if isinstance(optim, OptimConfig) else OptimConfig(**optim))
    state = create_train_state(model, tx)  # layers stacked, as checkpoints hold them
    del model
    state, shardings = shard_train_state(state, tx, mesh)

    # 5. Resume ------------------------------------------------------------------------
    ckpt = ckpt_lib.Checkpointer(
        workdir / "checkpoints",
        exp.checkpoint,
        STATE_LAYOUT,
        prepare=lambda s: with_layers(s, stacked=True),
    )
    start = 0
    restored = ckpt.restore_latest(state)
    if restored is not None:
        state = restored.state
        start = int(restored.extra["step"])
        data.stream.position = int(restored.extra["data_position"])
        log(f"[rlpt_jax] resumed from step {start} (data position {data.stream.position})")
        del restored  # its arrays are the state's: no second reference for the run
    if not exp.model.remat:  # a list of layers: the faster update without remat (StepConfig)
        state, shardings = shard_train_state(with_layers(state, stacked=False), tx, mesh)
    graphdef = state.graphdef
    objective = data.objective()
    rows_per_shard = mesh.shape["data"] * mesh.shape["fsdp"]
    split = methods.update_split(exp, rows_per_shard)
    micro = split.micro
    if split.unit > 1:  # AT²PO's trees, packed for the update (TrainConfig.tree_packing)
        data.pack_trees = True
    # rows, or packed trees (methods.rows_per_unit): the units every split keeps whole
    row_multiple = rows_per_shard * exp.train.mini_batches * micro
    step_cfg = StepConfig.for_experiment(exp, micro_batches=micro)
    update = make_update_step(tx, objective, step_cfg, mesh=mesh, state_shardings=shardings)
    logprob = make_logprob_step(graphdef, step_cfg, mesh=mesh, param_shardings=shardings.params)
    ref_params = None
    if exp.train.kl_to_init and data.samples:
        ref_params = jax.tree.map(jnp.copy, state.params)
    policy = Policy(
        graphdef,
        tokenizer,
        mesh=mesh,
        cache_dtype=exp.rollout.cache_dtype,
        use_chat_template=use_chat,
    )

    writer = metrics_lib.MetricsWriter(workdir)

    # 6. Loop --------------------------------------------------------------------------
    spec = SampleSpec(
        temperature=exp.rollout.temperature,
        top_p=exp.rollout.top_p,
        top_k=exp.rollout.top_k,
        max_new_tokens=exp.rollout.max_new_tokens,
        stop_strings=data.stop_strings,
    )
    last: dict[str, float] = {}
    before: dict[str, float] = {}
    if start == 0 and exp.eval.at_start:
        policy.set_params(state.params)
        before = _evaluate(data, policy, state.params, graphdef, workdir, 0, main)
        writer.write(0, before)
        last = dict(before)  # a 0-step run evaluates its start model: these are its finals
    history: list[tuple[int, float]] = []
    outages = _OutageTracker(exp.outage)
    bar = tqdm(
        range(start, exp.train.steps),
        initial=start,
        total=exp.train.steps,
        desc=exp.method,
        unit="step",
        disable=not main,
    )
    for step in bar:
        t0 = time.time()
        seed = _step_seed(exp.seed, step)
        if data.samples:
            policy.set_params(state.params)
        try:
            batch, m = data.next_batch(policy, spec, seed, row_multiple)
        except methods.ServiceOutage as failure:  # not trained on: skipped and counted
            done = step + 1
            stop = outages.skip(done, failure)
            log(f"[rlpt_jax] step {done} skipped, not trained on: {failure}")
            writer.write(done, outages.metrics(failure))
            force = stop or done == exp.train.steps
            ckpt.save(done, state, extra=_resume_extra(done, data, exp), force=force)
            if stop:
                ckpt.close()
                writer.close()
                raise outages.error(ckpt.step_dir(done)) from failure
            continue
        m.update(outages.passed())
        t_roll = time.time() - t0

        # Extra forwards score the batch in slices of an update micro-batch's rows.
        score_rows = batch.shape[0] // (exp.train.mini_batches * micro)
        if data.samples and exp.loss.old_logprobs == "recompute":
            # pi_old from the training forward, before the first update (verl's choice)
            batch, old_metrics = recompute_old_logp(logprob, state.params, batch, mesh, score_rows)
            m.update(old_metrics)
        if ref_params is not None:
            ref = score_batch(logprob, ref_params, batch, mesh, score_rows)
            m["kl_to_init"] = _kl_k3(np.asarray(batch.old_logp), ref, np.asarray(batch.loss_mask))
            if exp.loss.kl_coef > 0:
                batch = batch.replace(ref_logp=ref.astype(np.float32))

        upd: dict[str, list[float]] = {}
        for mb in _split_rows(batch, exp.train.mini_batches):
            state, um = update(state, parallel.shard_batch(mb, mesh))
            for k, v in jax.device_get(um).items():
                upd.setdefault(k, []).append(float(v))
        for k, v in upd.items():
            m[f"train/{k}"] = float(
                np.max(v)
                if k.endswith("_max")
                else np.min(v)
                if k.endswith("_min")
                else np.sum(v)
                if k in ("skipped", "tokens")
                else np.mean(v)
            )
        if batch.tree is not None:  # the tokens the packed forward computed, of the flat ones
            m["train/packed_tokens"] = float(np.asarray(batch.tree.segment_ids).sum())
            m["train/flat_tokens"] = float(np.asarray(batch.segment_ids > 0).sum())
        dt = time.time() - t0
        tokens = int(np.asarray(batch.segment_ids > 0).sum())
        m.update(
            metrics_lib.throughput(
                n_params,
                tokens,
                dt,
                None if exp.train.peak_tflops is None else exp.train.peak_tflops * 1e12,
            )
        )
        m["perf/step_s"] = dt
        m["perf/rollout_s"] = t_roll
        m["train/lr_step"] = float(jax.device_get(state.step))

        done = step + 1
        eval_metrics: dict[str, float] = {}
        if (exp.eval.every and done % exp.eval.every == 0) or done == exp.train.steps:
            policy.set_params(state.params)
            eval_metrics = _evaluate(data, policy, state.params, graphdef, workdir, done, main)
            m.update(eval_metrics)
        writer.write(done, m)
        last = m
        key = "reward/mean" if "reward/mean" in m else "train/loss"
        history.append((done, m.get(key, float("nan"))))
        bar.set_postfix(
            {
                key.split("/")[-1]: f"{m.get(key, float('nan')):.3f}",
                "kl": f"{m.get('kl_to_init', 0.0):.4f}",
            }
        )

        best = exp.checkpoint.best_metric
        ckpt.save(
            done,
            state,
            extra=_resume_extra(done, data, exp),
            metrics=eval_metrics if best and best in eval_metrics else None,
            force=done == exp.train.steps,
        )
    bar.close()

    # 7. Finish ------------------------------------------------------------------------
    ckpt.wait()
    ckpt.close()
    writer.close()
    if exp.export_hf:
        out = export_hf(
            nnx.merge(graphdef, state.params),
            workdir / "hf_export",
            tokenizer_dir=exp.model.resolve_tokenizer(),
        )
        log(f"[rlpt_jax] exported Hugging Face model to {out}")
    if main and (history or last):
        _summary(history, last, key if history else "", before if history else {})
    (workdir / "final_metrics.json").write_text(
        json.dumps({k: (v if math.isfinite(v) else None) for k, v in last.items()}, indent=2)
    )
    return last


def _resume_extra(done: int, data, exp: ExperimentConfig) -> dict[str, int]:
    """What a checkpoint after step ``done`` needs besides the state to resume exactly."""
    return {"step": done, "data_position": data.stream.position, "seed": exp.seed}


class _OutageTracker:
    """The loop's half of the outage policy (:class:`OutageConfig`): counts the steps
    skipped because a service failed, and says when too many in a row end the run."""

    def __init__(self, cfg: OutageConfig):
        self.cfg = cfg
        self.limit = cfg.max_failed_steps
        self.streak: list[tuple[int, methods.ServiceOutage]] = []

    def passed(self) -> dict[str, float]:
        """A step trained on: the streak of skipped steps ends."""
        self.streak.clear()
        return {"outage/skipped_steps": 0.0}

    def skip(self, step: int, failure: methods.ServiceOutage) -> bool:
        """Record skipped step ``step``; whether the run must stop."""
        self.streak.append((step, failure))
        return len(self.streak) >= self.limit

    def metrics(self, failure: methods.ServiceOutage) -> dict[str, float]:
        return {**failure.metrics, "outage/skipped_steps": 1.0}

    def error(self, checkpoint: Path) -> methods.OutageError:
        """The error that ends the run: the service, its URL and every step's counts."""
        last = self.streak[-1][1]
        counts = ", ".join(f"step {s}: {f.failures}/{f.requests}" for s, f in self.streak)
        reason = f" Last error: {last.reason}." if last.reason else ""
        return methods.OutageError(
            f"{last.service} {last.url} is unavailable: more than "
            f"outage.max_failure_fraction={self.cfg.max_failure_fraction} of its requests "
            f"failed in {len(self.streak)} consecutive steps (failed/requests: {counts}; "
            f"outage.max_failed_steps={self.limit}).{reason} Those steps were "
            f"not trained on. Checkpoint saved at {checkpoint}: once the {last.service} "
            "answers again, rerun the same command to resume."
        )


def _evaluate(data, policy, params, graphdef, workdir: Path, step: int, main: bool) -> dict:
    """Held-out metrics; their per-example values go to ``eval_examples.jsonl``."""
    ev = data.evaluate(policy, params, graphdef)
    if main:
        for name, values in ev.per_example.items():
            comparison.write_eval_examples(workdir, step, name, values)
    return ev.metrics


def _summary(
    history: list[tuple[int, float]], last: dict[str, float], key: str, before: dict[str, float]
) -> None:
    """A text reward curve (if steps ran) and the held-out metrics before (if measured)
    and after."""
    if history:
        print(f"\n{key} by step:")
    vals = [v for _, v in history if math.isfinite(v)]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    for s, v in history:
        width = 0 if not math.isfinite(v) or hi == lo else int(round(30 * (v - lo) / (hi - lo)))
        print(f"  step {s:4d}  {v:8.4f}  {'#' * width}")
    ev = {k: v for k, v in last.items() if k.startswith("eval/")}
    if ev and before:
        print(f"held-out evaluation: {'before':>10s} {'after':>10s}")
        for k in sorted(ev):
            print(f"  {k:32s} {before.get(k, float('nan')):10.4f} {ev[k]:10.4f}")
    elif ev:
        print("held-out evaluation (last):")
        for k in sorted(ev):
            print(f"  {k:32s} {ev[k]:.4f}")


def with_cold_start(exp: ExperimentConfig, log=print) -> ExperimentConfig:
    """``exp`` starting from its cold-start model, which is trained on first use.

    The cold start is ``exp`` itself with ``method="sft"`` and the ``cold_start`` block's
    settings. It lives in ``<cache>/cold_start/sft-<hash>``, the hash taken over every
    setting the SFT run reads, so re-running a command reuses it, a change of its data
    or recipe trains a new one, and an interrupted one resumes from its checkpoints.
    """
    cold = exp.cold_start
    if cold is None:
        return exp
    sft_exp = dataclasses.replace(
        exp,
        method="sft",
        seed=cold.seed,
        sft=cold.sft,
        optim=cold.optim,
        train=cold.train,
        eval=cold.eval,
        # One checkpoint, at the end: the export is what the parent needs.
        checkpoint=dataclasses.replace(
            exp.checkpoint, best_metric=None, save_every=cold.train.steps
        ),
        export_hf=True,
        cold_start=None,
    )
    read = ("model", "corpus", "clean", "segments", "tasks", "chat_template", "qa", "env")
    blob = {k: getattr(sft_exp, k) for k in read + ("seed", "sft", "optim", "train", "search")}
    blob = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in blob.items()}
    key = json.dumps([COLD_START_VERSION, blob], sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    workdir = assets.cache_dir() / "cold_start" / f"sft-{digest}"
    # Decided once: processes that disagreed would train apart (multi-host runs need the
    # cache on a filesystem every host sees, as they do for checkpoints).
    if not multihost.once((workdir / "final_metrics.json").is_file):
        log(f"[rlpt_jax] cold start: SFT for {cold.train.steps} steps in {workdir}")
        run(sft_exp, workdir)
        # The parent reads only the export; the checkpoint (weights and both Adam moments,
        # 3x the export) would be dead disk. The single save is at the last step, so an
        # interrupted cold start restarts anyway.
        if jax.process_index() == 0:
            shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
    else:
        log(f"[rlpt_jax] cold start: reusing {workdir}")
    model = dataclasses.replace(exp.model, path=str(workdir / "hf_export"), tokenizer_path=None)
    return dataclasses.replace(exp, model=model, cold_start=None)
