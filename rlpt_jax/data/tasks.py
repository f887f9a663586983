"""RLPT tasks: ASR and MSR prompts, task interleaving and answer extraction.

* **ASR** (autoregressive segment reasoning): predict the sentence after a context.
* **MSR** (middle segment reasoning): predict the sentence hidden behind ``<MASK>``,
  given the text before it and the sentence after it.

Both ask for step-by-step reasoning first and the answer between
``<|startofprediction|>`` and ``<|endofprediction|>``.

Prompts (``prompt_style``): ``"paper"`` (default) follows the structure of the prompts
printed in the RLPT paper (arXiv 2509.19249 v2), point by point, in our own words: ASR is
the instruction, then the answer format, then the context under ``### Context`` (context
last); MSR is ``## Text Material ##: {s_<i}`` / ``<MASK>`` / ``{s_{i+1}}`` /
``## Task ##:`` fill the mask, reasoning step by step, in the same tags. ``"compact"``
keeps this project's earlier prompts (ASR context first, instruction after it) for runs
and checkpoints made with them. The golden tests pin both.

The objective ``J = E_ASR[r] + λ·E_MSR[r]`` is realised as a sampling share: a sample
becomes MSR with probability ``f = λ / (1 + λ)``, so that the task stream holds, in
expectation, λ MSR samples per ASR sample and each sample's reward enters the loss with
the same weight. The choice is a seeded hash of the sample, so the same sample always
gets the same task.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence

from rlpt_jax.data.segments import Sample

START_TAG = "<|startofprediction|>"
END_TAG = "<|endofprediction|>"
MASK = "<MASK>"

# RLPT v2, the ASR prompt as printed in the paper: (1) complete the text under
# "### Context" with the most probable next sentence, (2) reason step by step, answer in
# the prediction tags, (3) the "### Context" header and the context, last.
PAPER_ASR_TEMPLATE = (
    "Continue the text shown under ### Context by predicting the single most probable "
    "next sentence.\n"
    "Think it through step by step, then write your final answer between "
    f"{START_TAG} and {END_TAG}.\n"
    "\n"
    "### Context\n"
    "{context}"
)

# RLPT v2, the MSR prompt as printed in the paper: the text material with <MASK> in
# place of s_i and s_{i+1} after it, then the task: fill <MASK> with fitting sentences
# (or a solution step), reasoning carefully step by step, best guess in the same tags.
PAPER_MSR_TEMPLATE = (
    "## Text Material ##: {context}\n"
    f"{MASK}\n"
    "{next_segment}\n"
    f"## Task ##: Work out which sentences (or which solution step) belong in place of "
    f"{MASK} in the text material above. Reason it through carefully, step by step, then "
    f"write your best prediction for {MASK} between {START_TAG} and {END_TAG}."
)

# This project's earlier prompts, kept as ``prompt_style="compact"``.
COMPACT_ASR_TEMPLATE = (
    "### Context\n"
    "{context}\n"
    "\n"
    "Predict the sentence that comes right after the context above. "
    "Reason step by step first, then give your prediction between "
    f"{START_TAG} and {END_TAG}."
)

COMPACT_MSR_TEMPLATE = (
    "## Text Material ##: {context}\n"
    f"{MASK}\n"
    "{next_segment}\n"
    f"## Task ##: Fill the {MASK} in the text material with the missing sentence. "
    "Reason step by step first, then give the missing sentence between "
    f"{START_TAG} and {END_TAG}."
)

TEMPLATES = {
    "paper": {"asr": PAPER_ASR_TEMPLATE, "msr": PAPER_MSR_TEMPLATE},
    "compact": {"asr": COMPACT_ASR_TEMPLATE, "msr": COMPACT_MSR_TEMPLATE},
}
PROMPT_STYLES = tuple(TEMPLATES)

Message = dict[str, str]
Renderer = Callable[[list[Message]], str]
TASK_KINDS = ("asr", "msr")


def msr_share(msr_lambda: float) -> float:
    """The share ``f`` of samples posed as MSR that gives MSR the weight ``λ``.

    With ``f`` of the stream MSR and ``1 − f`` ASR, and every sample weighted alike, the
    objective weighs MSR against ASR by ``f / (1 − f)``; setting that to ``λ`` gives
    ``f = λ / (1 + λ)``.
    """
    return msr_lambda / (1.0 + msr_lambda)


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """How samples become prompts.

    Attributes:
      msr_lambda: The paper's ``λ`` in ``J = E_ASR[r] + λ·E_MSR[r]``, realised as the
        MSR sampling share ``f = λ / (1 + λ)`` (see :func:`msr_share`). The paper takes
        ``λ in (0, 1)`` without reporting its value; default 0.5 [ours], so a third of
        the samples are MSR. 0 gives pure ASR; 1 weighs both tasks alike.
      seed: Salt of the per-sample task choice (default 0).
      system_prompt: Optional system message when a chat renderer is used (default
        ``None``: user message only, as the chat template decides the rest).
      prompt_style: ``"paper"`` (default; the structure of the paper's prompts) or
        ``"compact"`` (this project's earlier prompts), see the module docstring.
      asr_template: An ASR prompt with a ``{context}`` field that replaces the style's
        (default ``None``); must mention both answer tags.
      msr_template: An MSR prompt with ``{context}`` and ``{next_segment}`` fields that
        replaces the style's (default ``None``); must mention both answer tags.
    """

    msr_lambda: float = 0.5
    seed: int = 0
    system_prompt: str | None = None
    prompt_style: str = "paper"
    asr_template: str | None = None
    msr_template: str | None = None

    def __post_init__(self):
        if not 0.0 <= self.msr_lambda <= 1.0:
            raise ValueError(
                f"msr_lambda must be in [0, 1], got {self.msr_lambda}: the paper weighs MSR "
                "by lambda in (0, 1), keeping ASR the main task (0: ASR only)"
            )
        if self.prompt_style not in TEMPLATES:
            raise ValueError(
                f"unknown prompt_style {self.prompt_style!r}; valid: {list(PROMPT_STYLES)}"
            )
        _check_template("asr_template", self.template("asr"), ("context",))
        _check_template("msr_template", self.template("msr"), ("context", "next_segment"))

    @property
    def msr_fraction(self) -> float:
        """The share of samples posed as MSR, ``λ / (1 + λ)``."""
        return msr_share(self.msr_lambda)

    def template(self, kind: str) -> str:
        """The prompt template of task ``kind``: the explicit one, else the style's."""
        explicit = self.asr_template if kind == "asr" else self.msr_template
        return explicit if explicit is not None else TEMPLATES[self.prompt_style][kind]


def _check_template(name: str, template: str, fields: tuple[str, ...]) -> None:
    missing = [f for f in fields if "{" + f + "}" not in template]
    missing += [tag for tag in (START_TAG, END_TAG) if tag not in template]
    if missing:
        raise ValueError(f"{name} must contain {missing}")
    try:
        template.format(**dict.fromkeys(fields, ""))
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"{name} must format with only {list(fields)} (double other braces): {e!r}"
        ) from e


@dataclasses.dataclass(frozen=True)
class Task:
    """A prompt ready for the policy, with what the judge needs afterwards."""

    kind: str
    prompt: str
    messages: tuple[Message, ...]
    sample: Sample

    @property
    def reference_segments(self) -> tuple[str, ...]:
        return self.sample.reference_segments


def asr_text(sample: Sample, template: str = PAPER_ASR_TEMPLATE) -> str:
    """The ASR instruction for a sample (before any chat template)."""
    return template.format(context=sample.context)


def msr_text(sample: Sample, template: str = PAPER_MSR_TEMPLATE) -> str:
    """The MSR instruction for a sample (before any chat template)."""
    return template.format(context=sample.context, next_segment=sample.next_segment)


_TEXT = {"asr": asr_text, "msr": msr_text}


def task_kind(sample: Sample, config: TaskConfig) -> str:
    """``"msr"`` for a ``λ / (1 + λ)`` share of samples, by a seeded hash of the sample."""
    key = f"task\x1f{config.seed}\x1f{sample.doc_id}\x1f{sample.index}".encode()
    unit = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
    return "msr" if unit < config.msr_fraction else "asr"


def make_task(
    sample: Sample, config: TaskConfig, renderer: Renderer | None = None, kind: str | None = None
) -> Task:
    """Builds the task; ``kind`` overrides the seeded choice (for evaluation per task).

    With a ``renderer`` (messages -> string, e.g. a chat template applied with
    ``add_generation_prompt=True``) the prompt is the rendered chat; otherwise it is the
    raw instruction text, for base models.
    """
    kind = kind or task_kind(sample, config)
    if kind not in _TEXT:
        raise ValueError(f"unknown task kind {kind!r}; valid kinds: {list(TASK_KINDS)}")
    text = _TEXT[kind](sample, config.template(kind))
    messages: list[Message] = []
    if config.system_prompt is not None:
        messages.append({"role": "system", "content": config.system_prompt})
    messages.append({"role": "user", "content": text})
    prompt = renderer(list(messages)) if renderer is not None else text
    if not isinstance(prompt, str):
        raise TypeError(f"renderer must return a string, got {type(prompt).__name__}")
    return Task(kind=kind, prompt=prompt, messages=tuple(messages), sample=sample)


def make_tasks(
    samples: Sequence[Sample], config: TaskConfig, renderer: Renderer | None = None
) -> list[Task]:
    """One task per sample, kinds chosen by :func:`task_kind`."""
    return [make_task(s, config, renderer) for s in samples]


def extract_prediction(text: str) -> str | None:
    """The answer between the last start tag and the end tag after it, stripped.

    ``None`` when there is no start tag, the last start tag is never closed (a response
    cut off by the length limit), or the tagged text is empty. Using the *last* start
    tag means reasoning that quotes the tags ("I will put it between
    <|startofprediction|> and ...") does not hide the final answer.
    """
    start = text.rfind(START_TAG)
    if start < 0:
        return None
    body_start = start + len(START_TAG)
    end = text.find(END_TAG, body_start)
    if end < 0:
        return None
    prediction = text[body_start:end].strip()
    return prediction or None
