"""RLPT reward judges: is the prediction the start of the true continuation?

RLPT rewards a predicted segment with 1 when a judge finds it semantically equivalent
to a *prefix* of the reference ``s_i s_{i+1} ... s_{i+k}`` and 0 otherwise
(``r = 1[judge says "Score: 1"]``). The earlier, worse-training "strict" variant asks
for equivalence with ``s_i`` alone; it is kept as ``mode="strict"`` for ablations.

One interface for all judges::

    results = judge.score([(predicted, reference_segments), ...])
    # -> [JudgeResult(reward, parsed, raw), ...] in input order

``predicted`` is the text :func:`rlpt_jax.data.tasks.extract_prediction` returned;
``None`` (no tags, truncated, empty) gets ``missing_prediction_reward`` without asking
the judge. Judge outputs are parsed by :func:`parse_score`; an output without a
verdict gets ``unparseable_reward``. Everything is counted in :class:`JudgeCounters`.

Kinds (:func:`make_judge`, selected by a plain dict):

* ``"generative"``: a language model called through an injected
  ``generate(prompts) -> outputs`` function (the project's sampler).
* ``"http"``: an OpenAI-compatible chat-completions server (vLLM, SGLang, ...),
  concurrent requests with a deadline and retries (:mod:`rlpt_jax.net`); raises
  :class:`JudgeUnavailableError` when the server is down or answers garbage rather than
  silently rewarding 0.
* ``"lexical"``: a deterministic offline approximation for tests and CPU smoke runs.
"""

from __future__ import annotations

import abc
import collections
import concurrent.futures
import dataclasses
import logging
import os
import re
import time
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

from rlpt_jax import multihost, net

JUDGE_KINDS = ("generative", "http", "lexical")
JUDGE_MODES = ("prefix", "strict")

JudgeItem = tuple[str | None, Sequence[str]]
Message = dict[str, str]

log = logging.getLogger(__name__)

# RLPT v2, the generative reward model's prompt as printed in the paper: a "## Task"
# asking whether Predicted is a prefix of Reference with exactly that prefix's meaning
# (wording may differ), the Reference and Predicted fields, then "## Scoring Rules": 1 if
# the meaning matches a reference prefix else 0, semantics only, one line with the score.
PAPER_PREFIX_PROMPT = (
    "## Task\n"
    "Decide whether the Predicted text is a prefix of the Reference text: whether it "
    "means exactly what an initial part of the Reference means. The wording may differ; "
    "the meaning may not.\n"
    "\n"
    "Reference: {reference}\n"
    "\n"
    "Predicted: {predicted}\n"
    "\n"
    "## Scoring Rules\n"
    "- Score 1 if the meaning of Predicted matches an initial part (a prefix) of "
    "Reference; otherwise score 0.\n"
    "- Judge the meaning only, not the choice of words.\n"
    "- Reply with one line, either Score: 0 or Score: 1, and no explanation."
)

# The strict ablation in the same layout [ours: the paper prints only the prefix judge].
PAPER_STRICT_PROMPT = (
    "## Task\n"
    "Decide whether the Predicted text means exactly what the whole Reference text means. "
    "The wording may differ; nothing may be missing or added.\n"
    "\n"
    "Reference: {reference}\n"
    "\n"
    "Predicted: {predicted}\n"
    "\n"
    "## Scoring Rules\n"
    "- Score 1 if Predicted states the same content as Reference; otherwise score 0.\n"
    "- Judge the meaning only, not the choice of words.\n"
    "- Reply with one line, either Score: 0 or Score: 1, and no explanation."
)

