"""Evaluate a model on QA datasets: greedy single-chain search-QA, EM per dataset and the
size-weighted average (the AT²PO paper's validation protocol), or RLPT held-out metrics,
or, for an RLVR config, Pass@1 and Pass@k (k = 1, 2, 4, …, rlvr.pass_samples) on held-out
math problems, per set and averaged (the RLPT paper's protocol: 64 samples, T=0.6, top-p
0.95).

    python launch/eval.py --config=configs/at2po_qwen.py:cpu                      # base model
    python launch/eval.py --config=configs/at2po_qwen.py:cpu --model=runs/at2po_cpu/hf_export
    python launch/eval.py --config=configs/at2po_qwen.py:qwen3_4b --model=/ckpt/trained \\
        --config.qa.eval='("/data/nq/test.jsonl", "/data/hotpotqa/dev.jsonl")' \\
        --config.search.url=http://retriever:8000
    python launch/eval.py --config=configs/rlvr_qwen.py:cpu --model=runs/rlvr_cpu/hf_export
    python launch/eval.py --config=configs/rlvr_qwen.py:qwen3_4b --model=/ckpt/rlvr \\
        --config.rlvr.train='("/data/dapo_math.jsonl",)' --config.rlvr.heldout=0 \\
        --config.rlvr.eval='("/data/aime24.jsonl", "/data/aime25.jsonl")'
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:variant]")
_MODEL = flags.DEFINE_string("model", None, "HF model folder (default: config.model.path)")
_LIMIT = flags.DEFINE_integer(
    "limit", None, "questions (problems) per dataset (default: eval.num_prompts)"
)


def main(argv):
    del argv
    from rlpt_jax import launch_utils

    launch_utils.set_cpu_xla_defaults()
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    if _CONFIG.value is None:
        raise app.UsageError("--config=configs/<experiment>.py[:variant] is required")
    from rlpt_jax.train.evaluate import evaluate_model

    metrics = evaluate_model(_CONFIG.value, model_path=_MODEL.value, limit=_LIMIT.value)
    width = max(len(k) for k in metrics)
    for k in sorted(metrics):
        print(f"{k:{width}s} {metrics[k]:.4f}")


if __name__ == "__main__":
    app.run(main)
