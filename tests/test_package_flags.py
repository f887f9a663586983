"""Importing rlpt_jax changes no environment; the launchers add their XLA:CPU scheduler
default explicitly, and only where the user has not chosen."""

import os
import subprocess
import sys

import pytest

from rlpt_jax.launch_utils import set_cpu_xla_defaults

_FLAG = "xla_cpu_enable_concurrency_optimized_scheduler"


def test_importing_the_package_leaves_xla_flags_alone():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    snippet = "import os, rlpt_jax, rlpt_jax.train.loop; print(repr(os.environ.get('XLA_FLAGS')))"
    out = subprocess.run(
        [sys.executable, "-c", snippet], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "None"


def _defaults(xla_flags: str | None) -> str:
    env = {} if xla_flags is None else {"XLA_FLAGS": xla_flags}
    set_cpu_xla_defaults(env)
    return env["XLA_FLAGS"]


def test_default_is_added():
    assert _defaults(None) == f"--{_FLAG}=false"


def test_other_flags_are_kept():
    flags = _defaults("--xla_force_host_platform_device_count=8")
    assert flags == f"--xla_force_host_platform_device_count=8 --{_FLAG}=false"


@pytest.mark.parametrize("value", ["true", "false"])
def test_a_users_choice_wins(value):
    assert _defaults(f"--{_FLAG}={value}") == f"--{_FLAG}={value}"
