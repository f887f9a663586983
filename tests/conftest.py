"""Test-wide settings: offline, CPU, 8 simulated devices for sharding tests.

The environment must be set before JAX is imported anywhere, hence at conftest import.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def embedded_model_dir(tmp_path_factory):
    """The embedded SmolLM2 converted to a Hugging Face folder (cached across runs)."""
    from rlpt_jax.models import embedded

    return embedded.smollm2_dir()


@pytest.fixture
def one_torch_thread():
    """torch's two-thread barriers collapse when the CPU is shared; one thread is steadier."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
