"""Host-side environment step for the multi-turn tool protocol (one model turn at a time).

The tools of a run are ``env.tools``: ``("search",)`` for the paper's search-QA (the
default, hence the module's name), ``("python",)`` for a math agent that runs code in the
sandbox of :mod:`rlpt_jax.envs.python_tool`, or both. The sampler stops a turn at an
enabled tool's closing tag (``</search>``, ``</python>``), EOS or the length budget and
hands the decoded turn text here together with how many tool calls the trajectory has
made. :meth:`SearchEnv.step_batch` decides, for every trajectory of a batch at once:

==============  ==================================================  ==========
outcome         when                                                trajectory
==============  ==================================================  ==========
``answer``      the turn contains a complete ``<answer>…</answer>``  ends
``search``      the turn ends with ``</search>``: the query is run;  continues
                the formatted passages are returned for appending
``python``      the turn ends with ``</python>``: the code is run in  continues
                the sandbox; its output, or its error (exception,
                timeout, memory, output cap, a refused operation)
                as text, is returned for appending
``limit``       a tool call beyond ``max_tool_calls`` (the 7th when  continues
                the limit is 6): the fixed notice is appended
``invalid``     no answer and no usable call (no tags, a stray       ends
                closing tag, an empty call, non-string text, or a
                call of a tool that is not in ``env.tools``)
``tool_error``  the search backend raised, or the sandbox itself     ends
                failed (not the code in it): a counted, failed leaf
==============  ==================================================  ==========

All queries of a batch go to the search backend in one call; the programs of a batch run
``python_workers`` at a time. The limit counts calls of every tool together. Every
outcome is counted in :attr:`SearchEnv.counts`; nothing here raises on model output. A
program's own failure is the policy's doing, so the model reads it and goes on: it is
counted by kind (``python_timeout``, ``python_memory``, ``python_output_limit``,
``python_forbidden``, ``python_exit_code``). A failure of the tool itself is an outage:
each search sent ends as ``search`` or as a ``search_failures`` count, each program as
``python`` or a ``python_failures`` count (the outage policy's input), and
:attr:`SearchEnv.last_errors` keeps each tool's latest failure for its error message. The
returned text is tokenised on its own and appended to the token ids (never re-tokenise a
trajectory).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from rlpt_jax import multihost
from rlpt_jax.envs import tags
from rlpt_jax.envs.python_tool import ERROR_KINDS, PythonTool, format_python_result
from rlpt_jax.envs.search import SearchBackend, format_results

__all__ = [
    "OUTCOMES",
    "DEFAULT_LIMIT_NOTICE",
    "TOOL_LIMIT_NOTICE",
    "SearchEnvConfig",
    "StepResult",
    "SearchEnv",
]

OUTCOMES = ("answer", "search", "python", "limit", "invalid", "tool_error")
# Wrapped in <result> tags so that, with over_limit_invalid=False, the call that triggered
# it stays properly paired. With the default the trajectory is invalid whatever the notice
# says: the reward reads the environment's "limit" outcome, not this text.
DEFAULT_LIMIT_NOTICE = (
    " <result>\nThe maximum number of search calls has been reached. Answer the question "
    "now with the information you already have.\n</result>"
)
TOOL_LIMIT_NOTICE = (
    " <result>\nThe maximum number of tool calls has been reached. Give your final answer "
    "now with what you already have.\n</result>"
)
_EMPTY_CALL = {"search": "empty search query", "python": "empty python code"}
# The code's own failures: shown to the model, counted, and the trajectory goes on.
_CODE_ERRORS = tuple(kind for kind in ERROR_KINDS if kind != "internal")


@dataclass(frozen=True)
class SearchEnvConfig:
    """Multi-turn tool environment settings (defaults: the AT²PO paper and its reference
    code, whose only tool is search).

    ``tools``: the enabled tools, a subset of :data:`rlpt_jax.envs.tags.TOOL_NAMES`
    (``search``, ``python``). A turn ending in another tool's closing tag is ``invalid``,
    and the format check reads that tool's tags as plain text.

    Search: the top ``topk`` passages, each cut to ``max_chars`` characters;
    ``max_query_chars`` truncates absurdly long queries before they reach the backend
    (counted as ``query_truncated``). Python: ``python_max_chars`` caps the output shown
    in ``<result>`` (the start of stdout, the end of stderr, where a traceback's cause
    is), ``python_workers`` programs of a batch run at once (the sandbox's own limits are
    ``ExperimentConfig.python_tool``).

    ``limit_notice``: appended for a call past ``max_tool_calls``; ``None`` is
    :data:`DEFAULT_LIMIT_NOTICE` when search is the only tool, else
    :data:`TOOL_LIMIT_NOTICE`.

    Format incentives of the reference code (its ``deep_research_em.validate_format``):
    ``require_think`` (default True): a trajectory without a ``<think>…</think>`` block
    is format-invalid (reward ``qa.format_penalty``, −1); ``over_limit_invalid`` (default
    True): a call past ``max_tool_calls`` makes the trajectory format-invalid, as the
    reference's notice, inserted without ``<result>`` tags, leaves that call unpaired.
    Generation still continues after the notice (the trajectory ends as usual).

    ``stop_at_answer`` (default False): also end a turn at ``</answer>``. The reference
    stops generation only at a tool's closing tag (``</search>``) and EOS, so the EOS
    after ``</answer>`` is sampled and trained; stopping at ``</answer>`` never trains it.
    """

    tools: tuple[str, ...] = ("search",)
    topk: int = 3
    max_chars: int = 1000
    max_tool_calls: int = 6
    max_query_chars: int = 1000
    python_max_chars: int = 2000
    python_workers: int = 8
    limit_notice: str | None = None
    require_think: bool = True
    over_limit_invalid: bool = True
    stop_at_answer: bool = False

    def __post_init__(self):
        tools = tuple(self.tools)
        object.__setattr__(self, "tools", tools)
        unknown = [t for t in tools if t not in tags.TOOL_NAMES]
        if unknown or len(set(tools)) < len(tools):
            raise ValueError(
                f"SearchEnvConfig.tools must list distinct tools of {tags.TOOL_NAMES}, got {tools}"
            )
        for name in ("topk", "max_chars", "max_query_chars", "python_max_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"SearchEnvConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.python_workers < 1:
            raise ValueError(
                f"SearchEnvConfig.python_workers must be >= 1, got {self.python_workers}"
            )
        if self.max_tool_calls < 0:
            raise ValueError(
                f"SearchEnvConfig.max_tool_calls must be >= 0, got {self.max_tool_calls}"
            )
        if self.limit_notice is not None and not self.limit_notice:
            raise ValueError("SearchEnvConfig.limit_notice must not be empty (None: default)")

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Where the sampler ends a turn besides EOS and the length budget."""
        closing = tuple(f"</{t}>" for t in tags.TOOL_NAMES if t in self.tools)
        return closing + ("</answer>",) if self.stop_at_answer else closing

    @property
    def notice(self) -> str:
        """The text appended for a call past the limit."""
        if self.limit_notice is not None:
            return self.limit_notice
        return DEFAULT_LIMIT_NOTICE if self.tools == ("search",) else TOOL_LIMIT_NOTICE