# This project's earlier judge prompts, kept as ``prompt_style="compact"``.
COMPACT_PREFIX_PROMPT = (
    "You are checking a text prediction against the real continuation of a document.\n"
    "\n"
    "Reference: {reference}\n"
    "\n"
    "Predicted: {predicted}\n"
    "\n"
    "Is Predicted semantically equivalent to a prefix of Reference? A prefix is the "
    "beginning of Reference: its first sentence, or its first few sentences in order. "
    "The wording does not need to match, only the meaning. Predicted is not equivalent "
    "if it contradicts Reference, adds claims that are not in that prefix, or only "
    "matches a later part of Reference.\n"
    "\n"
    "Answer with exactly `Score: 1` if it is equivalent and `Score: 0` if it is not."
)

COMPACT_STRICT_PROMPT = (
    "You are checking a predicted sentence against the real sentence of a document.\n"
    "\n"
    "Reference: {reference}\n"
    "\n"
    "Predicted: {predicted}\n"
    "\n"
    "Is Predicted semantically equivalent to the whole of Reference? The wording does "
    "not need to match, but Predicted must state the same content as Reference, "
    "nothing missing and nothing added.\n"
    "\n"
    "Answer with exactly `Score: 1` if it is equivalent and `Score: 0` if it is not."
)

JUDGE_PROMPTS = {
    "paper": {"prefix": PAPER_PREFIX_PROMPT, "strict": PAPER_STRICT_PROMPT},
    "compact": {"prefix": COMPACT_PREFIX_PROMPT, "strict": COMPACT_STRICT_PROMPT},
}
PROMPT_STYLES = tuple(JUDGE_PROMPTS)


class JudgeUnavailableError(RuntimeError):
    """The judge server could not be reached, or gave no usable answer, for (most of) a
    batch after retries; or it did not answer the start-up probe."""


@dataclasses.dataclass(frozen=True)
class LexicalConfig:
    """Rule of the lexical judge (see :class:`LexicalJudge`).

    Attributes:
      threshold: Smallest token F1 against the equally long reference prefix that
        earns reward 1 (default 0.6: most content words must match).
      min_tokens: A prediction needs at least ``min(min_tokens, len(s_i tokens))``
        tokens (default 3), so that "The" is not rewarded as a prefix.
      graded: Reward the token F1 itself (0 below ``min_tokens``) instead of the 0/1
        verdict (default False). A small model rarely reaches the threshold, so its
        rewards are all 0 and GRPO has no signal; F1 varies within every group. This
        is the CPU stand-in for the paper's binary semantic judge, not a replacement.
    """

    threshold: float = 0.6
    min_tokens: int = 3
    graded: bool = False

    def __post_init__(self):
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"lexical threshold must be in (0, 1], got {self.threshold}")
        if self.min_tokens < 1:
            raise ValueError(f"lexical min_tokens must be >= 1, got {self.min_tokens}")


