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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A 2-layer random Llama with the embedded SmolLM2 tokenizer, as a Hugging Face folder:
    the `tiny` configs' runs with ``--config.model.path`` set to it take seconds instead of
    the real 135M model's minutes on a 2-core CPU."""
    from hf_fixtures import tiny_smollm2_config
    from rlpt_jax.models.decoder import init_model
    from rlpt_jax.models.embedded import smollm2_dir
    from rlpt_jax.models.hf_io import export_hf

    cfg = tiny_smollm2_config()
    out = tmp_path_factory.mktemp("tiny_model")
    return export_hf(init_model(cfg, 0), out, tokenizer_dir=smollm2_dir())


@pytest.fixture
def one_torch_thread():
    """torch's two-thread barriers collapse when the CPU is shared; one thread is steadier."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_code_after_each_module():
    """Drop JAX's compiled executables when a test file ends: a pytest-xdist worker runs many
    files (scripts/test.sh), and kept caches grew one to 6 GB, next to training subprocesses
    of 4-5 GB each on a 24 GiB machine."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()
