"""Verifiable math rewards: the last ``\\boxed{}`` of a response, checked by math-verify.

RLVR (``method="rlvr"``) rewards a response 1 when its final answer is right and 0 when
it is wrong; a response without a ``\\boxed{}`` answer gets ``format_penalty`` (0 by
default, so the reward is plain 1/0).

``r = 1[verify(gold, last_boxed(response))]``, or ``format_penalty`` when no box.

Answers are checked by Hugging Face's ``math-verify`` (LaTeX, fractions, sets, intervals,
equations such as ``x=3`` against ``3``), or, for problems made by a reasoning-gym
generator, by that generator's own scorer (correct when it scores 1). Where math-verify
cannot parse the gold answer or the prediction, and for gold answers that are words (it
reads ``Monday`` as the product ``M·o·n·d·a·y``, so any anagram would pass), the two are
compared as normalised strings, and the check is counted as ``string``.

**Bounded time.** A policy under RL writes whatever earns reward, including inputs on
which a symbolic verifier runs for minutes (SymPy's big powers do not return to Python,
so in-process timers cannot stop them). The boxed answer is found in one linear pass
(:func:`rlpt_jax.envs.tags.extract_boxed`), answers longer than ``max_answer_chars`` are
wrong without a check, and every check runs in a worker process (``python -m
rlpt_jax.rewards.math_verifier``) under math-verify's own timeouts; a check that outlives
``deadline_s`` costs the worker its life (it is killed and restarted) and the answer
counts as wrong, ``timeout``. Nothing in :meth:`MathVerifier.check` raises on any input.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlpt_jax import multihost
from rlpt_jax.envs.tags import extract_boxed

__all__ = [
    "HOWS",
    "Check",
    "GeneratorRef",
    "MathVerifier",
    "Verdict",
    "VerifierConfig",
    "VerifierUnavailableError",
    "check_answer",
    "math_reward",
    "normalise",
    "boxed_answer",
]

# How a verdict was reached: math-verify, normalised strings, a reasoning-gym scorer, or
# no check at all (no box, answer too long, past the deadline, an error).
HOWS = ("math_verify", "string", "generator", "no_answer", "too_long", "timeout", "error")
_STARTUP_S = 120.0  # importing SymPy on a busy 2-core machine takes seconds, not minutes


class VerifierUnavailableError(RuntimeError):
    """The verifier worker cannot start (a missing dependency); the message says why."""


@dataclasses.dataclass(frozen=True)
class VerifierConfig:
    """Limits of the answer check.

    Attributes:
      timeout_s: math-verify's own budget (whole seconds, >= 1) for parsing each side and
        for the comparison, inside the worker.
      deadline_s: Hard wall-clock limit of one check; past it the worker is killed and
        restarted and the answer counts as wrong (``timeout``). Keep it above
        ``3 * timeout_s`` (two parses and one comparison) so that math-verify's own,
        cheaper timeout fires first.
      max_answer_chars: Boxed answers longer than this are wrong without a check
        (``too_long``): no true answer to a math problem is that long, and parse time
        grows with it.
    """

    timeout_s: int = 2
    deadline_s: float = 10.0
    max_answer_chars: int = 1000

    def __post_init__(self):
        if int(self.timeout_s) != self.timeout_s or self.timeout_s < 1:
            raise ValueError(
                f"verifier.timeout_s must be a whole number >= 1, got {self.timeout_s}"
            )
        if self.deadline_s <= 0 or self.max_answer_chars < 1:
            raise ValueError("verifier.deadline_s must be > 0 and max_answer_chars >= 1")


@dataclasses.dataclass(frozen=True)
class GeneratorRef:
    """A reasoning-gym problem by reference: generator ``name`` with ``options``, built
    with ``seed`` and ``size``, item ``index``. The worker rebuilds the item from this
    (generators are seeded per item) and asks the generator's scorer."""

    name: str
    options: tuple[tuple[str, Any], ...]
    seed: int
    size: int
    index: int