@dataclasses.dataclass(frozen=True)
class HttpConfig:
    """An OpenAI-compatible chat-completions judge server.

    Attributes:
      base_url: Server root; requests go to ``{base_url}/v1/chat/completions``.
      model: Model name the server serves (required for ``kind="http"``).
      temperature: Sampling temperature (default 0: a deterministic verdict).
      max_tokens: Response budget (default 1024, room for a thinking judge).
      timeout_s: Longest wait for one socket operation, in seconds (default 120).
      deadline_s: Longest time for one whole request, in seconds, however the server
        trickles its answer (default ``None``: twice ``timeout_s``).
      max_response_bytes: A larger answer is a failed request (default 4 MiB; a
        verdict is a few KB).
      max_retries: Retries after the first attempt on connection errors, timeouts, the
        deadline and HTTP 408/425/429/500/502/503/504 (default 4). Other HTTP errors,
        redirects and garbage answers are not retried.
      backoff_s: First retry delay; doubles each retry (default 1 s).
      max_backoff_s: Cap on one delay (default 30 s).
      max_workers: Concurrent requests (default 16).
      max_failure_fraction: A batch in which more than this share of requests failed
        after all retries raises :class:`JudgeUnavailableError` (default 0.5); a batch
        in which every request failed always raises.
      api_key_env: Name of an environment variable holding a bearer token, sent as
        ``Authorization`` when set (default ``None``: no header, as for local servers).
        Redirects are never followed, so the token only goes to ``base_url``.
      disable_thinking: Send ``chat_template_kwargs: {"enable_thinking": false}``
        (default True), which vLLM and SGLang pass to the chat template: a thinking
        judge (Qwen3) then answers at once instead of spending ``max_tokens`` on
        reasoning and being cut off before its verdict. Set False for servers that
        reject unknown request fields.
    """

    base_url: str = "http://127.0.0.1:8000"
    model: str = ""
    temperature: float = 0.0
    max_tokens: int = 1024
    timeout_s: float = 120.0
    deadline_s: float | None = None
    max_response_bytes: int = 4 << 20
    max_retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    max_workers: int = 16
    max_failure_fraction: float = 0.5
    api_key_env: str | None = None
    disable_thinking: bool = True

    def __post_init__(self):
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError(f"deadline_s must be > 0 (or None), got {self.deadline_s}")
        if self.max_response_bytes < 1:
            raise ValueError(f"max_response_bytes must be >= 1, got {self.max_response_bytes}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ValueError(
                f"need 0 <= backoff_s <= max_backoff_s, got {self.backoff_s}, {self.max_backoff_s}"
            )
        if self.max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {self.max_workers}")
        if not 0.0 <= self.max_failure_fraction < 1.0:
            raise ValueError(
                f"max_failure_fraction must be in [0, 1), got {self.max_failure_fraction}"
            )

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/v1/chat/completions"

    @property
    def models_url(self) -> str:
        return self.base_url.rstrip("/") + "/v1/models"

    @property
    def request_deadline_s(self) -> float:
        """The deadline of one request: ``deadline_s``, or twice ``timeout_s``."""
        return 2 * self.timeout_s if self.deadline_s is None else self.deadline_s


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    """Which judge, which question, and what unusable answers are worth.

    Attributes:
      kind: ``"generative"``, ``"http"`` or ``"lexical"`` (default ``"lexical"``, the
        only one that runs with nothing else provided).
      mode: ``"prefix"`` (the paper's reward, default) or ``"strict"`` (equivalent to
        ``s_i`` alone; the ablation).
      unparseable_reward: Reward when the judge's output has no ``Score: 0|1`` or the
        request failed (default 0.0 [ours]).
      warn_unparseable_frac: Log a warning, with an example reply, for every step in
        which more than this share of judged items had no verdict (default 0.1 [ours]);
        the share is logged as ``judge/unparseable_frac`` either way.
      missing_prediction_reward: Reward when the policy gave no tagged prediction
        (default 0.0 [ours; the paper is silent]).
      prompt_style: The question model judges are asked: ``"paper"`` (default; the
        structure of the RLPT paper's judge prompt) or ``"compact"`` (this project's
        earlier wording); each has a ``prefix`` and a ``strict`` version.
      prompt_template: A question with ``{reference}`` and ``{predicted}`` fields that
        replaces the style's (default ``None``). In strict mode ``{reference}`` is
        ``s_i`` only, in prefix mode the reference segments joined by spaces.
      lexical: Settings of the lexical judge.
      http: Settings of the HTTP judge.
    """

    kind: str = "lexical"
    mode: str = "prefix"
    unparseable_reward: float = 0.0
    warn_unparseable_frac: float = 0.1
    missing_prediction_reward: float = 0.0
    prompt_style: str = "paper"
    prompt_template: str | None = None
    lexical: LexicalConfig = dataclasses.field(default_factory=LexicalConfig)
    http: HttpConfig = dataclasses.field(default_factory=HttpConfig)

    def __post_init__(self):
        if self.kind not in JUDGE_KINDS:
            raise ValueError(_unknown_kind(self.kind))
        if self.mode not in JUDGE_MODES:
            raise ValueError(f"unknown judge mode {self.mode!r}; valid modes: {list(JUDGE_MODES)}")
        if not 0.0 <= self.warn_unparseable_frac <= 1.0:
            raise ValueError(
                f"warn_unparseable_frac must be in [0, 1], got {self.warn_unparseable_frac}"
            )
        if self.prompt_style not in JUDGE_PROMPTS:
            raise ValueError(
                f"unknown judge prompt_style {self.prompt_style!r}; valid: {list(PROMPT_STYLES)}"
            )
        if self.kind == "http" and not self.http.model:
            raise ValueError("judge kind 'http' needs http.model (the served model's name)")
        if self.prompt_template is not None:
            try:
                self.prompt_template.format(reference="", predicted="")
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(
                    "prompt_template may use only {reference} and {predicted} "
                    f"(double other braces): {e!r}"
                ) from e
            missing = [f for f in ("{reference}", "{predicted}") if f not in self.prompt_template]
            if missing:
                raise ValueError(f"prompt_template must contain {missing}")

    def question_template(self) -> str:
        """The question model judges are asked: ``prompt_template``, else the style's."""
        if self.prompt_template is not None:
            return self.prompt_template
        return JUDGE_PROMPTS[self.prompt_style][self.mode]


