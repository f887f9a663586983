"""Supervised fine-tuning data: conversations → token ids with an assistant-only loss mask.

The cold-start stage of both papers teaches the base policy the answer format before RL.
A training example is an :class:`Example`: token ids and a 0/1 mask marking the tokens
the loss is taken on. Three sources produce them:

* :func:`load_chat_jsonl`: a jsonl file of ``{"messages": [{"role": ..., "content": ...}]}``
  (the common chat format), encoded with :func:`encode_conversation`.
* :func:`rlpt_demonstrations`: RLPT tasks (train split only) answered in the exact answer
  format with the true next segment, so that the model learns the format, not held-out
  answers.
* AT²PO trajectories built token by token with the real environment
  (``rlpt_jax.rollout.at2po.demonstration``), where tool-result tokens carry mask 0.

Token ids follow the rollout's convention: the prompt of an assistant turn is the chat
template rendered up to that turn with the generation prompt, encoded as one string; the
assistant's text is encoded on its own and followed by the end-of-turn token. So the
model is trained on exactly the ids it would sample, and stops where the sampler stops.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from rlpt_jax.data.jsonl import BadLine, SkipLog, numbered_lines, parse_json_line
from rlpt_jax.data.tasks import END_TAG, START_TAG, Task

Message = dict[str, str]
ROLES = ("system", "user", "assistant", "tool")


class ChatFormatError(ValueError):
    """A conversation that cannot be trained on (with what is wrong)."""


@dataclasses.dataclass(frozen=True)
class Example:
    """Token ids and the loss mask (1 = trained on), same length."""

    tokens: tuple[int, ...]
    mask: tuple[int, ...]

    def __post_init__(self):
        if len(self.tokens) != len(self.mask):
            raise ValueError(f"{len(self.tokens)} tokens but {len(self.mask)} mask entries")


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """What the ``sft`` method trains on.

    Attributes:
      data: ``"rlpt"`` (demonstrations of the RLPT tasks built from ``config.corpus``),
        ``"at2po"`` (tool-protocol trajectories on ``config.qa.train``), or a path to a
        chat jsonl file (``{"messages": [...]}`` per line).
      seq_len: Tokens per packed row (default 512). Longer examples are cut (counted).
      batch_rows: Packed rows per step (default 8).
      heldout: Examples kept out of training for the held-out assistant loss (default 32).
      max_examples: Cap on the examples built (0 = all; default 0).
    """

    data: str = "rlpt"
    seq_len: int = 512
    batch_rows: int = 8
    heldout: int = 32
    max_examples: int = 0

    def __post_init__(self):
        if self.seq_len < 8 or self.batch_rows < 1:
            raise ValueError(f"sft.seq_len must be >= 8 and batch_rows >= 1: {self}")
        if self.heldout < 0 or self.max_examples < 0:
            raise ValueError("sft.heldout and sft.max_examples must be >= 0")


def _check_messages(messages: object, where: str) -> list[Message]:
    if not isinstance(messages, list) or not messages:
        raise ChatFormatError(f"{where}: 'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ChatFormatError(f"{where}: message {i} needs a role in {list(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise ChatFormatError(f"{where}: message {i} needs a string 'content'")
    if not any(m["role"] == "assistant" for m in messages):
        raise ChatFormatError(f"{where}: no assistant message, nothing to train on")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def encode_conversation(
    messages: Sequence[Message],
    render: Callable[..., str],
    encode: Callable[[str], list[int]],
    eos_id: int,
) -> Example:
    """Ids of a conversation and a mask that is 1 on assistant tokens only.

    ``render(messages, add_generation_prompt=...)`` is the chat template. Each assistant
    turn is trained on its text and the end-of-turn token ``eos_id``; the template's
    text between turns (headers, user and tool messages) has mask 0. The template must
    render earlier turns the same way once later ones exist (ChatML does); a template
    that rewrites history (e.g. dropping earlier reasoning) is reported, not guessed.
    """
    messages = list(messages)
    tokens: list[int] = []
    mask: list[int] = []
    done = ""  # rendered text already turned into tokens
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render(messages[:k], add_generation_prompt=True)
        if not prompt.startswith(done):
            raise ChatFormatError(
                f"the chat template renders messages before turn {k} differently once turn "
                f"{k} exists; multi-turn SFT needs a prefix-stable template"
            )
        context = encode(prompt[len(done) :])
        answer = encode(m["content"]) + [eos_id]
        tokens += context + answer
        mask += [0] * len(context) + [1] * len(answer)
        rendered = render(messages[: k + 1], add_generation_prompt=False)
        # The template's text after the end-of-turn token (e.g. a newline) is context of
        # the next turn, never trained: the sampler stops at the end-of-turn token.
        done = rendered[: _end_of_turn(rendered, prompt, m["content"])]
    return Example(tuple(tokens), tuple(mask))


def _end_of_turn(rendered: str, prompt: str, content: str) -> int:
    """Index in ``rendered`` just past the assistant turn's end-of-turn marker."""
    at = rendered.find(content, len(prompt)) if content else len(prompt)
    if not rendered.startswith(prompt) or at < 0:
        raise ChatFormatError("the chat template does not render the assistant text verbatim")
    rest = rendered[at + len(content) :]
    stripped = rest.rstrip()  # "<|im_end|>\n" → "<|im_end|>"
    return at + len(content) + len(stripped)