@dataclasses.dataclass(frozen=True)
class Check:
    """One answer to check: ``answer`` (the boxed text, ``None`` when there was no box)
    against ``gold``, or with ``generator``'s scorer when it is set."""

    answer: str | None
    gold: str
    generator: GeneratorRef | None = None


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether an answer is right, and how that was decided (one of :data:`HOWS`)."""

    correct: bool
    how: str  # one of HOWS


def math_reward(verdict: Verdict, format_penalty: float = 0.0) -> float:
    """1 for a right answer, 0 for a wrong one, ``format_penalty`` when there was no box."""
    if verdict.how == "no_answer":
        return float(format_penalty)
    return float(verdict.correct)


# -- the check itself (runs in the worker; also callable in-process on the main thread) --
_COMMAND = re.compile(r"\\[A-Za-z]+")
_TEXT_WRAP = re.compile(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}")
_WORD = re.compile(r"[A-Za-z]{2,}")


def normalise(text: str) -> str:
    """A loose canonical string: ``\\text{}`` unwrapped, ``$``, ``\\left``/``\\right``,
    spaces and a final period dropped, lower case."""
    text = _TEXT_WRAP.sub(r"\1", text)
    text = text.replace("\\left", "").replace("\\right", "").replace("$", "")
    return "".join(text.split()).rstrip(".").lower()


def _is_word_answer(gold: str) -> bool:
    """Words, not math: no digit, and two letters in a row outside LaTeX commands."""
    return not any(c.isdigit() for c in gold) and bool(_WORD.search(_COMMAND.sub("", gold)))


def check_answer(answer: str, gold: str, timeout_s: int = 2) -> tuple[bool, str]:
    """``(correct, how)`` for a boxed ``answer`` against ``gold`` with math-verify.

    Both sides are parsed as the content of a ``\\boxed{}`` (so ``{2, 1}`` is a set, not
    a brace group); math-verify's signal-based timeouts need the main thread.
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    if _is_word_answer(gold):
        return normalise(answer) == normalise(gold), "string"
    targets = [LatexExtractionConfig(), ExprExtractionConfig()]

    def parsed(text: str) -> list:
        return parse(
            "\\boxed{" + text + "}",
            extraction_config=targets,
            fallback_mode="no_fallback",
            parsing_timeout=timeout_s,
        )

    g, p = parsed(gold), parsed(answer)
    if not g or not p:
        return normalise(answer) == normalise(gold), "string"
    return bool(verify(g, p, timeout_seconds=timeout_s)), "math_verify"


_DATASETS: dict[tuple, Any] = {}


def _generator_check(answer: str, ref: dict) -> tuple[bool, str]:
    """The reasoning-gym generator's own scorer on its item; correct when it gives 1."""
    import reasoning_gym

    key = (ref["name"], json.dumps(ref["options"]), ref["seed"], ref["size"])
    if key not in _DATASETS:
        _DATASETS[key] = reasoning_gym.create_dataset(
            ref["name"], seed=ref["seed"], size=ref["size"], **dict(ref["options"])
        )
    dataset = _DATASETS[key]
    return float(dataset.score_answer(answer, dataset[ref["index"]])) >= 1.0, "generator"


def _serve() -> None:
    """The worker: one JSON request per stdin line, one JSON verdict per stdout line."""
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # timeouts are verdicts
    # The protocol owns stdout; whatever a library prints goes to stderr instead.
    out, sys.stdout = sys.stdout, sys.stderr

    def reply(message: dict) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    try:
        import math_verify  # noqa: F401
    except ImportError as e:
        reply({"ready": False, "error": repr(e)})
        return
    reply({"ready": True})
    for line in sys.stdin:
        try:
            req = json.loads(line)
            if req["generator"] is not None:
                correct, how = _generator_check(req["answer"], req["generator"])
            else:
                correct, how = check_answer(req["answer"], req["gold"], req["timeout_s"])
        except Exception:  # noqa: BLE001 - a verdict, never a dead worker
            correct, how = False, "error"
        reply({"correct": correct, "how": how})