def _unknown_kind(kind: str) -> str:
    return f"unknown judge kind {kind!r}; valid kinds: {list(JUDGE_KINDS)}"


@dataclasses.dataclass(frozen=True)
class JudgeResult:
    """Reward of one item; ``parsed`` is False when no verdict was read; ``raw`` is the
    judge's output (or the error / response body when there was none); ``verdict`` is
    the 0/1 verdict (0 when there was none), which is the reward unless the judge grades.
    ``failed``: the request never got a judge's answer (no connection, a garbage reply);
    the rollout then leaves the item out of training rather than rewarding it 0."""

    reward: float
    parsed: bool
    raw: str
    verdict: int = 0
    failed: bool = False


@dataclasses.dataclass
class JudgeCounters:
    """Running totals over all :meth:`Judge.score` calls (for metrics)."""

    batches: int = 0
    items: int = 0
    no_prediction: int = 0
    judged: int = 0
    parsed: int = 0
    unparseable: int = 0
    positive: int = 0
    failed_requests: int = 0
    retries: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Reply:
    """What a judge backend returned for one item.

    ``content`` is the text to parse (``None`` when the response had no usable text);
    ``raw`` is what to show for it; ``failed`` marks a request that never succeeded.
    ``graded``: a reward in [0, 1] that replaces the parsed 0/1 verdict as the reward,
    from judges that grade (the lexical judge with ``graded=True``).
    """

    raw: str
    content: str | None
    failed: bool = False
    retries: int = 0
    graded: float | None = None


# Each blank run is matched by one unambiguous piece (``\s*`` then optional ``\*+\s*``),
# so a verdict-less run of whitespace costs linear, not quadratic, time. A digit or a
# decimal part after the 0/1 ("10", "0.5") is not a verdict; a full stop ("1.") is.
_SCORE = re.compile(r"\bscore\s*(?:\*+\s*)?:\s*(?:\*+\s*)?([01])(?!\d|\.\d)", re.IGNORECASE)


def parse_score(text: str) -> int | None:
    """The verdict of the *last* ``Score: 0|1`` in ``text``; ``None`` when there is none.

    Tolerates case and markdown bold (``**Score:** 1``). Reasoning inside
    ``<think>...</think>`` is ignored (it may weigh both verdicts); a ``<think>`` that
    is never closed means the judge ran out of tokens, so there is no verdict.
    """
    if "<think>" in text and "</think>" not in text:
        return None
    text = text.rsplit("</think>", 1)[-1]
    matches = _SCORE.findall(text)
    return int(matches[-1]) if matches else None


