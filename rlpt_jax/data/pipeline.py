"""From a corpus config to what the training loop consumes.

RLPT: documents → cleaning → sentence samples (train / held-out by document) → ASR/MSR
tasks. NTP baseline: the same cleaned train documents, tokenised and packed into fixed
``[B, T]`` rows. Both streams are deterministic functions of (seed, position), so a
checkpoint only needs the position to resume the data exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from rlpt_jax.data.clean import CleanConfig, clean
from rlpt_jax.data.corpus import CorpusConfig, Document, load_corpus
from rlpt_jax.data.segments import SegmentConfig, build_samples, split_of
from rlpt_jax.data.tasks import Task, TaskConfig, make_task


@dataclasses.dataclass
class RLPTData:
    train_tasks: list[Task]
    heldout_tasks: list[Task]
    train_docs: list[Document]
    heldout_docs: list[Document]
    counts: dict[str, int]


def build_rlpt_data(
    corpus: CorpusConfig,
    cleaning: CleanConfig,
    segments: SegmentConfig,
    tasks: TaskConfig,
    encode: Callable[[str], Sequence[int]],
    renderer: Callable[[list[dict[str, str]]], str] | None,
) -> RLPTData:
    """Read, clean, segment and pose tasks; every drop is counted in ``counts``."""
    docs, report = load_corpus(corpus)
    cleaned = clean(docs, cleaning)
    kept = cleaned.documents
    counts = {f"corpus_skipped_{k}": v for k, v in report.skipped.items()}
    counts.update({f"clean_{k}": v for k, v in cleaned.dropped.items()})
    counts["documents_read"] = len(docs)
    counts["documents_kept"] = len(kept)
    if not kept:
        raise ValueError(
            f"no documents left after cleaning ({len(docs)} read; drops: {cleaned.dropped}); "
            f"relax config.clean or check the corpus"
        )
    samples = build_samples(kept, encode, segments)
    counts.update({f"samples_{k}": v for k, v in samples.counts.items()})
    if not samples.train:
        raise ValueError(
            f"no training samples: every document has fewer than 3 sentences of at least "
            f"{segments.min_sentence_chars} characters ({samples.counts}); use longer "
            f"documents or lower config.segments.min_sentence_chars"
        )
    train_tasks = [make_task(s, tasks, renderer) for s in samples.train]
    heldout = samples.heldout
    # Held-out accuracy is reported per task kind: alternate ASR/MSR deterministically.
    heldout_tasks = [
        make_task(s, tasks, renderer, kind="msr" if i % 2 and tasks.msr_fraction > 0 else "asr")
        for i, s in enumerate(heldout)
    ]
    split = {d.id: split_of(d.id, segments) for d in kept}
    return RLPTData(
        train_tasks=train_tasks,
        heldout_tasks=heldout_tasks,
        train_docs=[d for d in kept if split[d.id] == "train"],
        heldout_docs=[d for d in kept if split[d.id] == "heldout"],
        counts=counts,
    )


class IndexStream:
    """An endless, seeded shuffle of ``range(n)``: epoch e uses permutation(seed, e).

    ``take(k)`` returns the next ``k`` indices and advances ``position``; setting
    ``position`` (from a checkpoint) resumes the exact same sequence.
    """

    def __init__(self, n: int, seed: int, position: int = 0):
        if n < 1:
            raise ValueError("cannot stream an empty dataset")
        self.n = n
        self.seed = seed
        self.position = position
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def _perm_for(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        return self._perm

    def take(self, k: int) -> list[int]:
        out = []
        for _ in range(k):
            epoch, i = divmod(self.position, self.n)
            out.append(int(self._perm_for(epoch)[i]))
            self.position += 1
        return out


def pack_documents(
    token_lists: Sequence[Sequence[int]], seq_len: int, eos_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pack documents (each followed by EOS) into rows of ``seq_len`` tokens.

    Returns ``tokens [R, seq_len]`` and ``segment_ids [R, seq_len]`` (1, 2, … per document
    piece within a row, 0 on padding) so attention never crosses documents. A document
    longer than a row continues in the next row as a new segment.
    """
    rows_tok, rows_seg = [], []
    tok = np.zeros(seq_len, np.int32)
    seg = np.zeros(seq_len, np.int32)
    fill, seg_id = 0, 0
    for ids in token_lists:
        ids = list(ids) + [eos_id]
        while ids:
            if fill == seq_len:
                rows_tok.append(tok)
                rows_seg.append(seg)
                tok = np.zeros(seq_len, np.int32)
                seg = np.zeros(seq_len, np.int32)
                fill, seg_id = 0, 0
            take = min(len(ids), seq_len - fill)
            seg_id += 1
            tok[fill : fill + take] = ids[:take]
            seg[fill : fill + take] = seg_id
            fill += take
            ids = ids[take:]
    if fill:
        rows_tok.append(tok)
        rows_seg.append(seg)
    return np.stack(rows_tok), np.stack(rows_seg)
