"""Sentence segmentation, RLPT sample building, context cap and the held-out split."""

from __future__ import annotations

import dataclasses

import pytest

from rlpt_jax.data.corpus import Document
from rlpt_jax.data.segments import (
    Sample,
    SegmentConfig,
    as_encoder,
    build_samples,
    cap_context,
    document_samples,
    split_of,
    split_sentences,
)

PARAGRAPH = (
    "Dr. Ada Lovelace wrote the first published algorithm. "
    "She worked with Charles Babbage on the Analytical Engine. Yes. "
    "Her notes were published in 1843 under her initials. "
    "They describe how the engine could compute Bernoulli numbers. "
    "Today she is celebrated as a pioneer of computing."
)
S1 = "Dr. Ada Lovelace wrote the first published algorithm."  # 7 words
S2 = "She worked with Charles Babbage on the Analytical Engine."  # 9 words
S3 = "Her notes were published in 1843 under her initials."  # 9 words
S4 = "They describe how the engine could compute Bernoulli numbers."
S5 = "Today she is celebrated as a pioneer of computing."


def words(text: str) -> list[int]:
    """Whitespace tokenizer stub: one token per word."""
    return list(range(len(text.split())))


DOC = Document(id="lovelace", text=PARAGRAPH, source="test")


def test_split_sentences_keeps_abbreviations_and_drops_short():
    sentences, dropped = split_sentences(PARAGRAPH, SegmentConfig())
    # "Dr." does not end a sentence; "Yes." (4 chars < 20) is dropped and counted.
    assert sentences == [S1, S2, S3, S4, S5]
    assert dropped == 1
    sentences, dropped = split_sentences(PARAGRAPH, SegmentConfig(min_sentence_chars=1))
    assert sentences == [S1, S2, "Yes.", S3, S4, S5] and dropped == 0


def test_samples_of_known_paragraph():
    counts = {}
    samples = document_samples(DOC, words, SegmentConfig(num_following=2), counts)
    assert samples == [
        Sample("lovelace", 2, S1, S2, (S3, S4)),
        Sample("lovelace", 3, f"{S1} {S2}", S3, (S4, S5)),
        Sample("lovelace", 4, f"{S1} {S2} {S3}", S4, (S5,)),
    ]
    assert samples[0].next_segment == S3
    assert samples[2].reference_segments == (S4, S5)
    assert counts == {"short_sentences_dropped": 1, "contexts_truncated": 0}


def test_context_cap_drops_whole_sentences_then_cuts():
    config = SegmentConfig(num_following=1, context_max_tokens=12)
    samples = document_samples(DOC, words, config)
    # i=2: S1 (7) fits. i=3: S1+S2 = 16 > 12, S2 (9) fits. i=4: S3 (9) alone fits.
    assert [(s.context, s.context_truncated) for s in samples] == [
        (S1, False),
        (S2, True),
        (S3, True),
    ]
    # Not even the last sentence fits: keep its last 5 words.
    config = dataclasses.replace(config, context_max_tokens=5)
    first = document_samples(DOC, words, config)[0]
    assert first.context == "wrote the first published algorithm."
    assert first.context_truncated


def test_cap_context_cuts_inside_a_word_only_when_no_word_fits():
    chars = lambda text: list(range(len(text)))  # one token per character
    assert cap_context(["abc defgh"], chars, 5) == ("defgh", True)
    assert cap_context(["abc defgh"], chars, 3) == ("fgh", True)
    assert cap_context(["ab", "cd"], chars, 5) == ("ab cd", False)
    assert cap_context(["ab", "cd"], chars, 4) == ("cd", True)


def test_one_and_two_sentence_documents_yield_nothing_and_are_counted():
    docs = [
        Document("one", "Only a single sentence is in this document.", "t"),
        Document("two", "This one has two sentences. That is still too few.", "t"),
        DOC,
    ]
    result = build_samples(docs, words, SegmentConfig(heldout_fraction=0.0))
    assert result.counts["documents"] == 3
    assert result.counts["documents_too_few_sentences"] == 2
    assert [s.doc_id for s in result.train] == ["lovelace"] * 3
    assert result.heldout == []


def test_max_samples_per_doc_is_a_deterministic_subset():
    config = SegmentConfig(max_samples_per_doc=2)
    counts = {}
    first = document_samples(DOC, words, config, counts)
    again = document_samples(DOC, words, config)
    assert first == again
    assert len(first) == 2 and counts["samples_capped"] == 1
    indices = [s.index for s in first]
    assert indices == sorted(indices) and set(indices) <= {2, 3, 4}


def test_split_is_by_document_id_and_stable():
    config = SegmentConfig(heldout_fraction=0.3, seed=7)
    ids = [f"doc-{i}" for i in range(2000)]
    splits = {i: split_of(i, config) for i in ids}
    share = sum(s == "heldout" for s in splits.values()) / len(ids)
    assert 0.25 < share < 0.35  # binomial sd ~0.01
    # Same id, same split, whatever else is in the corpus.
    assert all(split_of(i, config) == splits[i] for i in reversed(ids))
    assert {split_of(i, SegmentConfig(heldout_fraction=0.0)) for i in ids} == {"train"}
    # All samples of a document land in one split.
    docs = [dataclasses.replace(DOC, id=f"doc-{i}") for i in range(40)]
    result = build_samples(docs, words, config)
    train_ids = {s.doc_id for s in result.train}
    held_ids = {s.doc_id for s in result.heldout}
    assert not train_ids & held_ids
    assert held_ids == {d.id for d in docs if splits[d.id] == "heldout"}


def test_tokenizer_objects_are_accepted():
    class Encoding:
        def __init__(self, ids):
            self.ids = ids

    class FastTokenizer:  # like tokenizers.Tokenizer: encode -> Encoding
        def encode(self, text):
            return Encoding(words(text))

    class HFTokenizer:  # like transformers: encode -> list
        def encode(self, text):
            return words(text)

    for tok in (FastTokenizer(), HFTokenizer(), words):
        assert as_encoder(tok)("a b c") == [0, 1, 2]
    with pytest.raises(TypeError, match="encode"):
        as_encoder(42)


@pytest.mark.parametrize(
    "field, value",
    [
        ("min_sentence_chars", 0),
        ("num_following", 0),
        ("context_max_tokens", 0),
        ("max_samples_per_doc", 0),
        ("heldout_fraction", 1.0),
    ],
)
def test_bad_config(field, value):
    with pytest.raises(ValueError, match=field):
        SegmentConfig(**{field: value})
