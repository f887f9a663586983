"""Blocks the method configs share (``rlpt_qwen.py``, ``at2po_qwen.py``, ``rlvr_qwen.py``).

Each method's config file holds only the blocks its method reads and builds the shared
ones here, so an engineering default (the model's dtypes, the outage policy, the CPU
settings of the embedded model) is written once. A block is returned as a fresh ``dict``
that the caller may change; nothing here reads the command line.

The config files import this as ``configs.common``: the launchers put the repository root
on ``sys.path``, and so does the test configuration.
"""

from ml_collections.config_dict import placeholder


def model(**overrides) -> dict:
    """``config.model``: the checkpoint and how to hold it (``ModelSpec``). [ours]: float32
    master weights, bfloat16 compute, per-layer remat, attention ``auto`` (xla on CPU,
    blockwise on GPU, splash on TPU; README, Attention)."""
    block = dict(
        path=placeholder(str),
        arch=placeholder(str),
        tokenizer_path=placeholder(str),
        param_dtype="float32",
        dtype="bfloat16",
        remat=True,
        batch_invariant=False,  # True: sampler log-probs == update step's, bit for bit
        attention="auto",
        attention_block=512,
    )
    block.update(overrides)
    return block


def outage() -> dict:
    """``config.outage`` [ours]: a step whose judge or retriever failed for more than half
    its requests is skipped and counted; 3 such steps in a row save a checkpoint and stop
    the run (README: "Outages")."""
    return dict(max_failure_fraction=0.5, max_failed_steps=3)


def dapo_off() -> dict:
    """``config.dapo``: DAPO's rollout-side techniques (arXiv 2503.14476;
    ``rlpt_jax.algos.dapo``), off. When switched on, at most 10 sampling rounds (verl's
    DAPO recipe, ``algorithm.filter_groups.max_num_gen_batches``)."""
    return dict(dynamic_sampling=False, max_rounds=10, overlong_buffer=0, overlong_penalty=1.0)


def math_problems(**overrides) -> dict:
    """How many math problems are read and how answers are checked
    (``MathProblemsConfig``: ``rlvr`` and AT²PO's ``qa.math``). [ours]: 64 held-out problems
    per train source; the verifier's limits of 2 s per answer, 10 s per batch, answers of
    at most 1000 characters."""
    block = dict(
        train_size=10_000,
        heldout=64,
        seed=0,
        verifier=dict(timeout_s=2, deadline_s=10.0, max_answer_chars=1000),
    )
    block.update(overrides)
    return block


def embedded_cpu(c) -> None:
    """The settings every ``cpu``/``tiny`` variant shares: the packaged SmolLM2-135M in
    float32 on every CPU device as data parallelism, remat (a 16x256 float32 step peaks at
    ~14 GB without it), a float32 KV cache, 256-token log-prob chunks and one checkpoint on
    disk (135M float32 weights plus both Adam moments are 1.6 GB).

    Fields are set one by one, never by replacing a block, so that every field of the
    base stays overridable from the command line (``--config.judge.http.*`` included)."""
    c.model.update(path="embedded", dtype="float32", remat=True)
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    c.rollout.cache_dtype = "float32"
    c.train.logprob_chunk = 256
    c.checkpoint.max_to_keep = 1
