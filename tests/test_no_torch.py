"""The runtime path needs no torch: torch is a test-only dependency (the parity references).

``bash scripts/setup.sh`` installs ``requirements.txt`` only, so the README's first command
must convert the embedded model and train without torch. CI installs the test extras
(torch included) into the same environment, so a plain test would not notice a torch import,
nor a runtime dependency that only a test extra brings (jinja2 comes with torch). These run
the real commands in a subprocess in which torch, and every other module that
``requirements.txt`` does not install, cannot be imported (``tests/torch_blocker`` on
``PYTHONPATH``), into a fresh cache.
"""

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
BLOCKER = Path(__file__).resolve().parent / "torch_blocker"
TORCH = {"torch", "torchvision", "torchaudio"}
# What a fresh `python -m venv` holds before setup.sh installs anything.
VENV_SEED = {"pip", "setuptools"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(fname: str) -> list[str]:
    lines = (ROOT / fname).read_text().splitlines()
    reqs = [ln.split("#")[0].strip() for ln in lines]
    return [_norm(Requirement(r).name) for r in reqs if r and not r.startswith("-")]


def runtime_closure() -> dict[str, str]:
    """Every distribution ``pip install -r requirements.txt`` installs, as the installed
    metadata says (optional extras and other platforms' dependencies skipped), each with
    the chain of requirements that pulls it in."""
    direct = _requirement_names("requirements.txt")
    why = {d: d for d in direct}
    todo, seen = [(d, "") for d in direct], set()
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here, so not installed by requirements.txt either
        for spec in requires:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": extra}):
                continue
            dep = _norm(req.name)
            why.setdefault(dep, f"{why[name]} -> {dep}")
            todo += [(dep, "")] + [(dep, e) for e in req.extras]
    return why


def _top_level_modules(dist: importlib.metadata.Distribution) -> set[str]:
    listed = dist.read_text("top_level.txt")
    if listed:
        return set(listed.split())
    names = set()
    for f in dist.files or ():
        first = f.parts[0]
        if first in ("..", "__pycache__") or first.endswith((".dist-info", ".data", ".pth")):
            continue
        names.add(first.split(".")[0] if len(f.parts) == 1 else first)
    return names


def modules_setup_does_not_install() -> set[str]:
    """Top-level modules of the installed distributions that a runtime-only ``.venv`` lacks."""
    runtime = set(runtime_closure()) | set(_requirement_names("requirements-assets.txt"))
    runtime |= VENV_SEED | {"rlpt-jax"}
    keep, block = set(sys.stdlib_module_names), set()
    for dist in importlib.metadata.distributions():
        name = _norm(dist.metadata["Name"])
        (keep if name in runtime else block).update(_top_level_modules(dist))
    return block - keep


def torchless_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BLOCKER), env.get("PYTHONPATH")) if p)
    env["RLPT_JAX_BLOCK_MODULES"] = ",".join(sorted(modules_setup_does_not_install()))
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


def test_runtime_requirements_do_not_pull_in_torch():
    """Neither ``requirements.txt`` nor anything it depends on (as installed) is torch."""
    why = runtime_closure()
    assert not TORCH & set(_requirement_names("requirements.txt"))
    assert not TORCH & set(why), [why[t] for t in TORCH & set(why)]
    # transformers renders chat templates with jinja2 but does not depend on it; in the
    # test environment torch brings it, on a fresh machine nothing would.
    assert "jinja2" in why, "requirements.txt must install jinja2 (chat templates)"


def test_blocker_hides_torch_like_an_absent_install(tmp_path):
    blocked = modules_setup_does_not_install()
    assert not {"jax", "transformers", "tokenizers", "gguf", "rlpt_jax"} & blocked
    probe = (
        "import importlib.util, os\n"
        "names = os.environ['RLPT_JAX_BLOCK_MODULES'].split(',') + ['torch']\n"
        "assert all(importlib.util.find_spec(n) is None for n in names)\n"
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
    # The cold start leaves its export and no checkpoint (3x the export's size on disk).
    (cold,) = (cache / "cold_start").glob("sft-*")
    assert (cold / "hf_export" / "model.safetensors").is_file()
    assert not (cold / "checkpoints").exists()
    assert len([p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]) == 1

    again = tmp_path / "export"
    out = run_torchless(["launch/export.py", f"--workdir={workdir}", f"--out={again}"], cache, 300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert json.loads((again / "tokenizer_config.json").read_text()) == config
