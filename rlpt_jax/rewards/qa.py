"""Question-answering rewards: SQuAD-normalised exact match and F1, and the AT²PO reward.

Normalisation (SQuAD v1.1 evaluation script): lowercase, remove punctuation, remove the
articles *a*, *an*, *the*, collapse whitespace.

* ``EM(p, G) = max_{g∈G} [norm(p) == norm(g)]``
* ``F1(p, G) = max_{g∈G} 2·P·R / (P + R)`` with token precision
  ``P = |p ∩ g| / |p|`` and recall ``R = |p ∩ g| / |g|`` (multiset overlap of
  normalised tokens; 0 when there is no overlap).
* AT²PO: ``r = EM(boxed answer, golds)`` when the response passes
  :func:`rlpt_jax.envs.tags.check_format`, else ``r = format_penalty`` (paper: −1). A
  math agent's answer is checked by the math verifier instead
  (:mod:`rlpt_jax.rewards.math_verifier`): ``r = 1[verified]`` for a valid format.
  Rollouts pass :func:`rlpt_jax.envs.tags.model_view` of a trajectory, so only the
  model's own tokens are parsed, never tags inside retrieved passages.

Pure functions of strings; no state.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

from rlpt_jax.envs.tags import check_format, extract_final_answer

__all__ = ["normalize_answer", "exact_match", "f1_score", "at2po_reward"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, squash spaces."""
    text = str(text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _golds(gold: str | Sequence[str]) -> list[str]:
    golds = [gold] if isinstance(gold, str) else [str(g) for g in gold]
    if not golds:
        raise ValueError("at least one gold answer is needed")
    return golds


def exact_match(prediction: str, gold: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golds(gold)))


def _f1_single(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        # SQuAD convention: both empty is a match, one empty is not.
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, gold: str | Sequence[str]) -> float:
    """Token-level F1 against the best-matching gold answer."""
    pred_tokens = normalize_answer(prediction).split()
    return max(_f1_single(pred_tokens, normalize_answer(g).split()) for g in _golds(gold))


def at2po_reward(
    response: str,
    gold: str | Sequence[str],
    format_penalty: float = -1.0,
    require_think: bool = False,
    tools: Sequence[str] = ("search",),
    correct: bool | None = None,
) -> tuple[float, dict[str, Any]]:
    """AT²PO outcome reward of a full response (model turns plus inserted results).

    ``require_think``: a response without a ``<think>…</think>`` block is malformed, as
    in the reference code (``env.require_think``). ``tools``: the enabled tools, whose
    tags the format check parses (``env.tools``). ``correct``: the verdict of another
    check of the boxed answer (the math verifier, ``qa.reward="math"``), used in place of
    exact match: ``r = 1[correct]`` when the format is valid.

    Returns ``(reward, details)`` with details ``em`` (exact match, or ``correct`` when
    given), ``f1`` (of the boxed answer; 0 when absent), ``format_ok``, ``reason`` (the
    format check's) and ``answer`` (the extracted boxed text or ``None``). EM and F1 are
    reported even when the format fails, so a run can tell wrong answers from malformed
    ones.
    """
    if not math.isfinite(format_penalty):
        raise ValueError(f"format_penalty must be finite, got {format_penalty}")
    golds = _golds(gold)
    format_ok, reason = check_format(response, require_think, tools)
    answer = extract_final_answer(response) if isinstance(response, str) else None
    if correct is not None:
        em = float(correct)
    else:
        em = exact_match(answer, golds) if answer is not None else 0.0
    f1 = f1_score(answer, golds) if answer is not None else 0.0
    reward = em if format_ok else float(format_penalty)
    return reward, {"em": em, "f1": f1, "format_ok": format_ok, "reason": reason, "answer": answer}