def judge_prompt(
    predicted: str, reference_segments: Sequence[str], mode: str, template: str | None = None
) -> str:
    """The question to a model judge; ``strict`` compares with ``s_i`` only.

    ``template`` defaults to the paper-style question of ``mode``.
    """
    if mode == "strict":
        reference = reference_segments[0]
    elif mode == "prefix":
        reference = " ".join(reference_segments)
    else:
        raise ValueError(f"unknown judge mode {mode!r}; valid modes: {list(JUDGE_MODES)}")
    if template is None:
        template = JUDGE_PROMPTS["paper"][mode]
    return template.format(reference=reference, predicted=predicted)


def _clip(text: str, head: int = 240, tail: int = 120) -> str:
    """``text`` for a log line: its start and end when long (a reply cut off mid-thought
    shows where it began and where it stopped)."""
    if len(text) <= head + tail:
        return repr(text)
    return f"{text[:head]!r} ... {text[-tail:]!r} ({len(text)} characters)"


class Judge(abc.ABC):
    """Shared scoring logic; backends implement :meth:`_judge`."""

    def __init__(self, config: JudgeConfig):
        self.config = config
        self.counters = JudgeCounters()
        self.unparseable_example: str | None = None  # the latest reply without a verdict

    def probe(self) -> None:
        """Check at start-up that the judge can answer; local judges always can."""
        return None

    def step_metrics(self, before: dict[str, int]) -> dict[str, float]:
        """``judge/*`` metrics of one step: each counter's change since ``before`` (a
        :meth:`JudgeCounters.as_dict`, so a resumed run logs what a fresh one would;
        zeros included, so a step that never reached the judge shows it) and
        ``judge/unparseable_frac``, the share of judged items without a verdict. Above
        ``warn_unparseable_frac`` that share is also a warning with an example reply:
        rewards of 0 for want of a verdict look like a policy that learns nothing."""
        after = self.counters.as_dict()
        metrics = {f"judge/{k}": float(after[k] - before.get(k, 0)) for k in after}
        judged, unparseable = metrics["judge/judged"], metrics["judge/unparseable"]
        frac = unparseable / judged if judged else 0.0
        metrics["judge/unparseable_frac"] = frac
        if frac > self.config.warn_unparseable_frac:
            log.warning(
                "judge: %d of %d judged replies this step had no `Score: 0|1` verdict "
                "(%.0f%% > warn_unparseable_frac=%g) and were rewarded %g. A thinking judge "
                "cut off by max_tokens does this: keep judge.http.disable_thinking=True on "
                "a server that supports it, or raise judge.http.max_tokens. Example reply: %s",
                unparseable,
                judged,
                100 * frac,
                self.config.warn_unparseable_frac,
                self.config.unparseable_reward,
                _clip(self.unparseable_example or ""),
            )
        return metrics

    def score(self, batch: Sequence[JudgeItem]) -> list[JudgeResult]:
        """Rewards for ``(predicted, reference_segments)`` items, in input order."""
        for predicted, references in batch:
            if predicted is not None and not isinstance(predicted, str):
                raise TypeError(f"predicted must be a string or None, got {type(predicted)}")
            if isinstance(references, str) or not references:
                raise ValueError(
                    "reference_segments must be a non-empty sequence of strings (s_i first)"
                )
        counters = self.counters
        counters.batches += 1
        counters.items += len(batch)
        missing = JudgeResult(self.config.missing_prediction_reward, parsed=False, raw="")
        results: list[JudgeResult] = [missing] * len(batch)
        todo = [i for i, (p, _) in enumerate(batch) if p is not None and p.strip()]
        counters.no_prediction += len(batch) - len(todo)
        if not todo:
            return results
        items = [(batch[i][0].strip(), tuple(batch[i][1])) for i in todo]
        replies = multihost.once(self._judge, items)  # one judge call in a multi-host run
        if len(replies) != len(todo):
            raise RuntimeError(f"judge backend returned {len(replies)} replies for {len(todo)}")
        counters.judged += len(todo)
        for i, reply in zip(todo, replies):
            results[i] = self._result(reply)
        return results

    def _result(self, reply: Reply) -> JudgeResult:
        counters = self.counters
        counters.retries += reply.retries
        verdict = parse_score(reply.content) if reply.content is not None else None
        if reply.failed:
            counters.failed_requests += 1
        elif verdict is None:
            counters.unparseable += 1
            self.unparseable_example = reply.raw
        if verdict is None:
            reward = self.config.unparseable_reward
            return JudgeResult(reward, parsed=False, raw=reply.raw, failed=reply.failed)
        counters.parsed += 1
        counters.positive += verdict
        reward = float(verdict) if reply.graded is None else reply.graded
        return JudgeResult(reward, parsed=True, raw=reply.raw, verdict=verdict)

    @abc.abstractmethod
    def _judge(self, items: list[tuple[str, tuple[str, ...]]]) -> list[Reply]:
        """One reply per ``(prediction, reference_segments)``; predictions non-empty."""


