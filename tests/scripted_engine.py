"""A turn engine for rollout tests that need no model: every turn is a scripted sample."""

from __future__ import annotations

from collections.abc import Callable

from rlpt_jax.rollout.tree import TurnSample


class TextTokenizer:
    """Each distinct text is one token id, so decode(encode(text)) == text."""

    def __init__(self):
        self.texts: list[str] = []

    def encode(self, text):
        if text not in self.texts:
            self.texts.append(text)
        return [self.texts.index(text) + 10]

    def decode(self, ids, **kwargs):
        return "".join(self.texts[i - 10] for i in ids)


class ScriptedTurnEngine:
    """The engine interface of :class:`rlpt_jax.rollout.tree.TreeRollout`, with row ids
    handed out in order and each turn of row ``r`` given by ``turn(r)``."""

    def __init__(self, turn: Callable[[int], TurnSample]):
        self.turn = turn
        self.rows = 0

    def _new(self, m: int) -> list[int]:
        self.rows += m
        return list(range(self.rows - m, self.rows))

    def start(self, prompts):
        return self._new(len(prompts))

    def fork(self, requests):
        return [self.fork_one(*r) for r in requests]

    def fork_one(self, row, length, m):
        return self._new(m)

    def extend(self, rows, tokens):
        pass

    def release(self, rows):
        pass

    def generate(self, rows, max_new_tokens):
        return [self.turn(r) for r in rows]

    def counters(self):
        return {"prefilled_tokens": 0, "decoded_tokens": 0}
