"""Tolerant parser for the search-QA tag protocol (AT²PO / Search-R1 style).

A response is free text with four tag pairs::

    <think>…</think>            reasoning (optional, must be balanced)
    <search>query</search>      a tool call; generation stops at </search>
    <result>…</result>          tool output inserted by the environment (masked)
    <answer>… \\boxed{X} …</answer>   the final answer, exactly once

Every function here accepts any string and never raises: malformed model output is
something to report and count (``check_format`` returns a reason), not an exception.
Text inside ``<result>`` blocks is tool output, not model output. A rollout knows which
tokens the model sampled and which the environment inserted, so it scores
:func:`model_view`, in which every insertion is an empty ``<result></result>``: a
retrieved passage that contains ``</result>`` or ``<answer>`` cannot change the verdict.
On a plain string the format check skips to the first ``</result>`` instead, which a
passage containing that tag defeats.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "TAG_NAMES",
    "Tag",
    "scan_tags",
    "ends_with_search",
    "extract_search_query",
    "has_answer",
    "extract_answer_block",
    "extract_boxed",
    "extract_final_answer",
    "check_format",
    "model_view",
]

TAG_NAMES = ("think", "search", "result", "answer")
_TAG_RE = re.compile(r"<(/?)(think|search|result|answer)>")
_BOXED = "\\boxed"
# What a tool insertion looks like to the format check (see model_view).
RESULT_STUB = " <result></result>"


@dataclass(frozen=True)
class Tag:
    """One protocol tag found in a text: its name, whether it closes, and its span."""

    name: str
    closing: bool
    start: int
    end: int


def scan_tags(text: str) -> list[Tag]:
    """All protocol tags in ``text``, in order (exact lowercase spelling, no attributes)."""
    if not isinstance(text, str):
        return []
    return [
        Tag(name=m.group(2), closing=bool(m.group(1)), start=m.start(), end=m.end())
        for m in _TAG_RE.finditer(text)
    ]


def ends_with_search(turn_text: str) -> bool:
    """True when the turn stops at a ``</search>`` tag (trailing whitespace allowed)."""
    return isinstance(turn_text, str) and turn_text.rstrip().endswith("</search>")


def extract_search_query(turn_text: str) -> str | None:
    """The query of the ``<search>…</search>`` block that ends this turn.

    Returns the stripped query (possibly ``""``), or ``None`` when the turn does not end
    with ``</search>`` or that closing tag has no opening ``<search>`` before it. Nested
    openings (``<search>a <search>b</search>``) resolve to the innermost, last one.
    """
    if not ends_with_search(turn_text):
        return None
    body = turn_text.rstrip()[: -len("</search>")]
    open_at = body.rfind("<search>")
    if open_at < 0:
        return None
    return body[open_at + len("<search>") :].strip()


def has_answer(text: str) -> bool:
    """True when the text contains a complete ``<answer>…</answer>`` block."""
    return extract_answer_block(text) is not None


def extract_answer_block(text: str) -> str | None:
    """Content of the last complete ``<answer>…</answer>`` block, or ``None``."""
    if not isinstance(text, str):
        return None
    close_at = text.rfind("</answer>")
    if close_at < 0:
        return None
    open_at = text.rfind("<answer>", 0, close_at)
    if open_at < 0:
        return None
    return text[open_at + len("<answer>") : close_at]


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` in ``text``, with nested braces matched.

    ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``. Whitespace between ``\\boxed`` and
    ``{`` is allowed; ``\\{`` and ``\\}`` are literal braces. Returns ``None`` if there is
    no complete (brace-balanced) box. Linear time: one pass matches every brace, then
    the boxes are tried from the last (a policy can write thousands of open boxes).
    """
    if not isinstance(text, str):
        return None
    closes = _matching_braces(text)
    starts = []
    at = text.find(_BOXED)
    while at >= 0:
        starts.append(at + len(_BOXED))
        at = text.find(_BOXED, at + len(_BOXED))
    for pos in reversed(starts):
        end = _skip_blanks(text, pos)
        if end < len(text) and text[end] == "{" and end in closes:
            return text[end + 1 : closes[end]]
    return None


