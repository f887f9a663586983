"""Tolerant parser for the multi-turn tool protocol (AT²PO / Search-R1 style).

A response is free text with these tag pairs::

    <think>…</think>            reasoning (optional, must be balanced)
    <search>query</search>      a search call; generation stops at </search>
    <python>code</python>       a Python call; generation stops at </python>
    <result>…</result>          tool output inserted by the environment (masked)
    <answer>… \\boxed{X} …</answer>   the final answer, exactly once

The tools of a run are a subset of :data:`TOOL_NAMES` (``env.tools``; the paper's
search-QA has only ``search``). The format check parses the tags of the enabled tools;
a disabled tool's tags are plain text to it (the environment refuses a turn that ends in
one, :mod:`rlpt_jax.envs.search_env`), so a search-only run reads a response exactly as
it did before the Python tool existed.

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
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "TAG_NAMES",
    "TOOL_NAMES",
    "Tag",
    "scan_tags",
    "ending_tool",
    "extract_call",
    "ends_with_search",
    "extract_search_query",
    "python_code",
    "has_answer",
    "extract_answer_block",
    "extract_boxed",
    "extract_final_answer",
    "check_format",
    "model_view",
]

TOOL_NAMES = ("search", "python")
TAG_NAMES = ("think", *TOOL_NAMES, "result", "answer")
_TAG_RE = re.compile(r"<(/?)(" + "|".join(TAG_NAMES) + r")>")
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


def ending_tool(turn_text: str) -> str | None:
    """The tool (of :data:`TOOL_NAMES`) whose closing tag ends the turn (trailing
    whitespace allowed), or ``None``."""
    if not isinstance(turn_text, str):
        return None
    end = turn_text.rstrip()
    for name in TOOL_NAMES:
        if end.endswith(f"</{name}>"):
            return name
    return None


def extract_call(turn_text: str, tool: str) -> str | None:
    """The body of the ``<tool>…</tool>`` block that ends this turn.

    Returns the stripped body (possibly ``""``), or ``None`` when the turn does not end
    with ``</tool>`` or that closing tag has no opening ``<tool>`` before it. Nested
    openings (``<search>a <search>b</search>``) resolve to the innermost, last one.
    """
    if ending_tool(turn_text) != tool:
        return None
    body = turn_text.rstrip()[: -len(f"</{tool}>")]
    open_at = body.rfind(f"<{tool}>")
    if open_at < 0:
        return None
    return body[open_at + len(tool) + 2 :].strip()


def ends_with_search(turn_text: str) -> bool:
    """True when the turn stops at a ``</search>`` tag (trailing whitespace allowed)."""
    return ending_tool(turn_text) == "search"


def extract_search_query(turn_text: str) -> str | None:
    """The query of the ``<search>…</search>`` block that ends this turn (see
    :func:`extract_call`)."""
    return extract_call(turn_text, "search")


def python_code(body: str) -> str:
    """The program in a ``<python>`` call's body: a Markdown code fence around it (three
    backticks, with or without a language name), which models often write, is dropped,
    and the lines are dedented. Linear time."""
    code = body.strip()
    if code.startswith("```"):
        first_newline = code.find("\n")
        code = "" if first_newline < 0 else code[first_newline + 1 :]
        if code.rstrip().endswith("```"):
            code = code.rstrip()[:-3]
    return textwrap.dedent(code).strip("\n")


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


def check_format(
    response: str, require_think: bool = False, tools: Sequence[str] = ("search",)
) -> tuple[bool, str]:
    """Check a full response against the protocol; returns ``(ok, reason)``.

    Rules (AT²PO paper and reference code): ``<think>`` tags balanced and not nested,
    and with ``require_think`` at least one ``<think>…</think>`` block (the reference
    code rejects a response without one); exactly one ``<answer>`` block, after every
    tool call; each tool call (``<search>…</search>``, ``<python>…</python>``) followed
    by ``<result>…</result>`` before the next call or the answer; no result without a
    call; ``\\boxed{…}`` present inside the answer. Only the tags of ``tools`` are tool
    calls; another tool's tags are plain text here. ``reason`` is ``"ok"`` on success.
    """
    if not isinstance(response, str):
        return False, "response is not a string"
    enabled = set(tools)
    calls = " or ".join(t for t in TOOL_NAMES if t in enabled) or "tool"
    # States: what we are inside of, and which call still waits for its result.
    inside: str | None = None  # "think" | a tool | "answer"
    pending: str | None = None  # the tool call that expects a <result> next
    answers = 0
    thinks = 0
    answer_closed = False
    tags = [t for t in scan_tags(response) if t.name not in TOOL_NAMES or t.name in enabled]
    i = 0
    while i < len(tags):
        tag = tags[i]
        if tag.name == "result":
            if tag.closing:
                return False, "</result> without <result>"
            if pending is None or inside is not None:
                return False, f"<result> not preceded by a {calls} call"
            # Skip the tool output: tags inside tool output are not the model's.
            j = i + 1
            while j < len(tags) and not (tags[j].name == "result" and tags[j].closing):
                j += 1
            if j == len(tags):
                return False, "<result> not closed"
            pending = None
            i = j + 1
            continue
        calling = tag.name in TOOL_NAMES
        if not tag.closing:
            if inside is not None:
                return False, f"<{tag.name}> opened inside <{inside}>"
            if (calling or tag.name == "answer") and pending is not None:
                return False, f"<{tag.name}> before the previous {pending} got a <result>"
            if answer_closed and (calling or tag.name == "answer"):
                return False, f"<{tag.name}> after the answer"
            if tag.name == "answer":
                answers += 1
            inside = tag.name
        else:
            if inside != tag.name:
                return False, f"</{tag.name}> without matching <{tag.name}>"
            inside = None
            if calling:
                pending = tag.name
            elif tag.name == "answer":
                answer_closed = True
            elif tag.name == "think":
                thinks += 1
        i += 1
    if inside is not None:
        return False, f"<{inside}> not closed"
    if pending is not None:
        return False, f"{pending} without a <result>"
    if answers != 1:
        return False, f"expected exactly one answer block, found {answers}"
    if require_think and thinks == 0:
        return False, "no <think> block"
    block = extract_answer_block(response)
    if block is None or extract_boxed(block) is None:
        return False, "no \\boxed{} in the answer"
    return True, "ok"
