"""Reading jsonl files line by line, and accounting for everything skipped.

Data a reader cannot use must never vanish silently: one bad line (bytes that are not
UTF-8, text that is not JSON, a record of the wrong shape) costs that line only, never the
rest of its file. Every skip is counted by reason in a :class:`SkipLog`, which keeps the
first few as examples (``file:line: reason``) and turns them into one warning
(:class:`SkippedDataWarning`) at the end of the read. The QA, corpus and chat readers
all read through :func:`numbered_lines` and :func:`parse_json_line`.

Run with ``-W error::rlpt_jax.data.jsonl.SkippedDataWarning`` to make any skip fatal.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = ["BadLine", "SkipLog", "SkippedDataWarning", "numbered_lines", "parse_json_line"]

MAX_EXAMPLES = 5


class SkippedDataWarning(UserWarning):
    """A reader skipped lines or documents (the message has counts and examples)."""


class BadLine(Exception):
    """Why one line or document is skipped: ``reason`` names its counter, ``detail``
    (optional) says what exactly was wrong, for the examples."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass
class SkipLog:
    """Skipped items counted by reason, with the first :data:`MAX_EXAMPLES` as examples.

    Attributes:
      counts: Skipped items per reason.
      examples: ``"<file>:<line>: <reason> (<detail>)"`` (no line for a whole document).
    """

    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    examples: list[str] = dataclasses.field(default_factory=list)

    @property
    def total(self) -> int:
        """All skipped items, whatever the reason."""
        return sum(self.counts.values())

    def add(self, bad: BadLine, path: str | os.PathLike[str], line_no: int | None = None):
        """Counts one skipped line (``line_no``) or whole document (``None``)."""
        self.counts[bad.reason] = self.counts.get(bad.reason, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            where = str(path) if line_no is None else f"{path}:{line_no}"
            detail = f" ({bad.detail})" if bad.detail else ""
            self.examples.append(f"{where}: {bad.reason}{detail}")

    def summary(self) -> str:
        """Counts by reason and the first examples, for warnings and errors."""
        if not self.total:
            return "nothing"
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
        more = " ..." if self.total > len(self.examples) else ""
        return f"{reasons}; first: {'; '.join(self.examples)}{more}"

    def warn(self, what: str, stacklevel: int = 3) -> None:
        """One :class:`SkippedDataWarning` for ``what`` (a sentence subject such as
        ``"QA file x.jsonl"``); nothing when nothing was skipped."""
        if self.total:
            warnings.warn(
                f"{what}: skipped {self.total} ({self.summary()})",
                SkippedDataWarning,
                stacklevel=stacklevel,
            )


def numbered_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, bytes]]:
    """``(1-based line number, raw bytes)`` of every line of ``path``.

    Bytes, not text: a decoding error must cost one line (see :func:`parse_json_line`),
    and only ``\\n`` ends a line (JSON strings may hold U+2028 and other separators that
    text-mode splitting would cut at).
    """
    with open(path, "rb") as f:
        yield from enumerate(f, start=1)


def parse_json_line(raw: bytes, line_no: int) -> Any:
    """The JSON value of one line; a UTF-8 byte-order mark on line 1 is allowed.

    Raises:
      BadLine: ``"not_utf8"`` (with the offending byte and column) or ``"bad_json"``
        (with the parser's message; also for nesting too deep to parse).
    """
    try:
        text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
    except UnicodeDecodeError as e:
        raise BadLine("not_utf8", f"byte 0x{raw[e.start]:02x} at column {e.start + 1}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadLine("bad_json", f"{e.msg} at column {e.colno}") from None
    except RecursionError:
        raise BadLine("bad_json", "nested too deeply") from None