@dataclasses.dataclass
class LoadReport:
    """Non-blank lines read of a jsonl file, and the skipped ones by reason."""

    path: str
    read: int = 0
    skips: SkipLog = dataclasses.field(default_factory=SkipLog)

    @property
    def skipped(self) -> int:
        """Skipped lines, whatever the reason."""
        return self.skips.total

    @property
    def examples(self) -> list[str]:
        """The first skipped lines as ``"<file>:<line>: <reason> (<detail>)"``."""
        return self.skips.examples


def _conversation(raw: bytes, line_no: int) -> list[Message]:
    row = parse_json_line(raw, line_no)
    if not isinstance(row, dict):
        raise BadLine("not_object")
    try:
        return _check_messages(row.get("messages"), f"line {line_no}")
    except ChatFormatError as e:
        raise BadLine("bad_conversation", str(e)) from None


def load_chat_jsonl(path: str | Path) -> tuple[list[list[Message]], LoadReport]:
    """Conversations of a ``{"messages": [...]}`` jsonl file.

    A bad line (not UTF-8, not JSON, not a valid conversation) costs itself only: it is
    counted by reason in the report and announced in one warning with the first examples.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SFT data file {path} does not exist")
    report = LoadReport(str(path))
    out = []
    for line_no, raw in numbered_lines(path):
        if not raw.strip():
            continue
        report.read += 1
        try:
            out.append(_conversation(raw, line_no))
        except BadLine as e:
            report.skips.add(e, path, line_no)
    if not out:
        raise ValueError(f"no usable conversation in {path} (skipped: {report.skips.summary()})")
    report.skips.warn(f"SFT data file {path} ({len(out)} of {report.read} lines used)")
    return out, report


def rlpt_answer(task: Task) -> str:
    """The demonstration answer of an RLPT task: the true ``s_i`` in the answer tags.

    ``s_i`` is what both tasks ask for: the sentence after the context (ASR) and the
    masked sentence, which sits before the shown ``s_{i+1}`` (MSR).
    """
    return f"{START_TAG}{task.sample.target}{END_TAG}"


def rlpt_demonstrations(tasks: Sequence[Task]) -> list[list[Message]]:
    """Each (train) task's messages followed by its demonstration answer."""
    return [list(t.messages) + [{"role": "assistant", "content": rlpt_answer(t)}] for t in tasks]


def pack_examples(
    examples: Sequence[Example], seq_len: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Examples packed in order into rows of ``seq_len`` tokens, never split across rows.

    Returns ``tokens``, ``segment_ids`` (1, 2, … per example in a row, 0 = padding) and
    ``loss_mask``, each ``[R, seq_len]``. The first token of an example is never in the
    loss (it has no prediction). An example longer than a row is an error: filter with
    :func:`fits` first, so the caller counts what it drops.
    """
    rows: list[list[Example]] = [[]]
    fill = 0
    for ex in examples:
        n = len(ex.tokens)
        if n > seq_len:
            raise ValueError(f"an example of {n} tokens does not fit a row of {seq_len}")
        if fill + n > seq_len:
            rows.append([])
            fill = 0
        rows[-1].append(ex)
        fill += n
    tokens = np.full((len(rows), seq_len), pad_id, np.int32)
    seg = np.zeros((len(rows), seq_len), np.int32)
    mask = np.zeros((len(rows), seq_len), np.float32)
    for r, row in enumerate(rows):
        at = 0
        for s, ex in enumerate(row, 1):
            n = len(ex.tokens)
            tokens[r, at : at + n] = ex.tokens
            seg[r, at : at + n] = s
            mask[r, at + 1 : at + n] = ex.mask[1:]
            at += n
    return tokens, seg, mask


def fits(examples: Sequence[Example], seq_len: int) -> tuple[list[Example], int]:
    """The examples that fit one row, and how many did not."""
    kept = [e for e in examples if len(e.tokens) <= seq_len]
    return kept, len(examples) - len(kept)
