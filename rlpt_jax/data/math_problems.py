"""Problems with checkable answers for RLVR (and the AT²PO math agent, ``qa.reward="math"``):
jsonl files and reasoning-gym generators.

A *source* is a string:

* a path to a jsonl file with ``problem`` and ``answer`` fields on every line (the common
  format of DAPO-Math, DeepScaleR and MATH files; a numeric answer is read as its text).
  Lines that are not such records are skipped, counted and warned about
  (:mod:`rlpt_jax.data.jsonl`);
* ``rg:<generator>`` or ``rg:<generator>:<key>=<value>,…``: seeded problems from a
  `reasoning-gym <https://github.com/open-thought/reasoning-gym>`_ generator with those
  options (scalar values only), e.g. ``rg:chain_sum:min_terms=2,max_terms=2,max_digits=1``.
  They are checked with the generator's own scorer (:class:`GeneratorRef`).

Held-out problems never appear in training: a reasoning-gym source is one seeded dataset
of ``train_size + heldout`` items (items are seeded one by one, so the ranges are
disjoint draws) whose last ``heldout`` items are held out; a jsonl source loses a seeded
sample of ``heldout`` lines to the held-out set. Then every training problem whose text is
held out anywhere is dropped (a small task repeats its questions, a training file may
contain an evaluation problem), and counted.
"""

from __future__ import annotations

import ast
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rlpt_jax.data.jsonl import BadLine, SkipLog, numbered_lines, parse_json_line
from rlpt_jax.rewards.math_verifier import GeneratorRef

__all__ = [
    "MathProblem",
    "MathData",
    "Source",
    "parse_source",
    "load_problem_jsonl",
    "generate_problems",
    "build_math_data",
]

RG_PREFIX = "rg:"


@dataclasses.dataclass(frozen=True)
class MathProblem:
    """One problem: its text, the gold answer, the set it belongs to and, for generated
    problems, the generator item whose scorer checks answers."""

    id: str
    problem: str
    answer: str
    source: str
    generator: GeneratorRef | None = None

    # The question interface of the AT²PO rollout (as :class:`rlpt_jax.data.qa.QAExample`
    # has it), so a problem is a question of a multi-turn math agent (``qa.reward="math"``).
    @property
    def question(self) -> str:
        return self.problem

    @property
    def golden_answers(self) -> tuple[str, ...]:
        return (self.answer,)

    @property
    def dataset(self) -> str:
        return self.source


@dataclasses.dataclass(frozen=True)
class Source:
    """A parsed source string: a jsonl ``path``, or a generator ``name`` and ``options``."""

    name: str
    path: Path | None = None
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def generated(self) -> bool:
        return self.path is None


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word such as an operator set or a name


