"""ASR/MSR prompt goldens, task interleaving and prediction extraction."""

from __future__ import annotations

import pytest

from rlpt_jax.data.segments import Sample
from rlpt_jax.data.tasks import TaskConfig, extract_prediction, make_task, make_tasks, task_kind

S, E = "<|startofprediction|>", "<|endofprediction|>"

SAMPLE = Sample(
    doc_id="lovelace",
    index=3,
    context="Ada Lovelace wrote the first algorithm. She worked with Charles Babbage.",
    target="Her notes were published in 1843.",
    following=("They describe Bernoulli numbers.", "She is a pioneer."),
)

ASR_GOLDEN = (
    "### Context\n"
    "Ada Lovelace wrote the first algorithm. She worked with Charles Babbage.\n"
    "\n"
    "Predict the sentence that comes right after the context above. Reason step by step "
    "first, then give your prediction between <|startofprediction|> and "
    "<|endofprediction|>."
)

MSR_GOLDEN = (
    "## Text Material ##: Ada Lovelace wrote the first algorithm. She worked with "
    "Charles Babbage.\n"
    "<MASK>\n"
    "They describe Bernoulli numbers.\n"
    "## Task ##: Fill the <MASK> in the text material with the missing sentence. Reason "
    "step by step first, then give the missing sentence between <|startofprediction|> "
    "and <|endofprediction|>."
)


def chatml(messages):
    """A Qwen-style chat template with the generation prompt."""
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def test_asr_golden():
    task = make_task(SAMPLE, TaskConfig(), kind="asr")
    assert task.kind == "asr"
    assert task.prompt == ASR_GOLDEN
    assert task.messages == ({"role": "user", "content": ASR_GOLDEN},)
    assert task.reference_segments == (
        "Her notes were published in 1843.",
        "They describe Bernoulli numbers.",
        "She is a pioneer.",
    )


def test_msr_golden():
    task = make_task(SAMPLE, TaskConfig(), kind="msr")
    assert task.prompt == MSR_GOLDEN
    # The masked sentence itself must never leak into the prompt.
    assert "1843" not in task.prompt


def test_chat_rendering_golden():
    task = make_task(SAMPLE, TaskConfig(system_prompt="You are helpful."), chatml, kind="asr")
    assert task.prompt == (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n"
        f"<|im_start|>user\n{ASR_GOLDEN}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert task.messages[0] == {"role": "system", "content": "You are helpful."}
    with pytest.raises(TypeError, match="string"):
        make_task(SAMPLE, TaskConfig(), renderer=lambda m: [1, 2])


def test_task_choice_is_seeded_and_follows_lambda():
    samples = [Sample(f"d{i // 5}", i % 5 + 2, "c", "t", ("f",)) for i in range(4000)]
    config = TaskConfig(msr_fraction=0.25, seed=3)
    kinds = [t.kind for t in make_tasks(samples, config)]
    share = kinds.count("msr") / len(kinds)
    assert 0.22 < share < 0.28  # binomial sd ~0.007
    assert kinds == [task_kind(s, config) for s in reversed(samples)][::-1]
    other_seed = [task_kind(s, TaskConfig(msr_fraction=0.25, seed=4)) for s in samples]
    assert other_seed != kinds
    assert {task_kind(s, TaskConfig(msr_fraction=0.0)) for s in samples} == {"asr"}


def test_bad_task_inputs():
    with pytest.raises(ValueError, match="msr_fraction"):
        TaskConfig(msr_fraction=1.0)
    with pytest.raises(ValueError, match="msr_fraction"):
        TaskConfig(msr_fraction=-0.1)
    with pytest.raises(ValueError, match="unknown task kind 'qa'"):
        make_task(SAMPLE, TaskConfig(), kind="qa")
    with pytest.raises(ValueError, match=r"msr_template must contain \['next_segment'\]"):
        TaskConfig(msr_template=f"{{context}} {S} {E}")
    with pytest.raises(ValueError, match="asr_template must contain.*endofprediction"):
        TaskConfig(asr_template=f"{{context}} {S}")
    with pytest.raises(ValueError, match="double other braces"):
        TaskConfig(asr_template=f"{{context}} {{x}} {S} {E}")


def test_custom_template():
    config = TaskConfig(asr_template=f"Go on: {{context}} -> {S}...{E}")
    task = make_task(SAMPLE, config, kind="asr")
    assert task.prompt == f"Go on: {SAMPLE.context} -> {S}...{E}"


@pytest.mark.parametrize(
    "text, expected",
    [
        (f"Reasoning...\n{S}Her notes were published.{E}", "Her notes were published."),
        (f"{S}\n  spaced answer \n{E} trailing talk", "spaced answer"),
        # Repeated: the last start tag wins (a draft, then the final answer).
        (f"{S}draft{E} wait, better: {S}final{E}", "final"),
        # The reasoning quotes the start tag before answering.
        (f"I will answer after {S} like this: {S}answer{E}", "answer"),
        # Missing tags.
        ("The next sentence is about 1843.", None),
        (f"only an end tag {E}", None),
        # Empty or blank.
        (f"{S}{E}", None),
        (f"{S}   \n {E}", None),
        # Truncated: the last start tag is never closed.
        (f"{S}Her notes were publi", None),
        (f"{S}old{E} then {S}cut off", None),
        # End tag before the start tag is not an answer.
        (f"{E}{S}x", None),
        ("", None),
    ],
)
def test_extract_prediction(text, expected):
    assert extract_prediction(text) == expected