class GenerativeJudge(Judge):
    """A language-model judge behind an injected ``generate(prompts) -> outputs``.

    ``renderer`` (messages -> string, e.g. the judge model's chat template) wraps each
    prompt as a user message; without it ``generate`` receives the bare question.
    """

    def __init__(
        self,
        config: JudgeConfig,
        generate: Callable[[list[str]], list[str]],
        renderer: Callable[[list[Message]], str] | None = None,
    ):
        super().__init__(config)
        if not callable(generate):
            raise TypeError("GenerativeJudge needs a callable generate(prompts) -> outputs")
        self._generate = generate
        self._renderer = renderer

    def prompt(self, predicted: str, reference_segments: Sequence[str]) -> str:
        config = self.config
        text = judge_prompt(predicted, reference_segments, config.mode, config.question_template())
        if self._renderer is None:
            return text
        return self._renderer([{"role": "user", "content": text}])

    def _judge(self, items: list[tuple[str, tuple[str, ...]]]) -> list[Reply]:
        outputs = self._generate([self.prompt(p, refs) for p, refs in items])
        if len(outputs) != len(items):
            raise RuntimeError(f"generate returned {len(outputs)} outputs for {len(items)}")
        return [Reply(raw=str(out), content=str(out)) for out in outputs]


class HttpJudge(Judge):
    """A judge served behind ``POST {base_url}/v1/chat/completions`` (stdlib only).

    Requests run concurrently (``max_workers`` threads), each within a deadline and a
    size cap and without following redirects (:func:`rlpt_jax.net.post_json`). A request
    is retried on connection errors, timeouts, the deadline and HTTP
    408/425/429/500/502/503/504 with exponential backoff (``backoff_s * 2**attempt``,
    capped); after ``max_retries`` retries it counts as failed (reward
    ``unparseable_reward``). An answer that is not a chat completion
    with text content (HTML, another schema, ``content: null``, too large, too deep) is
    a failed request too, not retried: the server answered, and again would answer the
    same. Only a well-formed reply whose text has no verdict is *unparseable*.
    If all requests of a batch failed, or more than ``max_failure_fraction`` of them,
    the server is considered down and :class:`JudgeUnavailableError` is raised after
    the counters are updated: training on all-zero rewards would be silent corruption.
    """

    def __init__(self, config: JudgeConfig, sleep: Callable[[float], None] = time.sleep):
        super().__init__(config)
        if not config.http.model:
            raise ValueError("HttpJudge needs http.model (the served model's name)")
        self._sleep = sleep

    def probe(self) -> None:
        """``GET {base_url}/v1/models`` once, so that a wrong URL, a dead server, a
        rejected key or a model the server does not serve stops the run at start-up
        rather than after its first rollout (or never, if no prediction reaches the
        judge). A server without that endpoint (HTTP 404/405) passes."""
        http = self.config.http
        limit = min(http.timeout_s, 30.0)
        try:
            listing = net.get_json(
                http.models_url,
                self._headers(),
                timeout_s=limit,
                deadline_s=min(http.request_deadline_s, 2 * limit),
                max_bytes=http.max_response_bytes,
            )
        except net.HTTPFailure as e:
            if e.status in (404, 405):
                return
            raise JudgeUnavailableError(
                f"judge server did not answer the start-up probe: {e}; start it, or fix "
                "judge.http.base_url (and judge.http.api_key_env if it needs a key)"
            ) from e
        served = _served_models(listing)
        if served is not None and http.model not in served:
            raise JudgeUnavailableError(
                f"judge server {http.models_url} does not serve model {http.model!r}; it "
                f"serves {sorted(served)}: set judge.http.model to one of them"
            )

    def _judge(self, items: list[tuple[str, tuple[str, ...]]]) -> list[Reply]:
        http = self.config.http
        mode, template = self.config.mode, self.config.question_template()
        prompts = [judge_prompt(p, refs, mode, template) for p, refs in items]
        workers = min(http.max_workers, len(prompts))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            replies = list(pool.map(self._request, prompts))
        failed = [r for r in replies if r.failed]
        if failed and (
            len(failed) == len(replies) or len(failed) / len(replies) > http.max_failure_fraction
        ):
            for reply in replies:
                self._result(reply)
            self.counters.judged += len(replies)
            raise JudgeUnavailableError(
                f"judge server {http.url} unavailable: {len(failed)}/{len(replies)} requests "
                f"failed after {http.max_retries} retries (max_failure_fraction="
                f"{http.max_failure_fraction}); last error: {failed[-1].raw}"
            )
        return replies

    def _headers(self) -> dict[str, str]:
        headers = {}
        key_env = self.config.http.api_key_env
        if key_env and os.environ.get(key_env):
            headers["Authorization"] = f"Bearer {os.environ[key_env]}"
        return headers

    def _payload(self, prompt: str) -> dict[str, Any]:
        http = self.config.http
        payload = {
            "model": http.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": http.temperature,
            "max_tokens": http.max_tokens,
        }
        if http.disable_thinking:
            payload["chat_template_kwargs"] = {"enable_thinking": False}
        return payload

    def _request(self, prompt: str) -> Reply:
        http = self.config.http
        payload = self._payload(prompt)
        error = ""
        for attempt in range(http.max_retries + 1):
            if attempt:
                self._sleep(min(http.backoff_s * 2 ** (attempt - 1), http.max_backoff_s))
            try:
                answer = net.post_json(
                    http.url,
                    payload,
                    self._headers(),
                    timeout_s=http.timeout_s,
                    deadline_s=http.request_deadline_s,
                    max_bytes=http.max_response_bytes,
                )
                content = completion_text(answer, http.url)
            except net.HTTPFailure as e:
                error = e.reason
                if e.status == 400 and http.disable_thinking:
                    error += (
                        " (if the server rejects chat_template_kwargs, set "
                        "judge.http.disable_thinking=False)"
                    )
                if not e.retryable:
                    return Reply(raw=error, content=None, failed=True, retries=attempt)
                continue
            return Reply(raw=content, content=content, retries=attempt)
        return Reply(raw=error, content=None, failed=True, retries=http.max_retries)


