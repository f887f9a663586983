"""Corpus cleaning: rule filters, exact dedup and MinHash near-duplicate removal.

The RLPT paper's pipeline removes near-duplicates with MinHash and applies rule filters
before building tasks (PII masking, eval-overlap removal and the model-based quality
filter are not done here). Rules run in a fixed order and each dropped document is
counted under the first rule it fails:

1. ``too_short`` / ``too_long``: stripped length outside ``[min_chars, max_chars]``.
2. ``non_alpha``: more than ``max_non_alpha_fraction`` of the non-space characters are
   not letters (tables, code, number lists, markup residue).
3. ``exact_duplicate``: same normalised text as an earlier document.
4. ``near_duplicate``: estimated Jaccard similarity of word-shingle sets
   ``>= minhash_threshold`` with an earlier kept document (datasketch ``MinHash`` +
   ``MinHashLSH``; LSH candidates are confirmed with the MinHash estimate, so an LSH
   false positive does not drop a document).

The first occurrence always wins, so the result depends only on the input order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import unicodedata

from datasketch import MinHash, MinHashLSH

from rlpt_jax.data.corpus import Document

RULES = ("too_short", "too_long", "non_alpha", "exact_duplicate", "near_duplicate")


@dataclasses.dataclass(frozen=True)
class CleanConfig:
    """Cleaning rules; every threshold is ours (the paper gives none).

    Attributes:
      min_chars: Drop documents shorter than this after stripping (default 100: shorter
        texts rarely hold the three sentences a sample needs).
      max_chars: Drop documents longer than this (default 200,000; huge files are
        usually dumps, not prose).
      max_non_alpha_fraction: Largest allowed share of non-letter characters among
        non-whitespace characters (default 0.3; English prose is about 0.03-0.1).
      exact_dedup: Remove exact duplicates of the normalised text (default on).
      near_dedup: Remove MinHash near-duplicates (default on).
      minhash_threshold: Jaccard similarity at or above which two documents are near
        duplicates (default 0.8, the usual value for web-scale dedup).
      num_perm: MinHash permutations (default 128; estimate std ~ 0.04 at J = 0.8).
      shingle_size: Words per shingle (default 3; changing one word of a paragraph
        changes 3 shingles, so light edits stay above the threshold).
      seed: MinHash seed (fixed so that cleaning is reproducible).
    """

    min_chars: int = 100
    max_chars: int = 200_000
    max_non_alpha_fraction: float = 0.3
    exact_dedup: bool = True
    near_dedup: bool = True
    minhash_threshold: float = 0.8
    num_perm: int = 128
    shingle_size: int = 3
    seed: int = 1

    def __post_init__(self):
        if self.min_chars < 0:
            raise ValueError(f"min_chars must be >= 0, got {self.min_chars}")
        if self.max_chars < max(self.min_chars, 1):
            raise ValueError(
                f"max_chars ({self.max_chars}) must be >= max(min_chars, 1) ({self.min_chars})"
            )
        if not 0.0 <= self.max_non_alpha_fraction <= 1.0:
            raise ValueError(
                f"max_non_alpha_fraction must be in [0, 1], got {self.max_non_alpha_fraction}"
            )
        if not 0.0 < self.minhash_threshold <= 1.0:
            raise ValueError(f"minhash_threshold must be in (0, 1], got {self.minhash_threshold}")
        if self.num_perm < 16:
            raise ValueError(f"num_perm must be >= 16 for a usable estimate, got {self.num_perm}")
        if self.shingle_size < 1:
            raise ValueError(f"shingle_size must be >= 1, got {self.shingle_size}")
        if self.near_dedup:
            try:  # datasketch needs >= 2 LSH bands; high thresholds need more permutations.
                MinHashLSH(threshold=self.minhash_threshold, num_perm=self.num_perm)
            except ValueError as e:
                raise ValueError(
                    f"minhash_threshold={self.minhash_threshold} with num_perm={self.num_perm} "
                    f"cannot be indexed ({e}); raise num_perm or lower the threshold"
                ) from e


@dataclasses.dataclass(frozen=True)
class CleanResult:
    """Kept documents (input order) and how many were dropped by each rule."""

    documents: list[Document]
    dropped: dict[str, int]
    total: int

    @property
    def kept(self) -> int:
        return len(self.documents)


_NON_WORD = re.compile(r"[^\w\s]+")


def normalise(text: str) -> str:
    """NFKC, lowercase, punctuation removed, whitespace collapsed (dedup key basis)."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_NON_WORD.sub(" ", text).split())


def non_alpha_fraction(text: str) -> float:
    """Share of non-letter characters among the non-whitespace characters (0 if none)."""
    visible = [c for c in text if not c.isspace()]
    if not visible:
        return 0.0
    return sum(not c.isalpha() for c in visible) / len(visible)


def shingles(text: str, size: int) -> set[str]:
    """Word ``size``-grams of the normalised text (the whole text if it is shorter)."""
    words = normalise(text).split()
    if len(words) <= size:
        return {" ".join(words)}
    return {" ".join(words[i : i + size]) for i in range(len(words) - size + 1)}


def minhash(text: str, config: CleanConfig) -> MinHash:
    """MinHash signature of the document's word shingles."""
    signature = MinHash(num_perm=config.num_perm, seed=config.seed)
    signature.update_batch([s.encode("utf-8") for s in shingles(text, config.shingle_size)])
    return signature


def _rule_failed(text: str, config: CleanConfig) -> str | None:
    length = len(text.strip())
    if length < config.min_chars:
        return "too_short"
    if length > config.max_chars:
        return "too_long"
    if non_alpha_fraction(text) > config.max_non_alpha_fraction:
        return "non_alpha"
    return None


def clean(documents: list[Document], config: CleanConfig) -> CleanResult:
    """Applies the rules of the module docstring in order; first occurrence wins."""
    dropped = dict.fromkeys(RULES, 0)
    seen_hashes: set[str] = set()
    lsh = (
        MinHashLSH(threshold=config.minhash_threshold, num_perm=config.num_perm)
        if config.near_dedup
        else None
    )
    signatures: dict[str, MinHash] = {}
    kept = []
    for index, doc in enumerate(documents):
        rule = _rule_failed(doc.text, config)
        if rule is not None:
            dropped[rule] += 1
            continue
        if config.exact_dedup:
            digest = hashlib.sha256(normalise(doc.text).encode("utf-8")).hexdigest()
            if digest in seen_hashes:
                dropped["exact_duplicate"] += 1
                continue
            seen_hashes.add(digest)
        if lsh is not None:
            signature = minhash(doc.text, config)
            if any(
                signature.jaccard(signatures[key]) >= config.minhash_threshold
                for key in lsh.query(signature)
            ):
                dropped["near_duplicate"] += 1
                continue
            signatures[str(index)] = signature
            lsh.insert(str(index), signature)
        kept.append(doc)
    return CleanResult(documents=kept, dropped=dropped, total=len(documents))
