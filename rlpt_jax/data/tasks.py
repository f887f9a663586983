"""RLPT tasks: ASR and MSR prompts, task interleaving and answer extraction.

* **ASR** (autoregressive segment reasoning): the context under a ``### Context``
  header; predict the next sentence.
* **MSR** (middle segment reasoning): ``## Text Material ##: {s_<i}`` / ``<MASK>`` /
  ``{s_{i+1}}`` / ``## Task ##: fill the <MASK> ...``; predict the masked sentence.

Both ask for step-by-step reasoning first and the answer between
``<|startofprediction|>`` and ``<|endofprediction|>``. The objective
``J = E_ASR[r] + lambda * E_MSR[r]`` is realised here as a sampling share: a sample
becomes MSR with probability ``msr_fraction`` (lambda), decided by a seeded hash of the
sample, so the same sample always gets the same task. The prompt text is ours (the
paper's exact wording is not published); the golden tests pin it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence

from rlpt_jax.data.segments import Sample

START_TAG = "<|startofprediction|>"
END_TAG = "<|endofprediction|>"
MASK = "<MASK>"

ASR_TEMPLATE = (
    "### Context\n"
    "{context}\n"
    "\n"
    "Predict the sentence that comes right after the context above. "
    "Reason step by step first, then give your prediction between "
    f"{START_TAG} and {END_TAG}."
)

MSR_TEMPLATE = (
    "## Text Material ##: {context}\n"
    f"{MASK}\n"
    "{next_segment}\n"
    f"## Task ##: Fill the {MASK} in the text material with the missing sentence. "
    "Reason step by step first, then give the missing sentence between "
    f"{START_TAG} and {END_TAG}."
)

Message = dict[str, str]
Renderer = Callable[[list[Message]], str]
TASK_KINDS = ("asr", "msr")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """How samples become prompts.

    Attributes:
      msr_fraction: ``lambda``, the share of samples posed as MSR (default 0.5 [ours]:
        the paper weights MSR by an unreported ``lambda in (0, 1)``). 0 gives pure ASR.
      seed: Salt of the per-sample task choice (default 0).
      system_prompt: Optional system message when a chat renderer is used (default
        ``None``: user message only, as the chat template decides the rest).
      asr_template: ASR instruction with a ``{context}`` field (default
        :data:`ASR_TEMPLATE`); must mention both answer tags.
      msr_template: MSR instruction with ``{context}`` and ``{next_segment}`` fields
        (default :data:`MSR_TEMPLATE`); must mention both answer tags.
    """

    msr_fraction: float = 0.5
    seed: int = 0
    system_prompt: str | None = None
    asr_template: str = ASR_TEMPLATE
    msr_template: str = MSR_TEMPLATE

    def __post_init__(self):
        if not 0.0 <= self.msr_fraction < 1.0:
            raise ValueError(
                f"msr_fraction (lambda) must be in [0, 1), got {self.msr_fraction}; "
                "the objective keeps ASR as the main task"
            )
        _check_template("asr_template", self.asr_template, ("context",))
        _check_template("msr_template", self.msr_template, ("context", "next_segment"))


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


def asr_text(sample: Sample, template: str = ASR_TEMPLATE) -> str:
    """The ASR instruction for a sample (before any chat template)."""
    return template.format(context=sample.context)


def msr_text(sample: Sample, template: str = MSR_TEMPLATE) -> str:
    """The MSR instruction for a sample (before any chat template)."""
    return template.format(context=sample.context, next_segment=sample.next_segment)


_TEXT = {"asr": asr_text, "msr": msr_text}


def task_kind(sample: Sample, config: TaskConfig) -> str:
    """``"msr"`` for an ``msr_fraction`` share of samples, by a seeded hash of the sample."""
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
    template = config.asr_template if kind == "asr" else config.msr_template
    text = _TEXT[kind](sample, template)
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