def completion_text(answer: Any, url: str) -> str:
    """The text of a chat-completions answer (``choices[0].message.content``); an answer
    without it is a failed request (:class:`rlpt_jax.net.HTTPFailure`), never a reply."""
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        content = None
    if not isinstance(content, str):
        shape = f"content {content!r:.80}" if content is not None else "no text content"
        raise net.HTTPFailure(
            f"answer is not a chat completion with text ({shape}; want choices[0].message"
            f".content as a string): {_clip(str(answer)[:400])}",
            url,
        )
    return content


def _served_models(listing: Any) -> set[str] | None:
    """Model ids of an OpenAI ``/v1/models`` listing; ``None`` when it is not one."""
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        return None
    return {m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)}


_PUNCT = re.compile(r"[^\w\s]+")


def lexical_tokens(text: str) -> list[str]:
    """NFKC, lowercase, punctuation removed, split on whitespace."""
    return _PUNCT.sub(" ", unicodedata.normalize("NFKC", text).lower()).split()


def token_f1(predicted: Sequence[str], reference: Sequence[str]) -> float:
    """Bag-of-tokens F1 (SQuAD style): overlap counted with multiplicity."""
    common = sum((collections.Counter(predicted) & collections.Counter(reference)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(reference)
    return 2 * precision * recall / (precision + recall)


class LexicalJudge(Judge):
    """Deterministic offline judge on normalised tokens (lowercase, no punctuation).

    * ``prefix``: with ``p`` the prediction's tokens and ``R`` the tokens of the
      reference segments joined, compare ``p`` with the prefix ``R[:len(p)]`` of the
      same length; reward 1 iff token F1 >= ``lexical.threshold`` and
      ``len(p) >= min(lexical.min_tokens, len(tokens(s_i)))``. Word order inside the
      window is ignored, so light paraphrase passes; a prediction of a later sentence
      or of unrelated text fails.
    * ``strict``: reward 1 iff ``p`` equals the tokens of ``s_i`` exactly.

    The output mimics a model judge (``"f1=0.857 Score: 1"``) and goes through the same
    parser and counters.
    """

    def _judge(self, items: list[tuple[str, tuple[str, ...]]]) -> list[Reply]:
        return [self._one(p, refs) for p, refs in items]

    def _one(self, predicted: str, references: tuple[str, ...]) -> Reply:
        tokens = lexical_tokens(predicted)
        target = lexical_tokens(references[0])
        if self.config.mode == "strict":
            verdict = int(bool(tokens) and tokens == target)
            raw = f"exact={bool(verdict)} Score: {verdict}"
            return Reply(raw=raw, content=raw)
        rule = self.config.lexical
        reference = lexical_tokens(" ".join(references))
        f1 = token_f1(tokens, reference[: len(tokens)]) if tokens and reference else 0.0
        long_enough = len(tokens) >= min(rule.min_tokens, max(len(target), 1))
        verdict = int(long_enough and f1 >= rule.threshold)
        raw = f"f1={f1:.3f} Score: {verdict}"
        return Reply(
            raw=raw, content=raw, graded=(f1 if long_enough else 0.0) if rule.graded else None
        )


def _generative(config: JudgeConfig, generate, renderer) -> Judge:
    if generate is None:
        raise ValueError("judge kind 'generative' needs generate=callable(prompts) -> outputs")
    return GenerativeJudge(config, generate, renderer)


_FACTORIES: dict[str, Callable[..., Judge]] = {
    "generative": _generative,
    "http": lambda config, generate, renderer: HttpJudge(config),
    "lexical": lambda config, generate, renderer: LexicalJudge(config),
}


def make_judge(
    config: JudgeConfig | dict,
    *,
    generate: Callable[[list[str]], list[str]] | None = None,
    renderer: Callable[[list[Message]], str] | None = None,
) -> Judge:
    """The judge ``config.kind`` names (a ``dict`` is turned into a :class:`JudgeConfig`).

    Raises:
      ValueError: unknown kind (the message lists the valid ones), or a generative
        judge without ``generate``.
    """
    if isinstance(config, dict):
        fields = dict(config)
        kind = fields.get("kind", JudgeConfig.kind)
        if kind not in _FACTORIES:
            raise ValueError(_unknown_kind(kind))
        if isinstance(fields.get("lexical"), dict):
            fields["lexical"] = LexicalConfig(**fields["lexical"])
        if isinstance(fields.get("http"), dict):
            fields["http"] = HttpConfig(**fields["http"])
        config = JudgeConfig(**fields)
    if config.kind not in _FACTORIES:
        raise ValueError(_unknown_kind(config.kind))
    return _FACTORIES[config.kind](config, generate, renderer)
