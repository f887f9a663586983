"""Host-side environment step for the search-QA protocol (one model turn at a time).

The sampler stops a turn at ``</search>``, EOS or the length budget and hands the
decoded turn text here together with how many tool calls the trajectory has made.
:meth:`SearchEnv.step_batch` decides, for every trajectory of a batch at once:

=============  ===================================================  ==========
outcome        when                                                 trajectory
=============  ===================================================  ==========
``answer``     the turn contains a complete ``<answer>…</answer>``  ends
``search``     the turn ends with ``</search>``: the query is run;   continues
               the formatted result is returned for appending
``limit``      a search beyond ``max_tool_calls`` (the 7th when     continues
               the limit is 6): the fixed notice is appended
``invalid``    no answer and no usable search (no tags, stray       ends
               ``</search>``, empty query, non-string text)
``tool_error`` the backend raised: a counted, failed leaf           ends
=============  ===================================================  ==========

All queries of a batch go to the backend in one call. Every outcome is counted in
:attr:`SearchEnv.counts`; nothing here raises on model output. Each query sent ends as
``search`` or ``tool_error``, so those two counts are the retriever's requests and their
failures (the outage policy's input), and :attr:`SearchEnv.last_error` keeps the reason of
the latest failure for its error message. The returned text is tokenised on its own and
appended to the token ids (never re-tokenise a trajectory).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from rlpt_jax.envs import tags
from rlpt_jax.envs.search import SearchBackend, format_results

__all__ = ["OUTCOMES", "DEFAULT_LIMIT_NOTICE", "SearchEnvConfig", "StepResult", "SearchEnv"]

OUTCOMES = ("answer", "search", "limit", "invalid", "tool_error")
# Wrapped in <result> tags so that, with over_limit_invalid=False, the search that
# triggered it stays properly paired. With the default the trajectory is invalid whatever
# the notice says: the reward reads the environment's "limit" outcome, not this text.
DEFAULT_LIMIT_NOTICE = (
    " <result>\nThe maximum number of search calls has been reached. Answer the question "
    "now with the information you already have.\n</result>"
)


@dataclass(frozen=True)
class SearchEnvConfig:
    """Search-QA environment settings (defaults: the AT²PO paper and its reference code).

    ``max_query_chars`` truncates absurdly long queries before they reach the backend
    (the truncation is counted as ``query_truncated``).

    Format incentives of the reference code (its ``deep_research_em.validate_format``):
    ``require_think`` (default True): a trajectory without a ``<think>…</think>`` block
    is format-invalid (reward ``qa.format_penalty``, −1); ``over_limit_invalid`` (default
    True): a search past ``max_tool_calls`` makes the trajectory format-invalid, as the
    reference's notice, inserted without ``<result>`` tags, leaves that search unpaired.
    Generation still continues after the notice (the trajectory ends as usual).

    ``stop_at_answer`` (default False): also end a turn at ``</answer>``. The reference
    stops generation only at a tool's closing tag (``</search>``) and EOS, so the EOS
    after ``</answer>`` is sampled and trained; stopping at ``</answer>`` never trains it.
    """

    topk: int = 3
    max_chars: int = 1000
    max_tool_calls: int = 6
    max_query_chars: int = 1000
    limit_notice: str = DEFAULT_LIMIT_NOTICE
    require_think: bool = True
    over_limit_invalid: bool = True
    stop_at_answer: bool = False

    def __post_init__(self):
        for name in ("topk", "max_chars", "max_query_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"SearchEnvConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_tool_calls < 0:
            raise ValueError(
                f"SearchEnvConfig.max_tool_calls must be >= 0, got {self.max_tool_calls}"
            )
        if not self.limit_notice:
            raise ValueError("SearchEnvConfig.limit_notice must not be empty")

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Where the sampler ends a turn besides EOS and the length budget."""
        return ("</search>", "</answer>") if self.stop_at_answer else ("</search>",)


@dataclass(frozen=True)
class StepResult:
    """What to do with one trajectory after its turn.

    ``append_text`` is the tool output (or limit notice) to tokenise and append, masked
    out of the loss; ``""`` when ``done``. ``tool_calls`` is the trajectory's count
    after this turn (a search attempt counts even when the backend fails; a refused
    call past the limit does not).
    """

    outcome: str
    done: bool
    append_text: str
    tool_calls: int
    query: str | None
    reason: str


class SearchEnv:
    """Decides each turn's outcome and runs the searches of a batch in one backend call."""

    def __init__(self, backend: SearchBackend, config: SearchEnvConfig = SearchEnvConfig()):
        self.backend = backend
        self.config = config
        self.counts: Counter[str] = Counter({name: 0 for name in OUTCOMES})
        self.last_error: str | None = None  # why the latest failed backend call failed

    def step(self, turn_text: str, tool_calls: int) -> StepResult:
        """One trajectory's turn; see :meth:`step_batch`."""
        return self.step_batch([(turn_text, tool_calls)])[0]

    def step_batch(self, turns: Sequence[tuple[str, int]]) -> list[StepResult]:
        """Outcomes for ``(turn_text, tool_calls_so_far)`` pairs, in order."""
        results: list[StepResult | None] = [None] * len(turns)
        pending: list[tuple[int, str, int]] = []  # (index, query, calls so far)
        for i, (text, calls) in enumerate(turns):
            decided = self._decide(text, calls)
            if isinstance(decided, StepResult):
                results[i] = decided
            else:
                pending.append((i, decided, calls))
        if pending:
            for i, result in zip([p[0] for p in pending], self._run_searches(pending)):
                results[i] = result
        for result in results:
            self.counts[result.outcome] += 1
        return results

    def metrics(self) -> dict[str, int]:
        """A copy of the outcome counters (plus ``backend_calls``, ``query_truncated``)."""
        return dict(self.counts)

    def _decide(self, text: object, calls: int) -> StepResult | str:
        """A final :class:`StepResult`, or the query to run."""
        cfg = self.config
        if not isinstance(text, str):
            return StepResult("invalid", True, "", calls, None, "turn text is not a string")
        if tags.has_answer(text):
            return StepResult("answer", True, "", calls, None, "answer given")
        if not tags.ends_with_search(text):
            return StepResult("invalid", True, "", calls, None, "no answer and no search")
        query = tags.extract_search_query(text)
        if query is None:
            return StepResult("invalid", True, "", calls, None, "</search> without <search>")
        if calls >= cfg.max_tool_calls:
            reason = f"tool-call limit {cfg.max_tool_calls} reached"
            return StepResult("limit", False, cfg.limit_notice, calls, query, reason)
        if not query:
            return StepResult("invalid", True, "", calls, query, "empty search query")
        if len(query) > cfg.max_query_chars:
            self.counts["query_truncated"] += 1
            query = query[: cfg.max_query_chars]
        return query

    def _run_searches(self, pending: list[tuple[int, str, int]]) -> list[StepResult]:
        cfg = self.config
        queries = [query for _, query, _ in pending]
        self.counts["backend_calls"] += 1
        try:
            hits = self.backend.search(queries, cfg.topk)
            if len(hits) != len(queries):
                raise ValueError(f"backend returned {len(hits)} lists for {len(queries)} queries")
            texts = [format_results(h, cfg.topk, cfg.max_chars) for h in hits]
        except Exception as e:  # any backend failure is a counted failed leaf, not a crash
            reason = f"{type(e).__name__}: {e}"
            self.last_error = reason
            return [StepResult("tool_error", True, "", c + 1, q, reason) for _, q, c in pending]
        return [
            StepResult("search", False, text, c + 1, q, "ok")
            for (_, q, c), text in zip(pending, texts)
        ]