@dataclass(frozen=True)
class StepResult:
    """What to do with one trajectory after its turn.

    ``append_text`` is the tool output (or limit notice) to tokenise and append, masked
    out of the loss; ``""`` when ``done``. ``tool_calls`` is the trajectory's count
    after this turn (an attempted call counts even when the tool fails; a refused call
    past the limit does not). ``query`` is the call's body: the search query or the code.
    """

    outcome: str
    done: bool
    append_text: str
    tool_calls: int
    query: str | None
    reason: str


class SearchEnv:
    """Decides each turn's outcome and runs the batch's tool calls: its searches in one
    ``backend`` call, its programs in the ``python`` sandbox. A tool that is enabled in
    ``config.tools`` must be given."""

    def __init__(
        self,
        backend: SearchBackend | None,
        config: SearchEnvConfig = SearchEnvConfig(),
        python: PythonTool | None = None,
    ):
        if "search" in config.tools and backend is None:
            raise ValueError("env.tools enables search but no search backend was given")
        if "python" in config.tools and python is None:
            raise ValueError("env.tools enables python but no PythonTool was given")
        self.backend = backend
        self.python = python
        self.config = config
        # Threads start on first use; each waits on its sandboxed process.
        self._pool = None
        if "python" in config.tools:
            self._pool = ThreadPoolExecutor(config.python_workers, thread_name_prefix="python")
        names = list(OUTCOMES)
        if "search" in config.tools:
            names += ["backend_calls", "query_truncated", "search_failures"]
        if "python" in config.tools:
            names += ["python_failures", *(f"python_{kind}" for kind in _CODE_ERRORS)]
        self.counts: Counter[str] = Counter(dict.fromkeys(names, 0))
        self.last_errors: dict[str, str] = {}  # tool -> why its latest failed call failed

    def step(self, turn_text: str, tool_calls: int) -> StepResult:
        """One trajectory's turn; see :meth:`step_batch`."""
        return self.step_batch([(turn_text, tool_calls)])[0]

    def step_batch(self, turns: Sequence[tuple[str, int]]) -> list[StepResult]:
        """Outcomes for ``(turn_text, tool_calls_so_far)`` pairs, in order."""
        results: list[StepResult | None] = [None] * len(turns)
        pending: dict[str, list[tuple[int, str, int]]] = {t: [] for t in tags.TOOL_NAMES}
        for i, (text, calls) in enumerate(turns):
            decided = self._decide(text, calls)
            if isinstance(decided, StepResult):
                results[i] = decided
            else:
                tool, body = decided
                pending[tool].append((i, body, calls))
        for tool, run in (("search", self._run_searches), ("python", self._run_programs)):
            if pending[tool]:
                for (i, _, _), result in zip(pending[tool], run(pending[tool])):
                    results[i] = result
        for result in results:
            self.counts[result.outcome] += 1
        return results

    def metrics(self) -> dict[str, int]:
        """A copy of the counters: the outcomes and each enabled tool's counts (search:
        ``backend_calls``, ``query_truncated``, ``search_failures``; python:
        ``python_failures`` and ``python_<kind>`` per kind of failed program), zeros too."""
        return dict(self.counts)

    def _decide(self, text: object, calls: int) -> StepResult | tuple[str, str]:
        """A final :class:`StepResult`, or the ``(tool, body)`` call to run."""
        cfg = self.config
        if not isinstance(text, str):
            return StepResult("invalid", True, "", calls, None, "turn text is not a string")
        if tags.has_answer(text):
            return StepResult("answer", True, "", calls, None, "answer given")
        tool = tags.ending_tool(text)
        if tool is None:
            reason = "no answer and no " + (" or ".join(cfg.tools) or "tool call")
            return StepResult("invalid", True, "", calls, None, reason)
        if tool not in cfg.tools:
            reason = f"the {tool} tool is not enabled (env.tools={cfg.tools})"
            return StepResult("invalid", True, "", calls, None, reason)
        body = tags.extract_call(text, tool)
        if body is None:
            return StepResult("invalid", True, "", calls, None, f"</{tool}> without <{tool}>")
        if calls >= cfg.max_tool_calls:
            reason = f"tool-call limit {cfg.max_tool_calls} reached"
            return StepResult("limit", False, cfg.notice, calls, body, reason)
        if tool == "python":
            body = tags.python_code(body)
        if not body:
            return StepResult("invalid", True, "", calls, body, _EMPTY_CALL[tool])
        if tool == "search" and len(body) > cfg.max_query_chars:
            self.counts["query_truncated"] += 1
            body = body[: cfg.max_query_chars]
        return tool, body

    def _failed(self, tool: str, reason: str, pending) -> list[StepResult]:
        self.last_errors[tool] = reason
        self.counts[f"{tool}_failures"] += len(pending)
        return [StepResult("tool_error", True, "", c + 1, q, reason) for _, q, c in pending]

    def _run_searches(self, pending: list[tuple[int, str, int]]) -> list[StepResult]:
        cfg = self.config
        queries = [query for _, query, _ in pending]
        self.counts["backend_calls"] += 1
        try:
            hits = multihost.once(self.backend.search, queries, cfg.topk)
            if len(hits) != len(queries):
                raise ValueError(f"backend returned {len(hits)} lists for {len(queries)} queries")
            texts = [format_results(h, cfg.topk, cfg.max_chars) for h in hits]
        except Exception as e:  # any backend failure is a counted failed leaf, not a crash
            return self._failed("search", f"{type(e).__name__}: {e}", pending)
        return [
            StepResult("search", False, text, c + 1, q, "ok")
            for (_, q, c), text in zip(pending, texts)
        ]

    def _run_programs(self, pending: list[tuple[int, str, int]]) -> list[StepResult]:
        codes = [code for _, code, _ in pending]
        runs = multihost.once(lambda: list(self._pool.map(self._run_one, codes)))
        out = []
        for item, run in zip(pending, runs):
            _, code, calls = item
            if isinstance(run, str):  # the sandbox failed, not the code: an outage
                out += self._failed("python", run, [item])
                continue
            if run.error is not None:
                self.counts[f"python_{run.error}"] += 1
            text = format_python_result(run, self.config.python_max_chars)
            out.append(StepResult("python", False, text, calls + 1, code, run.error or "ok"))
        return out

    def _run_one(self, code: str):
        """The program's :class:`PythonResult`, or why the sandbox itself failed."""
        try:
            result = self.python.run(code)
        except Exception as e:  # the tool promises not to raise; an outage if it does
            return f"{type(e).__name__}: {e}"
        if result.error == "internal":
            return f"sandbox failure: {result.detail}"
        return result
