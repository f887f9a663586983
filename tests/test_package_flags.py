"""Importing rlpt_jax sets its XLA:CPU scheduler default only when the user has not."""

import os
import subprocess
import sys

import pytest

_FLAG = "xla_cpu_enable_concurrency_optimized_scheduler"
_SNIPPET = "import os, rlpt_jax; print(os.environ.get('XLA_FLAGS', ''))"


def _flags_after_import(xla_flags: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    out = subprocess.run(
        [sys.executable, "-c", _SNIPPET], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_default_is_added():
    assert _flags_after_import(None) == f"--{_FLAG}=false"


def test_other_flags_are_kept():
    flags = _flags_after_import("--xla_force_host_platform_device_count=8")
    assert flags == f"--xla_force_host_platform_device_count=8 --{_FLAG}=false"


@pytest.mark.parametrize("value", ["true", "false"])
def test_a_users_choice_wins(value):
    assert _flags_after_import(f"--{_FLAG}={value}") == f"--{_FLAG}={value}"
