"""Tokenizer wrapper on the embedded SmolLM2 tokenizer and the offline Qwen3 tokenizer.

The embedded tokenizer is rebuilt from the GGUF metadata without transformers; transformers'
own GGUF reader (which needs torch) is the reference it must equal, token id for token id.
"""

import importlib.util
import json
import re

import pytest

from rlpt_jax import assets
from rlpt_jax.models.hf_io import export_tokenizer, portable_tokenizer_config
from rlpt_jax.models.tokenizer import Tokenizer, qwen3_tokenizer_dir

needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None,
    reason="the reference, transformers' GGUF reader, needs torch (bash scripts/setup.sh --test)",
)

EDGE_CASES = [
    "",
    " ",
    "\n",
    "\n\n",
    "\n\n\nthree newlines",
    "  two leading spaces",
    "trailing spaces   ",
    "tabs\tand\r\nCRLF\r\n",
    "Emoji: 👍🏽 👨‍👩‍👧 🇫🇷 🤖!",
    "CJK: 東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다.",
    "Accents: naïve café, Ångström, Zürich, façade — “quotes” and ‘single’…",
    "Digits: 1887 to 1889, 3.14159, 1,000,000 and  42 after two spaces",
    "Code: def f(x):\n    return x ** 2  # squared\n",
    "URLs https://example.org/a?b=c&d=e and e-mails a.b@example.com",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><file_sep><filename>x.py<gh_stars>10<jupyter_code>",
    "not special: <|im_start| and <|im_end and im_end|>",
    "Ümlaut\u00a0nbsp\u200bzero-width\u2028line-sep",
    "the the the the the the the the the the the the the the the the",
]

CONVERSATION = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What is the capital of France?\n\nOne word."},
    {"role": "assistant", "content": "Paris."},
]


def wiki_sentences(n: int) -> list[str]:
    """``n`` sentences from the embedded Wikipedia intros, spread over the articles."""
    out = []
    for doc in assets.load_wiki_intros()[::4]:
        out.extend(s for s in re.split(r"(?<=[.!?])\s+", doc["text"]) if s.strip())
        if len(out) >= n:
            break
    assert len(out) >= n
    return out[:n]


@pytest.fixture(scope="module")
def gguf_reference():
    """transformers' tokenizer read straight from the GGUF file (needs torch)."""
    from transformers import AutoTokenizer

    p = assets.smollm2_gguf_path()
    return AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)


def test_smollm2_tokenizer(embedded_model_dir):
    tok = Tokenizer(embedded_model_dir)
    assert tok.vocab_size == 49152
    assert tok.eos_ids == (2,)  # <|im_end|>
    assert tok.decode(tok.eos_ids) == "<|im_end|>"
    text = "Paris is the capital of France."
    assert tok.decode(tok.encode(text)) == text
    rendered = tok.render_chat([{"role": "user", "content": "hi"}])
    assert rendered.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.encode_chat([{"role": "user", "content": "hi"}])[-1] == tok.encode("\n")[-1]
    assert tok.token_id("<|im_start|>") == 1


@needs_torch
def test_smollm2_ids_equal_transformers_gguf_reader(embedded_model_dir, gguf_reference):
    tok = Tokenizer(embedded_model_dir)
    texts = wiki_sentences(2000) + [d["text"] for d in assets.load_wiki_intros()[1::50]]
    texts += EDGE_CASES + [tok.render_chat(CONVERSATION, add_generation_prompt=False)]
    assert any("\n" in t for t in texts)
    for add_special in (False, True):
        ours = [tok.encode(t, add_special=add_special) for t in texts]
        ref = gguf_reference(texts, add_special_tokens=add_special)["input_ids"]
        for text, a, b in zip(texts, ours, ref):
            assert a == b, text
    for text, ids in zip(texts, ours):
        for skip in (False, True):
            ref = gguf_reference.decode(ids, skip_special_tokens=skip)
            assert tok.decode(ids, skip) == ref, text
    assert tok.encode("<|im_end|>") == [2]  # whole, not cut into pieces


@needs_torch
def test_smollm2_chat_template_equals_transformers_gguf_reader(embedded_model_dir, gguf_reference):
    tok = Tokenizer(embedded_model_dir)
    for messages in (CONVERSATION, CONVERSATION[1:], CONVERSATION[1:2]):
        for gen in (False, True):
            ours = tok.render_chat(messages, add_generation_prompt=gen)
            ref = gguf_reference.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=gen
            )
            assert ours == ref
            assert tok.encode(ours) == gguf_reference.encode(ref, add_special_tokens=False)
    assert (tok.bos_id, tok.eos_ids[0], tok.pad_id) == (
        gguf_reference.bos_token_id,
        gguf_reference.eos_token_id,
        gguf_reference.pad_token_id,
    )
    assert sorted(tok.hf.all_special_ids) == sorted(gguf_reference.all_special_ids)


def test_smollm2_files_load_in_transformers_4(embedded_model_dir):
    """Every transformers release loads the written tokenizer: no class only 5.x has.

    4.x resolves ``tokenizer_class`` by name and fails on an unknown one ("Tokenizer class
    TokenizersBackend does not exist"); ``PreTrainedTokenizerFast`` exists in all of them.
    """
    config = json.loads((embedded_model_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "TokenizersBackend" not in json.dumps(config)
    assert not isinstance(config.get("extra_special_tokens"), list)  # 4.x expects a dict
    assert config["chat_template"]  # 4.x before 4.50 reads it only from here
    assert config["clean_up_tokenization_spaces"] is False  # same decode in 4.x and 5.x
    assert portable_tokenizer_config(config, embedded_model_dir) == config


def test_export_writes_a_tokenizer_config_transformers_4_loads(tmp_path):
    """A folder saved by transformers 5 (TokenizersBackend, list of extra specials, template
    in chat_template.jinja) is exported in the form 4.x loads, meaning the same tokenizer."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "tokenizer.json").write_text("{}")
    (src / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    v5 = {
        "backend": "tokenizers",
        "tokenizer_class": "TokenizersBackend",
        "eos_token": "<|im_end|>",
        "extra_special_tokens": ["<|im_start|>", "<|im_end|>"],
    }
    (src / "tokenizer_config.json").write_text(json.dumps(v5))
    out = tmp_path / "out"
    out.mkdir()
    assert export_tokenizer(src, out) == [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ]
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config == {
        "backend": "tokenizers",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|im_end|>",
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "chat_template": "{{ messages[0]['content'] }}",
    }
    # A class 4.x knows is kept as it is.
    qwen = json.loads((qwen3_tokenizer_dir() / "tokenizer_config.json").read_text())
    assert portable_tokenizer_config(qwen, qwen3_tokenizer_dir()) == qwen
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        export_tokenizer(tmp_path / "empty", out)


def test_qwen3_tokenizer_specials():
    tok = Tokenizer(qwen3_tokenizer_dir())
    assert tok.token_id("<|im_end|>") in tok.eos_ids
    assert tok.pad_id == tok.token_id("<|endoftext|>")
    assert tok.render_chat([{"role": "user", "content": "x"}]).startswith("<|im_start|>user\nx")


def test_unknown_token_and_missing_folder(embedded_model_dir, tmp_path):
    tok = Tokenizer(embedded_model_dir)
    with pytest.raises(KeyError, match="not a token"):
        tok.token_id("<|no_such_token|>")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer(tmp_path / "missing")