# -- the parent side ---------------------------------------------------------------------
class MathVerifier:
    """Checks answers in a worker process that it kills and restarts when a check hangs.

    Thread-safe; :meth:`close` (or garbage collection) ends the worker, and so does the
    end of this process (the worker exits when its stdin closes).
    """

    def __init__(self, config: VerifierConfig | None = None):
        self.config = config or VerifierConfig()
        self._proc: subprocess.Popen | None = None
        self._buf = b""
        self._lock = threading.Lock()
        self.kills = 0  # workers killed for a hung check or a garbled reply

    def probe(self) -> None:
        """Start the worker and check one known answer; a clear error if it cannot."""
        verdict = self.check([Check("\\frac{1}{2}", "0.5")])[0]
        if not verdict.correct:
            raise VerifierUnavailableError(
                f"the math verifier judged 1/2 == 0.5 wrong ({verdict.how}); reinstall "
                "the pinned requirements: pip install -r requirements.txt"
            )

    def check(self, checks: Sequence[Check]) -> list[Verdict]:
        """A verdict per check, in order; never raises on any answer text."""
        with self._lock:  # one worker checks, in a multi-host run on process 0 alone
            return multihost.once(lambda: [self._check_one(c) for c in checks])

    def _check_one(self, c: Check) -> Verdict:
        if c.answer is None:
            return Verdict(False, "no_answer")
        if len(c.answer) > self.config.max_answer_chars:
            return Verdict(False, "too_long")
        gen = None if c.generator is None else dataclasses.asdict(c.generator)
        req = {"answer": c.answer, "gold": c.gold, "generator": gen}
        req["timeout_s"] = int(self.config.timeout_s)
        try:
            reply = self._ask(json.dumps(req), self.config.deadline_s)
        except TimeoutError:
            self._kill()
            self.kills += 1
            return Verdict(False, "timeout")
        except (OSError, ValueError):  # a dead worker, a garbled line
            self._kill()
            self.kills += 1
            return Verdict(False, "error")
        how = reply.get("how") if isinstance(reply, dict) else None
        return Verdict(reply["correct"] is True, how) if how in HOWS else Verdict(False, "error")

    def _ask(self, line: str, deadline_s: float) -> dict:
        proc = self._worker()
        proc.stdin.write(line.encode() + b"\n")
        proc.stdin.flush()
        return json.loads(self._read_line(proc, time.monotonic() + deadline_s))

    def _worker(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._start()
        return self._proc

    def _start(self) -> None:
        root = str(Path(__file__).resolve().parents[2])  # the worker imports rlpt_jax
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "rlpt_jax.rewards.math_verifier"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self._buf = b""
        try:
            hello = json.loads(self._read_line(self._proc, time.monotonic() + _STARTUP_S))
        except (TimeoutError, OSError, ValueError) as e:
            self._kill()
            raise VerifierUnavailableError(f"the math verifier worker did not start: {e!r}") from e
        if not hello.get("ready"):
            self._kill()
            raise VerifierUnavailableError(
                f"the math verifier cannot run ({hello.get('error')}); install the pinned "
                "requirements: pip install -r requirements.txt"
            )

    def _read_line(self, proc: subprocess.Popen, deadline: float) -> bytes:
        """The worker's next output line, or ``TimeoutError`` at ``deadline``."""
        fd = proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError("no verdict before the deadline")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise OSError("the verifier worker exited")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for pipe in (self._proc.stdin, self._proc.stdout):
                pipe.close()
            self._proc = None

    def close(self) -> None:
        with self._lock:
            self._kill()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def boxed_answer(response: str) -> str | None:
    """The stripped content of the response's last ``\\boxed{}`` (``None``: no box)."""
    box = extract_boxed(response)
    return None if box is None else box.strip()


if __name__ == "__main__":
    _serve()