def _skip_blanks(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def _matching_braces(text: str) -> dict[int, int]:
    """``{open index: close index}`` for every balanced ``{…}`` (escapes skipped)."""
    closes: dict[int, int] = {}
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2  # \{ and \} are literal braces, not grouping
            continue
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            closes[stack.pop()] = i
        i += 1
    return closes


def extract_final_answer(response: str) -> str | None:
    """The boxed answer inside the last ``<answer>`` block, stripped; ``None`` if absent."""
    block = extract_answer_block(response)
    if block is None:
        return None
    boxed = extract_boxed(block)
    return None if boxed is None else boxed.strip()


def model_view(parts: Sequence[tuple[str, str]]) -> str:
    """A trajectory as the reward reads it: the model's own text, tool output opaque.

    ``parts`` are the trajectory's pieces in order, each ``("model", text)`` for sampled
    text or ``("tool", text)`` for an insertion (a search result, the limit notice).
    Every non-empty insertion becomes :data:`RESULT_STUB`, so only tags the model wrote
    are parsed, never tags that happen to be inside a retrieved passage.
    """
    out = []
    for source, text in parts:
        if source == "model":
            out.append(text)
        elif source == "tool":
            out.append(RESULT_STUB if text else "")
        else:
            raise ValueError(f"a trajectory part is 'model' or 'tool', got {source!r}")
    return "".join(out)


def check_format(response: str, require_think: bool = False) -> tuple[bool, str]:
    """Check a full response against the protocol; returns ``(ok, reason)``.

    Rules (AT²PO paper and reference code): ``<think>`` tags balanced and not nested,
    and with ``require_think`` at least one ``<think>…</think>`` block (the reference
    code rejects a response without one); exactly one ``<answer>`` block, after every
    tool call; each ``<search>…</search>`` followed by ``<result>…</result>`` before the
    next search or the answer; no result without a search; ``\\boxed{…}`` present inside
    the answer. ``reason`` is ``"ok"`` on success.
    """
    if not isinstance(response, str):
        return False, "response is not a string"
    # States: what we are inside of, and what the search/result pairing expects next.
    inside: str | None = None  # "think" | "search" | "answer"
    expect_result = False
    answers = 0
    thinks = 0
    answer_closed = False
    tags = scan_tags(response)
    i = 0
    while i < len(tags):
        tag = tags[i]
        if tag.name == "result":
            if tag.closing:
                return False, "</result> without <result>"
            if not expect_result or inside is not None:
                return False, "<result> not preceded by a search"
            # Skip the tool output: tags inside retrieved text are not the model's.
            j = i + 1
            while j < len(tags) and not (tags[j].name == "result" and tags[j].closing):
                j += 1
            if j == len(tags):
                return False, "<result> not closed"
            expect_result = False
            i = j + 1
            continue
        if not tag.closing:
            if inside is not None:
                return False, f"<{tag.name}> opened inside <{inside}>"
            if tag.name in ("search", "answer") and expect_result:
                return False, f"<{tag.name}> before the previous search got a <result>"
            if answer_closed and tag.name in ("search", "answer"):
                return False, f"<{tag.name}> after the answer"
            if tag.name == "answer":
                answers += 1
            inside = tag.name
        else:
            if inside != tag.name:
                return False, f"</{tag.name}> without matching <{tag.name}>"
            inside = None
            if tag.name == "search":
                expect_result = True
            elif tag.name == "answer":
                answer_closed = True
            elif tag.name == "think":
                thinks += 1
        i += 1
    if inside is not None:
        return False, f"<{inside}> not closed"
    if expect_result:
        return False, "search without a <result>"
    if answers != 1:
        return False, f"expected exactly one answer block, found {answers}"
    if require_think and thinks == 0:
        return False, "no <think> block"
    block = extract_answer_block(response)
    if block is None or extract_boxed(block) is None:
        return False, "no \\boxed{} in the answer"
    return True, "ok"