def parse_source(spec: str) -> Source:
    """A :class:`Source` from its string; a clear error for a missing file or bad option."""
    if spec.startswith(RG_PREFIX):
        name, _, opts = spec[len(RG_PREFIX) :].partition(":")
        options = []
        for item in filter(None, (o.strip() for o in opts.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise ValueError(
                    f"source {spec!r}: option {item!r} is not key=value; write "
                    "rg:<generator>:key=value,key=value"
                )
            options.append((key.strip(), _value(value.strip())))
        if not name:
            raise ValueError(f"source {spec!r} names no generator: rg:<generator>[:options]")
        return Source(name=name, options=tuple(options))
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"math source {spec!r} is neither an existing jsonl file nor a reasoning-gym "
            "generator (rg:<name>[:key=value,...], e.g. rg:chain_sum)"
        )
    return Source(name=path.stem, path=path)


def _problem_record(raw: bytes, line_no: int) -> tuple[str, str]:
    record = parse_json_line(raw, line_no)
    if not isinstance(record, dict):
        raise BadLine("not_object")
    problem, answer = record.get("problem"), record.get("answer")
    if not isinstance(problem, str) or not problem.strip():
        raise BadLine("no_problem", "needs a non-empty string field 'problem'")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise BadLine("no_answer", "needs a string or number field 'answer'")
    if not str(answer).strip():
        raise BadLine("no_answer", "empty 'answer'")
    return problem, str(answer).strip()


def load_problem_jsonl(path: str | os.PathLike[str], name: str | None = None) -> list[MathProblem]:
    """Every usable ``{"problem": …, "answer": …}`` line of ``path``; skips are warned."""
    name = name or Path(path).stem
    skips, out = SkipLog(), []
    for line_no, raw in numbered_lines(path):
        if not raw.strip():
            continue
        try:
            problem, answer = _problem_record(raw, line_no)
        except BadLine as bad:
            skips.add(bad, path, line_no)
            continue
        out.append(MathProblem(f"{name}/{line_no}", problem, answer, name))
    skips.warn(f"math problem file {path}")
    if not out:
        raise ValueError(f"{path} holds no usable problem (each line: problem, answer)")
    return out


def generate_problems(
    source: Source, seed: int, size: int, indices: Sequence[int], set_name: str | None = None
) -> list[MathProblem]:
    """Items ``indices`` of the reasoning-gym dataset ``(source, seed, size)``."""
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    if source.name not in DATASETS:
        raise ValueError(
            f"unknown reasoning-gym generator {source.name!r}; e.g. chain_sum, "
            f"basic_arithmetic, simple_equations (all: {sorted(DATASETS)})"
        )
    try:
        dataset = reasoning_gym.create_dataset(
            source.name, seed=seed, size=size, **dict(source.options)
        )
    except (TypeError, AssertionError, ValueError) as e:
        raise ValueError(f"reasoning-gym generator {source.name!r}: bad options: {e}") from e
    name = set_name or source.name
    out = []
    for i in indices:
        item = dataset[i]
        ref = GeneratorRef(source.name, source.options, seed, size, int(i))
        out.append(MathProblem(f"{name}/{i}", item["question"], str(item["answer"]), name, ref))
    return out


@dataclasses.dataclass
class MathData:
    """Training problems, held-out sets by name, and counts for the start-up log."""

    train: list[MathProblem]
    heldout: dict[str, list[MathProblem]]
    counts: dict[str, int]


def _unique_names(sources: Sequence[Source], role: str) -> None:
    names = [s.name for s in sources]
    if len(set(names)) < len(names):
        raise ValueError(
            f"{role} sources {names} repeat a name (metrics are named after it); list "
            "each generator once, or give the files distinct names"
        )


def build_math_data(
    train: Sequence[str],
    eval_sources: Sequence[str],
    train_size: int,
    heldout: int,
    seed: int,
) -> MathData:
    """Train problems from ``train``; held out: ``heldout`` per train source, then every
    ``eval_sources`` problem (generated ones after all train indices).

    A training problem whose text is also a held-out one is dropped from training (a
    small generator repeats questions; a train file may hold an eval problem), and a
    held-out set keeps each question once; both are counted.
    """
    if not train:
        raise ValueError("rlvr.train lists no source; e.g. ('rg:chain_sum',) or a jsonl path")
    sources = [parse_source(s) for s in train]
    extra = [parse_source(s) for s in eval_sources]
    _unique_names(sources, "rlvr.train")
    _unique_names(extra, "rlvr.eval")
    rng = np.random.default_rng([seed, 3])
    pool: list[MathProblem] = []
    held: dict[str, list[MathProblem]] = {}
    for src in sources:
        if src.generated:
            if train_size < 1:
                raise ValueError(f"rlvr.train_size must be >= 1 for generator {src.name!r}")
            size = train_size + heldout
            pool += generate_problems(src, seed, size, range(train_size))
            held[src.name] = generate_problems(src, seed, size, range(train_size, size))
        else:
            rows = load_problem_jsonl(src.path, src.name)
            pick = set(rng.permutation(len(rows))[: min(heldout, len(rows) // 2)].tolist())
            held[src.name] = [p for i, p in enumerate(rows) if i in pick]
            pool += [p for i, p in enumerate(rows) if i not in pick][: train_size or None]
    for src in extra:
        # an eval-only variant of a train generator gets its own metric name
        name = f"{src.name}_eval" if src.name in held else src.name
        if src.generated:
            start, n = train_size + heldout, max(heldout, 1)
            held[name] = generate_problems(src, seed, start + n, range(start, start + n), name)
        else:
            held[name] = load_problem_jsonl(src.path, src.name)
    out = MathData([], {}, {})
    for name, problems in held.items():
        first: dict[str, MathProblem] = {}
        for p in problems:
            first.setdefault(p.problem, p)
        kept = list(first.values())
        out.counts[f"heldout_{name}"] = len(kept)
        out.counts[f"heldout_{name}_repeats"] = len(problems) - len(kept)
        if kept:
            out.heldout[name] = kept
    unseen = {p.problem for ps in out.heldout.values() for p in ps}
    out.train = [p for p in pool if p.problem not in unseen]
    out.counts["train_problems"] = len(out.train)
    out.counts["train_dropped_heldout"] = len(pool) - len(out.train)
    if not out.train:
        raise ValueError(
            "every training problem is also a held-out one; lower rlvr.heldout or use a "
            "generator with more distinct problems"
        )
    return out
