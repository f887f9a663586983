"""The runtime path needs no torch: torch is a test-only dependency (the parity references).

``bash scripts/setup.sh`` installs ``requirements.txt`` only, so the README's first command
must convert the embedded model and train without torch. CI installs the test extras
(torch included) into the same environment, so a plain test would not notice a torch import;
these run the real commands in a subprocess in which torch cannot be imported
(``tests/torch_blocker`` on ``PYTHONPATH``), into a fresh cache.
"""

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
BLOCKER = Path(__file__).resolve().parent / "torch_blocker"
TORCH = {"torch", "torchvision", "torchaudio"}


def torchless_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BLOCKER), env.get("PYTHONPATH")) if p)
    env["RLPT_JAX_CACHE"] = str(cache)
    env.pop("XLA_FLAGS", None)  # conftest's 8 simulated devices are for the sharding tests
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return env


def run_torchless(args: list[str], cache: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=torchless_env(cache),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _name(req: str) -> str:
    return Requirement(req).name.lower().replace("_", "-")


def test_runtime_requirements_do_not_pull_in_torch():
    """Neither ``requirements.txt`` nor anything it depends on (as installed) names torch."""
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    direct = [ln.split("#")[0].strip() for ln in lines]
    direct = [_name(r) for r in direct if r and not r.startswith("-")]
    assert direct and not TORCH & set(direct)

    seen, todo, path = set(), list(direct), {d: d for d in direct}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here, so not installed by requirements.txt either
        for spec in requires:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue  # an optional extra or another platform's dependency
            dep = _name(spec)
            path.setdefault(dep, f"{path[name]} -> {dep}")
            todo.append(dep)
    assert not TORCH & seen, [path[t] for t in TORCH & seen]


def test_blocker_hides_torch_like_an_absent_install(tmp_path):
    probe = (
        "import importlib.util\n"
        "assert importlib.util.find_spec('torch') is None\n"
        "try:\n"
        "    import torch\n"
        "except ModuleNotFoundError:\n"
        "    pass\n"
        "else:\n"
        "    raise AssertionError('torch was imported')\n"
        "from transformers.utils import is_torch_available\n"
        "assert not is_torch_available()\n"
        "print('blocked')\n"
    )
    out = run_torchless(["-c", probe], tmp_path / "cache", timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "blocked", out.stderr[-3000:]


@pytest.mark.slow
def test_conversion_and_a_training_step_without_torch(tmp_path):
    """What ``setup.sh`` (no ``--test``) + ``launch/train.py`` does on a fresh machine:
    convert the embedded model into an empty cache, train one step of the ``tiny`` RLPT
    variant (after its cold start), evaluate, checkpoint and export, then export the
    checkpoint again with ``launch/export.py``, all with torch unimportable."""
    cache, workdir = tmp_path / "cache", tmp_path / "run"
    args = [
        "launch/train.py",
        "--config=configs/rlpt_qwen.py:tiny",
        "--config.train.steps=1",
        f"--workdir={workdir}",
    ]
    out = run_torchless(args, cache, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "converting embedded" in out.stdout  # the conversion ran here, not an old cache

    from rlpt_jax.models import embedded

    converted = cache / f"{embedded.NAME}-v{embedded._FORMAT_VERSION}"
    assert (converted / ".complete").is_file()
    config = json.loads((converted / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    steps = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "step" in s][-1] == 1
    exported = json.loads((workdir / "hf_export" / "tokenizer_config.json").read_text())
    assert exported == config

    again = tmp_path / "export"
    out = run_torchless(["launch/export.py", f"--workdir={workdir}", f"--out={again}"], cache, 300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert json.loads((again / "tokenizer_config.json").read_text()) == config
