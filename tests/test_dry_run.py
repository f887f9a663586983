"""--dry_run: the Qwen3-8B paper config planned on 8 simulated CPU devices, no weights."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dry(*args):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    cmd = [
        sys.executable,
        str(ROOT / "launch" / "train.py"),
        "--config=configs/rlpt_qwen.py:qwen3_8b",
        "--dry_run",
        *args,
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_paper_config_plan_fits_an_80gb_gpu():
    proc = _dry("--device_memory_gb=80")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "qwen3 8.19B parameters, 8 cpu devices" in out
    assert "mesh {'data': 1, 'fsdp': 8, 'tensor': 1}" in out
    # q_proj [L=36, D=4096, N=32, H=128] is split over fsdp along D: 512 rows per device
    assert "(36, 4096, 32, 128)  P(None, 'fsdp', None, None)" in out
    assert "(36, 512, 32, 128)" in out
    assert "per-device memory estimate" in out and "sampler KV cache" in out


def test_plan_that_cannot_fit_fails_clearly():
    proc = _dry("--device_memory_gb=16")
    assert proc.returncode != 0
    assert "DoesNotFitError: the plan needs" in proc.stderr
    assert "only 16 GiB are available" in proc.stderr


def test_plan_numbers_by_hand():
    """Parameters per device = total / 8 for a fully fsdp-sharded model (plus norms)."""
    from rlpt_jax import parallel
    from rlpt_jax.models.config import ModelConfig
    from rlpt_jax.models.presets import preset
    from rlpt_jax.train import dry_run
    from rlpt_jax.train.experiment import ExperimentConfig

    exp = ExperimentConfig(mesh=parallel.MeshConfig(data=1, fsdp=8, tensor=1))
    cfg = ModelConfig.from_hf_dict(preset("qwen3-8b"))
    mesh = parallel.make_mesh(exp.mesh)
    p = dry_run.plan(exp, cfg, mesh)
    total = sum(int(__import__("math").prod(s)) for _, s, _, _ in p.params)
    norms = sum(int(__import__("math").prod(s)) for n, s, _, _ in p.params if "norm" in n)
    # every non-norm tensor has a dimension divisible by 8 along its fsdp axis
    assert p.bytes["parameters"] == 4 * ((total - norms) // 8 + norms)
    assert p.bytes["optimizer (AdamW)"] == 2 * p.bytes["parameters"]
    assert "transposed weights (batch-invariant)" not in p.bytes
    p_inv = dry_run.plan(exp, cfg.replace(batch_invariant=True), mesh)
    assert p_inv.bytes["transposed weights (batch-invariant)"] == p.bytes["parameters"]  # f32
    assert p_inv.total == p.total + p.bytes["parameters"]


def test_the_step_runs_the_logprob_chunk_the_plan_assumes():
    """The memory plan sizes the vocabulary chunk from ``train.logprob_chunk``; the run's
    update step (and the dry run's compiled one) must use that value, not a silent cap."""
    sys.path.insert(0, str(ROOT))
    from configs import rlpt_qwen
    from rlpt_jax.train.experiment import from_config_dict
    from rlpt_jax.train.steps import StepConfig

    exp = from_config_dict(rlpt_qwen.get_config("qwen3_8b"))
    assert exp.train.logprob_chunk == 1024
    step = StepConfig.for_experiment(exp, micro_batches=2)
    assert (step.chunk, step.micro_batches, step.remat) == (1024, 2, exp.model.remat)


def _plan_vs_xla(out: str) -> dict[str, float]:
    """name -> plan/XLA from the dry run's comparison lines."""
    return {
        line.split()[0]: float(line.rsplit(" ", 1)[1])
        for line in out.splitlines()
        if "plan/XLA" in line
    }


@pytest.mark.parametrize(
    "overrides",
    [(), ("--config.model.attention=xla", "--config.model.remat=False")],
    ids=["blockwise_remat", "xla_no_remat"],
)
def test_plan_agrees_with_xla_memory_analysis(overrides):
    """The plan's state and working memory against XLA's compiled update step on SmolLM2
    (rlpt tiny, one CPU device, through the launcher and its XLA:CPU scheduling flag): the
    state exactly; working memory conservatively, between 0.9x and 1.6x XLA's."""
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
    cmd = [
        sys.executable,
        str(ROOT / "launch" / "train.py"),
        "--config=configs/rlpt_qwen.py:tiny",
        "--dry_run",
        "--dry_run_compile",
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ratios = _plan_vs_xla(proc.stdout)
    assert set(ratios) == {"state", "working"}, proc.stdout[-2000:]
    assert abs(ratios["state"] - 1) < 0.01
    assert 0.9 <= ratios["working"] <= 1.6
    assert "sampler's copy of the weights" in proc.stdout


@pytest.mark.parametrize(
    "method, rows, seq",
    [
        ("rlpt", 4 * 4, 100 + 60),  # prompts x samples, prompt + completion
        ("rlvr", 4 * 4, 100 + 60),
        ("ntp", 24, 256),  # train.ntp_batch_size x train.ntp_seq_len
        ("sft", 40, 384),  # sft.batch_rows x sft.seq_len
        ("at2po", 4 * 22, 100 + 700),  # prompts x leaves, prompt + the tree's response budget
    ],
)
def test_plan_sizes_each_methods_own_batch(method, rows, seq):
    """The dry run plans the batch the method's loop trains on (SFT was planned as a
    rollout before the methods gave their step shape). Rows are multiples of the 8
    simulated devices, which the plan rounds up to."""
    from rlpt_jax import parallel
    from rlpt_jax.models.config import ModelConfig
    from rlpt_jax.models.presets import preset
    from rlpt_jax.train import dry_run
    from rlpt_jax.train.experiment import from_config_dict

    exp = from_config_dict(
        {
            "method": method,
            "mesh": {"data": -1, "fsdp": 1, "tensor": 1},
            "rollout": {
                "prompts_per_step": 4,
                "samples_per_prompt": 4,
                "max_prompt_tokens": 100,
                "max_new_tokens": 60,
            },
            "train": {"ntp_batch_size": 24, "ntp_seq_len": 256},
            "sft": {"batch_rows": 40, "seq_len": 384},
            "tree": {"max_response_tokens": 700},
        }
    )
    p = dry_run.plan(
        exp, ModelConfig.from_hf_dict(preset("qwen3-0.6b")), parallel.make_mesh(exp.mesh)
    )
    assert (p.micro_rows, p.seq) == (rows, seq)
